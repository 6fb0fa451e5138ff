// attnkit — device_mask: a mask whose tables (per-head windows, block layouts, custom bits) are
// copied into device memory, so backend::cuda kernels can read them.
//
//   attnkit::block_layout layout = attnkit::moba_select(...);          // built on the host
//   attnkit::cuda::device_mask mask(attnkit::block_sparse(layout));    // tables copied once
//   attnkit::attention(attnkit::backend::cuda{stream}, q, k, v, out, mask);
//
// The kernels receive the same mask type with its pointers moved to the copies (the mask's
// relocated() member, mask/tile.hpp). The host mask is kept too: each call runs its check()
// against the call's shape there, so the host tables must outlive the device_mask. Masks without
// tables (full, causal, sliding_window and their intersections) are passed to backend::cuda as
// they are.
#pragma once

#include <cuda_runtime.h>

#include <memory>
#include <utility>
#include <vector>

#include "attnkit/backend/cuda/runtime.cuh"
#include "attnkit/core/config.hpp"
#include "attnkit/mask/tile.hpp"

namespace attnkit::cuda {

template <attention_mask Mask>
requires detail::has_mask_tables<Mask>
class device_mask {
 public:
  // Copies every table of `mask` to the current device (synchronously: masks are built once
  // and reused across calls).
  explicit device_mask(const Mask& mask)
      : host_(mask), device_(mask.relocated([this](const auto* data, index_t count) {
          return upload(data, count);
        })) {}
  device_mask(const device_mask&) = delete;
  device_mask& operator=(const device_mask&) = delete;
  device_mask(device_mask&&) noexcept = default;
  device_mask& operator=(device_mask&&) noexcept = default;

  const Mask& host() const noexcept { return host_; }
  const Mask& device() const noexcept { return device_; }

 private:
  template <class T>
  const T* upload(const T* data, index_t count) {
    if (count <= 0 || data == nullptr) return data;
    const std::size_t bytes = static_cast<std::size_t>(count) * sizeof(T);
    void* copy = nullptr;
    detail::cuda::check(cudaMalloc(&copy, bytes), "attnkit::cuda::device_mask", "cudaMalloc");
    buffers_.emplace_back(copy);
    detail::cuda::check(cudaMemcpy(copy, data, bytes, cudaMemcpyHostToDevice),
                        "attnkit::cuda::device_mask", "cudaMemcpy");
    return static_cast<const T*>(copy);
  }

  struct free_device_memory {
    void operator()(void* pointer) const noexcept { (void)cudaFree(pointer); }
  };
  Mask host_;
  // Declared before device_: filled while device_ is built, and freed if that throws.
  std::vector<std::unique_ptr<void, free_device_memory>> buffers_;
  Mask device_;
};

}  // namespace attnkit::cuda
