// attnkit — cache-line-aligned arrays: the one allocation helper the kernels' scratch, the KV
// page pool, Quest's page bounds and the linear-attention state share.
//
// 64 bytes is a cache line and an AVX-512 register, so rows whose byte size is a multiple of 64
// all start on a cache line and aligned vector loads are legal. The byte size is rounded up to a
// multiple of 64 (std::aligned_alloc requires it), so the last row's vector tail stays inside the
// allocation.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <memory>
#include <new>
#include <type_traits>

namespace attnkit {
namespace detail {

struct free_deleter {
  void operator()(void* p) const noexcept { std::free(p); }
};

template <class E>
using aligned_array = std::unique_ptr<E, free_deleter>;

// Bytes an aligned_array of `count` elements of E occupies: count · sizeof(E) rounded up to 64.
template <class E>
constexpr std::size_t aligned_bytes(std::size_t count) noexcept {
  return (count * sizeof(E) + 63) / 64 * 64;
}

// `count` elements of E, 64-byte aligned, not initialised (callers that need zeros memset; a
// large pool left untouched is only committed by the OS as it is first written). Null for 0.
template <class E>
aligned_array<E> allocate_aligned(std::size_t count) {
  static_assert(std::is_trivially_copyable_v<E> && std::is_trivially_destructible_v<E>);
  if (count == 0) return {};
  void* memory = std::aligned_alloc(64, aligned_bytes<E>(count));
  if (memory == nullptr) throw std::bad_alloc();
  return aligned_array<E>(static_cast<E*>(memory));
}

}  // namespace detail
}  // namespace attnkit
