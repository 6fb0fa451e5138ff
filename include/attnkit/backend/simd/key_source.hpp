// attnkit — key_source: where the CPU tile kernels read K and V rows from, a contiguous tensor or
// a paged cache, behind one run-time type.
//
// The tile kernels visit keys as spans (mask/key_spans.hpp) and need, for a KV head and a range
// of slots, the rows of K (or V) as (first row, row stride, count) runs: rows of one run are
// row_stride elements apart, so the kernels' converting loads and prefetches stream them as
// before. A contiguous [tokens, heads, head_dim] view is a source with a single page, which
// always gives one run; a paged cache (core/paged_kv_view.hpp) gives one run per page a span
// touches. The kernels loop over runs inside a span, so the online-softmax bookkeeping stays per
// span (up to 64 keys) whatever the page size, and a contiguous view pays one well-predicted
// branch per span or vector of keys for the abstraction.
//
// One run-time type rather than a template parameter keeps the kernels compiled once per
// (architecture, head dim, K/V type): a paged call instantiates nothing new.
#pragma once

#include <algorithm>

#include "attnkit/backend/simd/convert.hpp"
#include "attnkit/core/config.hpp"
#include "attnkit/core/paged_kv_view.hpp"
#include "attnkit/core/tensor_view.hpp"

namespace attnkit {
namespace detail {
namespace simd {

// The rows of K or of V for every KV head: row(head, slot) is the slot's head_dim elements,
// col_stride apart.
template <class T>
struct row_source {
  const T* data = nullptr;
  const page_id* page_table = nullptr;  // null: the whole sequence is one page
  index_t page_table_stride = 0;
  index_t page_size = 0;    // slots per page (paged sources only)
  index_t row_stride = 0;   // elements between consecutive slots (of one page)
  index_t page_stride = 0;  // elements between consecutive pages of the pool
  index_t head_stride = 0;  // elements added per KV head
  index_t col_stride = 1;   // elements between consecutive values of a row

  // A [tokens, kv_heads, head_dim] view.
  static row_source contiguous(const tensor_view<const T, 3>& view) noexcept {
    return {view.data(), nullptr, 0, 0, view.stride(0), 0, view.stride(1), view.stride(2)};
  }
  // The keys or the values of a paged cache layer (their rows are contiguous: col_stride 1).
  static row_source paged(const paged_kv_view<const T>& view, const T* pool) noexcept {
    return {pool,
            view.page_table,
            view.page_table_stride,
            view.page_size,
            view.row_stride,
            view.page_stride,
            view.head_stride,
            1};
  }

  bool is_paged() const noexcept { return page_table != nullptr; }

  const T* row(index_t head, index_t slot) const noexcept {
    if (page_table == nullptr) return data + slot * row_stride + head * head_stride;
    const index_t page = slot / page_size;
    return data + static_cast<index_t>(page_table[head * page_table_stride + page]) * page_stride +
           head * head_stride + (slot - page * page_size) * row_stride;
  }

  // True when slots [begin, end) are one run (consecutive rows, row_stride apart).
  bool one_run(index_t begin, index_t end) const noexcept {
    return page_table == nullptr || begin / page_size == (end - 1) / page_size;
  }

  // Calls visit(first_slot, count, first_row) for the runs of consecutive rows that make up
  // slots [begin, end) of `head`, in order: one for a contiguous source, one per page touched
  // otherwise.
  template <class F>
  ATTNKIT_ALWAYS_INLINE void for_each_run(index_t head, index_t begin, index_t end,
                                          F&& visit) const {
    if (begin >= end) return;
    if (page_table == nullptr) {
      visit(begin, end - begin, data + begin * row_stride + head * head_stride);
      return;
    }
    const page_id* table = page_table + head * page_table_stride;
    const T* head_rows = data + head * head_stride;
    index_t page = begin / page_size;
    index_t offset = begin - page * page_size;
    for (index_t slot = begin; slot < end; ++page, offset = 0) {
      const index_t count = std::min(end - slot, page_size - offset);
      visit(slot, count,
            head_rows + static_cast<index_t>(table[page]) * page_stride + offset * row_stride);
      slot += count;
    }
  }
};

// K and V of one call: their row sources and, for a paged cache, each KV head's length (null:
// every head holds the call's kv_tokens).
template <class T>
struct kv_source {
  row_source<T> k;
  row_source<T> v;
  const index_t* lengths = nullptr;

  index_t length(index_t kv_head, index_t kv_tokens) const noexcept {
    return lengths == nullptr ? kv_tokens : lengths[kv_head];
  }
};

// Prefetches rows [begin, end) of one head of a source (row_bytes from each row's start) a few
// lines at a time, interleaved with compute, as convert.hpp's prefetch_stream does for one
// strided range: a steady trickle keeps memory busy without stalling on the line-fill buffers.
// Crossing into a new page looks the page up once. Lines go to L2 (prefetcht1).
template <class T>
class prefetch_rows {
 public:
  prefetch_rows() = default;
  prefetch_rows(const row_source<T>& source, index_t head, index_t begin, index_t end,
                index_t row_bytes)
      : source_(&source),
        row_(begin < end ? reinterpret_cast<const char*>(source.row(head, begin)) : nullptr),
        head_(head),
        slot_(begin),
        end_(end),
        row_bytes_(row_bytes),
        row_stride_bytes_(source.row_stride * static_cast<index_t>(sizeof(T))),
        left_in_page_(source.is_paged() ? source.page_size - begin % source.page_size
                                        : end - begin) {}

  // Lines not issued yet.
  index_t lines() const noexcept {
    return (end_ - slot_) * ((row_bytes_ + 63) / 64) - offset_ / 64;
  }

  // The cursor is copied into locals for the loop: kept in the object, every line would store
  // and reload it (the compiler cannot keep members of an object the caller holds by reference
  // in registers across the prefetches), a store-forwarding chain of several cycles per line.
  ATTNKIT_ALWAYS_INLINE void issue(index_t lines) noexcept {
    if (lines <= 0 || slot_ >= end_) return;
    const char* row = row_;
    index_t offset = offset_, slot = slot_, left_in_page = left_in_page_;
    for (; lines > 0; --lines) {
      prefetch_line(row + offset);
      offset += 64;
      if (offset >= row_bytes_) {
        offset = 0;
        if (++slot >= end_) break;
        if (--left_in_page > 0) {
          row += row_stride_bytes_;
        } else {
          row = reinterpret_cast<const char*>(source_->row(head_, slot));
          left_in_page = source_->page_size;
        }
      }
    }
    row_ = row;
    offset_ = offset;
    slot_ = slot;
    left_in_page_ = left_in_page;
  }

 private:
  const row_source<T>* source_ = nullptr;
  const char* row_ = nullptr;
  index_t head_ = 0;
  index_t slot_ = 0;
  index_t end_ = 0;
  index_t row_bytes_ = 0;
  index_t row_stride_bytes_ = 0;
  index_t left_in_page_ = 0;
  index_t offset_ = 0;
};

}  // namespace simd
}  // namespace detail
}  // namespace attnkit
