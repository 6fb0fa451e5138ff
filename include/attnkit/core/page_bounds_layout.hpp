// attnkit — the storage layout of Quest page bounds, shared by attnkit::page_bounds (host memory)
// and attnkit::cuda::device_page_bounds (device memory), and the score of a page that holds a
// merged key.
//
// Per KV head, per page of page_size tokens, one record of 2 · padded_dim values of T: the
// element-wise minimum row, then the maximum row, each head_dim values zero-padded to 64 bytes
// (16 floats or 32 16-bit values), so SIMD and warp-wide loads cover whole rows.
#pragma once

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
};

}  // namespace attnkit::detail
