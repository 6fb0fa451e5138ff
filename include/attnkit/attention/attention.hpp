// attnkit — attention(): softmax attention over one sequence, prefill or decode.
#pragma once

#include <type_traits>
#include <utility>

#include "attnkit/attention/check.hpp"
#include "attnkit/backend/reference/attention.hpp"
#include "attnkit/backend/simd/attention.hpp"
#include "attnkit/backend/tags.hpp"
#include "attnkit/core/paged_kv_view.hpp"
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
                "attnkit::attention: backend::cuda's front doors are in <attnkit/cuda.cuh> (nvcc); "
                "include it in this translation unit");
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

// Softmax attention over one layer of a paged KV cache (core/paged_kv_view.hpp): the same call
// as above with the cache in place of k and v, read where it lies (no gather).
//
//   q    [q_tokens, q_heads, head_dim]   the newest q_tokens tokens of every head
//   kv   paged_kv_view<const T> (or <T>): kv_heads heads, each with its own length and page table
//   out  [q_tokens, q_heads, head_dim]
//
// Per-head lengths: KV head g holds kv.lengths[g] slots, and query row i of its query heads sits
// at slot lengths[g] - q_tokens + i (bottom-right aligned per head). Masks, causal alignment and
// ALiBi distances use slot indices. A head of length 0 gives zeros and log-sum-exp -inf (as does
// any row that sees no key). The mask's check() and the observer's check() see a shape whose
// kv_tokens is kv.max_length(), the longest head; an observer's rows of KV head g carry
// probabilities over that head's lengths[g] keys. Options, types and executors are those of the
// contiguous call; invalid arguments (shapes against the view, null pointers, page_size < 1,
// negative lengths, a length beyond page_table_stride · page_size slots, negative page ids)
// throw attnkit::error before anything is written.
template <class Backend, class TQ, class TKV, class TO, attention_mask Mask,
          parallel::executor Executor>
void attention(const Backend& backend, tensor_view<TQ, 3> q, paged_kv_view<TKV> kv,
               tensor_view<TO, 3> out, const Mask& mask, const attention_options& options,
               Executor&& executor) {
  static_assert(!std::is_same_v<Backend, backend::cuda>,
                "attnkit::attention: backend::cuda's front doors are in <attnkit/cuda.cuh> (nvcc); "
                "include it in this translation unit");
  const detail::attention_params params =
      detail::check_paged_attention_arguments("attnkit::attention", q, kv, out, options);
  detail::check_mask(mask, params.shape());
  if (params.q_tokens == 0) return;
  using Q = std::remove_cv_t<TQ>;
  using KV = std::remove_cv_t<TKV>;
  const paged_kv_view<const KV> cache = kv;
  detail::attention_impl(backend, tensor_view<const Q, 3>(q), cache, out, mask, params, executor);
}

template <class Backend, class TQ, class TKV, class TO, attention_mask Mask>
void attention(const Backend& backend, tensor_view<TQ, 3> q, paged_kv_view<TKV> kv,
               tensor_view<TO, 3> out, const Mask& mask, const attention_options& options = {}) {
  attention(backend, q, kv, out, mask, options, parallel::default_thread_pool());
}

}  // namespace attnkit
