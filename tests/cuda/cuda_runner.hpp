// attnkit CUDA tests — the device side behind a plain C++ interface, so that the tests themselves
// (Catch2, the fp64 reference, the CPU test support) compile with the host compiler and only the
// kernels go through nvcc.
//
// Each runner copies its host inputs to the device as whole strided spans (padding, sentinels
// and strides included, so layouts and out-of-view writes are tested as on the CPU), runs
// attnkit::attention on backend::cuda (masks with tables through cuda::device_mask), waits for the
// stream, and copies `out` and the log-sum-exp back. Errors thrown by the front door propagate.
#pragma once

#include <string>

#include "attnkit/core/options.hpp"
#include "attnkit/core/paged_kv_view.hpp"
#include "attnkit/core/tensor_view.hpp"

namespace attnkit_test::cuda {

using attnkit::index_t;
using attnkit::tensor_view;

// Devices the CUDA runtime sees (0 without a GPU or a driver), and the first one's name.
int device_count();
std::string device_name();

template <class TQ, class TKV, class TO, class Mask>
void attention(tensor_view<const TQ, 3> q, tensor_view<const TKV, 3> k, tensor_view<const TKV, 3> v,
               tensor_view<TO, 3> out, const Mask& mask, const attnkit::attention_options& options);

// The host view's pools hold `pages` pages of page_stride elements; page table and lengths are
// [kv_heads, page_table_stride] and [kv_heads].
template <class TQ, class TKV, class TO, class Mask>
void attention_paged(tensor_view<const TQ, 3> q, attnkit::paged_kv_view<const TKV> kv,
                     index_t pages, tensor_view<TO, 3> out, const Mask& mask,
                     const attnkit::attention_options& options);

// Calls that must throw attnkit::error before enqueuing anything, each returning nothing:
// q in host memory, an observer, k with head_dim stride 2, a workspace too small for a
// split-KV decode.
void attention_with_host_query();
void attention_with_observer();
void attention_with_strided_keys();
void attention_with_small_workspace();

}  // namespace attnkit_test::cuda
