// attnkit — the CPU (xsimd) MoBA block selection: block means, gate scores, top-k.
//
// Two phases, each a set of independent work items on the executor:
//   1. Block means, per (KV head, run of blocks): the K rows of a block summed with converting
//      SIMD loads (fp32 accumulation), scaled by 1/rows, and stored transposed, meansᵀ[dim][block]
//      per KV head, padded with zero blocks to a multiple of the vector width. That is exactly the
//      B operand of the attention GEMM micro-kernel (row-major, N padded), so
//   2. the gate scores of a chunk of query tokens are, per query head, one small GEMM,
//      S[token][block] = Σ_c Q[token][c] · meansᵀ[c][block], over the candidate blocks only (under
//      causality a chunk needs the blocks before its last token's own block). The top-k then runs
//      with the tokens across the vector lanes (S transposed, a vector of tokens per block): each
//      block is inserted into k sorted (score, index) vectors by compare-and-blend, branch-free
//      for a whole vector of tokens. (Per row, a top-3 of ~30 scores is all mispredicted
//      branches: it cost more than the GEMM.) Large k (> 8) take nth_element per row instead.
// A chunk holds every head of its tokens, so its queries are one contiguous stretch of an NHD
// tensor read front to back: the gate reads all of Q once and that read is what bounds it.
// Memory: the means live in the calling thread's call arena, each item's queries and scores in
// its thread's item arena; nothing is allocated inside a loop, nothing at all once warm.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <functional>
#include <limits>
#include <span>
#include <utility>

#include "attnkit/backend/simd/convert.hpp"
#include "attnkit/backend/simd/gemm.hpp"
#include "attnkit/backend/simd/scratch.hpp"
#include "attnkit/backend/tags.hpp"
#include "attnkit/core/float16.hpp"
#include "attnkit/core/shape.hpp"
#include "attnkit/core/simd_include.hpp"
#include "attnkit/core/tensor_view.hpp"
#include "attnkit/parallel/executor.hpp"

namespace attnkit {
namespace detail {
namespace simd {

// value rounded up to a multiple of `multiple` (tile.hpp has the same for the attention kernels;
// this header does not depend on them).
constexpr index_t round_up_to(index_t value, index_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

// At most this many k use the vector network (and the insertion buffer of the per-row path);
// larger k go through nth_element per row.
inline constexpr index_t small_top_k = 8;
// A scoring item stages about this many floats of queries (every head of a few tokens: 256 KiB,
// within L2) and at most selection_chunk_tokens tokens.
inline constexpr index_t selection_chunk_floats = 64 * 1024;
inline constexpr index_t selection_chunk_tokens = 64;
// K rows summed per mean item: enough work to amortise an item's scheduling.
inline constexpr index_t mean_item_rows = 4096;
// Block indices travel through the vector network as floats: exact below 2^24.
inline constexpr index_t max_lane_blocks = index_t{1} << 24;

// Per row: writes the `k` highest of scores[0, n) (ties: lower index first) to `kept` in
// increasing index order, NaN ranking lowest (as -inf); `work` holds n floats (used only when
// k > small_top_k). The exact general path: large k, and rows the vector network cannot finish.
inline void select_top_k_row(const float* scores, index_t n, index_t k, index_t* kept,
                             float* work) {
  constexpr float lowest = -std::numeric_limits<float>::infinity();
  auto score = [&](index_t b) { return std::isnan(scores[b]) ? lowest : scores[b]; };
  if (k >= n) {
    for (index_t b = 0; b < n; ++b) kept[b] = b;
    return;
  }
  if (k <= 0) return;
  if (k <= small_top_k) {
    // best[0, count) sorted by score descending, equal scores by index ascending: a block enters
    // a full buffer only when strictly better than the k-th, so ties keep the lower index.
    float best_score[small_top_k];
    index_t best_index[small_top_k];
    index_t count = 0;
    for (index_t b = 0; b < n; ++b) {
      const float s = score(b);
      if (count == k && !(s > best_score[k - 1])) continue;
      index_t at = count < k ? count++ : k - 1;
      while (at > 0 && best_score[at - 1] < s) {
        best_score[at] = best_score[at - 1];
        best_index[at] = best_index[at - 1];
        --at;
      }
      best_score[at] = s;
      best_index[at] = b;
    }
    // Increasing index order (insertion sort: k <= 8).
    for (index_t i = 0; i < k; ++i) {
      const index_t value = best_index[i];
      index_t at = i;
      for (; at > 0 && kept[at - 1] > value; --at) kept[at] = kept[at - 1];
      kept[at] = value;
    }
    return;
  }
  // The k-th highest score t; keep everything above t, then the lowest-indexed blocks equal to
  // t until there are k. One ordered pass, so `kept` comes out sorted.
  for (index_t b = 0; b < n; ++b) work[b] = score(b);
  std::nth_element(work, work + (k - 1), work + n, std::greater<float>());
  const float threshold = work[k - 1];
  index_t above = 0;
  for (index_t b = 0; b < n; ++b) above += score(b) > threshold;
  index_t equal_wanted = k - above;
  index_t count = 0;
  for (index_t b = 0; b < n && count < k; ++b) {
    const float s = score(b);
    if (s > threshold || (s == threshold && equal_wanted-- > 0)) kept[count++] = b;
  }
}

// Top-k of one vector of rows at once (k <= small_top_k), rows across the lanes:
//   scores_t[b * width + lane]  score of block b for the lane's row, b < blocks
//   candidates[lane]            the lane's row considers blocks [0, candidates) (as floats)
// On return kept[j * width + lane], j < k, holds the lane's kept block indices in increasing
// order (as floats), followed by `unfilled` where the lane has fewer than k. Each block is
// inserted into k sorted (score, index) vectors where it is strictly greater, blocks in
// increasing order: ties keep the lower index. A score that beats nothing (-inf, or NaN: every
// comparison false) never enters, so a lane whose k-th entry stays `unfilled` although it has k
// candidates must be redone per row.
inline constexpr float unfilled = static_cast<float>(max_lane_blocks);

template <class A, index_t K>
void select_top_k_lanes(const float* scores_t, index_t blocks, const float* candidates,
                        float* kept) {
  using batch = xsimd::batch<float, A>;
  constexpr index_t width = batch::size;
  // K is a compile-time constant so that the 2K vectors stay in registers.
  batch best[K];
  batch index[K];
  for (index_t j = 0; j < K; ++j) {
    best[j] = batch(-std::numeric_limits<float>::infinity());
    index[j] = batch(unfilled);
  }
  const batch candidate_count = batch::load_aligned(candidates);
  const batch lowest(-std::numeric_limits<float>::infinity());
  for (index_t b = 0; b < blocks; ++b) {
    const batch block(static_cast<float>(b));
    const batch score =
        xsimd::select(block < candidate_count, batch::load_aligned(scores_t + b * width), lowest);
    // Insertion at the first place j where the block beats best[j] (the comparisons are
    // monotone in j since best is sorted): entries from j on shift down one place.
    auto above = score > best[K - 1];
#pragma GCC unroll 8
    for (index_t j = K - 1; j > 0; --j) {
      const auto above_previous = score > best[j - 1];
      best[j] = xsimd::select(above, xsimd::select(above_previous, best[j - 1], score), best[j]);
      index[j] = xsimd::select(above, xsimd::select(above_previous, index[j - 1], block), index[j]);
      above = above_previous;
    }
    best[0] = xsimd::select(above, score, best[0]);
    index[0] = xsimd::select(above, block, index[0]);
  }
  // Sort the K index vectors lane-wise (odd-even transposition: K rounds of compare-exchange).
  for (index_t round = 0; round < K; ++round)
    for (index_t j = round % 2; j + 1 < K; j += 2) {
      const batch low = xsimd::min(index[j], index[j + 1]);
      index[j + 1] = xsimd::max(index[j], index[j + 1]);
      index[j] = low;
    }
  for (index_t j = 0; j < K; ++j) index[j].store_aligned(kept + j * width);
}

// select_top_k_lanes for a run-time k in [1, small_top_k].
template <class A>
void select_top_k_lanes(const float* scores_t, index_t blocks, const float* candidates, index_t k,
                        float* kept) {
  [&]<index_t... K>(std::integer_sequence<index_t, K...>) {
    ((k == K + 1 ? select_top_k_lanes<A, K + 1>(scores_t, blocks, candidates, kept) : void()), ...);
  }
  (std::make_integer_sequence<index_t, small_top_k>{});
}

// Sums rows [begin, end) of KV head g of k into sum[0, padded_dim) (fp32), then scales by
// 1/(end - begin). Four rows per pass over the accumulator, so its loads and stores amortise.
template <class A, class TK>
void block_mean(tensor_view<const TK, 3> k, index_t g, index_t begin, index_t end, index_t head_dim,
                index_t padded_dim, float* sum) {
  using batch = xsimd::batch<float, A>;
  constexpr index_t width = batch::size;
  std::fill(sum, sum + padded_dim, 0.0f);
  const index_t stride = k.stride(2);
  if (stride == 1) {
    const index_t vector_end = head_dim / width * width;
    index_t t = begin;
    for (; t + 4 <= end; t += 4) {
      const TK* r0 = k.row(t, g);
      const TK* r1 = k.row(t + 1, g);
      const TK* r2 = k.row(t + 2, g);
      const TK* r3 = k.row(t + 3, g);
      for (index_t c = 0; c < vector_end; c += width) {
        const batch pair01 = load_float<A>(r0 + c) + load_float<A>(r1 + c);
        const batch pair23 = load_float<A>(r2 + c) + load_float<A>(r3 + c);
        (batch::load_aligned(sum + c) + (pair01 + pair23)).store_aligned(sum + c);
      }
      for (index_t c = vector_end; c < head_dim; ++c)
        sum[c] += (to_float(r0[c]) + to_float(r1[c])) + (to_float(r2[c]) + to_float(r3[c]));
    }
    for (; t < end; ++t) {
      const TK* r = k.row(t, g);
      for (index_t c = 0; c < vector_end; c += width)
        (batch::load_aligned(sum + c) + load_float<A>(r + c)).store_aligned(sum + c);
      for (index_t c = vector_end; c < head_dim; ++c) sum[c] += to_float(r[c]);
    }
  } else {
    for (index_t t = begin; t < end; ++t) {
      const TK* r = k.row(t, g);
      for (index_t c = 0; c < head_dim; ++c) sum[c] += to_float(r[c * stride]);
    }
  }
  const float inverse = 1.0f / static_cast<float>(end - begin);
  for (index_t c = 0; c < head_dim; ++c) sum[c] *= inverse;
}

template <class A, class TQ, class TK, class Executor>
void run_moba_selection(tensor_view<const TQ, 3> q, tensor_view<const TK, 3> k, index_t block_size,
                        index_t top_k, bool causal, std::span<const index_t> row_offsets,
                        std::span<index_t> columns, Executor& executor) {
  constexpr index_t width = xsimd::batch<float, A>::size;
  const index_t q_tokens = q.extent(0);
  const index_t q_heads = q.extent(1);
  const index_t head_dim = q.extent(2);
  const index_t kv_tokens = k.extent(0);
  const index_t kv_heads = k.extent(1);
  const index_t group = q_heads / kv_heads;
  const index_t key_blocks = (kv_tokens + block_size - 1) / block_size;
  const index_t padded_dim = round_up_to(head_dim, width);
  const index_t padded_blocks = round_up_to(key_blocks, width);
  const index_t first_position = kv_tokens - q_tokens;
  if (q_tokens == 0 || key_blocks == 0) return;

  // Phase 1: meansᵀ[g][c][b]; blocks [key_blocks, padded_blocks) stay zero for the GEMM.
  const index_t head_floats = head_dim * padded_blocks;
  float* means = call_scratch().reserve(static_cast<std::size_t>(kv_heads * head_floats));
  const index_t blocks_per_item = std::max<index_t>(1, mean_item_rows / block_size);
  const index_t mean_items_per_head = (key_blocks + blocks_per_item - 1) / blocks_per_item;
  executor(static_cast<std::size_t>(kv_heads * mean_items_per_head), [&](std::size_t item) {
    const index_t g = static_cast<index_t>(item) / mean_items_per_head;
    const index_t first = static_cast<index_t>(item) % mean_items_per_head * blocks_per_item;
    const index_t last = std::min(key_blocks, first + blocks_per_item);
    float* sum = item_scratch().reserve(static_cast<std::size_t>(padded_dim));
    float* head_means = means + g * head_floats;
    for (index_t b = first; b < last; ++b) {
      block_mean<A>(k, g, b * block_size, std::min(kv_tokens, (b + 1) * block_size), head_dim,
                    padded_dim, sum);
      for (index_t c = 0; c < head_dim; ++c) head_means[c * padded_blocks + b] = sum[c];
    }
    if (last == key_blocks)
      for (index_t c = 0; c < head_dim; ++c)
        std::fill(head_means + c * padded_blocks + key_blocks, head_means + (c + 1) * padded_blocks,
                  0.0f);
  });

  // Phase 2: per chunk of query tokens (every query head), scores by GEMM, then top-k. Chunks
  // go from the last (under causality the most candidates) to the first, for load balance.
  const index_t wanted_items = 4 * static_cast<index_t>(parallel::concurrency_of(executor));
  const index_t chunk = std::clamp<index_t>(
      std::min(selection_chunk_floats / (q_heads * padded_dim), q_tokens / wanted_items), 1,
      std::min(selection_chunk_tokens, q_tokens));
  const index_t chunks = (q_tokens + chunk - 1) / chunk;
  const bool lanes = top_k >= 1 && top_k <= small_top_k && key_blocks < max_lane_blocks;
  executor(static_cast<std::size_t>(chunks), [&](std::size_t item) {
    const index_t token_begin = (chunks - 1 - static_cast<index_t>(item)) * chunk;
    const index_t tokens = std::min(chunk, q_tokens - token_begin);
    const position last_position = first_position + token_begin + tokens - 1;
    if (causal && last_position < 0) return;  // every row of the chunk is empty
    // The chunk's rows look at blocks [0, scored): under causality those before the last
    // row's own block, the most any row of the chunk has.
    const index_t scored = causal ? last_position / block_size : key_blocks;
    const index_t scored_padded = round_up_to(scored, width);
    const index_t head_rows = tokens * padded_dim;
    float* q_rows = item_scratch().reserve(static_cast<std::size_t>(
        q_heads * head_rows + tokens * scored_padded + scored_padded * width +
        (small_top_k + 1) * width + scored_padded));
    float* scores = q_rows + q_heads * head_rows;          // [tokens][scored_padded]
    float* scores_t = scores + tokens * scored_padded;     // [scored][width]
    float* candidates = scores_t + scored_padded * width;  // [width]
    float* kept = candidates + width;                      // [small_top_k][width]
    float* work = kept + small_top_k * width;              // [scored_padded]
    if (scored > 0)
      for (index_t t = 0; t < tokens; ++t)
        stage_rows<A>(q.row(token_begin + t, 0), q.stride(1), q.stride(2), q_heads, head_dim,
                      q_rows + t * padded_dim, head_rows, padded_dim, 1.0f);

    // Row r of the chunk: its candidates and where its layout row starts (head h).
    auto row_candidates = [&](index_t r) -> index_t {
      const position p = first_position + token_begin + r;
      if (!causal) return key_blocks;
      return p < 0 ? 0 : p / block_size;
    };
    auto finish_row = [&](index_t r, index_t* row) {
      const position p = first_position + token_begin + r;
      if (causal) row[std::min(top_k, row_candidates(r))] = p / block_size;  // own block, last
    };
    for (index_t h = 0; h < q_heads; ++h) {
      if (scored > 0)
        gemm<A>(tokens, scored_padded, head_dim, q_rows + h * head_rows, padded_dim, 1,
                means + (h / group) * head_floats, padded_blocks, scores, scored_padded, false);
      index_t* const head_columns = columns.data();
      auto layout_row = [&](index_t r) {
        return head_columns + row_offsets[static_cast<std::size_t>(h * q_tokens + token_begin + r)];
      };
      if (!lanes) {
        for (index_t r = 0; r < tokens; ++r) {
          if (causal && first_position + token_begin + r < 0) continue;
          select_top_k_row(scores + r * scored_padded, row_candidates(r), top_k, layout_row(r),
                           work);
          finish_row(r, layout_row(r));
        }
        continue;
      }
      for (index_t r0 = 0; r0 < tokens; r0 += width) {
        const index_t group_rows = std::min(width, tokens - r0);
        // Transpose the group's scores over the blocks any of its rows considers.
        index_t group_blocks = 0;
        for (index_t l = 0; l < width; ++l) {
          const index_t c = l < group_rows ? row_candidates(r0 + l) : 0;
          candidates[l] = static_cast<float>(c);
          group_blocks = std::max(group_blocks, c);
        }
        for (index_t l = 0; l < group_rows; ++l) {
          const float* source = scores + (r0 + l) * scored_padded;
          for (index_t b = 0; b < group_blocks; ++b) scores_t[b * width + l] = source[b];
        }
        for (index_t l = group_rows; l < width; ++l)
          for (index_t b = 0; b < group_blocks; ++b) scores_t[b * width + l] = 0.0f;
        select_top_k_lanes<A>(scores_t, group_blocks, candidates, top_k, kept);
        for (index_t l = 0; l < group_rows; ++l) {
          const index_t r = r0 + l;
          if (causal && first_position + token_begin + r < 0) continue;
          const index_t n = row_candidates(r);
          const index_t count = std::min(top_k, n);
          index_t* row = layout_row(r);
          if (count > 0 && kept[(count - 1) * width + l] == unfilled) {
            // -inf or NaN scores kept the network from filling the row: redo it exactly.
            select_top_k_row(scores + r * scored_padded, n, top_k, row, work);
          } else {
            for (index_t j = 0; j < count; ++j) row[j] = static_cast<index_t>(kept[j * width + l]);
          }
          finish_row(r, row);
        }
      }
    }
  });
}

}  // namespace simd

// The backend entry: see backend/reference/block_selection.hpp for the contract.
template <class Arch, class TQ, class TK, class Executor>
void moba_select_impl(backend::simd<Arch>, tensor_view<const TQ, 3> q, tensor_view<const TK, 3> k,
                      index_t block_size, index_t top_k, bool causal,
                      std::span<const index_t> row_offsets, std::span<index_t> columns,
                      Executor& executor) {
  simd::run_moba_selection<Arch>(q, k, block_size, top_k, causal, row_offsets, columns, executor);
}

}  // namespace detail
}  // namespace attnkit
