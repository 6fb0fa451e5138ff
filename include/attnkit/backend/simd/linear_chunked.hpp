// attnkit — the chunked form of linear attention (Lightning Attention, Qin et al. 2024): prefill
// at a constant cost per token, whatever the length.
//
// Tokens go in chunks of C. With Q = φ(q) rows, K = φ(k) rows, V the chunk's values, S and z the
// state before the chunk and i, j token indices within it:
//   inter  O_i  = γ^(i+1) Q_i · S               den_i  = γ^(i+1) Q_i · z
//   intra  O_i += Σ_{j<=i} γ^(i-j) (Q_i·K_j) V_j  den_i += Σ_{j<=i} γ^(i-j) Q_i·K_j
//   state  S ← γ^c S + Σ_j γ^(c-1-j) K_j V_jᵀ    z ← γ^c z + Σ_j γ^(c-1-j) K_j
// (c = tokens in the chunk). Every power of γ is non-negative, so decay can only underflow to 0,
// never overflow. Each product is a GEMM on the register-blocked micro-kernel of gemm.hpp:
//   scores   P = Q · Kᵀ         [rows x C],  depth F   (B = Kᵀ, transposed once per chunk)
//   values   O += P · V         [rows x dv], depth <= C
//   inter    O = Q · S          [rows x dv], depth F   (B = the state, in place)
//   update   S += K̃ᵀ · V        [F x dv],    depth c   (A = K̃ rows read down columns)
// and the causal mask and the decay are one pass over P (scores times γ^(i-j), zeros above the
// diagonal). The scores and values GEMMs run per block of micro-kernel rows with the columns and
// depth cut at the block's last token, so about half of the masked triangle is never computed.
//
// One work item owns one KV head and runs its chunks in order (the state carries); the rows of
// a chunk are its tokens × the item's query heads (GQA packing, rows token-major), so a KV head's
// K, V and S are staged and read once for all of them. When KV heads are fewer than threads, a
// KV head's query heads are split over several items; each then advances its own copy of the
// state (the extra cost: one state update per chunk per extra item), and only the first writes
// the state back.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>

#include "attnkit/backend/simd/convert.hpp"
#include "attnkit/backend/simd/gemm.hpp"
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

// Tokens per chunk for the front door. 64: the C x C score block (16 KiB) stays in L1 next to
// the GEMM operands, and the intra-chunk work (~C/2 pairs per token) stays below the state
// products' 2·F·dv per token for F, dv >= 64.
inline constexpr index_t linear_chunk_tokens = 64;

// Offsets (in floats, each 64-byte aligned) of one work item's buffers.
struct chunk_buffers {
  index_t staging = 0, fq = 0, fk = 0, fk_t = 0, values = 0, scores = 0, out = 0, den = 0,
          decay = 0, s_copy = 0, z_copy = 0, total = 0;

  chunk_buffers(index_t chunk, index_t rows, const linear_params& p, bool private_state) {
    const index_t fp = linear_padded(p.feature_dim), vp = linear_padded(p.value_dim);
    index_t at = 0;
    auto take = [&](index_t floats) {
      const index_t here = at;
      at += linear_padded(floats);
      return here;
    };
    staging = take(p.key_dim);
    fq = take(rows * fp);
    fk = take(chunk * fp);
    fk_t = take(p.feature_dim * chunk);
    values = take(chunk * vp);
    scores = take(rows * chunk);
    out = take(rows * vp);
    den = take(rows);
    decay = take(3 * chunk + 1 + linear_row_alignment);
    s_copy = private_state ? take(p.feature_dim * vp) : at;
    z_copy = private_state ? take(fp) : at;
    total = at;
  }
};

// Everything one call's items share.
template <class TQ, class TKV, class TO, class Map>
struct chunk_context {
  tensor_view<const TQ, 3> q;
  tensor_view<const TKV, 3> k;
  tensor_view<const TKV, 3> v;
  tensor_view<TO, 3> out;
  const Map* map = nullptr;
  const linear_params* params = nullptr;
  float* s = nullptr;  // the state: head g at s + g · s_head_stride, rows of vp floats
  float* z = nullptr;  // head g at z + g · z_head_stride
  index_t s_head_stride = 0;
  index_t z_head_stride = 0;
  const float* initial = nullptr;  // copies of S, z on entry (head-major), when items share a head
  index_t heads_per_item = 1;      // query heads of one item (a divisor-ish share of the group)
};

// P[r][j] for the rows [row_begin, row_end) of one chunk: times γ^(t-j) for j <= t (t = the
// row's token), zero for t < j < columns; den[r] += Σ_{j<=t} P[r][j] when normalising.
// decay_reversed[m] = γ^(C-1-m), so γ^(t-j) = decay_reversed[C-1-t+j] runs forwards in j.
template <class A>
void mask_and_decay(index_t chunk, index_t heads, index_t row_begin, index_t row_end,
                    index_t columns, float* scores, index_t stride, const float* decay_reversed,
                    bool normalize, float* den) {
  using batch = xsimd::batch<float, A>;
  constexpr index_t width = batch::size;
  alignas(64) float lane_index[width];
  for (index_t i = 0; i < width; ++i) lane_index[i] = static_cast<float>(i);
  const batch lanes = batch::load_aligned(lane_index);
  for (index_t r = row_begin; r < row_end; ++r) {
    const index_t t = r / heads;
    float* row = scores + r * stride;
    const float* weights = decay_reversed + (chunk - 1 - t);
    batch sum(0.0f);
    index_t j = 0;
    for (; j + width <= t + 1; j += width) {
      const batch x = batch::load_aligned(row + j) * batch::load_unaligned(weights + j);
      x.store_aligned(row + j);
      sum += x;
    }
    if (j < columns) {  // the vector holding the diagonal: keep lanes j + lane <= t
      const batch x = batch::load_aligned(row + j) * batch::load_unaligned(weights + j);
      const batch kept = xsimd::select(lanes <= batch(static_cast<float>(t - j)), x, batch(0.0f));
      kept.store_aligned(row + j);
      sum += kept;
      for (j += width; j < columns; j += width) batch(0.0f).store_aligned(row + j);
    }
    if (normalize) den[r] += xsimd::hadd(sum);
  }
}

// The rows [token, token + tokens) x heads [head, head + heads) of an NHD view as a prefetch
// stream, one run per token: all the heads' rows when they are adjacent (NHD), else the first
// head's only; empty when a row's elements are not contiguous.
template <class T>
prefetch_stream row_stream(const tensor_view<T, 3>& view, index_t token, index_t head,
                           index_t heads, index_t tokens) {
  if (view.stride(2) != 1 || view.stride(0) < 0) return {};
  const bool adjacent_heads = view.stride(1) == view.extent(2);
  const index_t row_elements = (adjacent_heads ? heads : 1) * view.extent(2);
  return prefetch_stream(view.row(token, head), row_elements * index_t(sizeof(T)),
                         view.stride(0) * index_t(sizeof(T)), tokens);
}

// The state update of one chunk of c tokens, shared by the chunked prefill and linear_append:
//   S ← γ^c S + K̃ᵀ V,   z ← γ^c z + Σ_j K̃_j,   K̃_j = γ^(c-1-j) K_j,
// with power(e) = γ^e (read only when `decays`). fk [c, fp] holds the chunk's feature rows and is
// scaled in place to K̃; values [c, vp]; s [F, vp] and z [fp], all padded and aligned.
// state_is_zero skips decaying a state known to be zero (the result is the same).
template <class A, class Power>
void add_chunk_to_state(index_t F, index_t fp, index_t vp, index_t c, bool decays,
                        bool state_is_zero, Power&& power, float* fk, const float* values, float* s,
                        float* z) {
  using batch = xsimd::batch<float, A>;
  constexpr index_t width = batch::size;
  if (decays) {
    const batch carried(power(c));
    if (!state_is_zero) {
      for (index_t f = 0; f < F; ++f)
        for (index_t j = 0; j < vp; j += width)
          (batch::load_aligned(s + f * vp + j) * carried).store_aligned(s + f * vp + j);
      for (index_t f = 0; f < fp; f += width)
        (batch::load_aligned(z + f) * carried).store_aligned(z + f);
    }
    for (index_t j = 0; j < c; ++j) {
      const batch w(power(c - 1 - j));
      for (index_t f = 0; f < fp; f += width)
        (batch::load_aligned(fk + j * fp + f) * w).store_aligned(fk + j * fp + f);
    }
  }
  for (index_t f = 0; f < fp; f += width) {
    batch sum = batch::load_aligned(z + f);
    for (index_t j = 0; j < c; ++j) sum += batch::load_aligned(fk + j * fp + f);
    sum.store_aligned(z + f);
  }
  gemm<A>(F, vp, c, fk, 1, fp, values, vp, s, vp, /*accumulate=*/true);
}

// One work item: KV head `kv_head`, query heads [head_begin, head_begin + heads) of the whole
// call (all of its chunks, in order).
template <class A, index_t Chunk, class TQ, class TKV, class TO, class Map>
void chunked_item(const chunk_context<TQ, TKV, TO, Map>& cx, index_t kv_head, index_t head_begin,
                  index_t heads, bool private_state) {
  using batch = xsimd::batch<float, A>;
  constexpr index_t width = batch::size;
  static_assert(Chunk % linear_row_alignment == 0, "the chunk must be a multiple of 16 tokens");
  constexpr int MR = gemm_shape<A>::rows;
  const linear_params& p = *cx.params;
  const index_t F = p.feature_dim, fp = linear_padded(F);
  const index_t dv = p.value_dim, vp = linear_padded(dv);
  const index_t max_rows = Chunk * heads;
  const chunk_buffers layout(Chunk, max_rows, p, private_state);
  float* base = item_scratch().reserve(static_cast<std::size_t>(layout.total));
  float* staging = base + layout.staging;
  float* fq = base + layout.fq;
  float* fk = base + layout.fk;
  float* fk_t = base + layout.fk_t;
  float* values = base + layout.values;
  float* scores = base + layout.scores;
  float* o_rows = base + layout.out;
  float* den = base + layout.den;
  float* decay_reversed = base + layout.decay;  // [2C + width]: γ^(C-1-m), then zeros
  float* powers = decay_reversed + 2 * Chunk + linear_row_alignment;  // [C + 1]: γ^k

  float* s = cx.s + kv_head * cx.s_head_stride;
  float* z = cx.z + kv_head * cx.z_head_stride;
  if (private_state) {
    const float* s_in = cx.initial + kv_head * (F * vp + fp);
    std::copy(s_in, s_in + F * vp, base + layout.s_copy);
    std::copy(s_in + F * vp, s_in + F * vp + fp, base + layout.z_copy);
    s = base + layout.s_copy;
    z = base + layout.z_copy;
  }

  const float gamma = p.decay_of(kv_head);
  const bool decays = gamma < 1.0f;
  for (index_t m = 0; m <= Chunk; ++m)
    powers[m] = static_cast<float>(std::pow(static_cast<double>(gamma), static_cast<double>(m)));
  for (index_t m = 0; m < 2 * Chunk + linear_row_alignment; ++m)
    decay_reversed[m] = m < Chunk ? powers[Chunk - 1 - m] : 0.0f;

  const index_t first_head = kv_head * p.group_size + head_begin;
  bool state_is_zero = p.state_is_zero;
  for (index_t t0 = 0; t0 < p.tokens; t0 += Chunk) {
    const index_t c = std::min(Chunk, p.tokens - t0);
    const index_t rows = c * heads;

    // Stage: φ(q) rows token-major (row t · heads + h), φ(k) rows, v rows; Kᵀ for the scores.
    for (index_t t = 0; t < c; ++t)
      feature_rows<A>(*cx.map, cx.q.row(t0 + t, first_head), cx.q.stride(1), cx.q.stride(2), heads,
                      p.key_dim, F, staging, fq + t * heads * fp, fp);
    feature_rows<A>(*cx.map, cx.k.row(t0, kv_head), cx.k.stride(0), cx.k.stride(2), c, p.key_dim, F,
                    staging, fk, fp);
    stage_rows<A>(cx.v.row(t0, kv_head), cx.v.stride(0), cx.v.stride(2), c, dv, values, vp, vp,
                  1.0f);
    for (index_t f = 0; f < F; ++f) {
      float* column = fk_t + f * Chunk;
      for (index_t j = 0; j < c; ++j) column[j] = fk[j * fp + f];
      for (index_t j = c; j < Chunk; ++j) column[j] = 0.0f;
    }

    // Inter-chunk: O = γ^(t+1) Q·S, den = γ^(t+1) Q·z (nothing while the state is still zero).
    if (!state_is_zero) {
      gemm<A>(rows, vp, F, fq, fp, 1, s, vp, o_rows, vp, /*accumulate=*/false);
      for (index_t r = 0; r < rows; ++r) {
        const float carried = powers[r / heads + 1];
        if (decays) {
          float* o = o_rows + r * vp;
          for (index_t j = 0; j < vp; j += width)
            (batch::load_aligned(o + j) * batch(carried)).store_aligned(o + j);
        }
        if (p.normalize) {
          batch dot(0.0f);
          const float* qr = fq + r * fp;
          for (index_t f = 0; f < fp; f += width)
            dot = xsimd::fma(batch::load_aligned(qr + f), batch::load_aligned(z + f), dot);
          den[r] = carried * xsimd::hadd(dot);
        }
      }
    } else {
      std::fill(den, den + rows, 0.0f);
    }

    // While this chunk computes, pull the next chunk's q, k, v rows and this chunk's output
    // rows towards L2, a few lines per row block: in NHD memory a head's rows are a few hundred
    // bytes every heads·dim elements, one page apart at long lengths, which the hardware
    // prefetchers do not follow — without this, long prefills wait on memory.
    prefetch_stream streams[4];
    index_t prefetch_lines = 0;
    if (t0 + Chunk < p.tokens) {
      const index_t next = std::min(Chunk, p.tokens - t0 - Chunk);
      streams[0] = row_stream(cx.q, t0 + Chunk, first_head, heads, next);
      streams[1] = row_stream(cx.k, t0 + Chunk, kv_head, 1, next);
      streams[2] = row_stream(cx.v, t0 + Chunk, kv_head, 1, next);
    }
    streams[3] = row_stream(cx.out, t0, first_head, heads, c);
    for (const prefetch_stream& stream : streams) prefetch_lines += stream.lines();
    const index_t lines_per_block =
        (prefetch_lines + (rows + MR - 1) / MR - 1) / ((rows + MR - 1) / MR);

    // Intra-chunk, per block of micro-kernel rows: scores up to the block's last token (columns
    // rounded up to whole vectors), mask and decay, then P·V with depth cut at that token.
    for (index_t r0 = 0; r0 < rows; r0 += MR) {
      index_t budget = lines_per_block;
      for (prefetch_stream& stream : streams) {
        const index_t take = std::min(budget, stream.lines());
        stream.issue(take);
        budget -= take;
      }
      const index_t r1 = std::min(rows, r0 + MR);
      const index_t keys = (r1 - 1) / heads + 1;
      const index_t columns = round_up(keys, width);
      gemm<A>(r1 - r0, columns, F, fq + r0 * fp, fp, 1, fk_t, Chunk, scores + r0 * Chunk, Chunk,
              /*accumulate=*/false);
      mask_and_decay<A>(Chunk, heads, r0, r1, columns, scores, Chunk, decay_reversed, p.normalize,
                        den);
      gemm<A>(r1 - r0, vp, keys, scores + r0 * Chunk, Chunk, 1, values, vp, o_rows + r0 * vp, vp,
              /*accumulate=*/!state_is_zero);
    }

    // Results: normalise (a zero denominator gives zeros) and convert.
    for (index_t r = 0; r < rows; ++r) {
      const index_t t = r / heads, h = r % heads;
      float multiplier = 1.0f;
      if (p.normalize) multiplier = den[r] != 0.0f ? 1.0f / den[r] : 0.0f;
      const float* o = o_rows + r * vp;
      TO* destination = cx.out.row(t0 + t, first_head + h);
      const index_t stride = cx.out.stride(2);
      for (index_t j = 0; j < dv; ++j) destination[j * stride] = from_float<TO>(o[j] * multiplier);
    }

    // State: S ← γ^c S + K̃ᵀ V, z ← γ^c z + Σ K̃ with K̃_j = γ^(c-1-j) K_j (K rows scaled in place:
    // Kᵀ, already copied, keeps the undecayed scores' operand).
    add_chunk_to_state<A>(
        F, fp, vp, c, decays, state_is_zero, [&](index_t e) { return powers[e]; }, fk, values, s,
        z);
    state_is_zero = false;
  }
}

template <class A, index_t Chunk, class TQ, class TKV, class TO, class Map, class Executor>
void run_chunked(tensor_view<const TQ, 3> q, tensor_view<const TKV, 3> k,
                 tensor_view<const TKV, 3> v, tensor_view<TO, 3> out, const Map& map,
                 linear_state& state, const linear_params& p, Executor& executor) {
  const index_t threads = static_cast<index_t>(parallel::concurrency_of(executor));
  // Split a KV head's query heads over items only when KV heads alone leave threads idle.
  index_t splits = 1;
  if (p.kv_heads < threads && p.group_size > 1)
    splits = std::min(p.group_size, (threads + p.kv_heads - 1) / p.kv_heads);
  const index_t heads_per_item = (p.group_size + splits - 1) / splits;
  splits = (p.group_size + heads_per_item - 1) / heads_per_item;

  chunk_context<TQ, TKV, TO, Map> cx{q, k, v, out, &map, &p};
  cx.s = state.s().data();
  cx.z = state.z().data();
  cx.s_head_stride = state.s_head_stride();
  cx.z_head_stride = state.z_head_stride();
  cx.heads_per_item = heads_per_item;

  // Items sharing a KV head start from a copy of the entry state: the first item updates the
  // real one in place while the others may not have started yet.
  if (splits > 1) {
    const index_t F = p.feature_dim, fp = linear_padded(F), vp = linear_padded(p.value_dim);
    float* initial = call_scratch().reserve(static_cast<std::size_t>(p.kv_heads * (F * vp + fp)));
    for (index_t g = 0; g < p.kv_heads; ++g) {
      std::copy(cx.s + g * cx.s_head_stride, cx.s + g * cx.s_head_stride + F * vp,
                initial + g * (F * vp + fp));
      std::copy(cx.z + g * cx.z_head_stride, cx.z + g * cx.z_head_stride + fp,
                initial + g * (F * vp + fp) + F * vp);
    }
    cx.initial = initial;
  }

  executor(static_cast<std::size_t>(p.kv_heads * splits), [&](std::size_t item) {
    const index_t kv_head = static_cast<index_t>(item) / splits;
    const index_t split = static_cast<index_t>(item) % splits;
    const index_t head_begin = split * heads_per_item;
    const index_t heads = std::min(heads_per_item, p.group_size - head_begin);
    chunked_item<A, Chunk>(cx, kv_head, head_begin, heads, /*private_state=*/split > 0);
  });
}

}  // namespace simd
}  // namespace detail
}  // namespace attnkit
