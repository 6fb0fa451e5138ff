// attnkit — the recurrent form of linear attention: decode, O(1) per token at any position.
//
// Per token:  S ← γ·S + φk vᵀ,  z ← γ·z + φk,  out = φq·S / φq·z  for each query head of the KV
// head. The cost is the state's size (F x dv per KV head), not the sequence's length.
//
// Two steps. First, on the calling thread, everything of size F per head: φ(q) and φ(k) rows,
// z and the denominators φq·z of every token — small next to the state. Then the state products,
// split over (KV head, block of value columns): S's columns are independent of one another, so
// blocks of them can run on different threads without sharing anything, which keeps every core
// busy even with a single KV head. Each item makes one pass over its block of S per token,
// updating a row and immediately adding it, times φq, to every query head's output.
#pragma once

#include <algorithm>
#include <cstddef>

#include "attnkit/backend/simd/convert.hpp"
#include "attnkit/backend/simd/linear_features.hpp"
#include "attnkit/backend/simd/scratch.hpp"
#include "attnkit/core/config.hpp"
#include "attnkit/core/float16.hpp"
#include "attnkit/core/simd_include.hpp"
#include "attnkit/core/tensor_view.hpp"
#include "attnkit/linear/linear_state.hpp"
#include "attnkit/linear/options.hpp"
#include "attnkit/parallel/executor.hpp"

namespace attnkit {
namespace detail {
namespace simd {

// Up to this many tokens per call the CPU backend runs the recurrent form (decode, speculative
// verification of a few tokens); from there on the chunked form's GEMMs are cheaper than
// re-reading the state once per token.
inline constexpr index_t linear_recurrent_max_tokens = 4;

// One token over columns [0, NV·width) of S (rows `vp` floats apart): S_f ← γ·S_f + k_f·v
// when `update`, and acc[h] = Σ_f q_h[f]·S_f for the HG query heads at qf (rows fp apart), with
// v, the accumulators and the updated S row in registers: per feature, NV loads and stores of S
// and HG broadcasts feed NV·(HG + 1) FMAs.
template <class A, int NV, int HG>
ATTNKIT_ALWAYS_INLINE void recurrent_tile(index_t F, float* s, index_t vp, const float* values,
                                          const float* kf, const float* qf, index_t fp, float gamma,
                                          bool update, float* acc, index_t acc_stride) {
  using batch = xsimd::batch<float, A>;
  constexpr index_t width = batch::size;
  batch v[NV], sum[HG][NV];
#pragma GCC unroll 8
  for (int n = 0; n < NV; ++n) v[n] = batch::load_aligned(values + n * width);
#pragma GCC unroll 8
  for (int h = 0; h < HG; ++h)
#pragma GCC unroll 8
    for (int n = 0; n < NV; ++n) sum[h][n] = batch(0.0f);
  const batch decay(gamma);
  const bool decays = gamma != 1.0f;
  for (index_t f = 0; f < F; ++f) {
    float* row = s + f * vp;
    batch updated[NV];
#pragma GCC unroll 8
    for (int n = 0; n < NV; ++n) updated[n] = batch::load_aligned(row + n * width);
    if (update) {
      const batch key(kf[f]);
#pragma GCC unroll 8
      for (int n = 0; n < NV; ++n) {
        if (decays) updated[n] *= decay;
        updated[n] = xsimd::fma(key, v[n], updated[n]);
        updated[n].store_aligned(row + n * width);
      }
    }
#pragma GCC unroll 8
    for (int h = 0; h < HG; ++h) {
      const batch query(qf[h * fp + f]);
#pragma GCC unroll 8
      for (int n = 0; n < NV; ++n) sum[h][n] = xsimd::fma(query, updated[n], sum[h][n]);
    }
  }
#pragma GCC unroll 8
  for (int h = 0; h < HG; ++h)
#pragma GCC unroll 8
    for (int n = 0; n < NV; ++n) sum[h][n].store_aligned(acc + h * acc_stride + n * width);
}

// One token over `cols` columns of S for all `group` query heads: tiles of 4 vectors (then
// single vectors) x up to 4 heads; the first pass over a tile's heads updates S, later passes
// (groups above 4) read the updated rows. acc is [group][cols].
template <class A>
void recurrent_columns(index_t F, float* s, index_t vp, const float* values, index_t cols,
                       const float* kf, const float* qf, index_t fp, index_t group, float gamma,
                       float* acc) {
  constexpr index_t width = xsimd::batch<float, A>::size;
  auto tile = [&]<int NV>(index_t j) {
    for (index_t h0 = 0; h0 < group; h0 += 4) {
      const bool update = h0 == 0;
      const float* q = qf + h0 * fp;
      float* a = acc + h0 * cols + j;
      switch (std::min<index_t>(4, group - h0)) {
        case 1:
          recurrent_tile<A, NV, 1>(F, s + j, vp, values + j, kf, q, fp, gamma, update, a, cols);
          break;
        case 2:
          recurrent_tile<A, NV, 2>(F, s + j, vp, values + j, kf, q, fp, gamma, update, a, cols);
          break;
        case 3:
          recurrent_tile<A, NV, 3>(F, s + j, vp, values + j, kf, q, fp, gamma, update, a, cols);
          break;
        default:
          recurrent_tile<A, NV, 4>(F, s + j, vp, values + j, kf, q, fp, gamma, update, a, cols);
          break;
      }
    }
  };
  index_t j = 0;
  for (; j + 4 * width <= cols; j += 4 * width) tile.template operator()<4>(j);
  for (; j < cols; j += width) tile.template operator()<1>(j);
}

template <class A, class TQ, class TKV, class TO, class Map, class Executor>
void run_recurrent(tensor_view<const TQ, 3> q, tensor_view<const TKV, 3> k,
                   tensor_view<const TKV, 3> v, tensor_view<TO, 3> out, const Map& map,
                   linear_state& state, const linear_params& p, Executor& executor) {
  using batch = xsimd::batch<float, A>;
  constexpr index_t width = batch::size;
  const index_t n = p.tokens, F = p.feature_dim, fp = linear_padded(F);
  const index_t dv = p.value_dim, vp = linear_padded(dv);
  const index_t group = p.group_size;

  // Step 1: features, z and denominators. fq [n][q_heads][fp], fk [n][kv_heads][fp],
  // den [n][q_heads] (the multiplier 1/den, 0 for a zero denominator; 1 when not normalising).
  const index_t fq_floats = n * p.q_heads * fp, fk_floats = n * p.kv_heads * fp;
  const index_t staging_floats = linear_padded(p.key_dim);
  float* call = call_scratch().reserve(static_cast<std::size_t>(
      fq_floats + fk_floats + linear_padded(n * p.q_heads) + staging_floats));
  float* fq = call;
  float* fk = fq + fq_floats;
  float* multiplier = fk + fk_floats;
  float* staging = multiplier + linear_padded(n * p.q_heads);
  for (index_t t = 0; t < n; ++t) {
    feature_rows<A>(map, q.row(t, 0), q.stride(1), q.stride(2), p.q_heads, p.key_dim, F, staging,
                    fq + t * p.q_heads * fp, fp);
    feature_rows<A>(map, k.row(t, 0), k.stride(1), k.stride(2), p.kv_heads, p.key_dim, F, staging,
                    fk + t * p.kv_heads * fp, fp);
  }
  const tensor_view<float, 3> s_view = state.s();
  float* s_all = s_view.data();
  float* z_all = state.z().data();
  for (index_t g = 0; g < p.kv_heads; ++g) {
    float* z = z_all + g * state.z_head_stride();
    const batch gamma(p.decay_of(g));
    for (index_t t = 0; t < n; ++t) {
      const float* kf = fk + (t * p.kv_heads + g) * fp;
      for (index_t f = 0; f < fp; f += width)
        xsimd::fma(gamma, batch::load_aligned(z + f), batch::load_aligned(kf + f))
            .store_aligned(z + f);
      for (index_t h = g * group; h < (g + 1) * group; ++h) {
        float& m = multiplier[t * p.q_heads + h];
        if (!p.normalize) {
          m = 1.0f;
          continue;
        }
        const float* qf = fq + (t * p.q_heads + h) * fp;
        batch dot(0.0f);
        for (index_t f = 0; f < fp; f += width)
          dot = xsimd::fma(batch::load_aligned(qf + f), batch::load_aligned(z + f), dot);
        const float den = xsimd::hadd(dot);
        m = den != 0.0f ? 1.0f / den : 0.0f;
      }
    }
  }

  // Step 2: S and the outputs, per (KV head, column block). Enough blocks for two items per
  // thread when KV heads are few; each block a whole number of 16-float rows.
  const index_t threads = static_cast<index_t>(parallel::concurrency_of(executor));
  const index_t vectors16 = vp / linear_row_alignment;
  const index_t blocks =
      std::clamp<index_t>((2 * threads + p.kv_heads - 1) / p.kv_heads, 1, vectors16);
  const index_t block_columns = (vectors16 + blocks - 1) / blocks * linear_row_alignment;
  const index_t s_head_stride = state.s_head_stride();

  executor(static_cast<std::size_t>(p.kv_heads * blocks), [&](std::size_t item) {
    const index_t g = static_cast<index_t>(item) / blocks;
    const index_t c0 = (static_cast<index_t>(item) % blocks) * block_columns;
    if (c0 >= vp) return;
    const index_t cols = std::min(block_columns, vp - c0);  // padded columns of this block
    const index_t real_cols = std::max<index_t>(0, std::min(dv, c0 + cols) - c0);
    float* buffer = item_scratch().reserve(static_cast<std::size_t>(cols * (group + 1)));
    float* values = buffer;
    float* acc = buffer + cols;  // [group][cols]
    float* s = s_all + g * s_head_stride + c0;
    const float gamma_value = p.decay_of(g);
    for (index_t t = 0; t < n; ++t) {
      stage_rows<A>(v.row(t, g) + c0 * v.stride(2), 0, v.stride(2), 1, real_cols, values, cols,
                    cols, 1.0f);
      const float* kf = fk + (t * p.kv_heads + g) * fp;
      const float* qf = fq + (t * p.q_heads + g * group) * fp;
      recurrent_columns<A>(F, s, vp, values, cols, kf, qf, fp, group, gamma_value, acc);
      for (index_t h = 0; h < group; ++h) {
        const float m = multiplier[t * p.q_heads + g * group + h];
        TO* destination = out.row(t, g * group + h) + c0 * out.stride(2);
        const float* a = acc + h * cols;
        for (index_t j = 0; j < real_cols; ++j)
          destination[j * out.stride(2)] = from_float<TO>(a[j] * m);
      }
    }
  });
}

}  // namespace simd
}  // namespace detail
}  // namespace attnkit
