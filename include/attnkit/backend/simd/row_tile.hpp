// attnkit — row_tile: the decode kernel of the CPU backend (head dimension across lanes).
//
// Decode has a handful of query rows per KV head (the GQA group, times a few tokens at most), so
// filling vector lanes with rows would waste most of them; the head dimension goes across the
// lanes instead. Decode is bandwidth-bound: the kernel must convert each K/V element exactly once
// and keep the arithmetic well under the memory time. So K and V are read straight from the
// caller's memory with converting loads (no staging copy), each loaded vector serves every row
// of the group from registers, and the job covers every KV head of the call, a key block at a
// time, so the block's tokens — whose heads are contiguous in NHD memory — are read as one region.
//
//   logits:  for four keys at a time, dot products of every row with each key, accumulated in
//            registers over the head dimension; `width` keys' accumulators are then folded into
//            one vector of logits per row by a transposing reduction.
//   output:  token-major as well: per 4 tokens and head, the value vectors are loaded once and
//            added into that head's output rows (kept in L1) for every row.
//
// K and V come from a row_source (key_source.hpp): a contiguous view is one run of rows per
// span; a paged cache gives one run per page the span touches, each read in place the same way
// (a vector of `width` keys that straddles a page takes its keys from two runs), and the next
// span's pages are prefetched page by page. A paged job covers one KV head.
//
// Views whose last stride is not 1 or whose head dimension is not a multiple of the vector
// width take a slower path: the block is first staged into fp32 with zero padding.
#pragma once

#include <algorithm>
#include <limits>
#include <utility>

#include "attnkit/backend/simd/convert.hpp"
#include "attnkit/backend/simd/tile.hpp"
#include "attnkit/backend/simd/vector_math.hpp"

namespace attnkit {
namespace detail {
namespace simd {

inline constexpr int row_block = 4;  // rows whose accumulators share the loaded K/V vectors

// Dot products of rows [0, RB) (queries at q, rows q_stride apart) with KP consecutive keys
// (key, key + key_stride, ...; `vectors` vectors each) into partial[r * width + jj + i]. Each
// loaded key vector serves every row from registers, each query vector every key.
template <class A, int RB, int KP, class T>
ATTNKIT_ALWAYS_INLINE void dot_rows(const float* q, index_t q_stride, const T* key,
                                    index_t key_stride, index_t vectors,
                                    xsimd::batch<float, A>* partial, index_t jj) {
  using batch = xsimd::batch<float, A>;
  constexpr index_t width = batch::size;
  batch acc[RB][KP];
  for (int r = 0; r < RB; ++r)
    for (int i = 0; i < KP; ++i) acc[r][i] = batch(0.0f);
  for (index_t c = 0; c < vectors * width; c += width) {
    batch kv[KP];
    for (int i = 0; i < KP; ++i) kv[i] = load_float<A>(key + i * key_stride + c);
    for (int r = 0; r < RB; ++r) {
      const batch qv = batch::load_aligned(q + r * q_stride + c);
      for (int i = 0; i < KP; ++i) acc[r][i] = xsimd::fma(qv, kv[i], acc[r][i]);
    }
  }
  for (int r = 0; r < RB; ++r)
    for (int i = 0; i < KP; ++i) partial[r * width + jj + i] = acc[r][i];
}

// o[r][0, CV vectors) += Σ_i p[r][j + i] · value_i for rows [0, RB) and KP consecutive tokens:
// the output rows of one head stay in L1 and are updated KP tokens at a time, so V can be
// streamed token-major like K.
template <class A, int RB, int CV, int KP, class T>
ATTNKIT_ALWAYS_INLINE void accumulate_values(const float* p, index_t p_stride, index_t j,
                                             const T* value, index_t value_stride, float* o,
                                             index_t o_stride) {
  using batch = xsimd::batch<float, A>;
  constexpr index_t width = batch::size;
  batch vv[KP][CV];
  for (int i = 0; i < KP; ++i)
    for (int c = 0; c < CV; ++c) vv[i][c] = load_float<A>(value + i * value_stride + c * width);
  for (int r = 0; r < RB; ++r) {
    batch weight[KP];
    for (int i = 0; i < KP; ++i) weight[i] = batch(p[r * p_stride + j + i]);
    float* out = o + r * o_stride;
    for (int c = 0; c < CV; ++c) {
      batch acc = batch::load_aligned(out + c * width);
      for (int i = 0; i < KP; ++i) acc = xsimd::fma(weight[i], vv[i][c], acc);
      acc.store_aligned(out + c * width);
    }
  }
}

template <class A, int RB, int KP, class T>
ATTNKIT_ALWAYS_INLINE void accumulate_values_row(const float* p, index_t p_stride, index_t j,
                                                 const T* value, index_t value_stride,
                                                 index_t vectors, float* o, index_t o_stride) {
  constexpr index_t width = xsimd::batch<float, A>::size;
  // Chunks of 4 vectors: KP·4 value vectors (16 at KP = 4) stay in registers.
  constexpr int chunk = 4;
  index_t c = 0;
  for (; c + chunk <= vectors; c += chunk)
    accumulate_values<A, RB, chunk, KP>(p, p_stride, j, value + c * width, value_stride,
                                        o + c * width, o_stride);
  switch (vectors - c) {
    case 3:
      return accumulate_values<A, RB, 3, KP>(p, p_stride, j, value + c * width, value_stride,
                                             o + c * width, o_stride);
    case 2:
      return accumulate_values<A, RB, 2, KP>(p, p_stride, j, value + c * width, value_stride,
                                             o + c * width, o_stride);
    case 1:
      return accumulate_values<A, RB, 1, KP>(p, p_stride, j, value + c * width, value_stride,
                                             o + c * width, o_stride);
    default:
      return;
  }
}

// Runs f(std::integral_constant<int, KP>{}, j) over [begin, end) in steps of 4 keys, then 1.
template <class F>
ATTNKIT_ALWAYS_INLINE void for_key_steps(index_t begin, index_t end, F&& f) {
  index_t j = begin;
  for (; j + 4 <= end; j += 4) f(std::integral_constant<int, 4>{}, j);
  for (; j < end; ++j) f(std::integral_constant<int, 1>{}, j);
}

// Calls f(std::integral_constant<int, RB>{}, first_row) for row blocks of at most row_block rows.
template <class F>
ATTNKIT_ALWAYS_INLINE void for_row_blocks(index_t rows, F&& f) {
  index_t r = 0;
  for (; r + row_block <= rows; r += row_block) f(std::integral_constant<int, row_block>{}, r);
  switch (rows - r) {
    case 3:
      return f(std::integral_constant<int, 3>{}, r);
    case 2:
      return f(std::integral_constant<int, 2>{}, r);
    case 1:
      return f(std::integral_constant<int, 1>{}, r);
    default:
      return;
  }
}

// The keys one block holds: small enough that the block's K and V rows for every head stay in
// L2 between the logit and the output pass.
inline index_t row_key_block(index_t kv_heads, index_t padded_dim) {
  const index_t fit = (65536 / (kv_heads * padded_dim)) / 16 * 16;
  return std::clamp<index_t>(fit, 16, key_block);
}

// Scratch floats row_tile needs: logits for every row of a block, `width` dot-product
// accumulators per row, and (slow path only) the block of every head staged in fp32.
template <class A>
index_t row_tile_scratch(index_t kv_heads, index_t padded_rows, index_t padded_dim) {
  constexpr index_t width = xsimd::batch<float, A>::size;
  const index_t block = row_key_block(kv_heads, padded_dim);
  return padded_rows * block + padded_rows * width * width + 2 * kv_heads * block * padded_dim;
}

template <class A, index_t D, class TKV>
void row_tile(const tile_context<TKV>& ctx, const tile_job& job, const float* q_rows, float* o_rows,
              float* m, float* l, float* scratch) {
  using batch = xsimd::batch<float, A>;
  constexpr index_t width = batch::size;
  const attention_params& p = *ctx.params;
  const index_t d = D != 0 ? D : p.head_dim;
  const index_t dp = D != 0 ? round_up(D, width) : ctx.padded_dim;
  const index_t vectors = dp / width;
  const index_t group = p.group_size;
  const index_t rows = job.rows(group);
  const index_t rows_per_head = job.tokens * group;
  const index_t block = row_key_block(job.kv_heads, dp);
  // Converting loads straight from the caller's rows need whole vectors of contiguous elements.
  const bool direct = d % width == 0 && ctx.k.col_stride == 1 && ctx.v.col_stride == 1;
  constexpr float minus_infinity = -std::numeric_limits<float>::infinity();

  float* s_rows = scratch;  // [rows][block]  logits, probabilities
  auto* partial = reinterpret_cast<batch*>(s_rows + rows * block);  // [rows][width] batches
  float* ks = s_rows + rows * block + rows * width * width;         // slow path: [heads][block][dp]
  float* vs = ks + job.kv_heads * block * dp;

  std::fill(o_rows, o_rows + rows * dp, 0.0f);
  for (index_t r = 0; r < rows; ++r) {
    m[r] = minus_infinity;
    l[r] = 0.0f;
  }
  alignas(64) float lane_offset[width];
  for (index_t i = 0; i < width; ++i) lane_offset[i] = static_cast<float>(i);
  const batch lane_index = batch::load_aligned(lane_offset);
  const bool transform = p.has_logit_transform();

  for (index_t span = 0; span < job.span_count; ++span) {
    const index_t j0 = job.spans[span].begin;
    const index_t keys = job.spans[span].size();
    const index_t padded_keys = round_up(keys, width);

    // Where this block's keys and values are read from: the caller's memory (runs of rows:
    // one for a contiguous view, one per page of a paged cache), or (slow path) an fp32 copy
    // staged head by head.
    if (!direct) {
      for (index_t h = 0; h < job.kv_heads; ++h) {
        ctx.k.for_each_run(job.kv_head + h, j0, j0 + keys, [&](index_t slot, index_t n, auto rows) {
          stage_rows<A>(rows, ctx.k.row_stride, ctx.k.col_stride, n, d,
                        ks + h * block * dp + (slot - j0) * dp, dp, dp, 1.0f);
        });
        ctx.v.for_each_run(job.kv_head + h, j0, j0 + keys, [&](index_t slot, index_t n, auto rows) {
          stage_rows<A>(rows, ctx.v.row_stride, ctx.v.col_stride, n, d,
                        vs + h * block * dp + (slot - j0) * dp, dp, dp, 1.0f);
        });
      }
    }

    // The next block streams in while this one computes: its tokens' rows of all heads are one
    // contiguous run each in NHD memory (head stride = head_dim), which is what is prefetched
    // (a paged job covers one head: its rows, page by page).
    prefetch_rows<TKV> next_k, next_v;
    if (direct && span + 1 < job.span_count &&
        (job.kv_heads == 1 || (ctx.k.head_stride == d && ctx.v.head_stride == d))) {
      const index_t next = job.spans[span + 1].begin;
      const index_t next_end = job.spans[span + 1].end;
      const index_t run_bytes = job.kv_heads * d * static_cast<index_t>(sizeof(TKV));
      next_k = prefetch_rows<TKV>(ctx.k, job.kv_head, next, next_end, run_bytes);
      next_v = prefetch_rows<TKV>(ctx.v, job.kv_head, next, next_end, run_bytes);
    }
    // Spread over the (key, head) steps of both passes below.
    const index_t steps = 2 * keys * job.kv_heads;
    const index_t lines_per_step = (next_k.lines() + next_v.lines() + steps - 1) / steps;

    // Logits, token-major: for each step of keys, every head's rows. In NHD memory a token's heads
    // are contiguous, so K is read as one sequential stream the hardware prefetchers follow.
    // `runs(begin, end, visit)` gives the keys [begin, end) of the span as runs of rows
    // visit(first_slot, count, first_row, row_stride) (key_source.hpp); a vector of keys that
    // crosses a page takes two runs into the same accumulators.
    auto logits = [&](auto&& runs, index_t k_head_stride) {
      for (index_t jb = 0; jb < keys; jb += width) {
        const index_t count = std::min(width, keys - jb);
        runs(j0 + jb, j0 + jb + count, [&](index_t slot, index_t n, auto k_run, index_t stride) {
          const index_t lane = slot - (j0 + jb);
          for_key_steps(0, n, [&](auto kp, index_t i) {
            constexpr int KP = decltype(kp)::value;
            for (index_t h = 0; h < job.kv_heads; ++h) {
              next_k.issue(lines_per_step * KP);
              const auto* key = k_run + i * stride + h * k_head_stride;
              const float* q = q_rows + h * rows_per_head * dp;
              batch* head_partial = partial + h * rows_per_head * width;
              for_row_blocks(rows_per_head, [&](auto rb, index_t r) {
                dot_rows<A, decltype(rb)::value, KP>(q + r * dp, dp, key, stride, vectors,
                                                     head_partial + r * width, lane + i);
              });
            }
          });
        });
        for (index_t r = 0; r < rows; ++r) {
          for (index_t jj = count; jj < width; ++jj) partial[r * width + jj] = batch(0.0f);
          reduce_rows<A>(partial + r * width).store_aligned(s_rows + r * block + jb);
        }
      }
    };
    // The caller's rows, run by run; or the staged block, one run.
    auto source_runs = [&](const row_source<TKV>& source) {
      return [&source, &job](index_t begin, index_t end, auto&& visit) {
        source.for_each_run(job.kv_head, begin, end, [&](index_t slot, index_t n, const TKV* run) {
          visit(slot, n, run, source.row_stride);
        });
      };
    };
    auto staged_runs = [&](const float* staged) {
      return [staged, j0, dp](index_t begin, index_t end, auto&& visit) {
        visit(begin, end - begin, staged + (begin - j0) * dp, dp);
      };
    };
    if (direct)
      logits(source_runs(ctx.k), ctx.k.head_stride);
    else
      logits(staged_runs(ks), block * dp);

    for (index_t r = 0; r < rows; ++r) {
      float* row = s_rows + r * block;
      const position q_pos = p.query_position(job.row_token(r, group));
      const head_index head = job.row_head(r, group);
      if (transform) {
        const batch slope(p.alibi_slopes != nullptr ? p.alibi_slopes[head * p.alibi_stride] : 0.0f);
        for (index_t jb = 0; jb < padded_keys; jb += width) {
          const batch distance =
              xsimd::abs(batch(static_cast<float>(q_pos - j0 - jb)) - lane_index);
          transform_logits<A>(p, batch::load_aligned(row + jb), slope, distance)
              .store_aligned(row + jb);
        }
      }
      if (job.spans[span].kind == tile_kind::partial)
        ctx.mask_row(ctx.mask, q_pos, head, {j0, j0 + keys}, row, 1);
      for (index_t j = keys; j < padded_keys; ++j) row[j] = minus_infinity;

      batch block_max(minus_infinity);
      for (index_t jb = 0; jb < padded_keys; jb += width)
        block_max = xsimd::max(block_max, batch::load_aligned(row + jb));
      const float new_max = std::max(m[r], horizontal_max<A>(block_max));
      // A row with no visible key yet keeps max -inf; shifting by 0 keeps its exponentials
      // exact zeros instead of NaN.
      const float shift = new_max == minus_infinity ? 0.0f : new_max;
      batch sum(0.0f);
      for (index_t jb = 0; jb < padded_keys; jb += width) {
        const batch e = exp2<A>(batch::load_aligned(row + jb) - batch(shift));
        e.store_aligned(row + jb);
        sum += e;
      }
      const float alpha = std::exp2(m[r] - shift);
      l[r] = l[r] * alpha + xsimd::hadd(sum);
      m[r] = new_max;
      if (float* observed = ctx.observed_row(job.row_token(r, group), head))
        keep_observed<A>(observed, job.spans[0].begin, j0, keys, row, 1, new_max,
                         job.observed_reference[r]);
      if (alpha != 1.0f) {
        float* out = o_rows + r * dp;
        for (index_t c = 0; c < dp; c += width)
          (batch::load_aligned(out + c) * batch(alpha)).store_aligned(out + c);
      }
    }

    // Output, token-major like the logits, so V is one sequential stream too.
    auto values = [&](auto&& runs, index_t v_head_stride) {
      runs(j0, j0 + keys, [&](index_t slot, index_t n, auto v_run, index_t stride) {
        for_key_steps(0, n, [&](auto kp, index_t i) {
          constexpr int KP = decltype(kp)::value;
          const index_t jj = slot - j0 + i;
          for (index_t h = 0; h < job.kv_heads; ++h) {
            next_v.issue(lines_per_step * KP);
            next_k.issue(lines_per_step * KP);
            const auto* value = v_run + i * stride + h * v_head_stride;
            const index_t first = h * rows_per_head;
            for_row_blocks(rows_per_head, [&](auto rb, index_t r) {
              constexpr int RB = decltype(rb)::value;
              accumulate_values_row<A, RB, KP>(s_rows + (first + r) * block, block, jj, value,
                                               stride, vectors, o_rows + (first + r) * dp, dp);
            });
          }
        });
      });
    };
    if (direct)
      values(source_runs(ctx.v), ctx.v.head_stride);
    else
      values(staged_runs(vs), block * dp);
  }
}

}  // namespace simd
}  // namespace detail
}  // namespace attnkit
