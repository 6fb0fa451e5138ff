// attnkit — the log-sum-exp algebra that makes partial attention results merge exactly.
//
// Attention over a key set K with logits s_j is  o = Σ_j exp(s_j - lse) v_j  with
// lse = log Σ_j exp(s_j). For disjoint key sets A and B:
//     lse = log(exp(lse_a) + exp(lse_b))
//     o   = o_a · exp(lse_a - lse) + o_b · exp(lse_b - lse)
// which is exact (up to rounding), so split-KV decode, cascade attention and ring attention are
// all this one formula. An empty key set has lse = -inf and contributes weight 0.
#pragma once

#include <cmath>

#include "attnkit/core/config.hpp"

namespace attnkit {

namespace detail {
inline constexpr float log2e = 1.4426950408889634f;
inline constexpr float ln2 = 0.6931471805599453f;
}  // namespace detail

// Weights of two partial results in their merge, and the merged lse. Both empty -> both weights
// 0 and lse = -inf, so a fully masked row stays zeros instead of becoming NaN.
struct merge_weights {
  float weight_a;
  float weight_b;
  float log_sum_exp;
};

ATTNKIT_HOST_DEVICE inline merge_weights merge_log_sum_exp(float lse_a, float lse_b) noexcept {
  const float m = lse_a > lse_b ? lse_a : lse_b;
  // (__builtin_huge_valf rather than numeric_limits, which nvcc treats as host-only.)
  if (m == -__builtin_huge_valf()) return {0.0f, 0.0f, m};
  const float wa = std::exp(lse_a - m);
  const float wb = std::exp(lse_b - m);
  const float sum = wa + wb;
  return {wa / sum, wb / sum, m + std::log(sum)};
}

}  // namespace attnkit
