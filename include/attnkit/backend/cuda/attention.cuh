// attnkit — attention() on backend::cuda: the same front doors as the CPU backends, over views of
// device memory, enqueued on the tag's stream.
//
//   attnkit::attention(attnkit::backend::cuda{stream}, q, k, v, out, attnkit::causal{}, options);
//   attnkit::attention(attnkit::backend::cuda{stream}, q, paged_view, out, mask, options);
//
// Two kernels serve every call:
//   - tensor_core_attention_kernel (FlashAttention-2 on mma.sync) for prefill: q, k and v all
//     half or all bfloat16, head dim 64, 80, 96, 128 or 256, contiguous K/V, rows 16-byte
//     aligned, at least 16 query tokens;
//   - split_kv_attention_kernel on CUDA cores for everything else: decode and short query
//     blocks (split across the keys to fill the device, merged exactly), paged caches, fp32, any
//     head dim 1..256, queries of another type than the cache.
// Both write any output type and the log-sum-exp, take every mask type, softcap and ALiBi, and
// give zeros and -inf for rows that see no key.
//
// Validation happens on the host before anything is enqueued: shapes, head counts, head dim,
// options, that every pointer is device-readable memory, and the mask's check(). Device memory
// is not read back, so ALiBi slopes and a paged view's lengths and page table are not checked;
// a paged head's length is clamped to its page-table row on the device. Observers are not
// supported (the probabilities stay on the device). Errors of the kernels themselves surface at
// the caller's next synchronising CUDA call, as with any CUDA library.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "attnkit/attention/check.hpp"
#include "attnkit/backend/cuda/device_mask.cuh"
#include "attnkit/backend/cuda/device_types.cuh"
#include "attnkit/backend/cuda/key_source.cuh"
#include "attnkit/backend/cuda/runtime.cuh"
#include "attnkit/backend/cuda/split_kv_attention.cuh"
#include "attnkit/backend/cuda/tensor_core_attention.cuh"
#include "attnkit/backend/cuda_tag.hpp"
#include "attnkit/core/paged_kv_view.hpp"
#include "attnkit/core/tensor_view.hpp"
#include "attnkit/mask/tile.hpp"

namespace attnkit {
namespace detail::cuda {

inline constexpr const char* attention_function = "attnkit::attention (backend::cuda)";

// Query tokens from which prefill takes the tensor cores; below, the split-KV kernel's key-wise
// parallelism wins (decode has one token, and a 64-row tile would be mostly empty).
inline constexpr index_t tensor_core_min_query_tokens = 16;

template <class T>
bool aligned_16(const T* pointer) {
  return reinterpret_cast<std::uintptr_t>(pointer) % 16 == 0;
}

// The split-KV grid: enough splits that the device holds about two blocks per multiprocessor,
// none shorter than split_kv_min_keys keys.
inline split_kv_plan plan_splits(index_t blocks_per_split, index_t keys, int multiprocessors) {
  split_kv_plan plan;
  const index_t wanted = 2 * static_cast<index_t>(multiprocessors);
  index_t splits =
      blocks_per_split >= wanted ? 1 : (wanted + blocks_per_split - 1) / blocks_per_split;
  const index_t most = (keys + split_kv_min_keys - 1) / split_kv_min_keys;
  splits = splits < most ? splits : most;
  plan.splits = splits < 1 ? 1 : splits;
  const index_t per_split = (keys + plan.splits - 1) / plan.splits;
  plan.split_size = (per_split + split_kv_chunk - 1) / split_kv_chunk * split_kv_chunk;
  if (plan.split_size == 0) plan.split_size = split_kv_chunk;
  return plan;
}

inline index_t split_kv_blocks_per_split(index_t q_tokens, index_t q_heads, index_t kv_heads) {
  const index_t group = q_heads / kv_heads;
  return q_tokens * kv_heads * ((group + split_kv_rows - 1) / split_kv_rows);
}

inline std::size_t split_kv_scratch_bytes(const split_kv_plan& plan, index_t q_tokens,
                                          index_t q_heads, index_t head_dim) {
  if (plan.splits <= 1) return 0;
  const auto rows = static_cast<std::size_t>(plan.splits * q_tokens * q_heads);
  return rows * static_cast<std::size_t>(head_dim + 1) * sizeof(float);
}

template <class TQ, class TO>
device_attention_params device_params(const attention_params& p, const tensor_view<TQ, 3>& q,
                                      const tensor_view<TO, 3>& out) {
  device_attention_params d;
  d.q = q.data();
  d.q_kind = storage_kind_of<std::remove_cv_t<TQ>>();
  d.q_token_stride = q.stride(0);
  d.q_head_stride = q.stride(1);
  d.q_dim_stride = q.stride(2);
  d.out = out.data();
  d.out_kind = storage_kind_of<TO>();
  d.out_token_stride = out.stride(0);
  d.out_head_stride = out.stride(1);
  d.out_dim_stride = out.stride(2);
  if (!p.log_sum_exp.empty()) {
    d.log_sum_exp = p.log_sum_exp.data();
    d.lse_head_stride = p.log_sum_exp.stride(0);
    d.lse_token_stride = p.log_sum_exp.stride(1);
  }
  d.q_tokens = p.q_tokens;
  d.q_heads = p.q_heads;
  d.kv_heads = p.kv_heads;
  d.group_size = p.group_size;
  d.head_dim = p.head_dim;
  d.scale = p.scale;
  d.softcap = p.softcap;
  d.alibi_slopes = p.alibi_slopes;
  d.alibi_stride = p.alibi_stride;
  return d;
}

// The checks every backend::cuda call adds to the shared ones: device-readable pointers, no
// observer, and K/V rows the kernels can read (unit stride along head_dim).
template <class TQ, class TO>
void check_device_call(const attention_options& options, const tensor_view<TQ, 3>& q,
                       const tensor_view<TO, 3>& out) {
  require(!options.observer, attention_function,
          ": observers are not supported by backend::cuda (the probabilities stay on the device)");
  require_device_pointer(attention_function, "q", q.data());
  require_device_pointer(attention_function, "out", out.data());
  require_device_pointer(attention_function, "alibi_slopes", options.alibi_slopes.data());
  require_device_pointer(attention_function, "log_sum_exp", options.log_sum_exp.data());
}

inline void require_unit_row_stride(const char* name, index_t stride) {
  require(stride == 1, attention_function, ": ", name, " has head_dim stride ", stride,
          "; backend::cuda reads K/V rows as contiguous elements (stride 1)");
}

template <class KV, class Keys, class Mask, int DimsPerThread>
void launch_split_kv_kernel(const device_attention_params& p, const Keys& keys, const Mask& mask,
                            const split_kv_plan& plan, cudaStream_t stream) {
  const index_t head_chunks = (p.group_size + split_kv_rows - 1) / split_kv_rows;
  const dim3 grid(static_cast<unsigned>(p.q_tokens * plan.splits),
                  static_cast<unsigned>(p.kv_heads * head_chunks));
  split_kv_attention_kernel<KV, Keys, Mask, DimsPerThread>
      <<<grid, split_kv_threads, 0, stream>>>(p, keys, mask, plan);
  check_launch(attention_function, "split_kv_attention_kernel");
}

// Split-KV attention over `keys` (a contiguous or paged key source) whose heads hold at most
// max_keys keys.
template <class KV, class Keys, class Mask>
void run_split_kv(const backend::cuda& backend, const device_attention_params& p, const Keys& keys,
                  const Mask& mask, index_t max_keys) {
  const auto stream = static_cast<cudaStream_t>(backend.stream);
  split_kv_plan plan = plan_splits(split_kv_blocks_per_split(p.q_tokens, p.q_heads, p.kv_heads),
                                   max_keys, multiprocessor_count(attention_function));
  require(p.q_tokens * plan.splits < (index_t{1} << 31) &&
              p.kv_heads * ((p.group_size + split_kv_rows - 1) / split_kv_rows) < 65536,
          attention_function, ": the call is too large for one grid (", p.q_tokens,
          " query tokens, ", p.q_heads, " query heads)");
  const call_scratch scratch(attention_function, backend.workspace, stream,
                             split_kv_scratch_bytes(plan, p.q_tokens, p.q_heads, p.head_dim));
  if (plan.splits > 1) {
    plan.partial_out = scratch.as<float>();
    plan.partial_lse = plan.partial_out + plan.splits * p.q_tokens * p.q_heads * p.head_dim;
  }
  switch (split_kv_dims_per_thread(p.head_dim)) {
    case 1:
      launch_split_kv_kernel<KV, Keys, Mask, 1>(p, keys, mask, plan, stream);
      break;
    case 2:
      launch_split_kv_kernel<KV, Keys, Mask, 2>(p, keys, mask, plan, stream);
      break;
    case 4:
      launch_split_kv_kernel<KV, Keys, Mask, 4>(p, keys, mask, plan, stream);
      break;
    case 8:
      launch_split_kv_kernel<KV, Keys, Mask, 8>(p, keys, mask, plan, stream);
      break;
    default:
      launch_split_kv_kernel<KV, Keys, Mask, 16>(p, keys, mask, plan, stream);
      break;
  }
  if (plan.splits > 1) {
    merge_splits_kernel<>
        <<<static_cast<unsigned>(p.q_tokens * p.q_heads), split_kv_threads, 0, stream>>>(p, plan);
    check_launch(attention_function, "merge_splits_kernel");
  }
}

template <class T, int HeadDim, class Mask>
void launch_tensor_core_kernel(const device_attention_params& p, const contiguous_key_source<T>& kv,
                               const Mask& mask, cudaStream_t stream) {
  using tile = tensor_core_tile<HeadDim>;
  const auto kernel = &tensor_core_attention_kernel<T, HeadDim, Mask>;
  allow_shared_memory(kernel, static_cast<int>(tile::shared_bytes), attention_function,
                      "cudaFuncSetAttribute(tensor_core_attention_kernel shared memory)");
  const index_t row_tiles = (p.q_tokens * p.group_size + tile::rows - 1) / tile::rows;
  require(row_tiles < (index_t{1} << 31) && p.kv_heads < 65536, attention_function,
          ": the call is too large for one grid (", p.q_tokens, " query tokens)");
  const dim3 grid(static_cast<unsigned>(row_tiles), static_cast<unsigned>(p.kv_heads));
  kernel<<<grid, tile::threads, tile::shared_bytes, stream>>>(p, kv, mask);
  check_launch(attention_function, "tensor_core_attention_kernel");
}

template <class T, class Mask>
void run_tensor_core(const backend::cuda& backend, const device_attention_params& p,
                     const contiguous_key_source<T>& kv, const Mask& mask) {
  const auto stream = static_cast<cudaStream_t>(backend.stream);
  switch (p.head_dim) {
    case 64:
      launch_tensor_core_kernel<T, 64>(p, kv, mask, stream);
      break;
    case 80:
      launch_tensor_core_kernel<T, 80>(p, kv, mask, stream);
      break;
    case 96:
      launch_tensor_core_kernel<T, 96>(p, kv, mask, stream);
      break;
    case 128:
      launch_tensor_core_kernel<T, 128>(p, kv, mask, stream);
      break;
    default:
      launch_tensor_core_kernel<T, 256>(p, kv, mask, stream);
      break;
  }
}

// Rows of `view` start on 16-byte boundaries: the data is aligned and the token and head
// strides are whole 16-byte words.
template <class T>
bool rows_aligned_16(const tensor_view<T, 3>& view) {
  constexpr index_t per_word = 16 / static_cast<index_t>(sizeof(T));
  return aligned_16(view.data()) && view.stride(2) == 1 && view.stride(0) % per_word == 0 &&
         view.stride(1) % per_word == 0;
}

template <class Q, class KV>
inline constexpr bool tensor_core_types = std::is_same_v<Q, KV> && (std::is_same_v<KV, half> ||
                                                                    std::is_same_v<KV, bfloat16>);

// Whether a contiguous call with these views runs on the tensor cores (given valid arguments).
template <class TQ, class TKV>
bool takes_tensor_cores(const tensor_view<TQ, 3>& q, const tensor_view<TKV, 3>& k,
                        const tensor_view<TKV, 3>& v) {
  if constexpr (tensor_core_types<std::remove_cv_t<TQ>, std::remove_cv_t<TKV>>)
    return has_tensor_core_kernel(q.extent(2)) && q.extent(0) >= tensor_core_min_query_tokens &&
           rows_aligned_16(q) && rows_aligned_16(k) && rows_aligned_16(v);
  else
    return false;
}

template <class TQ, class TKV, class TO, class HostMask, class DeviceMask>
void attention_contiguous(const backend::cuda& backend, const tensor_view<TQ, 3>& q,
                          const tensor_view<TKV, 3>& k, const tensor_view<TKV, 3>& v,
                          const tensor_view<TO, 3>& out, const HostMask& host_mask,
                          const DeviceMask& device_mask, const attention_options& options) {
  const attention_params params =
      check_attention_arguments(attention_function, q, k, v, out, options, argument_memory::device);
  check_mask(host_mask, params.shape());
  check_device_call(options, q, out);
  require_device_pointer(attention_function, "k", k.data());
  require_device_pointer(attention_function, "v", v.data());
  require_unit_row_stride("k", k.stride(2));
  require_unit_row_stride("v", v.stride(2));
  if (params.q_tokens == 0) return;
  using Q = std::remove_cv_t<TQ>;
  using KV = std::remove_cv_t<TKV>;
  const device_attention_params p = device_params(params, q, out);
  const contiguous_key_source<KV> keys{
      k.data(),    v.data(),    k.stride(0),      k.stride(1),
      v.stride(0), v.stride(1), params.kv_tokens, rows_aligned_16(k) && rows_aligned_16(v)};
  if constexpr (tensor_core_types<Q, KV>) {
    if (takes_tensor_cores(q, k, v)) {
      run_tensor_core<KV>(backend, p, keys, device_mask);
      return;
    }
  }
  run_split_kv<KV>(backend, p, keys, device_mask, params.kv_tokens);
}

template <class TQ, class TKV, class TO, class HostMask, class DeviceMask>
void attention_paged(const backend::cuda& backend, const tensor_view<TQ, 3>& q,
                     const paged_kv_view<TKV>& kv, const tensor_view<TO, 3>& out,
                     const HostMask& host_mask, const DeviceMask& device_mask,
                     const attention_options& options) {
  const attention_params params = check_paged_attention_arguments(attention_function, q, kv, out,
                                                                  options, argument_memory::device);
  check_mask(host_mask, params.shape());
  check_device_call(options, q, out);
  require(params.kv_tokens < (index_t{1} << 31), attention_function,
          ": a head's capacity kv.page_table_stride x kv.page_size is ", params.kv_tokens,
          "; backend::cuda addresses slots with 32 bits");
  if (kv.kv_heads > 0 && params.kv_tokens > 0) {
    require_device_pointer(attention_function, "kv.keys", kv.keys);
    require_device_pointer(attention_function, "kv.values", kv.values);
    require_device_pointer(attention_function, "kv.page_table", kv.page_table);
  }
  if (kv.kv_heads > 0) require_device_pointer(attention_function, "kv.lengths", kv.lengths);
  if (params.q_tokens == 0) return;
  using KV = std::remove_cv_t<TKV>;
  constexpr index_t per_word = 16 / static_cast<index_t>(sizeof(KV));
  paged_key_source<KV> keys;
  keys.view = paged_kv_view<const KV>(kv);
  keys.capacity = params.kv_tokens;
  keys.vector_aligned = aligned_16(kv.keys) && aligned_16(kv.values) &&
                        kv.row_stride % per_word == 0 && kv.page_stride % per_word == 0 &&
                        kv.head_stride % per_word == 0;
  run_split_kv<KV>(backend, device_params(params, q, out), keys, device_mask, params.kv_tokens);
}

}  // namespace detail::cuda

// Scratch bytes a backend::cuda attention call of this shape takes from a cuda_workspace (0 when
// it needs none). kv_tokens is the key count, or for a paged cache page_table_stride · page_size.
// Depends on the current device's multiprocessor count.
inline std::size_t attention_workspace_bytes(index_t q_tokens, index_t q_heads, index_t kv_heads,
                                             index_t head_dim, index_t kv_tokens) {
  using namespace detail::cuda;
  detail::require(q_heads >= 1 && kv_heads >= 1 && q_heads % kv_heads == 0,
                  "attnkit::attention_workspace_bytes: q_heads (", q_heads,
                  ") must be a positive multiple of kv_heads (", kv_heads, ")");
  const split_kv_plan plan =
      plan_splits(split_kv_blocks_per_split(q_tokens, q_heads, kv_heads), kv_tokens,
                  multiprocessor_count("attnkit::attention_workspace_bytes"));
  return split_kv_scratch_bytes(plan, q_tokens, q_heads, head_dim);
}

namespace cuda {

// Whether attention(backend::cuda{}, q, k, v, ...) with these views runs the tensor-core prefill
// kernel (true) or the split-KV kernel on CUDA cores (false): the kernel choice is otherwise
// silent, and a misaligned row or a head dim without a tensor-core kernel costs speed, not
// correctness.
template <class TQ, class TK, class TV>
bool uses_tensor_cores(tensor_view<TQ, 3> q, tensor_view<TK, 3> k, tensor_view<TV, 3> v) {
  using KV = std::remove_cv_t<TK>;
  return detail::cuda::takes_tensor_cores(q, tensor_view<const KV, 3>(k),
                                          tensor_view<const KV, 3>(v));
}

}  // namespace cuda

// Contiguous K/V in device memory ([kv_tokens, kv_heads, head_dim], rows with stride 1 along
// head_dim). Masks with tables go through cuda::device_mask.
template <class TQ, class TK, class TV, class TO, attention_mask Mask>
void attention(const backend::cuda& backend, tensor_view<TQ, 3> q, tensor_view<TK, 3> k,
               tensor_view<TV, 3> v, tensor_view<TO, 3> out, const Mask& mask,
               const attention_options& options = {}) {
  static_assert(!detail::has_mask_tables<Mask>,
                "this mask points into host tables: pass attnkit::cuda::device_mask(mask) to "
                "backend::cuda");
  using KV = std::remove_cv_t<TK>;
  detail::cuda::attention_contiguous(backend, q, tensor_view<const KV, 3>(k),
                                     tensor_view<const KV, 3>(v), out, mask, mask, options);
}

template <class TQ, class TK, class TV, class TO, attention_mask Mask>
void attention(const backend::cuda& backend, tensor_view<TQ, 3> q, tensor_view<TK, 3> k,
               tensor_view<TV, 3> v, tensor_view<TO, 3> out, const cuda::device_mask<Mask>& mask,
               const attention_options& options = {}) {
  using KV = std::remove_cv_t<TK>;
  detail::cuda::attention_contiguous(backend, q, tensor_view<const KV, 3>(k),
                                     tensor_view<const KV, 3>(v), out, mask.host(), mask.device(),
                                     options);
}

// A paged KV cache layer in device memory (core/paged_kv_view.hpp: keys, values, page table and
// lengths all on the device). Query row i of KV head g sits at slot lengths[g] - q_tokens + i.
template <class TQ, class TKV, class TO, attention_mask Mask>
void attention(const backend::cuda& backend, tensor_view<TQ, 3> q, paged_kv_view<TKV> kv,
               tensor_view<TO, 3> out, const Mask& mask, const attention_options& options = {}) {
  static_assert(!detail::has_mask_tables<Mask>,
                "this mask points into host tables: pass attnkit::cuda::device_mask(mask) to "
                "backend::cuda");
  detail::cuda::attention_paged(backend, q, kv, out, mask, mask, options);
}

template <class TQ, class TKV, class TO, attention_mask Mask>
void attention(const backend::cuda& backend, tensor_view<TQ, 3> q, paged_kv_view<TKV> kv,
               tensor_view<TO, 3> out, const cuda::device_mask<Mask>& mask,
               const attention_options& options = {}) {
  detail::cuda::attention_paged(backend, q, kv, out, mask.host(), mask.device(), options);
}

}  // namespace attnkit
