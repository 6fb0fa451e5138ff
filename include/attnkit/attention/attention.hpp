// attnkit — attention(): softmax attention over one sequence, prefill or decode.
#pragma once

#include <type_traits>
#include <utility>

#include "attnkit/attention/check.hpp"
#include "attnkit/backend/reference/attention.hpp"
#include "attnkit/backend/simd/attention.hpp"
#include "attnkit/backend/tags.hpp"
#include "attnkit/mask/tile.hpp"
#include "attnkit/parallel/executor.hpp"
#include "attnkit/parallel/thread_pool.hpp"

namespace attnkit {

// Softmax attention  out = softmax(mask(transform(scale · q kᵀ))) v  for one sequence.
//
//   q    [q_tokens, q_heads, head_dim]     float, half or bfloat16
//   k, v [kv_tokens, kv_heads, head_dim]   float, half or bfloat16 (same type for both)
//   out  [q_tokens, q_heads, head_dim]     float, half or bfloat16 (any, independent of q/k/v)
//   mask attnkit::full{}, attnkit::causal{} (bottom-right aligned), or any attention_mask
//
// Heads are grouped: q_heads must be a multiple of kv_heads and query head h reads KV head
// h / (q_heads / kv_heads), so one call covers MHA (ratio 1), GQA and MQA (kv_heads = 1).
// head_dim is 1..256; 64, 80, 96, 128 and 256 have compile-time fast paths in the CPU backend.
// Accumulation is fp32 (fp64 in backend::reference). A row that sees no key yields zeros and
// log-sum-exp -inf. Invalid arguments throw attnkit::error before anything is written.
//
// The CPU backends run their work items on `executor` (see parallel/executor.hpp); the overload
// without one uses parallel::default_thread_pool().
template <class Backend, class TQ, class TK, class TV, class TO, attention_mask Mask,
          parallel::executor Executor>
void attention(const Backend& backend, tensor_view<TQ, 3> q, tensor_view<TK, 3> k,
               tensor_view<TV, 3> v, tensor_view<TO, 3> out, const Mask& mask,
               const attention_options& options, Executor&& executor) {
  static_assert(!std::is_same_v<Backend, backend::cuda>,
                "attnkit::attention: the CUDA kernels for backend::cuda are not implemented yet "
                "(the tag is declared so engines can be written against it)");
  const detail::attention_params params =
      detail::check_attention_arguments("attnkit::attention", q, k, v, out, options);
  detail::check_mask(mask, params.shape());
  if (params.q_tokens == 0) return;
  using Q = std::remove_cv_t<TQ>;
  using KV = std::remove_cv_t<TK>;
  detail::attention_impl(backend, tensor_view<const Q, 3>(q), tensor_view<const KV, 3>(k),
                         tensor_view<const KV, 3>(v), out, mask, params, executor);
}

template <class Backend, class TQ, class TK, class TV, class TO, attention_mask Mask>
void attention(const Backend& backend, tensor_view<TQ, 3> q, tensor_view<TK, 3> k,
               tensor_view<TV, 3> v, tensor_view<TO, 3> out, const Mask& mask,
               const attention_options& options = {}) {
  attention(backend, q, k, v, out, mask, options, parallel::default_thread_pool());
}

}  // namespace attnkit
