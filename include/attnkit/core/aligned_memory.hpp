// attnkit — cache-line-aligned arrays: the one allocation helper the kernels' scratch, the KV
// page pool, Quest's page bounds and the linear-attention state share.
//
// 64 bytes is a cache line and an AVX-512 register, so rows whose byte size is a multiple of 64
// all start on a cache line and aligned vector loads are legal. The byte size is rounded up to a
// multiple of 64 (std::aligned_alloc requires it), so the last row's vector tail stays inside the
// allocation.
//
// Arrays of 2 MiB or more (a page pool, Quest's bounds, an observed decode step's kept values)
// are read at scattered places: one 16-token page of one head, then another megabytes away. With
// 4 KiB pages every such read also misses the TLB and walks the page table, from memory once the
// tables themselves are cold. So these arrays are 2 MiB-aligned, their size rounded up to 2 MiB,
// and on Linux advised for transparent huge pages (madvise MADV_HUGEPAGE; it works where THP is
// `always` or `madvise`, and is a no-op under `never`). On this project's machine that took
// Quest's page scoring from cold memory from 3.3 to 2.0 ms at n_kv 131072 (bench/RESULTS.md).
// The rounding costs at most 2 MiB of address space per array; untouched memory is not committed.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <memory>
#include <new>
#include <type_traits>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace attnkit {
namespace detail {

struct free_deleter {
  void operator()(void* p) const noexcept { std::free(p); }
};

template <class E>
using aligned_array = std::unique_ptr<E, free_deleter>;

// The transparent huge page size of x86-64 and of AArch64 with 4 KiB base pages.
inline constexpr std::size_t huge_page_bytes = std::size_t{2} << 20;

// Usable bytes of an aligned_array of `count` elements of E: count · sizeof(E) rounded up to 64
// (an array of 2 MiB or more is allocated rounded up to 2 MiB).
template <class E>
constexpr std::size_t aligned_bytes(std::size_t count) noexcept {
  return (count * sizeof(E) + 63) / 64 * 64;
}

// `count` elements of E, 64-byte aligned (2 MiB-aligned and huge-page advised from 2 MiB on, see
// above), not initialised (callers that need zeros memset; a large pool left untouched is only
// committed by the OS as it is first written). Null for 0.
template <class E>
aligned_array<E> allocate_aligned(std::size_t count) {
  static_assert(std::is_trivially_copyable_v<E> && std::is_trivially_destructible_v<E>);
  if (count == 0) return {};
  std::size_t bytes = aligned_bytes<E>(count);
  std::size_t alignment = 64;
  if (bytes >= huge_page_bytes) {
    alignment = huge_page_bytes;
    bytes = (bytes + huge_page_bytes - 1) / huge_page_bytes * huge_page_bytes;
  }
  void* memory = std::aligned_alloc(alignment, bytes);
  if (memory == nullptr) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  // Advice only: refused (old kernel, THP compiled out) it changes nothing, so it is not checked.
  if (alignment == huge_page_bytes) madvise(memory, bytes, MADV_HUGEPAGE);
#endif
  return aligned_array<E>(static_cast<E*>(memory));
}

}  // namespace detail
}  // namespace attnkit
