// attnkit — kv_page_pool: the page memory of a paged KV cache, and the free list that recycles it.
//
// A page holds `page_size` consecutive tokens of one (layer, KV head): keys [page_size, head_dim],
// values [page_size, head_dim] and positions [page_size], each kind in its own array so that a
// view's `keys + page · page_stride` addresses it (see core/paged_kv_view.hpp). Pages are the
// unit of allocation: a cache takes pages from the pool as its heads grow and gives them back
// when an eviction policy shrinks them, so the pages one sequence frees serve another's growth.
//
// Memory is reserved up front, once, for `capacity_pages` pages. The views that kernels read hold
// raw pointers into the pool, so the pool never moves (a growable pool would invalidate every
// view of every sequence on each growth). Reserving is cheap on the operating systems we target:
// the arrays are one large allocation each and are never touched before a page is first handed
// out, so the kernel commits physical memory page by page as it is used — `capacity_pages` sets
// an upper bound on memory, not what is resident. When the pool is exhausted, `allocate` throws
// attnkit::error (`try_allocate` returns false) and nothing changes: a request is all or nothing.
//
// Page contents are whatever the owner wrote: the pool never initialises or clears them.
//
// Thread safety: allocate/release and the counters lock a mutex, so sequences that share a pool
// may grow and shrink from different threads at once (a lock per page-granular request is noise
// next to writing a page of tokens). Page memory itself is not synchronised: a page belongs to
// whoever allocated it until it is released, and only its owner reads or writes it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <span>
#include <type_traits>
#include <vector>

#include "attnkit/core/aligned_memory.hpp"
#include "attnkit/core/config.hpp"
#include "attnkit/core/error.hpp"
#include "attnkit/core/float16.hpp"
#include "attnkit/core/paged_kv_view.hpp"
#include "attnkit/core/shape.hpp"

namespace attnkit {

// The largest page a pool supports, in tokens (page tables stay short and a page of 256 tokens is
// already larger than any engine uses: vLLM 16, FlashInfer 1..64, TensorRT-LLM 64..128).
inline constexpr index_t max_page_size = 256;

struct kv_page_pool_config {
  index_t capacity_pages = 0;  // pages reserved up front; allocation beyond this throws
  index_t page_size = 16;      // tokens per page, 1..max_page_size (any value, not only 2^k)
  index_t head_dim = 0;        // elements per key (and value) row
};

template <class T>
class kv_page_pool {
  static_assert(is_storage_type_v<T>, "kv_page_pool<T>: T must be float, half or bfloat16");

 public:
  using value_type = T;

  explicit kv_page_pool(const kv_page_pool_config& config)
      : capacity_(config.capacity_pages), page_size_(config.page_size), head_dim_(config.head_dim) {
    constexpr const char* fn = "attnkit::kv_page_pool";
    detail::require(page_size_ >= 1 && page_size_ <= max_page_size, fn, ": page_size is ",
                    page_size_, ", it must be in 1..", max_page_size);
    detail::require(head_dim_ >= 1, fn, ": head_dim is ", head_dim_, ", it must be >= 1");
    detail::require(capacity_ >= 0, fn, ": capacity_pages is ", capacity_, ", it must be >= 0");
    // Page ids are 32-bit (what paged_kv_view's page tables hold); element offsets are index_t.
    detail::require(capacity_ <= std::numeric_limits<page_id>::max(), fn, ": capacity_pages is ",
                    capacity_, ", page ids are 32-bit so at most ",
                    std::numeric_limits<page_id>::max(), " pages");
    const index_t max_elements =
        std::numeric_limits<index_t>::max() / static_cast<index_t>(sizeof(T)) / 2;
    detail::require(capacity_ <= max_elements / (page_size_ * head_dim_), fn, ": capacity_pages (",
                    capacity_, ") x page_size (", page_size_, ") x head_dim (", head_dim_,
                    ") overflows the address space");

    keys_ = detail::allocate_aligned<T>(static_cast<std::size_t>(capacity_ * page_stride()));
    values_ = detail::allocate_aligned<T>(static_cast<std::size_t>(capacity_ * page_stride()));
    positions_ =
        detail::allocate_aligned<position>(static_cast<std::size_t>(capacity_ * page_size_));
    in_use_.assign(static_cast<std::size_t>(capacity_), 0);
    // A stack: pages are handed out lowest id first, and a released page is the next one reused,
    // so the set of pages ever touched (resident memory, warm cache lines) stays as small as the
    // peak demand.
    free_.reserve(static_cast<std::size_t>(capacity_));
    for (index_t p = capacity_; p-- > 0;) free_.push_back(static_cast<page_id>(p));
  }

  kv_page_pool(const kv_page_pool&) = delete;
  kv_page_pool& operator=(const kv_page_pool&) = delete;

  index_t capacity_pages() const noexcept { return capacity_; }
  index_t page_size() const noexcept { return page_size_; }
  index_t head_dim() const noexcept { return head_dim_; }
  // Elements between consecutive pages of keys() (and of values()).
  index_t page_stride() const noexcept { return page_size_ * head_dim_; }
  // Keys, values and positions of one page.
  std::size_t bytes_per_page() const noexcept {
    return static_cast<std::size_t>(page_size_) *
           (2 * static_cast<std::size_t>(head_dim_) * sizeof(T) + sizeof(position));
  }
  std::size_t bytes_reserved() const noexcept {
    return static_cast<std::size_t>(capacity_) * bytes_per_page();
  }

  index_t pages_in_use() const {
    const std::lock_guard lock(mutex_);
    return capacity_ - static_cast<index_t>(free_.size());
  }
  index_t free_pages() const {
    const std::lock_guard lock(mutex_);
    return static_cast<index_t>(free_.size());
  }
  std::size_t bytes_used() const {
    return static_cast<std::size_t>(pages_in_use()) * bytes_per_page();
  }

  // The pool's arrays, [capacity_pages, page_size, head_dim] and [capacity_pages, page_size].
  // Stable for the pool's lifetime.
  T* keys() noexcept { return keys_.get(); }
  const T* keys() const noexcept { return keys_.get(); }
  T* values() noexcept { return values_.get(); }
  const T* values() const noexcept { return values_.get(); }
  position* positions() noexcept { return positions_.get(); }
  const position* positions() const noexcept { return positions_.get(); }

  // First row of one page (no range check: page ids come from allocate()).
  T* key_page(page_id page) noexcept { return keys_.get() + page * page_stride(); }
  T* value_page(page_id page) noexcept { return values_.get() + page * page_stride(); }
  position* position_page(page_id page) noexcept { return positions_.get() + page * page_size_; }
  const T* key_page(page_id page) const noexcept { return keys_.get() + page * page_stride(); }
  const T* value_page(page_id page) const noexcept { return values_.get() + page * page_stride(); }
  const position* position_page(page_id page) const noexcept {
    return positions_.get() + page * page_size_;
  }

  // Fills `pages` with free page ids, or, when fewer than pages.size() are free, returns false
  // and changes nothing. Never allocates memory.
  bool try_allocate(std::span<page_id> pages) noexcept {
    const std::lock_guard lock(mutex_);
    if (pages.size() > free_.size()) return false;
    for (page_id& page : pages) {
      page = free_.back();
      free_.pop_back();
      in_use_[static_cast<std::size_t>(page)] = 1;
    }
    return true;
  }

  // As try_allocate, but throws attnkit::error when the pool cannot serve the whole request.
  void allocate(std::span<page_id> pages) {
    if (try_allocate(pages)) return;
    detail::fail("attnkit::kv_page_pool::allocate: ", pages.size(), " pages requested but only ",
                 free_pages(), " of ", capacity_, " are free (page_size ", page_size_,
                 ", head_dim ", head_dim_, ")");
  }
  page_id allocate() {
    page_id page = 0;
    allocate(std::span<page_id>(&page, 1));
    return page;
  }

  // Returns pages to the free list. Every id must be in range and currently allocated (a double
  // release would hand one page to two owners); otherwise throws and releases none of them.
  void release(std::span<const page_id> pages) {
    const std::lock_guard lock(mutex_);
    for (std::size_t i = 0; i < pages.size(); ++i) {
      const page_id page = pages[i];
      const bool valid = page >= 0 && page < capacity_ && in_use_[static_cast<std::size_t>(page)];
      if (!valid) {
        // Undo the marks of the pages before it, then report (the free list is untouched).
        for (std::size_t j = 0; j < i; ++j) in_use_[static_cast<std::size_t>(pages[j])] = 1;
        detail::fail("attnkit::kv_page_pool::release: pages[", i, "] is ", page,
                     page >= 0 && page < capacity_ ? ", which is not allocated (released twice?)"
                                                   : ", which is not a page of this pool",
                     " (capacity_pages ", capacity_, ")");
      }
      in_use_[static_cast<std::size_t>(page)] = 0;
    }
    // free_ has capacity for every page, so this never allocates (and cannot throw).
    for (const page_id page : pages) free_.push_back(page);
  }
  void release(page_id page) { release(std::span<const page_id>(&page, 1)); }

 private:
  index_t capacity_;
  index_t page_size_;
  index_t head_dim_;
  detail::aligned_array<T> keys_;
  detail::aligned_array<T> values_;
  detail::aligned_array<position> positions_;
  mutable std::mutex mutex_;
  std::vector<page_id> free_;         // stack of free ids, capacity reserved for every page
  std::vector<std::uint8_t> in_use_;  // [capacity_pages]: 1 while allocated
};

}  // namespace attnkit
