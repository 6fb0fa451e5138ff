// attnkit — column_tile: the prefill kernel of the CPU backend (rows of the tile across lanes).
//
// Rows of the tile (query tokens × the query heads sharing one KV head) go across the vector
// lanes. Logits are Sᵀ = K·Qᵀ and the output Oᵀ += Vᵀ·Pᵀ: both are the broadcast micro-kernel of
// gemm.hpp with K and V read in their natural [token][dim] layout, and the online-softmax
// statistics are plain vertical vector operations. Each K/V block is staged once into fp32 and
// shared by every row of the tile, so a GQA group reads each K/V row once per tile.
#pragma once

#include <algorithm>
#include <limits>
#include <type_traits>

#include "attnkit/backend/simd/convert.hpp"
#include "attnkit/backend/simd/gemm.hpp"
#include "attnkit/backend/simd/tile.hpp"
#include "attnkit/backend/simd/vector_math.hpp"

namespace attnkit {
namespace detail {
namespace simd {

// Scratch floats column_tile needs beyond its inputs and outputs.
inline index_t column_tile_scratch(index_t padded_rows, index_t padded_dim) {
  return padded_dim * padded_rows * 2 + key_block * padded_dim * 2 + key_block * padded_rows +
         4 * padded_rows;
}

// ---------------------------------------------------------------------------------------------
// column_tile: rows across lanes.
// q_rows: [padded_rows][padded_dim] staged queries, row r = token (r / G), head (r % G) of the
// group. Outputs o_rows [padded_rows][padded_dim] (unnormalised), m and l [padded_rows] (base 2).
template <class A, index_t D, class TKV>
void column_tile(const tile_context<TKV>& ctx, const tile_job& job, const float* q_rows,
                 float* o_rows, float* m, float* l, float* scratch) {
  using batch = xsimd::batch<float, A>;
  constexpr index_t width = batch::size;
  const attention_params& p = *ctx.params;
  const index_t d = D != 0 ? D : p.head_dim;
  const index_t dp = ctx.padded_dim;
  const index_t group = p.group_size;
  const index_t rows = job.tokens * group;
  const index_t rp = round_up(rows, width);
  const head_index first_head = job.kv_head * group;
  constexpr float minus_infinity = -std::numeric_limits<float>::infinity();

  float* qt = scratch;                        // [d][rp]   Qᵀ
  float* ot = qt + dp * rp;                   // [d][rp]   Oᵀ accumulator
  float* ks = ot + dp * rp;                   // [key_block][dp]
  float* vs = ks + key_block * dp;            // [key_block][dp]
  float* st = vs + key_block * dp;            // [key_block][rp]  Sᵀ, then Pᵀ in place
  float* column_slope = st + key_block * rp;  // [rp]
  float* column_position = column_slope + rp;
  float* running_max = column_position + rp;
  float* running_sum = running_max + rp;

  for (index_t c = 0; c < d; ++c) {
    for (index_t r = 0; r < rows; ++r) qt[c * rp + r] = q_rows[r * dp + c];
    for (index_t r = rows; r < rp; ++r) qt[c * rp + r] = 0.0f;
  }
  std::fill(ot, ot + d * rp, 0.0f);
  for (index_t r = 0; r < rp; ++r) {
    const index_t g = r % group;
    column_slope[r] = p.alibi_slopes != nullptr && r < rows
                          ? p.alibi_slopes[(first_head + g) * p.alibi_stride]
                          : 0.0f;
    column_position[r] = static_cast<float>(p.query_position(job.token_begin + r / group));
    running_max[r] = minus_infinity;
    running_sum[r] = 0.0f;
  }

  const bool transform = p.has_logit_transform();
  const index_t head = job.kv_head;

  for (index_t span = 0; span < job.span_count; ++span) {
    const index_t j0 = job.spans[span].begin;
    const index_t keys = job.spans[span].size();

    // The logit GEMM broadcasts K along its rows, so fp32 K with any strides is read in place
    // when the span is one run of rows (always, for a contiguous view; within one page, for a
    // paged cache); 16-bit K, or a span across pages, is converted (copied) once per block into
    // fp32 rows first. V is always staged: the output GEMM reads it down its columns, and in
    // place those reads are kv_heads·head_dim floats apart — one L1 set for the whole block,
    // thrashing it.
    const float* k_block = ks;
    index_t k_row = dp, k_col = 1;
    bool k_in_place = false;
    if constexpr (std::is_same_v<TKV, float>) {
      if (ctx.k.one_run(j0, j0 + keys)) {
        k_block = ctx.k.row(head, j0);
        k_row = ctx.k.row_stride, k_col = ctx.k.col_stride;
        k_in_place = true;
      }
    }
    if (!k_in_place) {
      ctx.k.for_each_run(head, j0, j0 + keys, [&](index_t slot, index_t count, const TKV* rows) {
        stage_rows<A>(rows, ctx.k.row_stride, ctx.k.col_stride, count, d, ks + (slot - j0) * dp, dp,
                      dp, 1.0f);
      });
    }
    ctx.v.for_each_run(head, j0, j0 + keys, [&](index_t slot, index_t count, const TKV* rows) {
      stage_rows<A>(rows, ctx.v.row_stride, ctx.v.col_stride, count, d, vs + (slot - j0) * dp, dp,
                    dp, 1.0f);
    });
    // Sᵀ[key][row] = Σ_c K[key][c] · Qᵀ[c][row]
    gemm<A>(keys, rp, d, k_block, k_row, k_col, qt, rp, st, rp, false);

    if (transform) {
      for (index_t j = 0; j < keys; ++j) {
        const batch key_position(static_cast<float>(j0 + j));
        float* s = st + j * rp;
        for (index_t r = 0; r < rp; r += width) {
          const batch distance =
              xsimd::abs(batch::load_aligned(column_position + r) - key_position);
          transform_logits<A>(p, batch::load_aligned(s + r), batch::load_aligned(column_slope + r),
                              distance)
              .store_aligned(s + r);
        }
      }
    }
    if (job.spans[span].kind == tile_kind::partial) {
      for (index_t r = 0; r < rows; ++r)
        ctx.mask_row(ctx.mask, p.query_position(job.token_begin + r / group),
                     first_head + r % group, {j0, j0 + keys}, st + r, rp);
    }
    float log2_count;
    if (const index_t c = merged_column(p, head, j0, keys, log2_count); c >= 0)
      for (index_t r = 0; r < rows; ++r) st[c * rp + r] += log2_count;

    // Online softmax, all rows at once: new maximum, rescale factor, exponentials and sums.
    for (index_t r = 0; r < rp; r += width) {
      batch block_max(minus_infinity);
      for (index_t j = 0; j < keys; ++j)
        block_max = xsimd::max(block_max, batch::load_aligned(st + j * rp + r));
      const batch old_max = batch::load_aligned(running_max + r);
      const batch new_max = xsimd::max(old_max, block_max);
      // A row with no visible key yet keeps max -inf; subtracting 0 instead keeps its
      // exponentials exact zeros instead of NaN.
      const batch shift = xsimd::select(new_max == batch(minus_infinity), batch(0.0f), new_max);
      const batch alpha = exp2<A>(old_max - shift);
      batch sum(0.0f);
      for (index_t j = 0; j < keys; ++j) {
        const batch e = exp2<A>(batch::load_aligned(st + j * rp + r) - shift);
        e.store_aligned(st + j * rp + r);
        sum += e;
      }
      xsimd::fma(batch::load_aligned(running_sum + r), alpha, sum).store_aligned(running_sum + r);
      new_max.store_aligned(running_max + r);
      if (!xsimd::all(alpha == batch(1.0f)))
        for (index_t c = 0; c < d; ++c)
          (batch::load_aligned(ot + c * rp + r) * alpha).store_aligned(ot + c * rp + r);
    }
    if (ctx.observed_values != nullptr) {
      for (index_t r = 0; r < rows; ++r)
        keep_observed_row<A>(ctx, job.token_begin + r / group, first_head + r % group,
                             job.spans[0].begin, j0, keys, st + r, rp, running_max[r],
                             job.observed_reference[r]);
    }
    // Oᵀ[c][row] += Σ_key V[key][c] · Pᵀ[key][row]
    gemm<A>(d, rp, keys, vs, 1, dp, st, rp, ot, rp, true);
  }

  for (index_t r = 0; r < rows; ++r) {
    for (index_t c = 0; c < d; ++c) o_rows[r * dp + c] = ot[c * rp + r];
    m[r] = running_max[r];
    l[r] = running_sum[r];
  }
}

}  // namespace simd
}  // namespace detail
}  // namespace attnkit
