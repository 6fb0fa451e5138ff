// attnkit — where the split-KV kernel finds key and value rows: a contiguous (strided) K/V pair
// or a paged KV cache layer with per-head lengths. Both answer length(head), key(head, slot) and
// value(head, slot) in device code.
#pragma once

#include <cstdint>

#include "attnkit/core/config.hpp"
#include "attnkit/core/paged_kv_view.hpp"

namespace attnkit::detail::cuda {

template <class T>
struct contiguous_key_source {
  const T* keys = nullptr;
  const T* values = nullptr;
  index_t key_token_stride = 0, key_head_stride = 0;
  index_t value_token_stride = 0, value_head_stride = 0;
  index_t tokens = 0;
  bool vector_aligned = false;  // every row starts on a 16-byte boundary

  __device__ __forceinline__ index_t length(index_t) const { return tokens; }
  __device__ __forceinline__ const T* key(index_t head, index_t slot) const {
    return keys + slot * key_token_stride + head * key_head_stride;
  }
  __device__ __forceinline__ const T* value(index_t head, index_t slot) const {
    return values + slot * value_token_stride + head * value_head_stride;
  }
};

template <class T>
struct paged_key_source {
  paged_kv_view<const T> view;
  index_t capacity = 0;  // page_table_stride · page_size: what a head's page-table row can hold
  bool vector_aligned = false;

  // The lengths live in device memory, where the host could not validate them: a length outside
  // [0, capacity] is clamped, so a corrupt one reads the head's own pages and nothing else.
  __device__ __forceinline__ index_t length(index_t head) const {
    const index_t n = view.lengths[head];
    return n < 0 ? 0 : n > capacity ? capacity : n;
  }
  // Slots and page sizes fit 32 bits (capacity < 2^31 is checked on the host), and a 32-bit
  // division costs a fraction of a 64-bit one in this per-key address computation.
  __device__ __forceinline__ index_t offset_of(index_t head, index_t slot) const {
    const auto s = static_cast<std::uint32_t>(slot);
    const auto size = static_cast<std::uint32_t>(view.page_size);
    const page_id page = view.page_table[head * view.page_table_stride + s / size];
    return static_cast<index_t>(page) * view.page_stride + head * view.head_stride +
           static_cast<index_t>(s % size) * view.row_stride;
  }
  __device__ __forceinline__ const T* key(index_t head, index_t slot) const {
    return view.keys + offset_of(head, slot);
  }
  __device__ __forceinline__ const T* value(index_t head, index_t slot) const {
    return view.values + offset_of(head, slot);
  }
};

}  // namespace attnkit::detail::cuda
