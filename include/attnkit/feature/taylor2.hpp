// attnkit — feature::taylor2: the 2nd-order Taylor feature map of exp (BASED, Arora et al. 2024).
//
//   φ(x) = [1, x, x⊗x/√2]   so that   φ(q)·φ(k) = 1 + q·k + (q·k)²/2,
//
// the Taylor expansion of exp(q·k) to second order — positive for every q·k (its minimum is 1/2),
// so the normalised form is well defined. x⊗x is symmetric, so only the d(d+1)/2 products
// x_i·x_j with i <= j are kept: (q·k)² = Σ_i q_i²k_i² + 2 Σ_{i<j} q_i q_j k_i k_j, hence the
// diagonal entries are x_i²/√2 and the off-diagonal ones x_i·x_j (the factor 2 and the 1/2 cancel).
// Feature dimension 1 + d + d(d+1)/2 — quadratic in d, which is why BASED projects q and k to a
// small dimension (16) first.
//
// Layout: [1, x_0 .. x_{d-1}, then for i = 0..d-1 the products x_i·x_j for j = i..d-1].
//
// input_scale multiplies x first: φ(s·q)·φ(s·k) = 1 + s²q·k + (s²q·k)²/2. BASED approximates
// exp(q·k/√d) and so uses s = d^(-1/4); approximating(logit_scale) builds that for any scale.
#pragma once

#include <cmath>
#include <concepts>

#include "attnkit/core/config.hpp"

namespace attnkit {
namespace feature {

struct taylor2 {
  float input_scale = 1.0f;

  // The map whose kernel is the Taylor expansion of exp(logit_scale · q·k); logit_scale >= 0.
  static taylor2 approximating(float logit_scale) { return taylor2{std::sqrt(logit_scale)}; }

  constexpr index_t feature_dim(index_t input_dim) const noexcept {
    return 1 + input_dim + input_dim * (input_dim + 1) / 2;
  }

  template <std::floating_point T>
  void apply(index_t input_dim, const T* in, T* out) const noexcept {
    const T scale = static_cast<T>(input_scale);
    const T inverse_sqrt2 = static_cast<T>(0.70710678118654752440084436210485);
    out[0] = T(1);
    T* linear = out + 1;
    for (index_t i = 0; i < input_dim; ++i) linear[i] = in[i] * scale;
    T* quadratic = linear + input_dim;
    for (index_t i = 0; i < input_dim; ++i) {
      const T xi = linear[i];
      quadratic[0] = xi * xi * inverse_sqrt2;
      // The off-diagonal row: one multiplier times a contiguous run (vectorises as written).
      for (index_t j = i + 1; j < input_dim; ++j) quadratic[j - i] = xi * linear[j];
      quadratic += input_dim - i;
    }
  }
};

}  // namespace feature
}  // namespace attnkit
