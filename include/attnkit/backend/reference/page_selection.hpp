// attnkit — the reference Quest kernels: page bounds and page selection in plain loops, the
// oracle the SIMD kernels are tested against.
//
// Bounds: the minimum and maximum of a page's keys are exact in fp32 (they are one of the inputs,
// widened exactly), so the reference just loops, then stores them in the bounds' type T with the
// scalar directed rounding (min toward -inf, max toward +inf; core/directed_rounding.hpp).
// Selection: every page's upper bound Σ_c max(q_c·min_c, q_c·max_c) in fp64 from the stored T
// values and the definition (no sign split, no fused multiply-add; a term with q_c = 0 is 0, so
// an infinite bound never meets 0·inf), then a full stable sort by (bound descending, page
// ascending).
//
// Both functions take the bounds through a `Rows` view (page_bounds' detail::page_bounds_rows<T>):
//   value_type T, T* min_row(kv_head, page) const, T* max_row(kv_head, page) const,
//   members page_size, kv_heads, head_dim, padded_dim, pages.
#pragma once

#include <algorithm>
#include <cstddef>
#include <limits>
#include <numeric>
#include <vector>

#include "attnkit/backend/tags.hpp"
#include "attnkit/core/directed_rounding.hpp"
#include "attnkit/core/float16.hpp"
#include "attnkit/core/page_bounds_layout.hpp"
#include "attnkit/core/paged_kv_view.hpp"
#include "attnkit/core/tensor_view.hpp"

namespace attnkit {
namespace detail {

// Recomputes the bounds of pages [first_page, end_page) of every KV head from k; the last page
// may be partial (it ends at k's last token).
template <class TK, class Rows, class Executor>
void page_bounds_update_impl(backend::reference, tensor_view<const TK, 3> k, index_t first_page,
                             index_t end_page, const Rows& bounds, Executor&) {
  using T = typename Rows::value_type;
  const index_t tokens = k.extent(0);
  for (index_t h = 0; h < bounds.kv_heads; ++h) {
    for (index_t p = first_page; p < end_page; ++p) {
      const index_t begin = p * bounds.page_size;
      const index_t end = std::min(begin + bounds.page_size, tokens);
      T* lo = bounds.min_row(h, p);
      T* hi = bounds.max_row(h, p);
      for (index_t c = 0; c < bounds.head_dim; ++c) {
        float mn = to_float(k(begin, h, c));
        float mx = mn;
        for (index_t t = begin + 1; t < end; ++t) {
          const float x = to_float(k(t, h, c));
          mn = std::min(mn, x);
          mx = std::max(mx, x);
        }
        // A zero bound is stored as +0 (x + 0 maps -0 to +0), whichever zero the keys held
        // and in whichever order: the SIMD kernel's min/max pick between ±0 differently.
        lo[c] = detail::round_down<T>(mn + 0.0f);
        hi[c] = detail::round_up<T>(mx + 0.0f);
      }
    }
  }
}

// The same for a paged cache (core/paged_kv_view.hpp): pages [first_pages[h], end) of every KV
// head h, end covering its kv.lengths[h] slots, read slot by slot through the view.
template <class TK, class Rows, class Executor>
void page_bounds_update_impl(backend::reference, const paged_kv_view<const TK>& kv,
                             const index_t* first_pages, const Rows& bounds, Executor&) {
  using T = typename Rows::value_type;
  for (index_t h = 0; h < bounds.kv_heads; ++h) {
    const index_t tokens = kv.length(h);
    const index_t end_page = (tokens + bounds.page_size - 1) / bounds.page_size;
    for (index_t p = first_pages[h]; p < end_page; ++p) {
      const index_t begin = p * bounds.page_size;
      const index_t end = std::min(begin + bounds.page_size, tokens);
      T* lo = bounds.min_row(h, p);
      T* hi = bounds.max_row(h, p);
      for (index_t c = 0; c < bounds.head_dim; ++c) {
        float mn = to_float(kv.key(h, begin)[c]);
        float mx = mn;
        for (index_t t = begin + 1; t < end; ++t) {
          const float x = to_float(kv.key(h, t)[c]);
          mn = std::min(mn, x);
          mx = std::max(mx, x);
        }
        lo[c] = detail::round_down<T>(mn + 0.0f);
        hi[c] = detail::round_up<T>(mx + 0.0f);
      }
    }
  }
}

// The Quest score of every page for one KV head, in fp64: the maximum over the head's query
// heads and the query tokens of U(page) = Σ_c max(q_c·min_c, q_c·max_c), with 0 for q_c = 0;
// under ALiBi (alibi not null) the maximum of each row's logit bound instead
// (core/page_bounds_layout.hpp). -inf with no queries.
template <class TQ, class Rows>
std::vector<double> reference_page_scores(tensor_view<const TQ, 3> q, const Rows& bounds,
                                          index_t kv_head, const alibi_pages* alibi) {
  const index_t group = q.extent(1) / bounds.kv_heads;
  std::vector<double> scores(static_cast<std::size_t>(bounds.pages),
                             -std::numeric_limits<double>::infinity());
  for (index_t p = 0; p < bounds.pages; ++p) {
    const auto* lo = bounds.min_row(kv_head, p);
    const auto* hi = bounds.max_row(kv_head, p);
    double& score = scores[static_cast<std::size_t>(p)];
    for (index_t t = 0; t < q.extent(0); ++t) {
      for (index_t g = 0; g < group; ++g) {
        const index_t h = kv_head * group + g;
        double u = 0.0;
        for (index_t c = 0; c < bounds.head_dim; ++c) {
          const double x = to_float(q(t, h, c));
          if (x != 0.0) u += std::max(x * double(to_float(lo[c])), x * double(to_float(hi[c])));
        }
        score = std::max(score, alibi != nullptr ? alibi->logit(u, kv_head, t * group + g, p) : u);
      }
    }
  }
  return scores;
}

// Writes, for every KV head h, the `kept` selected pages in ascending order to
// columns[h * kept, (h + 1) * kept): the last page, and the kept - 1 best of the others (ties:
// the lower page). `merged`, when not null, holds one entry per KV head: the page of the head's
// merged key, whose score is raised by its weight (core/page_bounds_layout.hpp). `alibi`, when
// not null, ranks the pages by their logit bounds under ALiBi.
template <class TQ, class Rows, class Executor>
void quest_select_impl(backend::reference, tensor_view<const TQ, 3> q, const Rows& bounds,
                       index_t kept, index_t* columns, const merged_page* merged,
                       const alibi_pages* alibi, Executor&) {
  const index_t pages = bounds.pages;
  for (index_t h = 0; h < bounds.kv_heads; ++h) {
    index_t* row = columns + h * kept;
    std::vector<double> scores = reference_page_scores(q, bounds, h, alibi);
    if (merged != nullptr && merged[h].page >= 0 && merged[h].page < pages) {
      double& score = scores[static_cast<std::size_t>(merged[h].page)];
      score = alibi != nullptr ? merged[h].weigh_logit(score) : merged[h].raise(score);
    }
    std::vector<index_t> order(static_cast<std::size_t>(pages - 1));
    std::iota(order.begin(), order.end(), index_t{0});
    std::stable_sort(order.begin(), order.end(), [&](index_t a, index_t b) {
      return scores[static_cast<std::size_t>(a)] > scores[static_cast<std::size_t>(b)];
    });
    std::copy(order.begin(), order.begin() + (kept - 1), row);
    row[kept - 1] = pages - 1;
    std::sort(row, row + kept);
  }
}

}  // namespace detail
}  // namespace attnkit
