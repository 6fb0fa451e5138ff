// attnkit — the two tile kernels of the CPU backend: one (query tile, key range) work item each.
//
// Both run the FlashAttention-2 loop: stream the key range in blocks, compute the block's
// logits, update a running maximum m and sum l per query row (online softmax, base 2), rescale
// the accumulated output by 2^(m_old - m_new), add P·V. They differ in which axis fills the
// vector registers:
//
// * column_tile — rows of the tile (query tokens × the query heads sharing one KV head) go across
//   the vector lanes. Logits are Sᵀ = K·Qᵀ and the output Oᵀ += Vᵀ·Pᵀ: both are the broadcast
//   micro-kernel of gemm.hpp with K and V read in their natural [token][dim] layout, and the
//   softmax statistics are plain vertical vector operations. For prefill and any tile with at
//   least one vector of rows: this is where the FLOPs are.
// * row_tile — the head dimension goes across the lanes. For tiles with fewer rows than lanes
//   (decode with a small GQA group), where filling lanes with rows would waste most of them;
//   decode is bandwidth-bound, so what matters is converting each K/V element once and keeping
//   the arithmetic under the memory time.
//
// Both stage each K/V block once into fp32 (converting half/bfloat16, applying strides, padding
// the head dimension with zeros) and share it across all rows of the tile, so a GQA group reads
// each K/V row once. Inputs: staged, pre-scaled query rows; outputs: unnormalised output rows,
// m and l per row, for the caller to normalise or merge.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>

#include "attnkit/core/simd_include.hpp"

#include "attnkit/backend/simd/convert.hpp"
#include "attnkit/backend/simd/gemm.hpp"
#include "attnkit/backend/simd/vector_math.hpp"
#include "attnkit/core/options.hpp"
#include "attnkit/core/softmax_state.hpp"
#include "attnkit/core/tensor_view.hpp"
#include "attnkit/mask/tile.hpp"

namespace attnkit {
namespace detail {
namespace simd {

inline constexpr index_t key_block = 64;  // keys per block: Sᵀ block 64 x 64 floats stays in L1

constexpr index_t round_up(index_t value, index_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

// One work item: a tile of query tokens for one KV head (all its query heads), over a key range.
struct tile_job {
  index_t kv_head = 0;
  index_t token_begin = 0;
  index_t tokens = 0;
  index_t kv_begin = 0;
  index_t kv_end = 0;
};

// Everything a tile kernel reads that is the same for every work item of a call.
template <class TKV, class Mask>
struct tile_context {
  tensor_view<const TKV, 3> k;
  tensor_view<const TKV, 3> v;
  const Mask* mask;
  const attention_params* params;
  index_t padded_dim;   // head_dim rounded up to the vector width
  index_t padded_rows;  // rows of the largest tile rounded up to the vector width
};

// Scratch floats a tile kernel needs beyond its inputs and outputs.
inline index_t column_tile_scratch(index_t padded_rows, index_t padded_dim) {
  return padded_dim * padded_rows * 2 + key_block * padded_dim * 2 + key_block * padded_rows +
         4 * padded_rows;
}
inline index_t row_tile_scratch(index_t padded_rows, index_t padded_dim) {
  return key_block * padded_dim * 2 + padded_rows * key_block;
}

// The mask's verdict for a block over every query head of the group: empty only if empty for
// all, full only if full for all.
template <class Mask>
tile_kind classify_group(const Mask& mask, position_range q, position_range kv, head_index first,
                         index_t heads) {
  const tile_kind kind = mask.classify(q, kv, first);
  for (index_t g = 1; g < heads; ++g)
    if (mask.classify(q, kv, first + g) != kind) return tile_kind::partial;
  return kind;
}

inline position_range query_range(const attention_params& p, const tile_job& job) {
  return {p.query_position(job.token_begin), p.query_position(job.token_begin + job.tokens)};
}

// Folds the scale (and log2 e, unless a logit transform must see natural-unit logits first)
// into the staged queries, so the logit GEMM directly yields base-2 softmax inputs.
inline float query_multiplier(const attention_params& p) {
  return p.has_logit_transform() ? p.scale : p.scale * log2e;
}

// softcap and ALiBi on a vector of natural-unit logits, then the conversion to base 2.
template <class A>
ATTNKIT_ALWAYS_INLINE xsimd::batch<float, A> transform_logits(const attention_params& p,
                                                              xsimd::batch<float, A> s,
                                                              xsimd::batch<float, A> slope,
                                                              xsimd::batch<float, A> distance) {
  using batch = xsimd::batch<float, A>;
  if (p.softcap > 0.0f) s = batch(p.softcap) * simd::tanh<A>(s * batch(1.0f / p.softcap));
  if (p.alibi_slopes != nullptr) s = xsimd::fnma(slope, distance, s);
  return s * batch(log2e);
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

    stage_rows<A>(k_head + j0 * ctx.k.stride(0), ctx.k.stride(0), ctx.k.stride(2), keys, d, ks,
                  dp, dp, 1.0f);
    stage_rows<A>(v_head + j0 * ctx.v.stride(0), ctx.v.stride(0), ctx.v.stride(2), keys, d, vs,
                  dp, dp, 1.0f);
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

// ---------------------------------------------------------------------------------------------
// row_tile: head dimension across lanes; same inputs and outputs as column_tile.
template <class A, index_t D, class TKV, class Mask>
void row_tile(const tile_context<TKV, Mask>& ctx, const tile_job& job, const float* q_rows,
              float* o_rows, float* m, float* l, float* scratch) {
  using batch = xsimd::batch<float, A>;
  constexpr index_t width = batch::size;
  const attention_params& p = *ctx.params;
  const index_t d = D != 0 ? D : p.head_dim;
  const index_t dp = D != 0 ? round_up(D, width) : ctx.padded_dim;
  const index_t group = p.group_size;
  const index_t rows = job.tokens * group;
  const head_index first_head = job.kv_head * group;
  constexpr float minus_infinity = -std::numeric_limits<float>::infinity();

  float* ks = scratch;                 // [key_block][dp]
  float* vs = ks + key_block * dp;     // [key_block][dp]
  float* s_rows = vs + key_block * dp;  // [rows][key_block]  logits, then probabilities

  std::fill(o_rows, o_rows + rows * dp, 0.0f);
  for (index_t r = 0; r < rows; ++r) {
    m[r] = minus_infinity;
    l[r] = 0.0f;
  }
  alignas(64) float lane_offset[width];
  for (index_t i = 0; i < width; ++i) lane_offset[i] = static_cast<float>(i);
  const batch lane_index = batch::load_aligned(lane_offset);

  const position_range q_range = query_range(p, job);
  const bool transform = p.has_logit_transform();
  const TKV* k_head = ctx.k.data() + job.kv_head * ctx.k.stride(1);
  const TKV* v_head = ctx.v.data() + job.kv_head * ctx.v.stride(1);

  for (index_t j0 = job.kv_begin; j0 < job.kv_end; j0 += key_block) {
    const index_t keys = std::min(key_block, job.kv_end - j0);
    const index_t padded_keys = round_up(keys, width);
    const tile_kind kind =
        classify_group(*ctx.mask, q_range, {j0, j0 + keys}, first_head, group);
    if (kind == tile_kind::empty) continue;

    stage_rows<A>(k_head + j0 * ctx.k.stride(0), ctx.k.stride(0), ctx.k.stride(2), keys, d, ks,
                  dp, dp, 1.0f);
    stage_rows<A>(v_head + j0 * ctx.v.stride(0), ctx.v.stride(0), ctx.v.stride(2), keys, d, vs,
                  dp, dp, 1.0f);
    // Padding keys read zeros (their logits are replaced by -inf below, but must not be NaN
    // garbage meanwhile, and P·V multiplies their zero probabilities by these rows).
    std::fill(ks + keys * dp, ks + padded_keys * dp, 0.0f);
    std::fill(vs + keys * dp, vs + padded_keys * dp, 0.0f);

    for (index_t r = 0; r < rows; ++r) {
      const float* q = q_rows + r * dp;
      float* s = s_rows + r * key_block;
      // One vector of `width` logits at a time: `width` dot products along the head dimension,
      // then one transposing horizontal add.
      for (index_t jb = 0; jb < padded_keys; jb += width) {
        batch partial[width];
        for (index_t jj = 0; jj < width; ++jj) {
          const float* key = ks + (jb + jj) * dp;
          batch acc(0.0f);
          for (index_t c = 0; c < dp; c += width)
            acc = xsimd::fma(batch::load_aligned(q + c), batch::load_aligned(key + c), acc);
          partial[jj] = acc;
        }
        reduce_rows<A>(partial).store_aligned(s + jb);
      }
      const position q_pos = p.query_position(job.token_begin + r / group);
      const head_index head = first_head + r % group;
      if (transform) {
        const batch slope(p.alibi_slopes != nullptr ? p.alibi_slopes[head * p.alibi_stride] : 0.0f);
        for (index_t jb = 0; jb < padded_keys; jb += width) {
          const batch distance =
              xsimd::abs(batch(static_cast<float>(q_pos - j0 - jb)) - lane_index);
          transform_logits<A>(p, batch::load_aligned(s + jb), slope, distance).store_aligned(s + jb);
        }
      }
      if (kind == tile_kind::partial)
        for (index_t j = 0; j < keys; ++j)
          if (!ctx.mask->allows(q_pos, j0 + j, head)) s[j] = minus_infinity;
      for (index_t j = keys; j < padded_keys; ++j) s[j] = minus_infinity;

      batch block_max(minus_infinity);
      for (index_t jb = 0; jb < padded_keys; jb += width)
        block_max = xsimd::max(block_max, batch::load_aligned(s + jb));
      const float new_max = std::max(m[r], horizontal_max<A>(block_max));
      const float shift = new_max == minus_infinity ? 0.0f : new_max;
      batch sum(0.0f);
      for (index_t jb = 0; jb < padded_keys; jb += width) {
        const batch e = exp2<A>(batch::load_aligned(s + jb) - batch(shift));
        e.store_aligned(s + jb);
        sum += e;
      }
      const float alpha = std::exp2(m[r] - shift);
      l[r] = l[r] * alpha + xsimd::hadd(sum);
      m[r] = new_max;
      if (alpha != 1.0f) {
        float* o = o_rows + r * dp;
        for (index_t c = 0; c < dp; c += width)
          (batch::load_aligned(o + c) * batch(alpha)).store_aligned(o + c);
      }
    }
    // O[row][c] += Σ_key P[row][key] · V[key][c]
    gemm<A>(rows, dp, padded_keys, s_rows, key_block, 1, vs, dp, o_rows, dp, true);
  }
}

}  // namespace simd
}  // namespace detail
}  // namespace attnkit
