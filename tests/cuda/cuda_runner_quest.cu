// attnkit CUDA tests — the runners of cuda_runner_quest.hpp: Quest page bounds, selection and
// attention through the selected device layout.
//
// Instantiated: the bounds for every key type x bounds type (the update kernel is small), the
// selection for every query type (the scoring kernel takes q untyped, so that is one kernel per
// bounds type), and attention for one type combination (fp32 q and out, fp16 K/V: split-KV only,
// no tensor-core instantiations) over a contiguous and a paged cache.
#include <attnkit/backend/cuda/page_selection.cuh>

#include "cuda/cuda_runner_impl.cuh"
#include "cuda/cuda_runner_quest.hpp"

namespace attnkit_test::cuda {

namespace {

void wait_for_device() { check_cuda(cudaDeviceSynchronize(), "kernel execution"); }

template <class T>
std::vector<T> copy_back(const T* device, index_t count) {
  std::vector<T> host(static_cast<std::size_t>(count > 0 ? count : 0));
  if (count > 0)
    check_cuda(cudaMemcpy(host.data(), device, host.size() * sizeof(T), cudaMemcpyDeviceToHost),
               "cudaMemcpy to host");
  return host;
}

// A device copy of a host paged cache: pools of pool_pages pages, page table, lengths.
template <class TK>
struct device_cache {
  device_buffer keys, values, table, lengths;
  attnkit::paged_kv_view<const TK> view;
};

template <class TK>
device_cache<TK> to_device(const attnkit::paged_kv_view<const TK>& kv, index_t pool_pages) {
  device_cache<TK> c;
  const index_t pool = pool_pages * kv.page_stride;
  c.keys = copy_array(kv.keys, pool);
  c.values = copy_array(kv.values, pool);
  c.table = copy_array(kv.page_table, kv.kv_heads * kv.page_table_stride);
  c.lengths = copy_array(kv.lengths, kv.kv_heads);
  c.view = kv;
  c.view.keys = static_cast<const TK*>(c.keys.get());
  c.view.values = static_cast<const TK*>(c.values.get());
  c.view.page_table = static_cast<const attnkit::page_id*>(c.table.get());
  c.view.lengths = static_cast<const index_t*>(c.lengths.get());
  c.view.positions = nullptr;
  return c;
}

}  // namespace

template <class T>
struct quest_session<T>::impl {
  attnkit::cuda::device_page_bounds<T> bounds;
  attnkit::cuda::device_block_layout layout;
  attnkit::cuda_workspace workspace;
  bool with_workspace = false;

  attnkit::backend::cuda backend() {
    return attnkit::backend::cuda{nullptr, with_workspace ? &workspace : nullptr};
  }
};

template <class T>
quest_session<T>::quest_session(index_t page_size, index_t kv_heads, index_t head_dim,
                                index_t capacity_tokens, index_t layout_pages_per_head,
                                bool with_workspace)
    : impl_(new impl{
          attnkit::cuda::device_page_bounds<T>(page_size, kv_heads, head_dim, capacity_tokens),
          attnkit::cuda::device_block_layout(kv_heads, layout_pages_per_head),
          attnkit::cuda_workspace(), with_workspace}) {
  if (with_workspace)
    impl_->workspace.reserve(attnkit::cuda::quest_select_workspace_bytes(impl_->bounds));
}

template <class T>
quest_session<T>::~quest_session() = default;

template <class T>
template <class TK>
void quest_session<T>::update(tensor_view<const TK, 3> k, index_t first_token) {
  const auto dk = to_device(k);
  impl_->bounds.update(impl_->backend(), dk.view, first_token);
  wait_for_device();
}

template <class T>
template <class TK>
void quest_session<T>::update_paged(attnkit::paged_kv_view<const TK> kv, index_t pool_pages,
                                    paged_update mode, std::span<const index_t> first_slots) {
  const device_cache<TK> cache = to_device(kv, pool_pages);
  const device_buffer slots =
      copy_array(first_slots.data(), static_cast<index_t>(first_slots.size()));
  switch (mode) {
    case paged_update::rebuild:
      impl_->bounds.update(impl_->backend(), cache.view);
      break;
    case paged_update::first_slots:
      impl_->bounds.update(
          impl_->backend(), cache.view,
          tensor_view<const index_t, 1>(static_cast<const index_t*>(slots.get()),
                                        {static_cast<index_t>(first_slots.size())}));
      break;
    case paged_update::appended:
      impl_->bounds.update_appended(impl_->backend(), cache.view);
      break;
  }
  wait_for_device();
}

template <class T>
std::vector<T> quest_session<T>::storage() const {
  return copy_back(impl_->bounds.device_data(), impl_->bounds.kv_heads() * head_stride());
}

template <class T>
std::vector<index_t> quest_session<T>::device_tokens() const {
  return copy_back(impl_->bounds.device_tokens(), impl_->bounds.kv_heads());
}

template <class T>
std::optional<index_t> quest_session<T>::host_tokens() const {
  return impl_->bounds.tokens();
}

template <class T>
index_t quest_session<T>::head_stride() const {
  return impl_->bounds.head_stride();
}

template <class T>
index_t quest_session<T>::padded_head_dim() const {
  return impl_->bounds.padded_head_dim();
}

template <class T>
template <class TQ>
quest_layout_copy quest_session<T>::select(tensor_view<const TQ, 3> q, index_t top_pages) {
  const auto dq = to_device(q);
  attnkit::cuda::quest_select(impl_->backend(), dq.view, impl_->bounds, top_pages, impl_->layout);
  wait_for_device();
  return layout();
}

template <class T>
quest_layout_copy quest_session<T>::layout() const {
  quest_layout_copy copy;
  const attnkit::cuda::device_block_layout& layout = impl_->layout;
  if (!layout.selected()) return copy;
  copy.shape = layout.shape();
  copy.row_offsets = copy_back(layout.device_row_offsets(), layout.kv_heads() + 1);
  copy.columns = copy_back(layout.device_columns(), copy.row_offsets.back());
  return copy;
}

template <class T>
void quest_session<T>::attention(tensor_view<const float, 3> q,
                                 tensor_view<const attnkit::half, 3> k,
                                 tensor_view<const attnkit::half, 3> v,
                                 tensor_view<float, 3> out) const {
  const auto dq = to_device(q);
  const auto dk = to_device(k), dv = to_device(v);
  const auto dout = to_device(out);
  attnkit::attention(attnkit::backend::cuda{}, dq.view, dk.view, dv.view, dout.view,
                     impl_->layout.mask());
  wait_for_device();
  to_host(dout, out);
}

template <class T>
void quest_session<T>::attention_paged(tensor_view<const float, 3> q,
                                       attnkit::paged_kv_view<const attnkit::half> kv,
                                       index_t pool_pages, tensor_view<float, 3> out) const {
  const auto dq = to_device(q);
  const auto dout = to_device(out);
  const device_cache<attnkit::half> cache = to_device(kv, pool_pages);
  attnkit::attention(attnkit::backend::cuda{}, dq.view, cache.view, dout.view,
                     impl_->layout.mask());
  wait_for_device();
  to_host(dout, out);
}

void quest_misuse_call(quest_misuse which) {
  using attnkit::half;
  constexpr index_t page = 16, kv_heads = 2, dim = 32, tokens = 100, q_heads = 4;
  const attnkit::backend::cuda gpu{};
  std::vector<half> host_keys(tokens * kv_heads * dim, half::from_bits(0));
  const device_buffer keys = copy_array(host_keys.data(), tokens * kv_heads * dim);
  const tensor_view<const half, 3> k(static_cast<const half*>(keys.get()), {tokens, kv_heads, dim});
  std::vector<float> host_q(q_heads * dim, 1.0f);
  const device_buffer q_memory = copy_array(host_q.data(), q_heads * dim);
  const tensor_view<const float, 3> q(static_cast<const float*>(q_memory.get()), {1, q_heads, dim});
  // A paged view over the same memory: one page-table row per head, lengths on the device.
  const std::vector<attnkit::page_id> host_table = {0, 1, 2, 3, 4, 5, 6, 7};
  const std::vector<index_t> host_lengths = {40, 64};
  const device_buffer table = copy_array(host_table.data(), 8);
  const device_buffer lengths = copy_array(host_lengths.data(), kv_heads);
  attnkit::paged_kv_view<const half> kv{static_cast<const half*>(keys.get()),
                                        static_cast<const half*>(keys.get()),
                                        nullptr,
                                        static_cast<const attnkit::page_id*>(table.get()),
                                        static_cast<const index_t*>(lengths.get()),
                                        kv_heads,
                                        dim,
                                        page,
                                        4,
                                        dim,
                                        page * dim,
                                        0};

  switch (which) {
    case quest_misuse::update_host_keys: {
      attnkit::cuda::device_page_bounds<half> bounds(page, kv_heads, dim, tokens);
      const tensor_view<const half, 3> host_k(host_keys.data(), {tokens, kv_heads, dim});
      bounds.update(gpu, host_k, 0);
      break;
    }
    case quest_misuse::paged_host_lengths: {
      attnkit::cuda::device_page_bounds<half> bounds(page, kv_heads, dim, 4 * page);
      kv.lengths = host_lengths.data();
      bounds.update(gpu, kv);
      break;
    }
    case quest_misuse::paged_first_slots_host: {
      attnkit::cuda::device_page_bounds<half> bounds(page, kv_heads, dim, 4 * page);
      const std::vector<index_t> first = {0, 0};
      bounds.update(gpu, kv, tensor_view<const index_t, 1>(first.data(), {kv_heads}));
      break;
    }
    case quest_misuse::select_host_query: {
      attnkit::cuda::device_page_bounds<half> bounds(page, kv_heads, dim, tokens);
      bounds.update(gpu, k, 0);
      attnkit::cuda::device_block_layout layout(kv_heads, 4);
      const tensor_view<const float, 3> host_view(host_q.data(), {1, q_heads, dim});
      attnkit::cuda::quest_select(gpu, host_view, bounds, 4, layout);
      break;
    }
    case quest_misuse::select_small_workspace: {
      attnkit::cuda::device_page_bounds<half> bounds(page, kv_heads, dim, tokens);
      bounds.update(gpu, k, 0);
      attnkit::cuda::device_block_layout layout(kv_heads, 4);
      attnkit::cuda_workspace workspace(16);  // 7 pages x 2 heads x 4 bytes are needed
      attnkit::cuda::quest_select(attnkit::backend::cuda{nullptr, &workspace}, q, bounds, 4,
                                  layout);
      break;
    }
    case quest_misuse::layout_zero_heads: {
      attnkit::cuda::device_block_layout layout(0, 4);
      break;
    }
    case quest_misuse::bounds_zero_page_size: {
      attnkit::cuda::device_page_bounds<float> bounds(0, kv_heads, dim, tokens);
      break;
    }
    case quest_misuse::raw_block_sparse_null: {
      attnkit::block_layout_shape shape;
      shape.query_block = 1;
      shape.key_block = page;
      shape.query_blocks = 1;
      shape.key_blocks = 7;
      (void)attnkit::block_sparse(shape, nullptr, static_cast<const index_t*>(table.get()));
      break;
    }
  }
  wait_for_device();
}

}  // namespace attnkit_test::cuda

// (attnkit::half spelled out: CUDA declares a global `half`.)
using attnkit_half = attnkit::half;
using attnkit_bf16 = attnkit::bfloat16;

template class attnkit_test::cuda::quest_session<float>;
template class attnkit_test::cuda::quest_session<attnkit_half>;
template class attnkit_test::cuda::quest_session<attnkit_bf16>;

#define ATTNKIT_TEST_QUEST_UPDATE(T, TK)                                                    \
  template void attnkit_test::cuda::quest_session<T>::update<TK>(                           \
      attnkit::tensor_view<const TK, 3>, attnkit::index_t);                                 \
  template void attnkit_test::cuda::quest_session<T>::update_paged<TK>(                     \
      attnkit::paged_kv_view<const TK>, attnkit::index_t, attnkit_test::cuda::paged_update, \
      std::span<const attnkit::index_t>);
#define ATTNKIT_TEST_QUEST_SELECT(T, TQ)                                                           \
  template attnkit_test::cuda::quest_layout_copy attnkit_test::cuda::quest_session<T>::select<TQ>( \
      attnkit::tensor_view<const TQ, 3>, attnkit::index_t);
#define ATTNKIT_TEST_QUEST_BOUNDS(T)         \
  ATTNKIT_TEST_QUEST_UPDATE(T, float)        \
  ATTNKIT_TEST_QUEST_UPDATE(T, attnkit_half) \
  ATTNKIT_TEST_QUEST_UPDATE(T, attnkit_bf16) \
  ATTNKIT_TEST_QUEST_SELECT(T, float)        \
  ATTNKIT_TEST_QUEST_SELECT(T, attnkit_half) \
  ATTNKIT_TEST_QUEST_SELECT(T, attnkit_bf16)

ATTNKIT_TEST_QUEST_BOUNDS(float)
ATTNKIT_TEST_QUEST_BOUNDS(attnkit_half)
ATTNKIT_TEST_QUEST_BOUNDS(attnkit_bf16)
