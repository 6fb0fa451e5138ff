// attnkit — moba_gate(): MoBA block selection (Lu et al. 2025, "MoBA: Mixture of Block
// Attention"), producing a per-head block_layout for attnkit::block_sparse.
//
//   attnkit::block_layout layout;                      // reuse it across steps: no allocation
//   attnkit::moba_gate(attnkit::cpu, q, k, {.block_size = 512, .top_k = 3}, layout);
//   attnkit::block_sparse gate(layout);
//   attnkit::attention(attnkit::cpu, q, k, v, out, gate & attnkit::causal{});
//
// MoBA splits the keys into blocks and lets each query attend only the blocks its gate picks:
// block b's score is q · mean(K rows of b) (the query against the block's mean key, i.e. the
// block's average unscaled logit); each query keeps its top_k highest-scoring blocks. Under
// causality only blocks strictly before the query's own block are candidates and the own block
// is always kept (the paper's rule, so no query attends the future and every query attends its
// neighbourhood); the causal mask inside the own block is element-level, hence `& causal{}`.
#pragma once

#include <span>
#include <type_traits>
#include <utility>

#include "attnkit/attention/check.hpp"
#include "attnkit/backend/reference/block_selection.hpp"
#include "attnkit/backend/simd/block_selection.hpp"
#include "attnkit/backend/tags.hpp"
#include "attnkit/core/error.hpp"
#include "attnkit/core/float16.hpp"
#include "attnkit/core/tensor_view.hpp"
#include "attnkit/mask/block_sparse.hpp"
#include "attnkit/parallel/executor.hpp"
#include "attnkit/parallel/thread_pool.hpp"

namespace attnkit {

struct moba_options {
  index_t block_size = 512;  // keys per KV block (the paper uses 512 at 32k context)
  index_t top_k = 3;         // blocks kept per query besides its own block
  bool causal = true;        // own block always kept, only earlier blocks compete
};

namespace detail {

// How many blocks query position p keeps: the layout's row sizes, known before any scoring.
constexpr index_t moba_row_size(position p, index_t key_blocks, const moba_options& options) {
  if (!options.causal) return options.top_k < key_blocks ? options.top_k : key_blocks;
  if (p < 0) return 0;
  const index_t own = p / options.block_size;
  return (options.top_k < own ? options.top_k : own) + 1;
}

}  // namespace detail

// Selects, per query head and query token, the KV blocks MoBA attends, into `layout`:
//
//   q [q_tokens, q_heads, head_dim], k [kv_tokens, kv_heads, head_dim]   float, half, bfloat16
//
// Query head h scores the keys of KV head h / (q_heads / kv_heads); query token i sits at absolute
// position p = kv_tokens - q_tokens + i (bottom-right aligned, as in attention). The layout gets
// one layout per query head (layouts = q_heads, query_heads_per_layout = 1), one block row per
// query token (query_block = 1, query_blocks = q_tokens, first_position = kv_tokens - q_tokens),
// key_block = block_size and key_blocks = ceil(kv_tokens / block_size) (the last block may be
// short: its mean is over its rows). Rows are sorted. Ties between equal scores go to the lower
// block index. A causal query at p < 0 keeps nothing.
//
// Invalid arguments throw attnkit::error before `layout` is touched. The CPU backends run on
// `executor`; the overload without one uses parallel::default_thread_pool().
template <class Backend, class TQ, class TK, parallel::executor E>
void moba_gate(const Backend& backend, tensor_view<TQ, 3> q, tensor_view<TK, 3> k,
               const moba_options& options, block_layout& layout, E&& executor) {
  static_assert(!std::is_same_v<Backend, backend::cuda>,
                "attnkit::moba_gate: the CUDA kernels for backend::cuda are not implemented yet");
  static_assert(is_storage_type_v<std::remove_cv_t<TQ>>, "q must hold float, half or bfloat16");
  static_assert(is_storage_type_v<std::remove_cv_t<TK>>, "k must hold float, half or bfloat16");
  constexpr const char* function = "attnkit::moba_gate";
  const index_t q_tokens = q.extent(0);
  const index_t q_heads = q.extent(1);
  const index_t head_dim = q.extent(2);
  const index_t kv_tokens = k.extent(0);
  const index_t kv_heads = k.extent(1);
  detail::require(head_dim >= 1, function, ": head_dim (q extent 2) is ", head_dim,
                  ", it must be >= 1");
  detail::check_extent(function, "k head_dim (extent 2)", k.extent(2), "q head_dim", head_dim);
  detail::require(q_heads >= 1, function, ": q_heads (q extent 1) is ", q_heads,
                  ", at least one head is needed");
  detail::require(kv_heads >= 1, function, ": kv_heads (k extent 1) is ", kv_heads,
                  ", at least one head is needed");
  detail::require(q_heads % kv_heads == 0, function, ": q_heads (", q_heads,
                  ") is not a multiple of kv_heads (", kv_heads, ")");
  detail::require(options.block_size >= 1, function, ": block_size is ", options.block_size,
                  ", it must be >= 1");
  detail::require(options.top_k >= 0, function, ": top_k is ", options.top_k, ", it must be >= 0");
  detail::check_view_data(function, "q", q);
  detail::check_view_data(function, "k", k);

  block_layout_shape shape;
  shape.query_block = 1;
  shape.key_block = options.block_size;
  shape.query_blocks = q_tokens;
  shape.key_blocks = (kv_tokens + options.block_size - 1) / options.block_size;
  shape.layouts = q_heads;
  shape.query_heads_per_layout = 1;
  shape.first_position = kv_tokens - q_tokens;

  // Row sizes depend only on positions, so the CSR offsets are known before scoring and every
  // work item writes its rows in place. Every head has the same row sizes: head h's offsets are
  // head 0's plus h times a head's total.
  index_t per_head = 0;
  for (index_t i = 0; i < q_tokens; ++i)
    per_head += detail::moba_row_size(shape.first_position + i, shape.key_blocks, options);
  detail::block_layout_filler::reshape(layout, shape, per_head * q_heads);
  const std::span<index_t> row_offsets = detail::block_layout_filler::row_offsets(layout);
  const std::span<index_t> columns = detail::block_layout_filler::columns(layout);
  row_offsets[0] = 0;
  for (index_t i = 0; i < q_tokens; ++i)
    row_offsets[static_cast<std::size_t>(i + 1)] =
        row_offsets[static_cast<std::size_t>(i)] +
        detail::moba_row_size(shape.first_position + i, shape.key_blocks, options);
  for (index_t h = 1; h < q_heads; ++h) {
    const index_t* first = row_offsets.data() + 1;
    index_t* head = row_offsets.data() + h * q_tokens + 1;
    for (index_t i = 0; i < q_tokens; ++i) head[i] = first[i] + h * per_head;
  }
  if (columns.empty()) return;

  using Q = std::remove_cv_t<TQ>;
  using K = std::remove_cv_t<TK>;
  detail::moba_select_impl(backend, tensor_view<const Q, 3>(q), tensor_view<const K, 3>(k),
                           options.block_size, options.top_k, options.causal,
                           std::span<const index_t>(row_offsets), columns, executor);
}

template <class Backend, class TQ, class TK>
void moba_gate(const Backend& backend, tensor_view<TQ, 3> q, tensor_view<TK, 3> k,
               const moba_options& options, block_layout& layout) {
  moba_gate(backend, q, k, options, layout, parallel::default_thread_pool());
}

}  // namespace attnkit
