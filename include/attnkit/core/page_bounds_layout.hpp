// attnkit — the storage layout of Quest page bounds, shared by attnkit::page_bounds (host memory)
// and attnkit::cuda::device_page_bounds (device memory).
//
// Per KV head, per page of page_size tokens, one record of 2 · padded_dim values of T: the
// element-wise minimum row, then the maximum row, each head_dim values zero-padded to 64 bytes
// (16 floats or 32 16-bit values), so SIMD and warp-wide loads cover whole rows.
#pragma once

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

}  // namespace attnkit::detail
