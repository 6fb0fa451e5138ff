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

namespace attnkit {
namespace detail {
namespace simd {

class scratch_arena {
 public:
  // A buffer of at least `floats` floats, 64-byte aligned. Invalidates earlier pointers.
  float* reserve(std::size_t floats) {
    if (floats > capacity_) {
      const std::size_t bytes = ((floats * sizeof(float) + 63) / 64) * 64;
      void* memory = std::aligned_alloc(64, bytes);
      if (memory == nullptr) throw std::bad_alloc();
      buffer_.reset(static_cast<float*>(memory));
      capacity_ = bytes / sizeof(float);
    }
    return buffer_.get();
  }

 private:
  struct free_deleter {
    void operator()(float* p) const noexcept { std::free(p); }
  };
  std::unique_ptr<float, free_deleter> buffer_;
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
