// attnkit — the CPU (xsimd) Quest kernels: page bounds and page selection.
//
// Bounds. For each (KV head, touched page) the kernel walks the head dimension a vector at a
// time and, for each vector of columns, takes the running min and max down the page's rows
// (converting loads from fp16 / bf16 / fp32): each key element is read once, the page's rows
// stay in L1 across the column vectors, and the fp32 result is exact (min and max do not round).
// It is stored in the bounds' type T rounded outward (min toward -inf, max toward +inf): for half
// with vcvtps2ph's directed-rounding immediates, otherwise lane by lane with the scalar
// core/directed_rounding.hpp functions; both give the same bits (IEEE directed rounding).
//
// Selection. Decode with Quest is a stream over the bounds (2 · head_dim values of T per page and
// KV head) with a few dot products per page, so with fp32 bounds it is bound by memory bandwidth;
// the kernel reads every page's [min | max] rows once for all the query rows of its KV head,
// 16-bit bounds through converting loads (half the bytes of fp32; then the multiply-adds, 2 per
// column and query row, cost about as much as the stream on few cores). The bound
//   U = Σ_c max(q_c·min_c, q_c·max_c) = q⁺·max + q⁻·min,  q⁺ = max(q, 0), q⁻ = min(q, 0),
// holds because min_c <= max_c: for q_c >= 0 the larger product is q_c·max_c and q⁻_c = 0, and
// symmetrically for q_c < 0. So the queries are split by sign once per call and each page costs
// two fused multiply-adds per column and query row, with no compare. The two halves accumulate
// separately, which halves the dependency chains.
//
// Infinite bounds (16-bit T past its range; quest.hpp): the split meets 0·inf wherever the other
// sign's half of q is zero, and the sum becomes NaN. Finite keys give no other NaN (min is never
// +inf, max never -inf), so a NaN sum means "recompute this page with 0·x = 0": the rare page
// takes a masked pass (same order of operations, zero-q lanes skipped) and the stream pays one
// compare per page and query row.
//
// Top-K: each page's fp32 score and index are packed into one 64-bit key that orders by score,
// then by lower index, so std::nth_element on plain integers selects the pages and ties resolve
// as the reference does. The last page is always kept (it holds the newest tokens, the query's
// own included) and competes for nothing; the kept rows are sorted ascending. A page holding its
// head's merged key competes with its score raised by the key's weight
// (core/page_bounds_layout.hpp), computed in fp64 and rounded up to fp32. Under ALiBi each query
// row's fp32 bound becomes its logit bound in fp64 (scale, softcap and the page's largest bias;
// core/page_bounds_layout.hpp), and the page's score, their maximum, is rounded up to fp32.
//
// Scratch: the sign-split queries live in the calling thread's call arena (scratch.hpp), the keys
// in a thread-local vector of the calling thread; both grow on the first call of a size and are
// reused after, so a decode step allocates nothing.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <type_traits>
#include <vector>

#include "attnkit/backend/simd/convert.hpp"
#include "attnkit/backend/simd/key_source.hpp"
#include "attnkit/backend/simd/scratch.hpp"
#include "attnkit/backend/tags.hpp"
#include "attnkit/core/directed_rounding.hpp"
#include "attnkit/core/float16.hpp"
#include "attnkit/core/page_bounds_layout.hpp"
#include "attnkit/core/paged_kv_view.hpp"
#include "attnkit/core/simd_include.hpp"
#include "attnkit/core/tensor_view.hpp"
#include "attnkit/parallel/executor.hpp"

namespace attnkit {
namespace detail {
namespace simd {

// Below this many key elements an update runs on the calling thread: appending one token touches
// one page per head, far less work than waking a pool.
inline constexpr index_t min_parallel_bounds_elements = index_t{1} << 18;

// A selection work item scores at least this many pages (256 KiB of fp32 bounds at head_dim 128)
// so that the dispatch cost stays small against the stream.
inline constexpr index_t min_pages_per_item = 256;

// Stores one batch to T rounded toward -inf (Up = false) or +inf (Up = true): plain for float,
// vcvtps2ph with the rounding in its immediate for half (IEEE directed rounding, overflow and
// subnormals included, so it matches round_down / round_up bit for bit; the tests compare them),
// lane by lane otherwise.
template <bool Up, class A, class T>
ATTNKIT_ALWAYS_INLINE void store_rounded(T* destination, float_batch<A> x,
                                         xsimd::kernel::requires_arch<xsimd::generic>) {
  if constexpr (std::is_same_v<T, float>) {
    x.store_unaligned(destination);
  } else {
    alignas(64) float lanes[float_batch<A>::size];
    x.store_aligned(lanes);
    for (std::size_t i = 0; i < float_batch<A>::size; ++i)
      destination[i] = Up ? detail::round_up<T>(lanes[i]) : detail::round_down<T>(lanes[i]);
  }
}

#if defined(__AVX2__) && defined(__F16C__)
template <bool Up, class A, class T>
ATTNKIT_ALWAYS_INLINE void store_rounded(T* destination, float_batch<A> x,
                                         xsimd::kernel::requires_arch<xsimd::avx2>) {
  if constexpr (std::is_same_v<T, half>) {
    constexpr int mode = (Up ? _MM_FROUND_TO_POS_INF : _MM_FROUND_TO_NEG_INF) | _MM_FROUND_NO_EXC;
    _mm_storeu_si128(reinterpret_cast<__m128i*>(destination), _mm256_cvtps_ph(x, mode));
  } else {
    store_rounded<Up, A>(destination, x, xsimd::generic{});
  }
}
#endif

#if defined(__AVX512F__)
template <bool Up, class A, class T>
ATTNKIT_ALWAYS_INLINE void store_rounded(T* destination, float_batch<A> x,
                                         xsimd::kernel::requires_arch<xsimd::avx512f>) {
  if constexpr (std::is_same_v<T, half>) {
    constexpr int mode = (Up ? _MM_FROUND_TO_POS_INF : _MM_FROUND_TO_NEG_INF) | _MM_FROUND_NO_EXC;
    // The zero-masking form: GCC 12 flags the plain one's undefined passthrough once inlined.
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(destination),
                        _mm512_maskz_cvtps_ph(0xFFFF, x, mode));
  } else {
    store_rounded<Up, A>(destination, x, xsimd::generic{});
  }
}
#endif

// Stores the bounds of `width` columns, rounded outward to T. + 0 turns a -0 into +0:
// vminps/vmaxps return their second operand for a ±0 pair where std::min/max return their first,
// and the backends must store the same bits.
template <class A, class T>
ATTNKIT_ALWAYS_INLINE void store_bounds(T* lo, T* hi, float_batch<A> mn, float_batch<A> mx) {
  const float_batch<A> zero(0.0f);
  store_rounded<false, A>(lo, mn + zero, A{});
  store_rounded<true, A>(hi, mx + zero, A{});
}
// The same for one column.
template <class T>
ATTNKIT_ALWAYS_INLINE void store_bound(T* lo, T* hi, float mn, float mx) {
  *lo = detail::round_down<T>(mn + 0.0f);
  *hi = detail::round_up<T>(mx + 0.0f);
}

// Bounds of page p of KV head h from rows [begin, end) of k.
template <class A, class TK, class Rows>
void page_min_max(tensor_view<const TK, 3> k, index_t h, index_t p, index_t begin, index_t end,
                  const Rows& bounds) {
  using T = typename Rows::value_type;
  using batch = float_batch<A>;
  constexpr index_t width = batch::size;
  const index_t dim = bounds.head_dim;
  T* lo = bounds.min_row(h, p);
  T* hi = bounds.max_row(h, p);
  index_t c = 0;
  if (k.stride(2) == 1) {
    for (; c + width <= dim; c += width) {
      batch mn = load_float<A>(k.row(begin, h) + c);
      batch mx = mn;
      for (index_t t = begin + 1; t < end; ++t) {
        const batch x = load_float<A>(k.row(t, h) + c);
        mn = xsimd::min(mn, x);
        mx = xsimd::max(mx, x);
      }
      store_bounds<A>(lo + c, hi + c, mn, mx);
    }
  }
  for (; c < dim; ++c) {
    float mn = to_float(k(begin, h, c));
    float mx = mn;
    for (index_t t = begin + 1; t < end; ++t) {
      const float x = to_float(k(t, h, c));
      mn = std::min(mn, x);
      mx = std::max(mx, x);
    }
    store_bound(lo + c, hi + c, mn, mx);
  }
}

// Bounds of page p of KV head h from slots [begin, end) of a paged cache: as page_min_max, with
// the page's rows read run by run (one run per cache page the Quest page covers).
template <class A, class TK, class Rows>
void paged_page_min_max(const row_source<TK>& keys, index_t h, index_t p, index_t begin,
                        index_t end, const Rows& bounds) {
  using T = typename Rows::value_type;
  using batch = float_batch<A>;
  constexpr index_t width = batch::size;
  const index_t dim = bounds.head_dim;
  T* lo = bounds.min_row(h, p);
  T* hi = bounds.max_row(h, p);
  const TK* first = keys.row(h, begin);
  index_t c = 0;
  for (; c + width <= dim; c += width) {
    batch mn = load_float<A>(first + c);
    batch mx = mn;
    keys.for_each_run(h, begin, end, [&](index_t, index_t count, const TK* rows) {
      for (index_t t = 0; t < count; ++t) {
        const batch x = load_float<A>(rows + t * keys.row_stride + c);
        mn = xsimd::min(mn, x);
        mx = xsimd::max(mx, x);
      }
    });
    store_bounds<A>(lo + c, hi + c, mn, mx);
  }
  for (; c < dim; ++c) {
    float mn = to_float(first[c]);
    float mx = mn;
    keys.for_each_run(h, begin, end, [&](index_t, index_t count, const TK* rows) {
      for (index_t t = 0; t < count; ++t) {
        const float x = to_float(rows[t * keys.row_stride + c]);
        mn = std::min(mn, x);
        mx = std::max(mx, x);
      }
    });
    store_bound(lo + c, hi + c, mn, mx);
  }
}

// Orders like the score (then the lower page first) as an unsigned integer: the float's bits
// with the sign flipped for non-negative values and all bits flipped for negative ones, in the
// high half; the complement of the page in the low half. Adding 0.0f maps -0 to +0 so that the
// two zeros tie, as they compare equal in the reference.
ATTNKIT_ALWAYS_INLINE std::uint64_t page_key(float score, index_t page) noexcept {
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(score + 0.0f);
  const std::uint32_t ordered = (bits & 0x80000000u) != 0 ? ~bits : bits | 0x80000000u;
  return (std::uint64_t{ordered} << 32) | (0xFFFFFFFFu - static_cast<std::uint32_t>(page));
}

// An fp64 score rounded up to fp32, so that it stays a bound. (next_up on the bits: under ALiBi
// every page takes this path, and std::nextafter's library call cost a third of the selection.)
inline float round_up_score(double score) noexcept {
  const float rounded = static_cast<float>(score);
  return double(rounded) < score ? next_up(rounded) : rounded;
}

// The score of a page holding its head's merged key, raised by the key's weight
// (core/page_bounds_layout.hpp) in fp64 and rounded up to fp32: still a bound on its logits.
inline float raised_score(const merged_page& merged, float score) noexcept {
  return round_up_score(merged.raise(double(score)));
}

ATTNKIT_ALWAYS_INLINE index_t page_of_key(std::uint64_t key) noexcept {
  return static_cast<index_t>(0xFFFFFFFFu - static_cast<std::uint32_t>(key & 0xFFFFFFFFu));
}

// Writes to `sums` the bounds of one page for Rows query rows. `page` points at the page's
// min row, its max row follows at page + padded_dim (page_bounds stores them adjacent); query row
// r's q⁺ is at q + r * 2 * padded_dim and its q⁻ right after. Every row is padded with zeros to
// padded_dim, a multiple of the vector width, and 64-byte aligned. Masked: lanes whose query
// component is zero add nothing (0·inf = 0; see the header comment), at the cost of a compare and
// a blend per multiply-add, with the same order of operations otherwise.
template <class A, int Rows, bool Masked, class T>
ATTNKIT_ALWAYS_INLINE void page_bound_rows(const T* ATTNKIT_RESTRICT page,
                                           const float* ATTNKIT_RESTRICT q, index_t padded_dim,
                                           float* sums) {
  using batch = float_batch<A>;
  constexpr index_t width = batch::size;
  batch positive[Rows];
  batch negative[Rows];
  for (int r = 0; r < Rows; ++r) {
    positive[r] = batch(0.0f);
    negative[r] = batch(0.0f);
  }
  for (index_t c = 0; c < padded_dim; c += width) {
    const batch lo = load_float<A>(page + c);
    const batch hi = load_float<A>(page + padded_dim + c);
    for (int r = 0; r < Rows; ++r) {
      const float* row = q + r * 2 * padded_dim;
      const batch q_positive = batch::load_aligned(row + c);
      const batch q_negative = batch::load_aligned(row + padded_dim + c);
      if constexpr (Masked) {
        const batch zero(0.0f);
        positive[r] =
            xsimd::select(q_positive != zero, xsimd::fma(q_positive, hi, positive[r]), positive[r]);
        negative[r] =
            xsimd::select(q_negative != zero, xsimd::fma(q_negative, lo, negative[r]), negative[r]);
      } else {
        positive[r] = xsimd::fma(q_positive, hi, positive[r]);
        negative[r] = xsimd::fma(q_negative, lo, negative[r]);
      }
    }
  }
  for (int r = 0; r < Rows; ++r) sums[r] = xsimd::hadd(positive[r] + negative[r]);
}

// The bounds of Rows query rows into `sums`; a NaN among them (0·inf met an infinite bound) is
// recomputed with the masked pass.
template <class A, int Rows, class T>
ATTNKIT_ALWAYS_INLINE void page_bound_rows_checked(const T* page, const float* q,
                                                   index_t padded_dim, float* sums) {
  page_bound_rows<A, Rows, false>(page, q, padded_dim, sums);
  bool any_nan = false;
  for (int r = 0; r < Rows; ++r) any_nan |= sums[r] != sums[r];
  if (any_nan) [[unlikely]]
    page_bound_rows<A, Rows, true>(page, q, padded_dim, sums);
}

// Calls visit(row, bound) for each of `rows` query rows' bound on one page, 4 rows at a time.
template <class A, class T, class Visit>
ATTNKIT_ALWAYS_INLINE void for_each_row_bound(const T* page, const float* q, index_t rows,
                                              index_t padded_dim, Visit&& visit) {
  float sums[4];
  index_t r = 0;
  for (; r + 4 <= rows; r += 4) {
    page_bound_rows_checked<A, 4>(page, q + r * 2 * padded_dim, padded_dim, sums);
    for (int i = 0; i < 4; ++i) visit(r + i, sums[i]);
  }
  const float* tail = q + r * 2 * padded_dim;
  switch (rows - r) {
    case 3:
      page_bound_rows_checked<A, 3>(page, tail, padded_dim, sums);
      break;
    case 2:
      page_bound_rows_checked<A, 2>(page, tail, padded_dim, sums);
      break;
    case 1:
      page_bound_rows_checked<A, 1>(page, tail, padded_dim, sums);
      break;
    default:
      return;
  }
  for (index_t i = 0; i < rows - r; ++i) visit(r + i, sums[i]);
}

// The score of one page: the maximum bound over `rows` query rows (-inf when there are none).
template <class A, class T>
ATTNKIT_ALWAYS_INLINE float page_score(const T* page, const float* q, index_t rows,
                                       index_t padded_dim) {
  float score = -std::numeric_limits<float>::infinity();
  for_each_row_bound<A>(page, q, rows, padded_dim,
                        [&](index_t, float bound) { score = std::max(score, bound); });
  return score;
}

// The score of one page under ALiBi (core/page_bounds_layout.hpp), in fp64 from the rows' fp32
// bounds: the maximum over the rows of their logit bounds, weighted when the page holds the
// head's merged key.
template <class A, class T>
ATTNKIT_ALWAYS_INLINE double alibi_page_score(const T* page, const float* q, index_t rows,
                                              index_t padded_dim, const alibi_pages& alibi,
                                              index_t kv_head, index_t page_index) {
  const index_t first = alibi.first_slot(page_index);
  const index_t last = alibi.last_slot(page_index);
  double score = -std::numeric_limits<double>::infinity();
  // Rows are visited in order, token by token, a group of heads each: the distances change once
  // per token.
  index_t head_in_group = 0;
  index_t q_pos = alibi.query_slot(0);
  alibi_pages::distances d = alibi_pages::distances_to(q_pos, first, last);
  for_each_row_bound<A>(page, q, rows, padded_dim, [&](index_t, float bound) {
    score = std::max(score, alibi.logit(double(bound), alibi.slope(kv_head, head_in_group), d));
    if (++head_in_group == alibi.group) {
      head_in_group = 0;
      d = alibi_pages::distances_to(++q_pos, first, last);
    }
  });
  return score;
}

// The calling thread's keys buffer (see the header comment).
inline std::vector<std::uint64_t>& page_key_scratch() {
  thread_local std::vector<std::uint64_t> keys;
  return keys;
}

// Runs work(first, last) over blocks of the `pairs` (KV head, page) pairs whose bounds an update
// recomputes: one block when they are few (min_parallel_bounds_elements), else up to 4 blocks per
// thread of the executor, so uneven pages still balance.
template <class Rows, class Executor, class Work>
void for_each_pair_block(index_t pairs, const Rows& bounds, Executor& executor, Work&& work) {
  const index_t elements = pairs * bounds.page_size * bounds.head_dim;
  index_t items = 1;
  if (elements >= min_parallel_bounds_elements)
    items = std::min<index_t>(pairs, 4 * static_cast<index_t>(parallel::concurrency_of(executor)));
  const index_t per_item = (pairs + items - 1) / items;
  items = (pairs + per_item - 1) / per_item;
  auto run = [&](std::size_t item) {
    const index_t first = static_cast<index_t>(item) * per_item;
    work(first, std::min(first + per_item, pairs));
  };
  if (items == 1)
    run(0);
  else
    executor(static_cast<std::size_t>(items), run);
}

}  // namespace simd

template <class Arch, class TK, class Rows, class Executor>
void page_bounds_update_impl(backend::simd<Arch>, tensor_view<const TK, 3> k, index_t first_page,
                             index_t end_page, const Rows& bounds, Executor& executor) {
  const index_t touched = end_page - first_page;
  const index_t pairs = bounds.kv_heads * touched;
  if (pairs <= 0) return;
  const index_t tokens = k.extent(0);
  simd::for_each_pair_block(pairs, bounds, executor, [&](index_t first, index_t last) {
    for (index_t i = first; i < last; ++i) {
      const index_t h = i / touched;
      const index_t p = first_page + i % touched;
      const index_t begin = p * bounds.page_size;
      simd::page_min_max<Arch>(k, h, p, begin, std::min(begin + bounds.page_size, tokens), bounds);
    }
  });
}

// The same for a paged cache: pages [first_pages[h], end) of every KV head h, end covering its
// kv.lengths[h] slots.
template <class Arch, class TK, class Rows, class Executor>
void page_bounds_update_impl(backend::simd<Arch>, const paged_kv_view<const TK>& kv,
                             const index_t* first_pages, const Rows& bounds, Executor& executor) {
  const simd::row_source<TK> keys = simd::row_source<TK>::paged(kv, kv.keys);
  // (KV head, page) pairs, head by head: pages [first_pages[h], end) of head h.
  auto head_pairs = [&](index_t head) {
    return std::max<index_t>(
        0, (kv.length(head) + bounds.page_size - 1) / bounds.page_size - first_pages[head]);
  };
  index_t pairs = 0;
  for (index_t h = 0; h < bounds.kv_heads; ++h) pairs += head_pairs(h);
  if (pairs <= 0) return;
  simd::for_each_pair_block(pairs, bounds, executor, [&](index_t first, index_t last) {
    // Find the block's first pair, then walk pages and heads.
    index_t h = 0, seen = 0;
    while (seen + head_pairs(h) <= first) seen += head_pairs(h++);
    index_t p = first_pages[h] + (first - seen);
    for (index_t i = first; i < last; ++i) {
      while (p >= first_pages[h] + head_pairs(h)) p = first_pages[++h];
      const index_t begin = p * bounds.page_size;
      simd::paged_page_min_max<Arch>(keys, h, p, begin,
                                     std::min(begin + bounds.page_size, kv.length(h)), bounds);
      ++p;
    }
  });
}

template <class Arch, class TQ, class Rows, class Executor>
void quest_select_impl(backend::simd<Arch>, tensor_view<const TQ, 3> q, const Rows& bounds,
                       index_t kept, index_t* columns, const merged_page* merged,
                       const alibi_pages* alibi, Executor& executor) {
  using A = Arch;
  const index_t pages = bounds.pages;
  const index_t kv_heads = bounds.kv_heads;
  if (kept >= pages) {
    // Every page: nothing to score.
    for (index_t h = 0; h < kv_heads; ++h)
      for (index_t p = 0; p < pages; ++p) columns[h * pages + p] = p;
    return;
  }

  // Sign-split queries, [kv head][row = token * group + head in group][q⁺ | q⁻][padded_dim].
  const index_t group = q.extent(1) / kv_heads;
  const index_t rows = q.extent(0) * group;
  const index_t dim = bounds.head_dim;
  const index_t padded_dim = bounds.padded_dim;
  const index_t head_floats = rows * 2 * padded_dim;
  float* staged = simd::call_scratch().reserve(
      static_cast<std::size_t>(std::max<index_t>(1, kv_heads * head_floats)));
  for (index_t h = 0; h < kv_heads; ++h) {
    for (index_t t = 0; t < q.extent(0); ++t) {
      for (index_t g = 0; g < group; ++g) {
        float* positive = staged + h * head_floats + (t * group + g) * 2 * padded_dim;
        float* negative = positive + padded_dim;
        for (index_t c = 0; c < dim; ++c) {
          const float x = to_float(q(t, h * group + g, c));
          positive[c] = std::max(x, 0.0f);
          negative[c] = std::min(x, 0.0f);
        }
        std::fill(positive + dim, positive + padded_dim, 0.0f);
        std::fill(negative + dim, negative + padded_dim, 0.0f);
      }
    }
  }

  std::vector<std::uint64_t>& key_buffer = simd::page_key_scratch();
  if (key_buffer.size() < static_cast<std::size_t>(kv_heads * pages))
    key_buffer.resize(static_cast<std::size_t>(kv_heads * pages));
  std::uint64_t* keys = key_buffer.data();

  // Score: KV heads × page chunks, enough items to balance without tiny chunks.
  const index_t wanted = 4 * static_cast<index_t>(parallel::concurrency_of(executor));
  const index_t max_chunks = std::max<index_t>(1, pages / simd::min_pages_per_item);
  const index_t chunks = std::clamp<index_t>((wanted + kv_heads - 1) / kv_heads, 1, max_chunks);
  const index_t chunk_pages = (pages + chunks - 1) / chunks;
  executor(static_cast<std::size_t>(kv_heads * chunks), [&](std::size_t item) {
    const index_t h = static_cast<index_t>(item) / chunks;
    const index_t begin = (static_cast<index_t>(item) % chunks) * chunk_pages;
    const index_t end = std::min(begin + chunk_pages, pages);
    const float* head_q = staged + h * head_floats;
    std::uint64_t* head_keys = keys + h * pages;
    const index_t merged_at = merged != nullptr ? merged[h].page : -1;
    if (alibi != nullptr) {
      for (index_t p = begin; p < end; ++p) {
        double score =
            simd::alibi_page_score<A>(bounds.min_row(h, p), head_q, rows, padded_dim, *alibi, h, p);
        if (p == merged_at) score = merged[h].weigh_logit(score);
        head_keys[p] = simd::page_key(simd::round_up_score(score), p);
      }
      return;
    }
    for (index_t p = begin; p < end; ++p) {
      float score = simd::page_score<A>(bounds.min_row(h, p), head_q, rows, padded_dim);
      if (p == merged_at) score = simd::raised_score(merged[h], score);
      head_keys[p] = simd::page_key(score, p);
    }
  });

  // Select: per KV head, the kept - 1 largest keys among pages [0, pages - 1), then the last.
  executor(static_cast<std::size_t>(kv_heads), [&](std::size_t item) {
    const index_t h = static_cast<index_t>(item);
    std::uint64_t* head_keys = keys + h * pages;
    index_t* row = columns + h * kept;
    const index_t best = kept - 1;
    if (best > 0)
      std::nth_element(head_keys, head_keys + (best - 1), head_keys + (pages - 1),
                       std::greater<std::uint64_t>{});
    for (index_t i = 0; i < best; ++i) row[i] = simd::page_of_key(head_keys[i]);
    row[best] = pages - 1;
    std::sort(row, row + kept);
  });
}

}  // namespace detail
}  // namespace attnkit
