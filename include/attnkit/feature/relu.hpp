// attnkit — feature::relu: φ(x) = max(x, 0), elementwise.
//
// Non-negative features, so with normalisation the denominator φ(q)·z is a sum of non-negative
// terms (no cancellation). It is exactly 0 when a query has no positive component, or no key so
// far shares one with it: linear_attention defines that output row as zeros.
#pragma once

#include <concepts>

#include "attnkit/core/config.hpp"

namespace attnkit {
namespace feature {

struct relu {
  constexpr index_t feature_dim(index_t input_dim) const noexcept { return input_dim; }

  template <std::floating_point T>
  void apply(index_t input_dim, const T* in, T* out) const noexcept {
    // `x > 0 ? x : 0` maps -0 and NaN to +0 too: features are never negative zero or NaN.
    for (index_t i = 0; i < input_dim; ++i) out[i] = in[i] > T(0) ? in[i] : T(0);
  }
};

}  // namespace feature
}  // namespace attnkit
