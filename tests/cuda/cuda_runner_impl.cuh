// attnkit CUDA tests — the runners of cuda_runner.hpp; each cuda_runner_*.cu instantiates a part
// of the grid so nvcc's work spreads over several translation units.
#pragma once

#include <cuda_runtime.h>

#include <attnkit/cuda.cuh>
#include <cstddef>
#include <memory>
#include <type_traits>

#include "cuda/cuda_runner.hpp"

namespace attnkit_test::cuda {

inline void check_cuda(cudaError_t status, const char* what) {
  if (status != cudaSuccess)
    attnkit::detail::fail("CUDA test runner: ", what, ": ", cudaGetErrorString(status));
}

struct device_free {
  void operator()(void* pointer) const noexcept { (void)cudaFree(pointer); }
};
using device_buffer = std::unique_ptr<void, device_free>;

inline device_buffer allocate(std::size_t bytes) {
  void* pointer = nullptr;
  check_cuda(cudaMalloc(&pointer, bytes == 0 ? 1 : bytes), "cudaMalloc");
  return device_buffer(pointer);
}

// Elements from the view's first to its last (strides are non-negative in every test layout).
template <class T, std::size_t Rank>
std::size_t span_elements(const tensor_view<T, Rank>& view) {
  if (view.empty()) return 0;
  index_t last = 0;
  for (std::size_t d = 0; d < Rank; ++d) last += (view.extent(d) - 1) * view.stride(d);
  return static_cast<std::size_t>(last + 1);
}

// A device copy of a host view's span, and the same view over it.
template <class T, std::size_t Rank>
struct device_view {
  device_buffer memory;
  tensor_view<T, Rank> view;
};

template <class T, std::size_t Rank>
device_view<T, Rank> to_device(const tensor_view<T, Rank>& host) {
  using V = std::remove_cv_t<T>;
  const std::size_t bytes = span_elements(host) * sizeof(V);
  device_view<T, Rank> copy{allocate(bytes), {}};
  if (bytes > 0)
    check_cuda(cudaMemcpy(copy.memory.get(), host.data(), bytes, cudaMemcpyHostToDevice),
               "cudaMemcpy to device");
  copy.view = host.data() == nullptr && host.empty()
                  ? tensor_view<T, Rank>{}
                  : tensor_view<T, Rank>(static_cast<T*>(copy.memory.get()), host.extents(),
                                         host.strides());
  return copy;
}

template <class T, std::size_t Rank>
void to_host(const device_view<T, Rank>& device, const tensor_view<T, Rank>& host) {
  const std::size_t bytes = span_elements(host) * sizeof(T);
  if (bytes > 0)
    check_cuda(cudaMemcpy(host.data(), device.memory.get(), bytes, cudaMemcpyDeviceToHost),
               "cudaMemcpy to host");
}

template <class T>
device_buffer copy_array(const T* host, index_t count) {
  const std::size_t bytes = static_cast<std::size_t>(count > 0 ? count : 0) * sizeof(T);
  device_buffer copy = allocate(bytes);
  if (bytes > 0 && host != nullptr)
    check_cuda(cudaMemcpy(copy.get(), host, bytes, cudaMemcpyHostToDevice), "cudaMemcpy array");
  return copy;
}

// The options with slopes and log-sum-exp moved to the device (the observer is kept: the front
// door must reject it).
struct device_options {
  device_view<const float, 1> slopes;
  device_view<float, 2> log_sum_exp;
  attnkit::attention_options options;
};

inline device_options to_device(const attnkit::attention_options& host) {
  device_options d{to_device(host.alibi_slopes), to_device(host.log_sum_exp), host};
  d.options.alibi_slopes = d.slopes.view;
  d.options.log_sum_exp = d.log_sum_exp.view;
  return d;
}

inline void finish(const device_options& d, const attnkit::attention_options& host) {
  check_cuda(cudaDeviceSynchronize(), "kernel execution");
  to_host(d.log_sum_exp, host.log_sum_exp);
}

// The mask as backend::cuda takes it: tables copied into device memory, kept alive by the caller
// until the stream has finished.
template <class Mask>
auto mask_for_device(const Mask& mask) {
  if constexpr (attnkit::detail::has_mask_tables<Mask>)
    return attnkit::cuda::device_mask<Mask>(mask);
  else
    return mask;
}

template <class TQ, class TKV, class TO, class Mask>
void attention(tensor_view<const TQ, 3> q, tensor_view<const TKV, 3> k, tensor_view<const TKV, 3> v,
               tensor_view<TO, 3> out, const Mask& mask,
               const attnkit::attention_options& options) {
  const auto dq = to_device(q);
  const auto dk = to_device(k), dv = to_device(v);
  const auto dout = to_device(out);
  const device_options dopt = to_device(options);
  const auto device_mask = mask_for_device(mask);
  attnkit::attention(attnkit::backend::cuda{}, dq.view, dk.view, dv.view, dout.view, device_mask,
                     dopt.options);
  finish(dopt, options);
  to_host(dout, out);
}

template <class TQ, class TKV, class TO, class Mask>
void attention_paged(tensor_view<const TQ, 3> q, attnkit::paged_kv_view<const TKV> kv,
                     index_t pages, tensor_view<TO, 3> out, const Mask& mask,
                     const attnkit::attention_options& options) {
  const auto dq = to_device(q);
  const auto dout = to_device(out);
  const device_options dopt = to_device(options);
  const index_t pool = pages * kv.page_stride;
  const device_buffer keys = copy_array(kv.keys, pool), values = copy_array(kv.values, pool);
  const device_buffer table = copy_array(kv.page_table, kv.kv_heads * kv.page_table_stride);
  const device_buffer lengths = copy_array(kv.lengths, kv.kv_heads);
  attnkit::paged_kv_view<const TKV> device = kv;
  device.keys = static_cast<const TKV*>(keys.get());
  device.values = static_cast<const TKV*>(values.get());
  device.page_table = static_cast<const attnkit::page_id*>(table.get());
  device.lengths = static_cast<const index_t*>(lengths.get());
  device.positions = nullptr;
  const auto device_mask = mask_for_device(mask);
  attnkit::attention(attnkit::backend::cuda{}, dq.view, device, dout.view, device_mask,
                     dopt.options);
  finish(dopt, options);
  to_host(dout, out);
}

}  // namespace attnkit_test::cuda

// Explicit instantiations: ATTNKIT_TEST_CUDA_CONTIGUOUS(TQ, TKV, TO, Mask) and _PAGED.
#define ATTNKIT_TEST_CUDA_CONTIGUOUS(TQ, TKV, TO, ...)                                     \
  template void attnkit_test::cuda::attention<TQ, TKV, TO, __VA_ARGS__>(                   \
      attnkit::tensor_view<const TQ, 3>, attnkit::tensor_view<const TKV, 3>,               \
      attnkit::tensor_view<const TKV, 3>, attnkit::tensor_view<TO, 3>, const __VA_ARGS__&, \
      const attnkit::attention_options&);
#define ATTNKIT_TEST_CUDA_PAGED(TQ, TKV, TO, ...)                                             \
  template void attnkit_test::cuda::attention_paged<TQ, TKV, TO, __VA_ARGS__>(                \
      attnkit::tensor_view<const TQ, 3>, attnkit::paged_kv_view<const TKV>, attnkit::index_t, \
      attnkit::tensor_view<TO, 3>, const __VA_ARGS__&, const attnkit::attention_options&);
