// attnkit CUDA tests — Quest on the device (backend/cuda/page_selection.cuh) behind a plain C++
// interface, so that the tests compile with the host compiler and only the kernels go through
// nvcc (cuda_runner_quest.cu).
//
// A quest_session owns a cuda::device_page_bounds<T> and a cuda::device_block_layout. Each call
// copies its host inputs to the device (keys and caches as whole spans, strides and padding
// included), enqueues the library call on the default stream, waits for the device, and copies
// results back. Errors thrown by the library propagate unchanged; kernel errors become
// attnkit::error from the runner's synchronisation.
#pragma once

#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "attnkit/core/float16.hpp"
#include "attnkit/core/paged_kv_view.hpp"
#include "attnkit/core/tensor_view.hpp"
#include "attnkit/mask/block_sparse.hpp"

namespace attnkit_test::cuda {

using attnkit::index_t;
using attnkit::tensor_view;

// A device selection copied back: the layout's shape and CSR arrays.
struct quest_layout_copy {
  attnkit::block_layout_shape shape;
  std::vector<index_t> row_offsets;  // kv_heads + 1
  std::vector<index_t> columns;      // row_offsets.back()

  std::vector<index_t> row(index_t kv_head) const {
    const auto begin = columns.begin() + row_offsets[static_cast<std::size_t>(kv_head)];
    const auto end = columns.begin() + row_offsets[static_cast<std::size_t>(kv_head) + 1];
    return {begin, end};
  }
};

// Which paged update a call makes: update(kv) (every page), update(kv, first_slots) or
// update_appended(kv).
enum class paged_update { rebuild, first_slots, appended };

template <class T>  // the bounds' storage type
class quest_session {
 public:
  // layout_pages_per_head sizes the device_block_layout; with_workspace makes the selections take
  // their scratch from a cuda_workspace of quest_select_workspace_bytes(bounds).
  quest_session(index_t page_size, index_t kv_heads, index_t head_dim, index_t capacity_tokens,
                index_t layout_pages_per_head, bool with_workspace = false);
  ~quest_session();
  quest_session(const quest_session&) = delete;
  quest_session& operator=(const quest_session&) = delete;

  // bounds.update(cuda, device copy of k, first_token).
  template <class TK>
  void update(tensor_view<const TK, 3> k, index_t first_token);
  // The paged update `mode` over a device copy of the cache (its pools hold pool_pages pages);
  // first_slots (host) is copied to the device for paged_update::first_slots.
  template <class TK>
  void update_paged(attnkit::paged_kv_view<const TK> kv, index_t pool_pages, paged_update mode,
                    std::span<const index_t> first_slots = {});

  // The bounds' storage (kv_heads · head_stride() values, the CPU page_bounds' layout) and the
  // per-head token counts on the device; tokens() as the host knows them.
  std::vector<T> storage() const;
  std::vector<index_t> device_tokens() const;
  std::optional<index_t> host_tokens() const;
  index_t head_stride() const;
  index_t padded_head_dim() const;

  // quest_select(cuda, device copy of q, bounds, top_pages, layout), then the layout copied back.
  template <class TQ>
  quest_layout_copy select(tensor_view<const TQ, 3> q, index_t top_pages);
  // The layout as it is now (after a failed select: unchanged).
  quest_layout_copy layout() const;

  // attention(cuda, q, k, v, out, layout.mask()) with device copies (fp32 q and out, fp16 K/V),
  // and the same over a paged cache (pools of pool_pages pages).
  void attention(tensor_view<const float, 3> q, tensor_view<const attnkit::half, 3> k,
                 tensor_view<const attnkit::half, 3> v, tensor_view<float, 3> out) const;
  void attention_paged(tensor_view<const float, 3> q,
                       attnkit::paged_kv_view<const attnkit::half> kv, index_t pool_pages,
                       tensor_view<float, 3> out) const;

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

// Calls that must throw attnkit::error before enqueuing anything (each builds its own small,
// otherwise valid setup and spoils one thing).
enum class quest_misuse {
  update_host_keys,        // k in host memory
  paged_host_lengths,      // kv.lengths in host memory
  paged_first_slots_host,  // first_slots in host memory
  select_host_query,       // q in host memory
  select_small_workspace,  // a cuda_workspace smaller than quest_select_workspace_bytes
  layout_zero_heads,       // device_block_layout(0, 4)
  bounds_zero_page_size,   // device_page_bounds(0, ...)
  raw_block_sparse_null,   // block_sparse(shape, nullptr, columns)
};
void quest_misuse_call(quest_misuse which);

}  // namespace attnkit_test::cuda
