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
//   logits:  for four keys at a time, dot products of a block of rows (row_shape) with each
//            key, accumulated in registers over the head dimension; each four keys'
//            accumulators are folded into one vector at once, and a vector of `width` keys'
//            folds into one vector of logits per row (the transposing reduction of
//            vector_math.hpp, in two halves).
//   output:  token-major as well: per 16 tokens (a value step) and head, a few vectors of a
//            block of rows' output (row_shape) are held in registers while each token's value
//            vectors are loaded once and added into them.
//
// The two are software-pipelined over key blocks: a block's logits are computed a vector of keys
// at a time interleaved with the previous block's output, so K and V stream from memory together.
// In a contiguous view every line is prefetched about 32 KiB of rows before it is read, and the
// next ~16 KiB of each stream while a block's softmax runs.
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
#include <type_traits>
#include <utility>

#include "attnkit/backend/simd/convert.hpp"
#include "attnkit/backend/simd/tile.hpp"
#include "attnkit/backend/simd/vector_math.hpp"

namespace attnkit {
namespace detail {
namespace simd {

inline constexpr int key_step = 4;  // keys whose K (or V) rows one step of the kernel reads at once
inline constexpr int value_step = 16;  // tokens whose values one output step adds

// Register blocking by vector width, as gemm_shape: a logits step holds key_rows x key_step
// accumulators, key_step key vectors and a query vector; an output step value_rows x
// value_vectors accumulators, value_vectors value vectors and a weight. 32 registers (AVX-512)
// afford 4 rows and 4 vectors in both (21 registers). 16 (AVX2 and narrower) do not: 4 x 4
// spilled, and 2 x 4 logits (13 registers) with 4 x 2 output (11) ran a warm decode 16 % faster
// on a Zen 4 VM without AVX-512 (4 x 3 output, 16 registers, a further 1 %; bench/RESULTS.md).
template <class A>
struct row_shape {
  static constexpr bool wide = xsimd::batch<float, A>::size >= 16;
  static constexpr int key_rows = wide ? 4 : 2;
  static constexpr int value_rows = 4;
  static constexpr int value_vectors = wide ? 4 : 2;
};

// Calls f(std::integral_constant<int, N>{}, first) for blocks of [first, end): blocks of N, then
// the rest as one smaller block (the register-blocked steps take their block sizes at compile
// time).
template <int N, class F>
ATTNKIT_ALWAYS_INLINE void for_blocks(index_t first, index_t end, F&& f) {
  index_t i = first;
  for (; i + N <= end; i += N) f(std::integral_constant<int, N>{}, i);
  if constexpr (N > 1)
    if (i < end) for_blocks<N - 1>(i, end, f);
}

// Dot products of rows [0, RB) (queries at q, rows q_stride apart) with KP consecutive keys
// (key, key + key_stride, ...; `vectors` vectors each), left in acc[r][i] as vectors whose lanes
// sum to the dot product. Each loaded key vector serves every row from registers, each query
// vector every key. A nonzero `ahead` prefetches the same lines of the keys `ahead` elements
// further on, one line per line read.
template <class A, int RB, int KP, class T>
ATTNKIT_ALWAYS_INLINE void dot_rows(const float* q, index_t q_stride, const T* key,
                                    index_t key_stride, index_t vectors,
                                    xsimd::batch<float, A> (&acc)[RB][KP], index_t ahead = 0) {
  using batch = xsimd::batch<float, A>;
  constexpr index_t width = batch::size;
  for (int r = 0; r < RB; ++r)
    for (int i = 0; i < KP; ++i) acc[r][i] = batch(0.0f);
  for (index_t c = 0; c < vectors * width; c += width) {
    batch kv[KP];
    if (ahead != 0 && (c * static_cast<index_t>(sizeof(T))) % 64 == 0)
      for (int i = 0; i < KP; ++i) prefetch_line(key + i * key_stride + c + ahead);
    for (int i = 0; i < KP; ++i) kv[i] = load_float<A>(key + i * key_stride + c);
    for (int r = 0; r < RB; ++r) {
      batch qv = batch::load_aligned(q + r * q_stride + c);
      pin_to_register(qv);  // one load per query vector, not one per key (vector_math.hpp)
      for (int i = 0; i < KP; ++i) acc[r][i] = xsimd::fma(qv, kv[i], acc[r][i]);
    }
  }
}

// o[r][0, CV vectors) += Σ_t p[r][j + t] · value_t for rows [0, RB) and T consecutive tokens:
// the output rows of one head stay in L1, and these CV vectors of them in registers across the
// T tokens (loaded and stored once per step), so V is streamed token-major like K, each value
// vector loaded once for every row. A nonzero `ahead` prefetches the lines read `ahead` elements
// on.
template <class A, int RB, int CV, int T, class TV>
ATTNKIT_ALWAYS_INLINE void accumulate_values_tokens(const float* p, index_t p_stride, index_t j,
                                                    const TV* value, index_t value_stride, float* o,
                                                    index_t o_stride, index_t ahead) {
  using batch = xsimd::batch<float, A>;
  constexpr index_t width = batch::size;
  batch acc[RB][CV];
  for (int r = 0; r < RB; ++r)
    for (int c = 0; c < CV; ++c) acc[r][c] = batch::load_aligned(o + r * o_stride + c * width);
  for (int t = 0; t < T; ++t) {
    const TV* row = value + t * value_stride;
    if (ahead != 0)
      for (index_t b = 0; b < CV * width * static_cast<index_t>(sizeof(TV)); b += 64)
        prefetch_line(reinterpret_cast<const char*>(row + ahead) + b);
    batch vv[CV];
    for (int c = 0; c < CV; ++c) vv[c] = load_float<A>(row + c * width);
    for (int r = 0; r < RB; ++r) {
      const batch weight(p[r * p_stride + j + t]);
      for (int c = 0; c < CV; ++c) acc[r][c] = xsimd::fma(weight, vv[c], acc[r][c]);
    }
  }
  for (int r = 0; r < RB; ++r)
    for (int c = 0; c < CV; ++c) acc[r][c].store_aligned(o + r * o_stride + c * width);
}

template <class A, int RB, int KP, class T>
ATTNKIT_ALWAYS_INLINE void accumulate_values_row(const float* p, index_t p_stride, index_t j,
                                                 const T* value, index_t value_stride,
                                                 index_t vectors, float* o, index_t o_stride,
                                                 index_t ahead = 0) {
  constexpr index_t width = xsimd::batch<float, A>::size;
  for_blocks<row_shape<A>::value_vectors>(0, vectors, [&](auto cv, index_t c) {
    accumulate_values_tokens<A, RB, decltype(cv)::value, KP>(
        p, p_stride, j, value + c * width, value_stride, o + c * width, o_stride, ahead);
  });
}

// Runs f(std::integral_constant<int, KP>{}, j) over [begin, end) in steps of key_step keys, then 1.
template <class F>
ATTNKIT_ALWAYS_INLINE void for_key_steps(index_t begin, index_t end, F&& f) {
  index_t j = begin;
  for (; j + key_step <= end; j += key_step) f(std::integral_constant<int, key_step>{}, j);
  for (; j < end; ++j) f(std::integral_constant<int, 1>{}, j);
}

// The same in steps of value_step tokens first: the output step holds its accumulators in
// registers across the step, so longer steps load and store them less often.
template <class F>
ATTNKIT_ALWAYS_INLINE void for_value_steps(index_t begin, index_t end, F&& f) {
  index_t j = begin;
  for (; j + value_step <= end; j += value_step) f(std::integral_constant<int, value_step>{}, j);
  for_key_steps(j, end, f);
}

// The keys one block holds. The staged path copies the block's K and V rows of every head to fp32
// scratch, which must stay in L2 from the logit to the output pass; the direct path keeps only
// two blocks of logits per row (L1). At most key_block (64): 128-key blocks ran a warm one-core
// decode 2 % faster on Zen 4 and a cold two-thread one no faster (bench/RESULTS.md).
inline index_t row_key_block(index_t kv_heads, index_t padded_dim) {
  const index_t fit = (65536 / (kv_heads * padded_dim)) / 16 * 16;
  return std::clamp<index_t>(fit, 16, key_block);
}

// Scratch floats row_tile needs: logits of two blocks for every row (one block's logits are
// computed while the previous block's probabilities weight its values), per row `width`
// dot-product accumulators and width / 4 folded ones, and (slow path only) the block of every
// head staged in fp32.
template <class A>
index_t row_tile_scratch(index_t kv_heads, index_t padded_rows, index_t padded_dim) {
  constexpr index_t width = xsimd::batch<float, A>::size;
  const index_t block = row_key_block(kv_heads, padded_dim);
  return 2 * padded_rows * block + padded_rows * (width + width / 4) * width +
         2 * kv_heads * block * padded_dim;
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

  float* s_rows[2] = {scratch, scratch + rows * block};  // [rows][block] logits, probabilities
  // Dot-product accumulators of one vector of keys: four keys' accumulators of a row are folded
  // into one vector (fold_quads) as soon as they are complete, which keeps this scratch small
  // enough for L1 beside the queries and outputs; keys that do not come as an aligned four (a
  // run of a paged cache that starts or ends mid-quad) keep theirs unfolded until the vector
  // is complete.
  constexpr index_t quads = width / 4;
  auto* partial = reinterpret_cast<batch*>(scratch + 2 * rows * block);     // [rows][width]
  batch* folded = partial + rows * width;                                   // [rows][quads]
  float* ks = scratch + 2 * rows * block + rows * (width + quads) * width;  // [heads][block][dp]
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
  // Prefetching whole next blocks needs a block's rows of every head of the job to be one run per
  // token: NHD memory with head stride = head_dim, or a job of one KV head.
  const bool prefetch =
      direct && (job.kv_heads == 1 || (ctx.k.head_stride == d && ctx.v.head_stride == d));

  // Where a block's keys and values are read from: `runs(begin, end, visit)` gives the keys
  // [begin, end) as runs of rows visit(first_slot, count, first_row, row_stride): the caller's
  // memory (one run for a contiguous view, one per page of a paged cache, key_source.hpp), or
  // (slow path) the fp32 copy staged head by head, one run.
  auto source_runs = [&](const row_source<TKV>& source) {
    return [&source, &job](index_t begin, index_t end, auto&& visit) {
      source.for_each_run(job.kv_head, begin, end, [&](index_t slot, index_t n, const TKV* run) {
        visit(slot, n, run, source.row_stride);
      });
    };
  };
  auto staged_runs = [dp](const float* staged, index_t j0) {
    return [staged, j0, dp](index_t begin, index_t end, auto&& visit) {
      visit(begin, end - begin, staged + (begin - j0) * dp, dp);
    };
  };

  // Three kinds of software prefetch keep memory requests in flight while the core computes:
  //  - near: in a contiguous view, every K and V line is prefetched `lead` tokens before it is
  //    read, spread evenly through the arithmetic (one prefetch per line the kernel consumes;
  //    burst-issuing the same lines stalls the loads behind them). The kernel reads a step of
  //    key_step tokens at once, so the lead is that step plus about 32 KiB of rows. The lead is
  //    what the slowest-to-answer memory needs: on the VM where it was first tuned, leads of 2 KiB
  //    and more measured alike; on a Zen 4 VM with more bandwidth, 2 KiB gave 0.75-0.8 of the
  //    cold decode throughput of 24-64 KiB (which measured alike; bench/RESULTS.md);
  //  - next span: where the next keys are not the continuation of the current ones (a paged
  //    cache's pages, a sparse selection's jumps, the first block), that span's rows are
  //    trickled into L2 a few lines per (key, head) step;
  //  - softmax phase: a block's softmax works in L1 and would leave memory idle, so meanwhile the
  //    next ~16 KiB of K (past the last step's lead) and of V (this block's values, read with the
  //    next block's logits) are asked for, a few lines per row (cold probe, paired alternations:
  //    1.2-2.7 % faster; bench/RESULTS.md).
  const bool near_prefetch = prefetch && !ctx.k.is_paged() && !ctx.v.is_paged();
  const index_t row_bytes = job.kv_heads * d * static_cast<index_t>(sizeof(TKV));
  const index_t lead = key_step + std::max<index_t>(1, 32768 / row_bytes);
  const index_t k_ahead = near_prefetch ? lead * ctx.k.row_stride : 0;
  const index_t v_ahead = near_prefetch ? lead * ctx.v.row_stride : 0;
  const index_t near_end = job.span_count > 0 ? job.spans[job.span_count - 1].end - lead : 0;
  prefetch_rows<TKV> next_k, next_v;
  index_t lines_per_step = 0;
  auto issue_prefetches = [&](index_t steps) {
    next_k.issue(lines_per_step * steps);
    next_v.issue(lines_per_step * steps);
  };

  // Output, token-major like the logits, so V is one sequential stream too: adds the values of
  // keys [from, to) of span s, weighted by their probabilities `probabilities` [rows][block],
  // into the output rows (kept in L1), a value step (16 tokens) of a head at a time.
  auto add_values = [&](index_t s, const float* probabilities, index_t from, index_t to) {
    const index_t j0 = job.spans[s].begin;
    auto body = [&](auto&& runs, index_t v_head_stride) {
      runs(j0 + from, j0 + to, [&](index_t slot, index_t n, auto v_run, index_t stride) {
        for_value_steps(0, n, [&](auto kp, index_t i) {
          constexpr int KP = decltype(kp)::value;
          const index_t jj = slot - j0 + i;
          const index_t ahead = slot + i + KP <= near_end ? v_ahead : 0;
          for (index_t h = 0; h < job.kv_heads; ++h) {
            issue_prefetches(KP);
            const auto* value = v_run + i * stride + h * v_head_stride;
            const index_t first = h * rows_per_head;
            for_blocks<row_shape<A>::value_rows>(0, rows_per_head, [&](auto rb, index_t r) {
              constexpr int RB = decltype(rb)::value;
              accumulate_values_row<A, RB, KP>(probabilities + (first + r) * block, block, jj,
                                               value, stride, vectors, o_rows + (first + r) * dp,
                                               dp, r == 0 ? ahead : 0);
            });
          }
        });
      });
    };
    if (direct)
      body(source_runs(ctx.v), ctx.v.head_stride);
    else
      body(staged_runs(vs, j0), block * dp);
  };

  // Software pipelining over blocks: block b's logits are computed interleaved, a vector of keys
  // at a time, with block b-1's values (`pending`), so K and V stream from memory at the same time
  // and the hardware prefetchers run ahead on two streams instead of one (see bench/RESULTS.md for
  // what this and the near prefetch gained). The staged slow path keeps one block at a time: its
  // staging buffers hold one block.
  index_t pending = -1, pending_done = 0;  // span whose values are due, keys of it added
  auto advance_pending = [&](index_t keys) {
    if (pending < 0) return;
    const index_t to = std::min(pending_done + keys, job.spans[pending].size());
    if (to > pending_done) add_values(pending, s_rows[pending % 2], pending_done, to);
    pending_done = to;
  };
  // No span is longer than a block.
  auto finish_pending = [&] { advance_pending(block); };

  for (index_t span = 0; span < job.span_count; ++span) {
    if (job.warm != nullptr && 2 * span >= job.span_count) {
      const index_t spans_left = job.span_count - span;
      job.warm->issue((job.warm->lines() + spans_left - 1) / spans_left);
    }
    const index_t j0 = job.spans[span].begin;
    const index_t keys = job.spans[span].size();
    const index_t padded_keys = round_up(keys, width);
    // The next span's keys follow this span's in memory (the near prefetch runs on into them).
    const bool next_continues = span + 1 < job.span_count && job.spans[span + 1].begin == j0 + keys;
    float* s_block = s_rows[span % 2];

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

    // The next span's keys and this span's values (read with the next span's keys) are
    // trickled in where near prefetch does not reach them: their tokens' rows of all heads are
    // one run each in NHD memory (head stride = head_dim); a paged job covers one head: its
    // rows, page by page.
    if (prefetch) {
      const bool k_jump = span + 1 < job.span_count && (!near_prefetch || !next_continues);
      const bool v_jump =
          !near_prefetch || span == 0 || job.spans[span].begin != job.spans[span - 1].end;
      next_k = k_jump ? prefetch_rows<TKV>(ctx.k, job.kv_head, job.spans[span + 1].begin,
                                           job.spans[span + 1].end, row_bytes)
                      : prefetch_rows<TKV>();
      next_v = v_jump ? prefetch_rows<TKV>(ctx.v, job.kv_head, j0, j0 + keys, row_bytes)
                      : prefetch_rows<TKV>();
      const index_t pending_keys = pending < 0 ? 0 : job.spans[pending].size() - pending_done;
      const index_t steps = (keys + pending_keys) * job.kv_heads;
      lines_per_step = (std::max(next_k.lines(), next_v.lines()) + steps - 1) / steps;
    }

    // Logits, token-major: for each step of keys, every head's rows. In NHD memory a token's heads
    // are contiguous, so K is read as one sequential stream the hardware prefetchers follow. A
    // vector of keys that crosses a page takes two runs into the same accumulators.
    auto logits = [&](auto&& runs, index_t k_head_stride) {
      for (index_t jb = 0; jb < keys; jb += width) {
        const index_t count = std::min(width, keys - jb);
        unsigned folded_quads = 0;  // bit g: quad g of this vector is in `folded`
        runs(j0 + jb, j0 + jb + count, [&](index_t slot, index_t n, auto k_run, index_t stride) {
          const index_t lane = slot - (j0 + jb);
          for_key_steps(0, n, [&](auto kp, index_t i) {
            constexpr int KP = decltype(kp)::value;
            const index_t first_lane = lane + i;
            const index_t ahead = slot + i + KP <= near_end ? k_ahead : 0;
            const bool fold = KP == 4 && first_lane % 4 == 0;
            if (fold) folded_quads |= 1u << (first_lane / 4);
            for (index_t h = 0; h < job.kv_heads; ++h) {
              issue_prefetches(KP);
              const auto* key = k_run + i * stride + h * k_head_stride;
              const float* q = q_rows + h * rows_per_head * dp;
              for_blocks<row_shape<A>::key_rows>(0, rows_per_head, [&](auto rb, index_t r) {
                constexpr int RB = decltype(rb)::value;
                batch acc[RB][KP];
                dot_rows<A, RB, KP>(q + r * dp, dp, key, stride, vectors, acc, r == 0 ? ahead : 0);
                const index_t row = h * rows_per_head + r;
                for (int rr = 0; rr < RB; ++rr) {
                  if constexpr (KP == 4) {
                    if (fold) {
                      folded[(row + rr) * quads + first_lane / 4] =
                          fold_quads<A>(acc[rr][0], acc[rr][1], acc[rr][2], acc[rr][3]);
                      continue;
                    }
                  }
                  for (int k = 0; k < KP; ++k)
                    partial[(row + rr) * width + first_lane + k] = acc[rr][k];
                }
              });
            }
          });
        });
        advance_pending(count);
        for (index_t r = 0; r < rows; ++r) {
          batch* row_partial = partial + r * width;
          batch* row_folded = folded + r * quads;
          for (index_t g = 0; g < quads; ++g) {
            if (folded_quads >> g & 1u) continue;
            for (index_t k = 4 * g; k < 4 * g + 4; ++k)
              if (k >= count) row_partial[k] = batch(0.0f);
            row_folded[g] = fold_quads<A>(row_partial[4 * g], row_partial[4 * g + 1],
                                          row_partial[4 * g + 2], row_partial[4 * g + 3]);
          }
          fold_lanes<A>(row_folded).store_aligned(s_block + r * block + jb);
        }
      }
    };
    if (direct)
      logits(source_runs(ctx.k), ctx.k.head_stride);
    else
      logits(staged_runs(ks, j0), block * dp);
    // The previous block's values must all be in before the softmax below rescales the output.
    finish_pending();

    // Softmax-phase prefetch (see above): ~16 KiB of each stream, a line of K and one of V at a
    // time, 8 per row for 8 fp16 heads of 128. Only where the job's heads fill whole token rows,
    // so that those tokens are one region, and for K only where the next span continues this one.
    const char* softmax_k = nullptr;
    const char* softmax_v = nullptr;
    index_t softmax_bytes = 0, softmax_step = 0;
    if (near_prefetch && job.kv_heads * d == ctx.k.row_stride &&
        job.kv_heads * d == ctx.v.row_stride) {
      const index_t tokens = std::max<index_t>(1, 16384 / row_bytes);
      const index_t k_from = j0 + keys + lead, v_from = j0 + lead;
      if (next_continues && k_from + tokens <= job.spans[job.span_count - 1].end)
        softmax_k = reinterpret_cast<const char*>(ctx.k.row(job.kv_head, k_from));
      if (v_from + tokens <= j0 + keys)
        softmax_v = reinterpret_cast<const char*>(ctx.v.row(job.kv_head, v_from));
      softmax_bytes = tokens * row_bytes;
      softmax_step = round_up(softmax_bytes / 64, rows) / rows * 64;  // bytes per row
    }

    for (index_t r = 0; r < rows; ++r) {
      for (index_t b = r * softmax_step; b < std::min(softmax_bytes, (r + 1) * softmax_step);
           b += 64) {
        if (softmax_k != nullptr) prefetch_line(softmax_k + b);
        if (softmax_v != nullptr) prefetch_line(softmax_v + b);
      }
      float* row = s_block + r * block;
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
      float log2_count;
      if (const index_t c = merged_column(p, head / group, j0, keys, log2_count); c >= 0)
        row[c] += log2_count;
      for (index_t j = keys; j < padded_keys; ++j) row[j] = minus_infinity;

      batch block_max(minus_infinity);
      for (index_t jb = 0; jb < padded_keys; jb += width)
        block_max = xsimd::max(block_max, batch::load_aligned(row + jb));
      const float new_max = std::max(m[r], horizontal_max<A>(block_max));
      // A row with no visible key yet keeps max -inf; shifting by 0 keeps its exponentials
      // exact zeros instead of NaN.
      const float shift = new_max == minus_infinity ? 0.0f : new_max;
      // The exponentials; an observed row keeps them (keep_observed's values, the same bits)
      // from the same registers, where its kept row is vector-aligned, instead of in a second
      // pass over the row (a call per row and block: ~1-2 % of an observed 32K decode step).
      batch sum(0.0f);
      auto exponentials = [&](auto* kept, float kept_scale) {
        using Kept = std::remove_pointer_t<decltype(kept)>;
        for (index_t jb = 0; jb < padded_keys; jb += width) {
          const batch e = exp2<A>(batch::load_aligned(row + jb) - batch(shift));
          e.store_aligned(row + jb);
          sum += e;
          if constexpr (!std::is_void_v<Kept>)
            if (jb + width <= keys)
              store_from_float<A>(kept + jb, e * batch(kept_scale), ctx.observed_streaming);
        }
      };
      bool exponentiated = false;
      if (ctx.observed_values != nullptr)  // observed_reference is null without an observer
        with_observed_row(ctx, job.row_token(r, group), head, [&](auto* kept_row) {
          const float scale = observed_scale<A>(kept_row, job.spans[0].begin, j0, new_max,
                                                job.observed_reference[r]);
          auto* kept = kept_row + j0;
          const index_t fused = kept_vector_aligned<A>(kept) ? keys / width * width : 0;
          if (fused > 0)
            exponentials(kept, scale);
          else
            exponentials(static_cast<void*>(nullptr), 1.0f);
          store_kept<A>(kept + fused, keys - fused, row + fused, 1, scale, ctx.observed_streaming);
          exponentiated = true;
        });
      if (!exponentiated) exponentials(static_cast<void*>(nullptr), 1.0f);
      const float alpha = std::exp2(m[r] - shift);
      l[r] = l[r] * alpha + xsimd::hadd(sum);
      m[r] = new_max;
      if (alpha != 1.0f) {
        float* out = o_rows + r * dp;
        for (index_t c = 0; c < dp; c += width)
          (batch::load_aligned(out + c) * batch(alpha)).store_aligned(out + c);
      }
    }

    if (direct) {
      pending = span;
      pending_done = 0;
    } else {
      add_values(span, s_block, 0, keys);
    }
  }
  // The last span's trickle targets the values read now: nothing left to prefetch.
  lines_per_step = 0;
  finish_pending();
}

}  // namespace simd
}  // namespace detail
}  // namespace attnkit
