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

// Stages keys [j0, j0 + keys) of one KV head as fp32 rows of padded_dim floats, and prefetches
// the next block (the kernels stage blocks in order), so memory latency overlaps compute.
template <class A, class TKV, class Mask>
ATTNKIT_ALWAYS_INLINE void stage_block(const tile_context<TKV, Mask>& ctx, const TKV* k_head,
                                       const TKV* v_head, index_t j0, index_t keys, index_t kv_end,
                                       index_t d, index_t dp, float* ks, float* vs) {
  const index_t next = j0 + keys;
  if (next < kv_end && ctx.k.stride(2) == 1 && ctx.v.stride(2) == 1) {
    const index_t next_keys = std::min(key_block, kv_end - next);
    prefetch_rows(k_head + next * ctx.k.stride(0), ctx.k.stride(0), next_keys, d);
    prefetch_rows(v_head + next * ctx.v.stride(0), ctx.v.stride(0), next_keys, d);
  }
  stage_rows<A>(k_head + j0 * ctx.k.stride(0), ctx.k.stride(0), ctx.k.stride(2), keys, d, ks, dp,
                dp, 1.0f);
  stage_rows<A>(v_head + j0 * ctx.v.stride(0), ctx.v.stride(0), ctx.v.stride(2), keys, d, vs, dp,
                dp, 1.0f);
}

// ---------------------------------------------------------------------------------------------
// column_tile: rows across lanes.
// q_rows: [padded_rows][padded_dim] staged queries, row r = token (r / G), head (r % G) of the group.
// Outputs o_rows [padded_rows][padded_dim] (unnormalised), m and l [padded_rows] (base 2).
template <class A, index_t D, class TKV, class Mask>
void column_tile(const tile_context<TKV, Mask>& ctx, const tile_job& job, const float* q_rows,
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

  float* qt = scratch;                       // [d][rp]   Qᵀ
  float* ot = qt + dp * rp;                  // [d][rp]   Oᵀ accumulator
  float* ks = ot + dp * rp;                  // [key_block][dp]
  float* vs = ks + key_block * dp;           // [key_block][dp]
  float* st = vs + key_block * dp;           // [key_block][rp]  Sᵀ, then Pᵀ in place
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

  const position_range q_range = query_range(p, job);
  const bool transform = p.has_logit_transform();
  const TKV* k_head = ctx.k.data() + job.kv_head * ctx.k.stride(1);
  const TKV* v_head = ctx.v.data() + job.kv_head * ctx.v.stride(1);

  for (index_t j0 = job.kv_begin; j0 < job.kv_end; j0 += key_block) {
    const index_t keys = std::min(key_block, job.kv_end - j0);
    const tile_kind kind =
        classify_group(*ctx.mask, q_range, {j0, j0 + keys}, first_head, group);
    if (kind == tile_kind::empty) continue;

    stage_block<A>(ctx, k_head, v_head, j0, keys, job.kv_end, d, dp, ks, vs);
    // Sᵀ[key][row] = Σ_c K[key][c] · Qᵀ[c][row]
    gemm<A>(keys, rp, d, ks, dp, 1, qt, rp, st, rp, false);

    if (transform) {
      for (index_t j = 0; j < keys; ++j) {
        const batch key_position(static_cast<float>(j0 + j));
        float* s = st + j * rp;
        for (index_t r = 0; r < rp; r += width) {
          const batch distance = xsimd::abs(batch::load_aligned(column_position + r) - key_position);
          transform_logits<A>(p, batch::load_aligned(s + r), batch::load_aligned(column_slope + r),
                              distance)
              .store_aligned(s + r);
        }
      }
    }
    if (kind == tile_kind::partial) {
      for (index_t j = 0; j < keys; ++j) {
        float* s = st + j * rp;
        for (index_t r = 0; r < rows; ++r)
          if (!ctx.mask->allows(p.query_position(job.token_begin + r / group), j0 + j,
                                first_head + r % group))
            s[r] = minus_infinity;
      }
    }

    // Online softmax, all rows at once: new maximum, rescale factor, exponentials and sums.
    for (index_t r = 0; r < rp; r += width) {
      batch block_max(minus_infinity);
      for (index_t j = 0; j < keys; ++j) block_max = xsimd::max(block_max, batch::load_aligned(st + j * rp + r));
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
