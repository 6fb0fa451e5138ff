// attnkit — feature::elu_plus_one: φ(x) = elu(x) + 1 = (x > 0 ? x + 1 : exp(x)), elementwise.
//
// The map of "Transformers are RNNs" (Katharopoulos et al., 2020) and of Infini-attention's
// compressive memory. Strictly positive for finite x > -87 or so (exp underflows to 0 below
// that in fp32), so the normalised form's denominator is a sum of positive terms.
#pragma once

#include <cmath>
#include <concepts>

#include "attnkit/backend/simd/vector_math.hpp"
#include "attnkit/core/config.hpp"
#include "attnkit/core/simd_include.hpp"

namespace attnkit {
namespace feature {

struct elu_plus_one {
  constexpr index_t feature_dim(index_t input_dim) const noexcept { return input_dim; }

  template <std::floating_point T>
  void apply(index_t input_dim, const T* in, T* out) const noexcept {
    for (index_t i = 0; i < input_dim; ++i) out[i] = in[i] > T(0) ? in[i] + T(1) : std::exp(in[i]);
  }

  // exp(x) = 2^(x·log2 e) through the softmax's exp2 (within ~2 ulp; 0 below x ≈ -87.3, where
  // exp's own result is subnormal).
  template <class Arch>
  void apply_simd(index_t input_dim, const float* in, float* out) const noexcept {
    using batch = xsimd::batch<float, Arch>;
    constexpr index_t width = batch::size;
    for (index_t i = 0; i < input_dim; i += width) {
      const batch x = batch::load_aligned(in + i);
      const batch e = detail::simd::exp2<Arch>(x * batch(1.4426950408889634f));
      xsimd::select(x > batch(0.0f), x + batch(1.0f), e).store_aligned(out + i);
    }
  }
};

}  // namespace feature
}  // namespace attnkit
