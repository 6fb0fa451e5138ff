// attnkit — linear_options: the knobs of linear_attention(), and what the backends receive.
#pragma once

#include "attnkit/attention/check.hpp"
#include "attnkit/core/config.hpp"
#include "attnkit/core/error.hpp"
#include "attnkit/core/tensor_view.hpp"

namespace attnkit {

struct linear_options {
  // true:  out_t = φ(q_t)·S_t / φ(q_t)·z_t  (linear transformer, Infini-attention memory,
  //        BASED's linear branch). A row whose denominator is exactly 0 — relu features with
  //        no overlap, say — is defined as zeros (never NaN).
  // false: out_t = φ(q_t)·S_t  (Lightning Attention / TransNormerLLM, RetNet: a norm layer
  //        follows instead). z is still carried, so a state may be continued either way.
  bool normalize = true;
  // Empty (no decay: γ = 1), or one decay per KV head ([kv_heads]), each 0 < γ <= 1:
  //   S_t = γ·S_{t-1} + φ(k_t) v_tᵀ,   z_t = γ·z_{t-1} + φ(k_t).
  // The state is per KV head, so the decay is too; RetNet (multi-scale retention: one γ per
  // head) has as many KV heads as query heads.
  tensor_view<const float, 1> decay{};
};

namespace detail {

// Which exact form a backend runs. `automatic` lets it choose (the CPU backend: recurrent for a
// few tokens, chunked otherwise); the others exist so the tests can force either on any length.
enum class linear_form { automatic, chunked, recurrent };

// What the backends receive after the front door has validated everything.
struct linear_params {
  index_t tokens = 0;
  index_t q_heads = 0;
  index_t kv_heads = 0;
  index_t key_dim = 0;      // dk: q and k rows
  index_t value_dim = 0;    // dv: v and out rows
  index_t feature_dim = 0;  // F = map.feature_dim(key_dim)
  index_t group_size = 1;   // query heads per KV head
  bool normalize = true;
  const float* decay = nullptr;  // [kv_heads] with decay_stride, or null for γ = 1
  index_t decay_stride = 1;
  bool state_is_zero = false;  // the state holds no token yet (skips the inter-chunk product)
  linear_form form = linear_form::automatic;

  float decay_of(index_t kv_head) const noexcept {
    return decay != nullptr ? decay[kv_head * decay_stride] : 1.0f;
  }
};

// Validates options.decay for `kv_heads` heads (empty, or every γ in (0, 1], NaN rejected) and
// records it in p.
inline void check_linear_decay(const char* function, const linear_options& options,
                               index_t kv_heads, linear_params& p) {
  if (options.decay.empty() && options.decay.data() == nullptr) return;
  check_extent(function, "decay extent 0", options.decay.extent(0), "kv_heads", kv_heads);
  check_view_data(function, "decay", options.decay);
  for (index_t h = 0; h < kv_heads; ++h) {
    const float gamma = options.decay(h);
    // Written so that NaN fails too.
    require(gamma > 0.0f && gamma <= 1.0f, function, ": decay[", h, "] is ", gamma,
            ", it must be in (0, 1]");
  }
  p.decay = options.decay.data();
  p.decay_stride = options.decay.stride(0);
}

}  // namespace detail
}  // namespace attnkit
