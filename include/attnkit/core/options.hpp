// attnkit — attention_options: the knobs every softmax-attention entry point shares.
#pragma once

#include <algorithm>
#include <optional>

#include "attnkit/core/config.hpp"
#include "attnkit/core/observer.hpp"
#include "attnkit/core/tensor_view.hpp"

namespace attnkit {

struct merged_key;  // core/paged_kv_view.hpp

// Logits are  s = scale · q·k,  then  s = softcap · tanh(s / softcap)  when softcap > 0 (Gemma 2,
// Grok), then  s += -slope[h] · |q_pos - kv_pos|  when ALiBi slopes are given (the
// FlashAttention convention; for causal attention it equals slope · (kv_pos - q_pos)).
struct attention_options {
  // Default 1/sqrt(head_dim). Must be finite and non-negative.
  std::optional<float> scale;
  // 0 disables the cap; otherwise a finite positive bound on |logit|.
  float softcap = 0.0f;
  // Empty, or one slope per query head ([q_heads]).
  tensor_view<const float, 1> alibi_slopes{};
  // Empty, or an output [q_heads, q_tokens] that receives the natural-log log-sum-exp of each
  // row's logits (-inf for a row with no visible key). With it, partial results over disjoint
  // key sets merge exactly (merge_states).
  tensor_view<float, 2> log_sum_exp{};
  // Empty, or an observer that receives the normalised attention probabilities of the last
  // observer.last_queries() query tokens (see core/observer.hpp; accumulate_key_mass is the
  // ready one). Without one the kernels do no extra work.
  attention_observer observer{};
};

namespace detail {

// What the backends receive after the front door has validated and resolved the options.
struct attention_params {
  index_t q_tokens = 0;
  index_t kv_tokens = 0;
  index_t q_heads = 0;
  index_t kv_heads = 0;
  index_t head_dim = 0;
  index_t group_size = 1;  // query heads per KV head
  float scale = 1.0f;
  float softcap = 0.0f;
  const float* alibi_slopes = nullptr;  // [q_heads] contiguous copy or the caller's, or null
  index_t alibi_stride = 1;
  tensor_view<float, 2> log_sum_exp{};  // empty when not requested
  attention_observer observer{};
  // A paged cache's merged keys ([kv_heads], core/paged_kv_view.hpp), validated; null: none.
  // Their slot's logit gains ln(count), after softcap and ALiBi.
  const merged_key* merged_keys = nullptr;

  // The observed rows are query tokens [observed_first_token, q_tokens).
  constexpr index_t observed_first_token() const noexcept {
    return observer ? std::max<index_t>(0, q_tokens - observer.last_queries()) : q_tokens;
  }
  constexpr attention_shape shape() const noexcept {
    return {q_tokens, kv_tokens, q_heads, kv_heads};
  }

  // Absolute position of query row i under bottom-right alignment (FlashAttention's
  // convention): the last query sits at the last key, so decode (one query) sees the cache.
  constexpr index_t query_position(index_t i) const noexcept { return kv_tokens - q_tokens + i; }
  // Softcap or ALiBi: logits the kernels must see in natural units before the base-2 softmax.
  constexpr bool has_logit_transform() const noexcept {
    return softcap > 0.0f || alibi_slopes != nullptr;
  }
};

}  // namespace detail
}  // namespace attnkit
