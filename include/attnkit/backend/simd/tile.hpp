// attnkit — what the CPU backend's two tile kernels share: the work item, the per-call context,
// and the logit pipeline (scale folded into the queries, softcap, ALiBi, base-2 softmax).
//
// Both tile kernels (column_tile.hpp for prefill, row_tile.hpp for decode) run the
// FlashAttention-2 loop: stream the key range in blocks, compute the block's logits, update a
// running maximum m and sum l per query row (online softmax, base 2), rescale the accumulated
// output by 2^(m_old - m_new), add P·V. Inputs: staged, pre-scaled query rows; outputs:
// unnormalised output rows, m and l per row, for the driver to normalise or merge.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "attnkit/backend/simd/convert.hpp"
#include "attnkit/backend/simd/key_source.hpp"
#include "attnkit/backend/simd/vector_math.hpp"
#include "attnkit/core/options.hpp"
#include "attnkit/core/simd_include.hpp"
#include "attnkit/core/softmax_state.hpp"
#include "attnkit/core/tensor_view.hpp"
#include "attnkit/mask/key_spans.hpp"
#include "attnkit/mask/tile.hpp"

namespace attnkit {
namespace detail {
namespace simd {

inline constexpr index_t key_block = 64;  // keys per block: Sᵀ block 64 x 64 floats stays in L1

constexpr index_t round_up(index_t value, index_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

// One work item: a tile of query tokens for `kv_heads` consecutive KV heads (with all their
// query heads), over a list of key spans. Its rows are ordered (KV head, token, query head in
// group): row r is token  token_begin + (r / group) % tokens  of query head
// kv_head·group + r % group + (r / (tokens·group))·group.
struct tile_job {
  index_t kv_head = 0;
  index_t kv_heads = 1;
  index_t token_begin = 0;
  index_t tokens = 0;
  const key_span* spans = nullptr;  // the keys to visit, in order (see mask/key_spans.hpp)
  index_t span_count = 0;
  // Observed rows only: the kernel's reference per row (see keep_observed), -inf on entry.
  float* observed_reference = nullptr;  // [rows]
  // Memory the item reads right after the kernel (an observer's table rows, run_attention),
  // brought towards the core a few lines per span over the job's second half, so that it
  // arrives while the core computes and stays cached until then. A hint: kernels may ignore it.
  prefetch_stream* warm = nullptr;

  index_t rows(index_t group) const noexcept { return kv_heads * tokens * group; }
  index_t row_token(index_t r, index_t group) const noexcept {
    return token_begin + (r / group) % tokens;
  }
  index_t row_head(index_t r, index_t group) const noexcept {
    return kv_head * group + (r / (tokens * group)) * group + r % group;
  }
};

// Sets the logits of keys that query q of head h does not see to -inf: logits[(j - kv.begin) ·
// stride] for j in kv. The tile kernels call it on partial spans only, through a function
// pointer, so that they are compiled once per (architecture, head dim, K/V type) whatever the
// mask: the per-row masking is a small part of a partial span's cost and no part of a full one.
template <class Mask>
void mask_row(const void* mask, position q, head_index h, position_range kv, float* logits,
              index_t stride) {
  constexpr float minus_infinity = -std::numeric_limits<float>::infinity();
  position next = kv.begin;
  for_each_visible_run(*static_cast<const Mask*>(mask), q, h, kv, [&](position b, position e) {
    for (; next < b; ++next) logits[(next - kv.begin) * stride] = minus_infinity;
    next = e;
  });
  for (; next < kv.end; ++next) logits[(next - kv.begin) * stride] = minus_infinity;
}

// Everything a tile kernel reads that is the same for every work item of a call (for a paged
// cache with per-head lengths, of every work item of one KV head: `params` then holds that
// head's length as kv_tokens, so query positions are the head's own slots).
template <class TKV>
struct tile_context {
  row_source<TKV> k;  // K and V rows (backend/simd/key_source.hpp)
  row_source<TKV> v;
  const attention_params* params;
  index_t padded_dim;   // head_dim rounded up to the vector width
  index_t padded_rows;  // rows of the largest tile rounded up to the vector width
  const void* mask = nullptr;
  void (*mask_row)(const void*, position, head_index, position_range, float*, index_t) = nullptr;
  // Observed rows (query tokens >= observed_first_token) keep their exponentials here (see
  // keep_observed): the row of (token, head) starts ((token - observed_first_token) · kept_heads
  // + head - kept_first_head) · observed_stride elements in (a stride of the call's longest KV
  // head, rounded up so that rows start on a cache line); null without an observer. A call's
  // buffer holds every observed row (kept_heads = q_heads, kept_first_head = 0); a work item that
  // delivers its own rows keeps them in a buffer of its own heads (run_attention). The elements
  // are float, or half where the observer allows (observed_precision::half): then
  // observed_in_half. observed_streaming: written with stores that bypass the caches, for rows
  // read back only after the rest of the call's K/V stream.
  void* observed_values = nullptr;
  index_t observed_first_token = 0;
  index_t observed_stride = 0;
  index_t kept_heads = 0;
  head_index kept_first_head = 0;
  bool observed_in_half = false;
  bool observed_streaming = true;

  // The index of an observed row (token >= observed_first_token) among the call's observed rows.
  index_t observed_slot(index_t token, head_index head) const noexcept {
    return (token - observed_first_token) * params->q_heads + head;
  }
  template <class Kept>
  Kept* observed_row(index_t token, head_index head) const noexcept {
    if (observed_values == nullptr || token < observed_first_token) return nullptr;
    const index_t row = (token - observed_first_token) * kept_heads + head - kept_first_head;
    return static_cast<Kept*>(observed_values) + row * observed_stride;
  }
};

// How far above an observed row's reference a kept exponential may go before the row's kept
// values are rebased: 2^64 stays well inside fp32; 2^15 is the largest power of two that fp16
// holds (its largest finite value is 65504).
template <class Kept>
inline constexpr float observed_headroom = std::is_same_v<Kept, half> ? 15.0f : 64.0f;

// values[j] ·= 2^exponent for j in [0, count), exponent < 0: a row's earlier kept values moved
// to a new reference (keep_observed).
template <class A, class Kept>
void rebase_kept(Kept* values, index_t count, float exponent) {
  if constexpr (std::is_same_v<Kept, float>) {
    scale_by_exp2<A>(values, values, count, exponent);
  } else {
    using batch = xsimd::batch<float, A>;
    constexpr index_t width = batch::size;
    const float factor = std::exp2(exponent);  // products below fp16's range round to 0 anyway
    index_t j = 0;
    for (; j + width <= count; j += width)
      store_from_float<A>(values + j, load_float<A>(values + j) * batch(factor), false);
    for (; j < count; ++j) values[j] = Kept(to_float(values[j]) * factor);
  }
}

// Keeps one observed row's exponentials of a span for the observer pass, so that pass needs one
// multiply per key instead of an exp2 over logits read back from memory.
//
// The online softmax leaves e_j = 2^(s_j - running_max) in the span (running_max: the row's
// maximum after this span; while it is -inf every e_j is 0). What is kept is 2^(s_j - reference)
// with one reference per (row, work item): the observer pass turns it into the probability with
// the factor 2^(reference - lse), once the row's log-sum-exp is final. The running maximum never
// falls, so the first finite maximum serves as the reference until a later one exceeds it by
// observed_headroom; then the item's earlier keys [first_key, j0) are rebased once — at most
// (logit range / headroom) times per item, rarely for ordinary logit ranges. Kept: float, or
// half (observed_precision::half: each value rounded once more per rebase).
//
// Two halves, so that a kernel can store the kept values in the loop that computes the e_j
// (row_tile) or afterwards (keep_observed): observed_scale moves the reference (rebasing the
// item's earlier keys of the row, indexed by key) and returns the factor that takes this span's
// e_j to the reference; store_kept writes e_j times that factor, e_j at e[j · e_stride].
template <class A, class Kept>
float observed_scale(Kept* row, index_t first_key, index_t j0, float running_max,
                     float& reference) {
  constexpr float minus_infinity = -std::numeric_limits<float>::infinity();
  if (running_max == minus_infinity) return 1.0f;  // every e_j is 0
  if (reference == minus_infinity) {
    reference = running_max;  // every earlier kept value of the item is 0
  } else if (running_max - reference > observed_headroom<Kept>) {
    rebase_kept<A>(row + first_key, j0 - first_key, reference - running_max);
    reference = running_max;
  } else if (running_max != reference) {
    return std::exp2(running_max - reference);
  }
  return 1.0f;
}

// Kept values read back only by the observer pass after the call's whole K/V stream go out with
// streaming stores (tile_context::observed_streaming): they skip reading each line for ownership
// and leave the caches to K and V (with the pool's spinning workers, observer overhead of a 32K
// decode step 9.0-9.8 -> 4.1-5.6 %, bench/RESULTS.md). run_attention fences before the pass.
// Streaming stores need aligned addresses: where a vector of `destination` is aligned.
template <class A, class Kept>
bool kept_vector_aligned(const Kept* destination) noexcept {
  constexpr std::uintptr_t alignment = xsimd::batch<float, A>::size * sizeof(Kept);
  return reinterpret_cast<std::uintptr_t>(destination) % alignment == 0;
}

template <class A, class Kept>
void store_kept(Kept* destination, index_t keys, const float* e, index_t e_stride, float scale,
                bool streaming) {
  using batch = xsimd::batch<float, A>;
  constexpr index_t width = batch::size;
  index_t j = 0;
  if (e_stride == 1) {
    for (; j < keys && !kept_vector_aligned<A>(destination + j); ++j)
      destination[j] = Kept(e[j] * scale);
    for (; j + width <= keys; j += width)
      store_from_float<A>(destination + j, batch::load_unaligned(e + j) * batch(scale), streaming);
  }
  for (; j < keys; ++j) destination[j] = Kept(e[j * e_stride] * scale);
}

template <class A, class Kept>
void keep_observed(Kept* row, index_t first_key, index_t j0, index_t keys, const float* e,
                   index_t e_stride, float running_max, float& reference, bool streaming) {
  const float scale = observed_scale<A>(row, first_key, j0, running_max, reference);
  store_kept<A>(row + j0, keys, e, e_stride, scale, streaming);
}

// Calls f(row) with the kept row of (token, head) in the call's kept type (float* or half*), if
// that row is observed.
template <class TKV, class F>
ATTNKIT_ALWAYS_INLINE void with_observed_row(const tile_context<TKV>& ctx, index_t token,
                                             head_index head, F&& f) {
  if (ctx.observed_in_half) {
    if (half* row = ctx.template observed_row<half>(token, head)) f(row);
  } else if (float* row = ctx.template observed_row<float>(token, head)) {
    f(row);
  }
}

// keep_observed for the row of (token, head), if it is observed, in the call's kept type.
template <class A, class TKV>
void keep_observed_row(const tile_context<TKV>& ctx, index_t token, head_index head,
                       index_t first_key, index_t j0, index_t keys, const float* e,
                       index_t e_stride, float running_max, float& reference) {
  with_observed_row(ctx, token, head, [&](auto* row) {
    keep_observed<A>(row, first_key, j0, keys, e, e_stride, running_max, reference,
                     ctx.observed_streaming);
  });
}

inline position_range query_range(const attention_params& p, const tile_job& job) {
  return {p.query_position(job.token_begin), p.query_position(job.token_begin + job.tokens)};
}

// Folds the scale (and log2 e, unless a logit transform must see natural-unit logits first)
// into the staged queries, so the logit GEMM directly yields base-2 softmax inputs.
inline float query_multiplier(const attention_params& p) {
  return p.has_logit_transform() ? p.scale : p.scale * log2e;
}

// A merged key (core/paged_kv_view.hpp) stands for `count` tokens, so its base-2 logit gains
// log2(count), after the transform and the mask. Returns the column of the key block
// [j0, j0 + keys) that holds KV head kv_head's merged key, or -1; then log2_count is unset.
inline index_t merged_column(const attention_params& p, index_t kv_head, index_t j0, index_t keys,
                             float& log2_count) noexcept {
  if (p.merged_keys == nullptr) return -1;
  const merged_key key = p.merged_keys[kv_head];
  if (key.slot < j0 || key.slot >= j0 + keys) return -1;
  log2_count = std::log2(key.count);
  return key.slot - j0;
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

}  // namespace simd
}  // namespace detail
}  // namespace attnkit
