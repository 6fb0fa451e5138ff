// attnkit — feature::identity: φ(x) = x.
//
// Plain (unnormalised) linear attention as in Lightning Attention / TransNormerLLM and RetNet
// (with decay); also the map to use when the caller has already applied its own feature map to
// q and k. With normalisation the denominator φ(q)·z can be of either sign or zero, so identity
// is normally used with linear_options::normalize = false (and a norm layer after).
#pragma once

#include <concepts>

#include "attnkit/core/config.hpp"

namespace attnkit {
namespace feature {

struct identity {
  constexpr index_t feature_dim(index_t input_dim) const noexcept { return input_dim; }

  template <std::floating_point T>
  void apply(index_t input_dim, const T* in, T* out) const noexcept {
    for (index_t i = 0; i < input_dim; ++i) out[i] = in[i];
  }
};

}  // namespace feature
}  // namespace attnkit
