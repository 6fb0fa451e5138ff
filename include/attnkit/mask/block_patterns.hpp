// attnkit — builders for the classic block-sparse layouts: dense, Sparse-Transformer strided and
// fixed.
//
// Child et al. ("Generating Long Sequences with Sparse Transformers", 2019) state their strided and
// fixed patterns per token; the block-sparse kernels that run them in practice (OpenAI's
// blocksparse, DeepSpeed's SparsityConfig / FixedSparsityConfig, Triton's blocksparse matmul and
// softmax) state them per block of `block` tokens instead, so that every kept pair is a dense
// block × block tile. These builders do the same: the patterns below are on block indices, the
// layouts have query_block == key_block == block and first_position 0 (query and key position t
// are in block t / block, so use them for self-attention prefill: q_tokens == kv_tokens == tokens).
// `causal = true` keeps only blocks at or before the query's own block; the diagonal block is then
// still full, so compose with attnkit::causal{} for element-level causality.
#pragma once

#include <algorithm>
#include <utility>
#include <vector>

#include "attnkit/core/error.hpp"
#include "attnkit/mask/block_sparse.hpp"

namespace attnkit {
namespace detail {

// ceil(tokens / block) after checking both.
inline index_t pattern_blocks(const char* function, index_t tokens, index_t block) {
  require(tokens >= 0, function, ": tokens is ", tokens, ", it must be >= 0");
  require(block >= 1, function, ": block is ", block, ", it must be >= 1");
  return (tokens + block - 1) / block;
}

// A square layout of `blocks` block rows whose row i lists the KV blocks emitted, in increasing
// order, by emit_row(i, push).
template <class EmitRow>
block_layout square_layout(index_t block, index_t blocks, EmitRow&& emit_row) {
  std::vector<index_t> row_offsets;
  std::vector<index_t> columns;
  row_offsets.reserve(static_cast<std::size_t>(blocks + 1));
  row_offsets.push_back(0);
  for (index_t i = 0; i < blocks; ++i) {
    emit_row(i, [&](index_t j) { columns.push_back(j); });
    row_offsets.push_back(static_cast<index_t>(columns.size()));
  }
  block_layout_shape shape;
  shape.query_block = block;
  shape.key_block = block;
  shape.query_blocks = blocks;
  shape.key_blocks = blocks;
  return block_layout(shape, std::move(row_offsets), std::move(columns));
}

}  // namespace detail

// Every block row sees every KV block: the all-ones layout (density 1), equal to attnkit::full.
inline block_layout dense_layout(index_t tokens, index_t block) {
  const index_t blocks = detail::pattern_blocks("attnkit::dense_layout", tokens, block);
  return detail::square_layout(block, blocks, [&](index_t, auto&& push) {
    for (index_t j = 0; j < blocks; ++j) push(j);
  });
}

// Sparse-Transformer "strided" pattern on blocks: block row i sees KV block j when
// |i - j| < local_blocks (the local band; 0 turns it off) or (i - j) is a multiple of `stride`
// (the strided columns, stride ≈ √(tokens / block) in the paper); causal keeps only j <= i.
inline block_layout strided_layout(index_t tokens, index_t block, index_t local_blocks,
                                   index_t stride, bool causal = true) {
  constexpr const char* function = "attnkit::strided_layout";
  const index_t blocks = detail::pattern_blocks(function, tokens, block);
  detail::require(local_blocks >= 0, function, ": local_blocks is ", local_blocks,
                  ", it must be >= 0");
  detail::require(stride >= 1, function, ": stride is ", stride, ", it must be >= 1");
  return detail::square_layout(block, blocks, [&](index_t i, auto&& push) {
    // Increasing order in O(output): the strided columns below the band, the band, the strided
    // columns above it.
    const index_t band_begin = local_blocks > 0 ? std::max<index_t>(0, i - local_blocks + 1) : i;
    const index_t band_end =
        local_blocks > 0 ? std::min<index_t>(blocks, i + local_blocks) : i;  // one past
    const index_t last = causal ? i : blocks - 1;
    for (index_t j = i % stride; j < band_begin; j += stride) push(j);
    for (index_t j = band_begin; j < band_end && j <= last; ++j) push(j);
    // The first column >= band_end in i's residue class modulo stride.
    index_t j = band_end + ((i - band_end) % stride + stride) % stride;
    for (; j <= last; j += stride) push(j);
  });
}

// Sparse-Transformer "fixed" pattern on blocks (DeepSpeed's FixedSparsityConfig with one global
// pattern): blocks are grouped into chunks of local_blocks; block row i sees every KV block j of
// its own chunk (j / local_blocks == i / local_blocks) and the "summary" blocks of every chunk,
// the last summary_blocks of it (j % local_blocks >= local_blocks - summary_blocks); causal keeps
// only j <= i. A short final chunk has summary blocks only where a full chunk would.
inline block_layout fixed_layout(index_t tokens, index_t block, index_t local_blocks,
                                 index_t summary_blocks, bool causal = true) {
  constexpr const char* function = "attnkit::fixed_layout";
  const index_t blocks = detail::pattern_blocks(function, tokens, block);
  detail::require(local_blocks >= 1, function, ": local_blocks is ", local_blocks,
                  ", it must be >= 1");
  detail::require(summary_blocks >= 0 && summary_blocks <= local_blocks, function,
                  ": summary_blocks is ", summary_blocks,
                  ", it must be in [0, local_blocks = ", local_blocks, "]");
  return detail::square_layout(block, blocks, [&](index_t i, auto&& push) {
    const index_t own_chunk = i / local_blocks;
    const index_t last = causal ? i : blocks - 1;
    for (index_t chunk_begin = 0; chunk_begin <= last; chunk_begin += local_blocks) {
      // The whole own chunk, or only the summary tail of any other chunk.
      const index_t first = chunk_begin / local_blocks == own_chunk
                                ? chunk_begin
                                : chunk_begin + local_blocks - summary_blocks;
      const index_t end = std::min(chunk_begin + local_blocks, last + 1);
      for (index_t j = first; j < end; ++j) push(j);
    }
  });
}

}  // namespace attnkit
