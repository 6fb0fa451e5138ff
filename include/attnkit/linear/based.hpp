// attnkit — based_attention(): BASED's hybrid layer, linear attention with the 2nd-order Taylor
// feature map plus exact softmax attention over a short sliding window (Arora et al. 2024,
// "Simple linear attention language models balance the recall-throughput tradeoff").
//
// The linear branch recalls from the whole past in O(1) state per head; the window branch gives
// exact, sharp attention to the last `window` tokens, which the low-rank linear branch cannot.
// BASED's linear branch runs on a small projection of q and k (feature dimension 16 in the
// paper, so taylor2's 1 + 16 + 136 = 153 features) with the full-width values:
//
//   out = linear_weight · linear_attention(φ(q_linear), φ(k_linear), v)
//       + window_weight · softmax attention(q, k, v) over keys p - window < j <= p
//
//   q_linear, k_linear  [tokens, heads, linear_dim]   the new tokens' small projections
//   q                   [tokens, q_heads, head_dim]   the new tokens' softmax queries
//   k, v                [kv_tokens, kv_heads, head_dim]  the softmax KV cache, ending with the
//                       new tokens (kv_tokens >= tokens); the linear branch reads the values of
//                       the new tokens, v's last `tokens` rows, and carries everything older in
//                       `state`. The window branch only visits the last `window` keys, so a
//                       decode step costs O(window + state) whatever kv_tokens is.
//   out                 [tokens, q_heads, head_dim]
//
// Prefill in one call or in pieces, then decode token by token: each call continues `state` (as
// linear_attention does). The weights are the caller's combination (BASED's layers sum the two).
#pragma once

#include <type_traits>
#include <utility>

#include "attnkit/attention/attention.hpp"
#include "attnkit/attention/check.hpp"
#include "attnkit/core/error.hpp"
#include "attnkit/core/tensor_view.hpp"
#include "attnkit/feature/taylor2.hpp"
#include "attnkit/linear/hybrid_workspace.hpp"
#include "attnkit/linear/linear_attention.hpp"
#include "attnkit/linear/linear_state.hpp"
#include "attnkit/linear/options.hpp"
#include "attnkit/mask/sliding_window.hpp"
#include "attnkit/parallel/executor.hpp"
#include "attnkit/parallel/thread_pool.hpp"

namespace attnkit {

struct based_options {
  // Keys visible to the window branch: the query's own token and the window - 1 before it
  // (BASED uses 64). At least 1.
  index_t window = 64;
  float linear_weight = 1.0f;
  float window_weight = 1.0f;
  // The linear branch's feature map. BASED scales the projections by 1/sqrt(linear_dim) so that
  // φ(q)·φ(k) = 1 + s + s²/2 approximates exp(s) of the scaled logit s:
  // feature::taylor2::approximating(1 / sqrt(linear_dim)); the default is the unscaled map.
  feature::taylor2 feature_map{};
  linear_options linear{};      // normalize (BASED: true), optional per-head decay
  attention_options softmax{};  // scale, softcap, log_sum_exp and observer of the window branch
};

template <class Backend, class TQL, class TKL, class TQ, class TK, class TV, class TO,
          parallel::executor Executor>
void based_attention(const Backend& backend, tensor_view<TQL, 3> q_linear,
                     tensor_view<TKL, 3> k_linear, tensor_view<TQ, 3> q, tensor_view<TK, 3> k,
                     tensor_view<TV, 3> v, tensor_view<TO, 3> out, linear_state& state,
                     hybrid_workspace& workspace, const based_options& options,
                     Executor&& executor) {
  constexpr const char* function = "attnkit::based_attention";
  const index_t tokens = q.extent(0);
  detail::require(options.window >= 1, function, ": options.window is ", options.window,
                  ", it must be >= 1");
  detail::check_extent(function, "q_linear tokens (extent 0)", q_linear.extent(0), "q tokens",
                       tokens);
  detail::require(k.extent(0) >= tokens, function, ": the KV cache holds ", k.extent(0),
                  " tokens (k extent 0) but the call adds ", tokens,
                  ": the cache must end with the new tokens");
  // Everything both branches check, before either runs: the state is only written when the
  // whole call is valid. (The window branch's observer is checked by attention() itself, once.)
  attention_options softmax_checked = options.softmax;
  softmax_checked.observer = {};
  detail::check_attention_arguments(function, q, k, v, out, softmax_checked);
  const index_t kv_tokens = k.extent(0), q_heads = q.extent(1), dim = v.extent(2);
  const tensor_view<TV, 3> new_values = v.slice(kv_tokens - tokens, kv_tokens);
  detail::check_linear_arguments(function, q_linear, k_linear, new_values, out, options.feature_map,
                                 state, options.linear);
  if (tokens == 0) return;

  const hybrid_workspace::branches b = workspace.prepare(tokens, q_heads, dim);
  // The window branch first: its observer's check is the last thing that may throw, and the
  // state must not have moved on when it does.
  attention(backend, q, k, v, b.second, sliding_window{options.window - 1, 0}, options.softmax,
            executor);
  linear_attention(backend, q_linear, k_linear, new_values, b.first, options.feature_map, state,
                   options.linear, executor);
  detail::mix_branches(b.first, b.second, out, [&](index_t) {
    return std::pair<float, float>{options.linear_weight, options.window_weight};
  });
}

template <class Backend, class TQL, class TKL, class TQ, class TK, class TV, class TO>
void based_attention(const Backend& backend, tensor_view<TQL, 3> q_linear,
                     tensor_view<TKL, 3> k_linear, tensor_view<TQ, 3> q, tensor_view<TK, 3> k,
                     tensor_view<TV, 3> v, tensor_view<TO, 3> out, linear_state& state,
                     hybrid_workspace& workspace, const based_options& options = {}) {
  based_attention(backend, q_linear, k_linear, q, k, v, out, state, workspace, options,
                  parallel::default_thread_pool());
}

}  // namespace attnkit
