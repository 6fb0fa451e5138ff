// attnkit — a block-row layout that lives in device memory, and its mask for backend::cuda.
//
//   attnkit::cuda::device_block_layout layout(kv_heads, top_pages);       // allocated once
//   attnkit::cuda::quest_select(attnkit::backend::cuda{stream}, q, bounds, top_pages, layout);
//   attnkit::attention(attnkit::backend::cuda{stream}, q, k, v, out, layout.mask());
//
// A selection kernel writes the CSR arrays (row_offsets, columns; mask/block_sparse.hpp) on the
// device, so no copy to or from the host happens between selecting and attending. The host keeps
// only the shape, which the producer sets when it enqueues its kernels: that is all block_sparse's
// check() reads, so attention() validates the call on the host as for a host layout.
//
// Why a wrapper and not block_sparse itself: backend::cuda's front doors reject masks with tables
// (detail::has_mask_tables, i.e. a relocated() member) unless they come through
// cuda::device_mask, which copies host tables to the device. device_block_sparse holds a
// block_sparse over device arrays and forwards every mask member except relocated(), so it is
// passed to attention() directly, as the table-free masks are.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <memory>

#include "attnkit/backend/cuda/runtime.cuh"
#include "attnkit/core/config.hpp"
#include "attnkit/core/error.hpp"
#include "attnkit/core/shape.hpp"
#include "attnkit/mask/block_sparse.hpp"
#include "attnkit/mask/tile.hpp"

namespace attnkit::cuda {

// A block_sparse over CSR arrays in device memory, as backend::cuda takes it. Trivially copyable
// (kernels receive it by value); host code may call check() only, the other members read the
// device arrays.
class device_block_sparse {
 public:
  explicit device_block_sparse(const block_sparse& mask) : mask_(mask) {}

  ATTNKIT_HOST_DEVICE constexpr tile_kind classify(position_range q, position_range kv,
                                                   head_index h) const noexcept {
    return mask_.classify(q, kv, h);
  }
  ATTNKIT_HOST_DEVICE constexpr bool allows(position q, position kv, head_index h) const noexcept {
    return mask_.allows(q, kv, h);
  }
  template <class F>
  ATTNKIT_HOST_DEVICE constexpr void for_each_visible_run(position q, head_index h,
                                                          position_range kv, F&& visit) const {
    mask_.for_each_visible_run(q, h, kv, static_cast<F&&>(visit));
  }
  template <class F>
  ATTNKIT_HOST_DEVICE constexpr void for_each_key_range(position_range q, head_index first_head,
                                                        index_t heads, position_range kv,
                                                        F&& visit) const {
    mask_.for_each_key_range(q, first_head, heads, kv, static_cast<F&&>(visit));
  }
  ATTNKIT_HOST_DEVICE constexpr bool varies_by_head() const noexcept {
    return mask_.varies_by_head();
  }
  // Host-only; reads the shape only (block_sparse::check).
  void check(const attention_shape& shape) const { mask_.check(shape); }

  const block_sparse& sparse() const noexcept { return mask_; }

 private:
  block_sparse mask_;
};

// Device CSR storage for one layout per KV head with one block row each (what Quest selects):
// row_offsets [kv_heads + 1] and columns [kv_heads * max_blocks_per_row], allocated once
// (cudaMalloc, synchronous: build it outside the decode loop) and rewritten by every selection.
// The arrays are written in stream order by the selection's kernels; mask() then serves any later
// work on the same stream. Reselecting while an attention call that reads the previous selection
// runs on another stream is a race, as with any device buffer.
class device_block_layout {
 public:
  device_block_layout() = default;

  device_block_layout(index_t kv_heads, index_t max_blocks_per_row)
      : kv_heads_(kv_heads), max_blocks_per_row_(max_blocks_per_row) {
    constexpr const char* function = "attnkit::cuda::device_block_layout";
    detail::require(kv_heads >= 1, function, ": kv_heads is ", kv_heads, ", it must be >= 1");
    detail::require(max_blocks_per_row >= 1, function, ": max_blocks_per_row is ",
                    max_blocks_per_row, ", it must be >= 1");
    // Also bounds the CUDA grids the selection launches per KV head.
    detail::require(kv_heads < (index_t{1} << 31), function, ": kv_heads is ", kv_heads,
                    ", at most 2^31 - 1 are supported");
    detail::require(max_blocks_per_row <= (index_t{1} << 40) / kv_heads, function, ": kv_heads (",
                    kv_heads, ") x max_blocks_per_row (", max_blocks_per_row,
                    ") is too large a layout");
    row_offsets_ = allocate(static_cast<std::size_t>(kv_heads + 1), function);
    columns_ = allocate(static_cast<std::size_t>(kv_heads * max_blocks_per_row), function);
  }

  device_block_layout(const device_block_layout&) = delete;
  device_block_layout& operator=(const device_block_layout&) = delete;
  device_block_layout(device_block_layout&&) noexcept = default;
  device_block_layout& operator=(device_block_layout&&) noexcept = default;

  index_t kv_heads() const noexcept { return kv_heads_; }
  index_t max_blocks_per_row() const noexcept { return max_blocks_per_row_; }

  // The shape of the last selection (valid once selected() is true).
  const block_layout_shape& shape() const noexcept { return shape_; }
  bool selected() const noexcept { return selected_; }

  // Device arrays: row_offsets [kv_heads + 1], columns [kv_heads * max_blocks_per_row] (the
  // selection uses the first row_offsets[kv_heads]).
  index_t* device_row_offsets() const noexcept { return row_offsets_.get(); }
  index_t* device_columns() const noexcept { return columns_.get(); }

  // The mask over the last selection, for backend::cuda (the layout must outlive it, and a new
  // selection changes what it sees in stream order).
  device_block_sparse mask() const {
    detail::require(selected_,
                    "attnkit::cuda::device_block_layout::mask: nothing has been selected into "
                    "this layout yet (call quest_select first)");
    return device_block_sparse(block_sparse(shape_, row_offsets_.get(), columns_.get()));
  }

  // For selection kernels: records the shape of the selection they have enqueued.
  void set_shape(const block_layout_shape& shape) noexcept {
    shape_ = shape;
    selected_ = true;
  }

 private:
  struct free_device_memory {
    void operator()(index_t* pointer) const noexcept { (void)cudaFree(pointer); }
  };
  using device_array = std::unique_ptr<index_t, free_device_memory>;

  static device_array allocate(std::size_t count, const char* function) {
    void* memory = nullptr;
    detail::cuda::check(cudaMalloc(&memory, count * sizeof(index_t)), function, "cudaMalloc");
    return device_array(static_cast<index_t*>(memory));
  }

  index_t kv_heads_ = 0;
  index_t max_blocks_per_row_ = 0;
  device_array row_offsets_;
  device_array columns_;
  block_layout_shape shape_{};
  bool selected_ = false;
};

}  // namespace attnkit::cuda
