// attnkit — the CUDA runtime as the CUDA backend uses it: errors turned into attnkit::error,
// device-pointer checks, device properties, and the scratch memory of a call.
#pragma once

#if !defined(__CUDACC__)
#error "attnkit/backend/cuda/*.cuh are compiled by nvcc only; include <attnkit/cuda.cuh>"
#endif

#include <cuda_runtime.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <utility>

#include "attnkit/core/error.hpp"

namespace attnkit {
namespace detail::cuda {

// Every CUDA call of the backend goes through this: a failure becomes attnkit::error naming the
// front door, what was being done and CUDA's own name and description of the error.
inline void check(cudaError_t status, const char* function, const char* what) {
  if (status == cudaSuccess) return;
  fail(function, ": ", what, " failed: ", cudaGetErrorName(status), " (",
       cudaGetErrorString(status), ")");
}

// After a launch: configuration errors (too much shared memory, a grid too large) surface here,
// errors of the kernel's execution at the caller's next synchronising call.
inline void check_launch(const char* function, const char* kernel) {
  const cudaError_t status = cudaGetLastError();
  if (status == cudaSuccess) return;
  fail(function, ": launching kernel ", kernel, " failed: ", cudaGetErrorName(status), " (",
       cudaGetErrorString(status), ")");
}

// Where the device can read `pointer`: device or managed memory, or host memory mapped into the
// device's address space. The check costs one driver query per argument, far less than a launch;
// the contents of device memory (lengths, page tables, slopes) are not read back.
inline void require_device_pointer(const char* function, const char* name, const void* pointer) {
  if (pointer == nullptr) return;
  cudaPointerAttributes attributes{};
  const cudaError_t status = cudaPointerGetAttributes(&attributes, pointer);
  if (status != cudaSuccess) {
    (void)cudaGetLastError();  // clear it, so that the next launch check does not report it
    fail(function, ": '", name, "' (", pointer,
         ") could not be inspected: ", cudaGetErrorName(status),
         "; backend::cuda needs device memory");
  }
  const bool device_readable =
      attributes.type == cudaMemoryTypeDevice || attributes.type == cudaMemoryTypeManaged ||
      (attributes.type == cudaMemoryTypeHost && attributes.devicePointer == pointer);
  require(device_readable, function, ": '", name, "' (", pointer,
          ") is host memory the device cannot read; backend::cuda takes views of device memory");
}

// Multiprocessors of the current device: the split-KV kernels size their grids to fill them.
// Cached per device (a decode step should not pay a driver query for a constant); the cache is
// a relaxed atomic per device id, so concurrent first calls at worst query twice.
inline int multiprocessor_count(const char* function) {
  int device = 0;
  check(cudaGetDevice(&device), function, "cudaGetDevice");
  constexpr int cached_devices = 64;
  static std::atomic<int> cache[cached_devices] = {};
  if (device >= 0 && device < cached_devices) {
    const int cached = cache[device].load(std::memory_order_relaxed);
    if (cached > 0) return cached;
  }
  int count = 0;
  check(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device), function,
        "cudaDeviceGetAttribute(multiProcessorCount)");
  if (device >= 0 && device < cached_devices) cache[device].store(count, std::memory_order_relaxed);
  return count;
}

// Raises `kernel`'s dynamic shared-memory limit to `bytes` once per device (the attribute is a
// property of the function on that device, not of a launch).
template <class Kernel>
void allow_shared_memory(Kernel kernel, int bytes, const char* function, const char* what) {
  int device = 0;
  check(cudaGetDevice(&device), function, "cudaGetDevice");
  static std::atomic<std::uint64_t> done_on_devices{0};
  const std::uint64_t bit = device < 64 ? std::uint64_t{1} << device : 0;
  if (bit != 0 && (done_on_devices.load(std::memory_order_relaxed) & bit) != 0) return;
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes), function,
        what);
  done_on_devices.fetch_or(bit, std::memory_order_relaxed);
}

}  // namespace detail::cuda

// Device memory an engine lends to backend::cuda calls for their partial results (split-KV
// decode writes one partial output and log-sum-exp per split before merging them). With a
// workspace a call allocates nothing, which CUDA graph capture and latency-critical decode loops
// want; without one (backend::cuda{stream} alone) each call takes its scratch from the stream-
// ordered pool (cudaMallocAsync / cudaFreeAsync on the call's stream).
//
// A workspace serves one stream at a time: calls on one stream reuse it in stream order, calls
// on two streams at once need two workspaces. attention_workspace_bytes() says how much a call
// needs; a call that needs more than the workspace holds throws before enqueuing anything.
class cuda_workspace {
 public:
  cuda_workspace() = default;
  explicit cuda_workspace(std::size_t bytes) { reserve(bytes); }
  cuda_workspace(const cuda_workspace&) = delete;
  cuda_workspace& operator=(const cuda_workspace&) = delete;
  cuda_workspace(cuda_workspace&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}
  cuda_workspace& operator=(cuda_workspace&& other) noexcept {
    if (this != &other) {
      release();
      data_ = std::exchange(other.data_, nullptr);
      bytes_ = std::exchange(other.bytes_, 0);
    }
    return *this;
  }
  ~cuda_workspace() { release(); }

  // Grows to at least `bytes` (never shrinks). Synchronises the device when it reallocates, so
  // call it outside the decode loop.
  void reserve(std::size_t bytes) {
    if (bytes <= bytes_) return;
    void* grown = nullptr;
    detail::cuda::check(cudaMalloc(&grown, bytes), "attnkit::cuda_workspace::reserve",
                        "cudaMalloc");
    release();
    data_ = grown;
    bytes_ = bytes;
  }
  void* data() const noexcept { return data_; }
  std::size_t bytes() const noexcept { return bytes_; }

 private:
  void release() noexcept {
    if (data_ != nullptr) (void)cudaFree(data_);
    data_ = nullptr;
    bytes_ = 0;
  }
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
};

namespace detail::cuda {

// The scratch of one call: the engine's workspace, or a stream-ordered allocation returned to
// the pool (in stream order, after the kernels that use it) when this object goes away.
class call_scratch {
 public:
  call_scratch(const char* function, cuda_workspace* workspace, cudaStream_t stream,
               std::size_t bytes)
      : stream_(stream) {
    if (bytes == 0) return;
    if (workspace != nullptr) {
      require(workspace->bytes() >= bytes, function, ": the cuda_workspace holds ",
              workspace->bytes(), " bytes but this call needs ", bytes,
              " (reserve attention_workspace_bytes(...) for it)");
      data_ = workspace->data();
    } else {
      check(cudaMallocAsync(&data_, bytes, stream), function, "cudaMallocAsync (call scratch)");
      owned_ = true;
    }
  }
  call_scratch(const call_scratch&) = delete;
  call_scratch& operator=(const call_scratch&) = delete;
  ~call_scratch() {
    if (owned_) (void)cudaFreeAsync(data_, stream_);
  }
  template <class T>
  T* as(std::size_t byte_offset = 0) const noexcept {
    return reinterpret_cast<T*>(static_cast<char*>(data_) + byte_offset);
  }

 private:
  cudaStream_t stream_;
  void* data_ = nullptr;
  bool owned_ = false;
};

}  // namespace detail::cuda
}  // namespace attnkit
