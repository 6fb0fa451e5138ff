// attnkit — the storage layout of Quest page bounds, shared by attnkit::page_bounds (host memory)
// and attnkit::cuda::device_page_bounds (device memory), the score of a page that holds a merged
// key, and the logit bound of a page under ALiBi.
//
// Per KV head, per page of page_size tokens, one record of 2 · padded_dim values of T: the
// element-wise minimum row, then the maximum row, each head_dim values zero-padded to 64 bytes
// (16 floats or 32 16-bit values), so SIMD and warp-wide loads cover whole rows.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>

#include "attnkit/core/config.hpp"
#include "attnkit/core/error.hpp"

namespace attnkit::detail {

struct page_bounds_layout {
  index_t padded_dim = 0;      // head_dim rounded up to 64 bytes of T
  index_t capacity_pages = 0;  // pages for capacity_tokens
};

// Validates a page-bounds store's shape (messages name `function` and the value) and returns its
// layout.
template <class T>
page_bounds_layout check_page_bounds_shape(const char* function, index_t page_size,
                                           index_t kv_heads, index_t head_dim,
                                           index_t capacity_tokens) {
  require(page_size >= 1, function, ": page_size is ", page_size, ", it must be >= 1");
  require(kv_heads >= 1, function, ": kv_heads is ", kv_heads, ", it must be >= 1");
  require(head_dim >= 1, function, ": head_dim is ", head_dim, ", it must be >= 1");
  require(capacity_tokens >= 0, function, ": capacity_tokens is ", capacity_tokens,
          ", it must be >= 0");
  constexpr index_t row_multiple = index_t{64} / index_t{sizeof(T)};
  return {(head_dim + row_multiple - 1) / row_multiple * row_multiple,
          (capacity_tokens + page_size - 1) / page_size};
}

// A page that holds its KV head's merged key (core/paged_kv_view.hpp), as the selection ranks it.
// The merged key's softmax term is weighted by count: its logit gains ln(count) after the
// softcap. Quest ranks pages by U, a bound on q·k before scale and softcap, which is enough while
// the logit is a monotone function of q·k alone; a page holding a merged key has the larger logit
// bound softcap(scale·U) + ln(count), so it must rank as the U' whose logit reaches it:
//   softcap(scale·U') = softcap(scale·U) + ln(count)
// U' = U + ln(count)/scale without a softcap; with one, the inverse tanh, and +inf once the right
// side reaches the cap or the scale is 0 (no finite U' has that logit, and the page's bound is
// above every other page's). A count of at most 1 lowers the merged key's own term only, never
// the page's other keys, so it leaves U as it is; so do U = ±inf and NaN.
struct merged_page {
  index_t page = -1;  // -1: the head has no merged key
  double count = 1.0;
  double scale = 1.0;
  double softcap = 0.0;

  double raise(double bound) const noexcept {
    constexpr double infinity = std::numeric_limits<double>::infinity();
    if (!(count > 1.0) || !std::isfinite(bound)) return bound;
    if (scale == 0.0) return infinity;
    const double weight = std::log(count);
    if (softcap == 0.0) return bound + weight / scale;
    const double logit = softcap * std::tanh(scale * bound / softcap) + weight;
    return logit >= softcap ? infinity : softcap * std::atanh(logit / softcap) / scale;
  }

  // The same weight on a score that is already a logit bound (the ALiBi ranking below): ln(count)
  // added for a count above 1, nothing otherwise.
  double weigh_logit(double logit) const noexcept {
    return count > 1.0 ? logit + std::log(count) : logit;
  }
};

// Ranking under ALiBi. The bias -slope·|q_pos - j| depends on the key's slot j, not on q·k, so
// pages can no longer be ranked by U alone: each query row's bound becomes a bound on its logits,
//   softcap(scale·U) + max over the page's slots j of -slope·|q_pos - j|,
// the largest bias being at the page's slot nearest the query for slope >= 0 (the usual ALiBi)
// and at its farthest for a negative slope. The page's score is the maximum over the rows, as
// without ALiBi. Slots and query positions are the attention call's: the query tokens are the
// head's last q_tokens slots (bottom-right alignment), so query token t sits at slot
// tokens - q_tokens + t.
struct alibi_pages {
  const float* slopes = nullptr;  // query head i of the heads being scored: slopes[i * stride]
  index_t stride = 1;
  index_t group = 1;      // query heads per KV head
  index_t q_tokens = 1;   // query row r is token r / group of head r % group in its KV head
  index_t tokens = 0;     // slots each scored KV head holds
  index_t page_size = 1;  // slots per page
  double scale = 1.0;
  double softcap = 0.0;

  // Query row `row` of KV head `kv_head`: its slope and its slot.
  double slope(index_t kv_head, index_t row) const noexcept {
    return slopes[(kv_head * group + row % group) * stride];
  }
  index_t query_slot(index_t row) const noexcept { return tokens - q_tokens + row / group; }
  // Page `page`'s first and last slots.
  index_t first_slot(index_t page) const noexcept { return page * page_size; }
  index_t last_slot(index_t page) const noexcept {
    return std::min(first_slot(page) + page_size, tokens) - 1;
  }

  // A query's distances to a page's nearest and farthest slot: the bias is largest at the
  // nearest for slope >= 0, at the farthest for a negative slope.
  struct distances {
    index_t nearest = 0;
    index_t farthest = 0;
  };
  static distances distances_to(index_t q_pos, index_t first, index_t last) noexcept {
    const index_t to_first = q_pos > first ? q_pos - first : first - q_pos;
    const index_t to_last = q_pos > last ? q_pos - last : last - q_pos;
    const bool inside = q_pos >= first && q_pos <= last;
    return {inside ? 0 : std::min(to_first, to_last), std::max(to_first, to_last)};
  }

  // The logit bound, given U, of a query with this slope at these distances from a page. A scale
  // of 0 makes every logit 0 before the bias, whatever U (even an infinite bound of finite keys).
  double logit(double u, double slope, distances d) const noexcept {
    double s = scale == 0.0 ? 0.0 : scale * u;
    if (softcap > 0.0) s = softcap * std::tanh(s / softcap);
    return s - slope * static_cast<double>(slope >= 0.0 ? d.nearest : d.farthest);
  }
  double logit(double u, index_t kv_head, index_t row, index_t page) const noexcept {
    return logit(u, slope(kv_head, row),
                 distances_to(query_slot(row), first_slot(page), last_slot(page)));
  }
};

}  // namespace attnkit::detail
