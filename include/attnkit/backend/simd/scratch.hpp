// attnkit — per-thread scratch memory for the CPU kernels.
//
// Each thread that runs kernel work items owns one growable, 64-byte-aligned buffer. It grows
// (the only allocation) the first time a thread meets a larger problem and is reused by every
// later call, so steady-state calls allocate nothing, and no hot loop ever does. Two arenas per
// thread: `item` for the tiles of the work item the thread is running, `call` for buffers that
// live across a whole call on the calling thread (split-KV partial results) — the calling thread
// also runs items, so the two must not share memory.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <memory>
#include <new>

#include "attnkit/core/aligned_memory.hpp"

namespace attnkit {
namespace detail {
namespace simd {

class scratch_arena {
 public:
  // A buffer of at least `floats` floats, 64-byte aligned. Invalidates earlier pointers.
  float* reserve(std::size_t floats) {
    if (floats > capacity_) {
      buffer_ = allocate_aligned<float>(floats);
      capacity_ = aligned_bytes<float>(floats) / sizeof(float);
    }
    return buffer_.get();
  }

 private:
  aligned_array<float> buffer_;
  std::size_t capacity_ = 0;
};

inline scratch_arena& item_scratch() {
  thread_local scratch_arena arena;
  return arena;
}

inline scratch_arena& call_scratch() {
  thread_local scratch_arena arena;
  return arena;
}

}  // namespace simd
}  // namespace detail
}  // namespace attnkit
