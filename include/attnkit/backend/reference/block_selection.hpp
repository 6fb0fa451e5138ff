// attnkit — the reference MoBA block selection: the oracle the SIMD gating kernel is tested
// against.
//
// Straight from the definition (Lu et al. 2025, "MoBA: Mixture of Block Attention"): each KV
// block's gate score is q · mean(K rows of the block), in fp64 from the (already rounded) inputs;
// a query keeps the top_k highest-scoring candidate blocks, ties going to the lower block index,
// plus its own block under causality. No tiling, no partial selection, nothing shared with the
// fast kernel.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <span>
#include <vector>

#include "attnkit/backend/tags.hpp"
#include "attnkit/core/float16.hpp"
#include "attnkit/core/shape.hpp"
#include "attnkit/core/tensor_view.hpp"

namespace attnkit {
namespace detail {

// Fills `columns` at `row_offsets` (one row per (query head, query token), head-major, as
// moba_gate sized them) with the selected KV blocks of each query, sorted. Arguments are
// validated by the front door. Runs on the calling thread: the oracle stays simple.
template <class TQ, class TK, class Executor>
void moba_select_impl(backend::reference, tensor_view<const TQ, 3> q, tensor_view<const TK, 3> k,
                      index_t block_size, index_t top_k, bool causal,
                      std::span<const index_t> row_offsets, std::span<index_t> columns, Executor&) {
  const index_t q_tokens = q.extent(0);
  const index_t q_heads = q.extent(1);
  const index_t head_dim = q.extent(2);
  const index_t kv_tokens = k.extent(0);
  const index_t kv_heads = k.extent(1);
  const index_t group = q_heads / kv_heads;
  const index_t key_blocks = (kv_tokens + block_size - 1) / block_size;

  // Block means [kv_head][block][dim] in fp64; the last block may be short.
  std::vector<double> means(static_cast<std::size_t>(kv_heads * key_blocks * head_dim), 0.0);
  for (index_t g = 0; g < kv_heads; ++g)
    for (index_t b = 0; b < key_blocks; ++b) {
      double* mean = means.data() + (g * key_blocks + b) * head_dim;
      const index_t begin = b * block_size;
      const index_t end = std::min(kv_tokens, begin + block_size);
      for (index_t t = begin; t < end; ++t)
        for (index_t c = 0; c < head_dim; ++c) mean[c] += double(to_float(k(t, g, c)));
      for (index_t c = 0; c < head_dim; ++c) mean[c] /= double(end - begin);
    }

  std::vector<double> scores(static_cast<std::size_t>(key_blocks));
  std::vector<index_t> order(static_cast<std::size_t>(key_blocks));
  for (index_t h = 0; h < q_heads; ++h) {
    const index_t g = h / group;
    for (index_t i = 0; i < q_tokens; ++i) {
      const position p = kv_tokens - q_tokens + i;
      if (causal && p < 0) continue;  // a query before the first key sees nothing
      const index_t own = causal ? p / block_size : key_blocks;
      const index_t candidates = causal ? own : key_blocks;  // causal: blocks strictly before
      for (index_t b = 0; b < candidates; ++b) {
        const double* mean = means.data() + (g * key_blocks + b) * head_dim;
        double dot = 0.0;
        for (index_t c = 0; c < head_dim; ++c) dot += double(to_float(q(i, h, c))) * mean[c];
        // NaN (from NaN inputs) ranks lowest, so the order stays a strict weak ordering.
        scores[static_cast<std::size_t>(b)] =
            std::isnan(dot) ? -std::numeric_limits<double>::infinity() : dot;
        order[static_cast<std::size_t>(b)] = b;
      }
      const index_t kept = std::min(top_k, candidates);
      std::partial_sort(order.begin(), order.begin() + kept, order.begin() + candidates,
                        [&](index_t a, index_t b) {
                          const double sa = scores[static_cast<std::size_t>(a)];
                          const double sb = scores[static_cast<std::size_t>(b)];
                          return sa > sb || (sa == sb && a < b);
                        });
      std::sort(order.begin(), order.begin() + kept);
      index_t* row = columns.data() + row_offsets[static_cast<std::size_t>(h * q_tokens + i)];
      for (index_t s = 0; s < kept; ++s) row[s] = order[static_cast<std::size_t>(s)];
      if (causal) row[kept] = own;  // every candidate is before it, so the row stays sorted
    }
  }
}

}  // namespace detail
}  // namespace attnkit
