// attnkit — block-sparse attention: a block-row layout says which KV blocks each query block sees.
//
// A block_layout is the compressed-sparse-row (CSR) form of a boolean matrix whose rows are query
// blocks and whose columns are KV blocks, as in the block-sparse kernels of Sparse Transformers,
// DeepSpeed and Triton: row_offsets[l*query_blocks + r] .. row_offsets[l*query_blocks + r + 1]
// indexes the sorted KV blocks that block row r of layout l sees. One layout may serve every head,
// or there may be one per group of query heads (MoBA and Quest select per head).
//
// block_sparse is the mask over such a layout: the query at absolute position p sees key j exactly
// when p's block row r = floor((p - first_position) / query_block) exists and j's KV block
// j / key_block is listed in row r of the head's layout. It classifies tiles exactly with binary
// searches over the rows the tile touches, so the dense kernel skips every unlisted block.
//
// The mask copies raw pointers out of the layout (so it is trivially copyable and can be passed to
// device code later): the layout must outlive it and must not be modified (assign may reallocate)
// while the mask is in use.
#pragma once

#include <cstddef>
#include <limits>
#include <span>
#include <utility>
#include <vector>

#include "attnkit/core/error.hpp"
#include "attnkit/mask/tile.hpp"

namespace attnkit {

struct block_layout_shape {
  index_t query_block = 0;             // query positions per block row (>= 1)
  index_t key_block = 0;               // keys per KV block (>= 1)
  index_t query_blocks = 0;            // block rows per layout
  index_t key_blocks = 0;              // KV blocks (columns)
  index_t layouts = 1;                 // 1: shared by every head; else one per group of query heads
  index_t query_heads_per_layout = 1;  // query head h uses layout h / query_heads_per_layout
  position first_position = 0;         // absolute query position where block row 0 starts
};

namespace detail {

// Throws attnkit::error naming `function`, the problem and the values unless (shape, row_offsets,
// columns) is a valid layout. Reads the arguments only, so a failed assign changes nothing.
inline void validate_block_layout(const char* function, const block_layout_shape& shape,
                                  std::span<const index_t> row_offsets,
                                  std::span<const index_t> columns) {
  require(shape.query_block >= 1, function, ": query_block is ", shape.query_block,
          ", it must be >= 1");
  require(shape.key_block >= 1, function, ": key_block is ", shape.key_block, ", it must be >= 1");
  require(shape.query_blocks >= 0, function, ": query_blocks is ", shape.query_blocks,
          ", it must be >= 0");
  require(shape.key_blocks >= 0, function, ": key_blocks is ", shape.key_blocks,
          ", it must be >= 0");
  require(shape.layouts >= 1, function, ": layouts is ", shape.layouts, ", it must be >= 1");
  require(shape.layouts == 1 || shape.query_heads_per_layout >= 1, function,
          ": query_heads_per_layout is ", shape.query_heads_per_layout, " with ", shape.layouts,
          " layouts, it must be >= 1");
  require(shape.query_blocks <= std::numeric_limits<index_t>::max() / shape.layouts - 1, function,
          ": layouts (", shape.layouts, ") x query_blocks (", shape.query_blocks,
          ") does not fit in index_t");
  const index_t rows = shape.layouts * shape.query_blocks;
  require(static_cast<index_t>(row_offsets.size()) == rows + 1, function, ": row_offsets has ",
          row_offsets.size(), " entries, expected layouts (", shape.layouts, ") x query_blocks (",
          shape.query_blocks, ") + 1 = ", rows + 1);
  require(row_offsets[0] == 0, function, ": row_offsets[0] is ", row_offsets[0], ", it must be 0");
  for (index_t i = 0; i < rows; ++i)
    require(row_offsets[i + 1] >= row_offsets[i], function, ": row_offsets decrease at entry ",
            i + 1, " (", row_offsets[i], " then ", row_offsets[i + 1], ")");
  require(row_offsets[rows] == static_cast<index_t>(columns.size()), function,
          ": the last row offset is ", row_offsets[rows], " but columns has ", columns.size(),
          " entries");
  for (index_t i = 0; i < rows; ++i) {
    const index_t layout = i / shape.query_blocks;
    const index_t block_row = i % shape.query_blocks;
    for (index_t c = row_offsets[i]; c < row_offsets[i + 1]; ++c) {
      const index_t block = columns[c];
      require(block >= 0 && block < shape.key_blocks, function, ": block row ", block_row,
              " of layout ", layout, " lists KV block ", block, ", but there are ",
              shape.key_blocks);
      if (c > row_offsets[i]) {
        const index_t previous = columns[c - 1];
        require(block != previous, function, ": block row ", block_row, " of layout ", layout,
                " lists KV block ", block, " twice");
        require(block > previous, function, ": block row ", block_row, " of layout ", layout,
                " is not sorted: KV block ", previous, " comes before ", block);
      }
    }
  }
}

// First entry of [first, last) that is >= value (the rows are sorted). Plain loop so that device
// code can call it too.
ATTNKIT_HOST_DEVICE constexpr const index_t* lower_bound_block(const index_t* first,
                                                               const index_t* last,
                                                               index_t value) noexcept {
  std::ptrdiff_t count = last - first;
  while (count > 0) {
    const std::ptrdiff_t half = count / 2;
    if (first[half] < value) {
      first += half + 1;
      count -= half + 1;
    } else {
      count = half;
    }
  }
  return first;
}

struct block_layout_filler;

}  // namespace detail

// Owning, validated block-row layout: for layout l and block row r, the sorted KV blocks it sees.
class block_layout {
 public:
  block_layout() = default;

  block_layout(const block_layout_shape& shape, std::vector<index_t> row_offsets,
               std::vector<index_t> columns) {
    detail::validate_block_layout("attnkit::block_layout", shape, row_offsets, columns);
    shape_ = shape;
    row_offsets_ = std::move(row_offsets);
    columns_ = std::move(columns);
  }

  // Copies into this object's existing storage (no allocation once capacity suffices): the
  // selection kernels (MoBA, Quest) call this every step. On error nothing changes.
  void assign(const block_layout_shape& shape, std::span<const index_t> row_offsets,
              std::span<const index_t> columns) {
    detail::validate_block_layout("attnkit::block_layout::assign", shape, row_offsets, columns);
    shape_ = shape;
    row_offsets_.assign(row_offsets.begin(), row_offsets.end());
    columns_.assign(columns.begin(), columns.end());
  }

  const block_layout_shape& shape() const noexcept { return shape_; }

  // The sorted KV block indices of block row `block_row` of layout `layout`.
  std::span<const index_t> row(index_t layout, index_t block_row) const {
    detail::require(
        layout >= 0 && layout < shape_.layouts && block_row >= 0 && block_row < shape_.query_blocks,
        "attnkit::block_layout::row: (layout ", layout, ", block row ", block_row, ") is outside ",
        shape_.layouts, " layouts x ", shape_.query_blocks, " block rows");
    const index_t i = layout * shape_.query_blocks + block_row;
    return std::span<const index_t>(
        columns_.data() + row_offsets_[i],
        static_cast<std::size_t>(row_offsets_[i + 1] - row_offsets_[i]));
  }

  // layouts*query_blocks + 1 entries, CSR (empty for a default-constructed layout).
  std::span<const index_t> row_offsets() const noexcept { return row_offsets_; }
  std::span<const index_t> columns() const noexcept { return columns_; }

  index_t nonzero_blocks() const noexcept { return static_cast<index_t>(columns_.size()); }

  // nonzero / (layouts * query_blocks * key_blocks); 0 for an empty matrix.
  double density() const noexcept {
    const double cells = static_cast<double>(shape_.layouts) *
                         static_cast<double>(shape_.query_blocks) *
                         static_cast<double>(shape_.key_blocks);
    return cells > 0 ? static_cast<double>(columns_.size()) / cells : 0.0;
  }

 private:
  friend struct detail::block_layout_filler;

  block_layout_shape shape_{};
  std::vector<index_t> row_offsets_;
  std::vector<index_t> columns_;
};

namespace detail {

// In-place filling for the selection front doors (moba_gate), which produce millions of entries
// per prefill call: they validate their arguments first and emit rows that are sorted and in
// range by construction, so the copy and the re-validation of assign() would be pure overhead.
struct block_layout_filler {
  // Sizes the layout's storage for `shape` with `nonzero` columns (no allocation once capacity
  // suffices) and sets the shape; the caller then writes every entry of row_offsets(layout) and
  // columns(layout). Both reservations come first, so if one throws the layout is unchanged.
  static void reshape(block_layout& layout, const block_layout_shape& shape, index_t nonzero) {
    const auto offsets = static_cast<std::size_t>(shape.layouts * shape.query_blocks + 1);
    layout.row_offsets_.reserve(offsets);
    layout.columns_.reserve(static_cast<std::size_t>(nonzero));
    layout.row_offsets_.resize(offsets);
    layout.columns_.resize(static_cast<std::size_t>(nonzero));
    layout.shape_ = shape;
  }
  static std::span<index_t> row_offsets(block_layout& layout) noexcept {
    return layout.row_offsets_;
  }
  static std::span<index_t> columns(block_layout& layout) noexcept { return layout.columns_; }
};

}  // namespace detail

// The mask over a block_layout. Keys at negative positions or beyond key_blocks*key_block, and
// queries outside the block rows, see nothing.
class block_sparse {
 public:
  // The layout must outlive the mask and stay unmodified while it is used.
  explicit block_sparse(const block_layout& layout)
      : row_offsets_(layout.row_offsets().data()),
        columns_(layout.columns().data()),
        query_block_(layout.shape().query_block),
        key_block_(layout.shape().key_block),
        query_blocks_(layout.shape().query_blocks),
        key_blocks_(layout.shape().key_blocks),
        layouts_(layout.shape().layouts),
        query_heads_per_layout_(layout.shape().query_heads_per_layout),
        first_position_(layout.shape().first_position) {
    detail::require(!layout.row_offsets().empty(),
                    "attnkit::block_sparse: the layout is empty (default-constructed); build or "
                    "assign it first");
  }
  block_sparse(const block_layout&&) = delete;  // would dangle: the mask points into the layout

  // For layouts that live in device memory (a selection made on the GPU,
  // attnkit::cuda::device_block_layout): the CSR arrays are taken as they are, row_offsets with
  // layouts * query_blocks + 1 entries and columns with row_offsets[last] entries, sorted and in
  // range per row. Neither array is read here, and check() reads only the shape, so the mask can
  // be built and checked on the host over memory the host cannot read; the arrays' contents are
  // their producer's promise (columns may be null when every row is empty). The shape's scalar
  // fields are validated as block_layout validates them. Such a mask is not for
  // cuda::device_mask (relocated() reads row_offsets on the host): backend::cuda takes it wrapped
  // as attnkit::cuda::device_block_sparse.
  block_sparse(const block_layout_shape& shape, const index_t* row_offsets, const index_t* columns)
      : row_offsets_(row_offsets),
        columns_(columns),
        query_block_(shape.query_block),
        key_block_(shape.key_block),
        query_blocks_(shape.query_blocks),
        key_blocks_(shape.key_blocks),
        layouts_(shape.layouts),
        query_heads_per_layout_(shape.query_heads_per_layout),
        first_position_(shape.first_position) {
    constexpr const char* function = "attnkit::block_sparse (raw layout arrays)";
    detail::require(shape.query_block >= 1 && shape.key_block >= 1, function, ": query_block is ",
                    shape.query_block, " and key_block ", shape.key_block, ", both must be >= 1");
    detail::require(shape.query_blocks >= 0 && shape.key_blocks >= 0, function,
                    ": query_blocks is ", shape.query_blocks, " and key_blocks ", shape.key_blocks,
                    ", both must be >= 0");
    detail::require(shape.layouts >= 1 && (shape.layouts == 1 || shape.query_heads_per_layout >= 1),
                    function, ": layouts is ", shape.layouts, " and query_heads_per_layout ",
                    shape.query_heads_per_layout, ", both must be >= 1");
    detail::require(row_offsets != nullptr, function, ": row_offsets is null");
  }

  ATTNKIT_HOST_DEVICE constexpr tile_kind classify(position_range q, position_range kv,
                                                   head_index h) const noexcept {
    if (q.begin >= q.end || kv.begin >= kv.end) return tile_kind::empty;
    const index_t layout = layout_of(h);
    if (layout < 0 || layout >= layouts_) return tile_kind::empty;
    // Clip to the keys and block rows that exist; anything clipped away is invisible, so the tile
    // can then no longer be full.
    const position key_end = key_blocks_ * key_block_;
    const position kv_begin = kv.begin < 0 ? 0 : kv.begin;
    const position kv_end = kv.end > key_end ? key_end : kv.end;
    index_t row_begin = detail::floor_div(q.begin - first_position_, query_block_);
    index_t row_last = detail::floor_div(q.end - 1 - first_position_, query_block_);
    bool can_be_full = kv_begin == kv.begin && kv_end == kv.end;
    if (row_begin < 0) {
      row_begin = 0;
      can_be_full = false;
    }
    if (row_last >= query_blocks_) {
      row_last = query_blocks_ - 1;
      can_be_full = false;
    }
    if (kv_begin >= kv_end || row_begin > row_last) return tile_kind::empty;

    const index_t first_block = kv_begin / key_block_;
    const index_t last_block = (kv_end - 1) / key_block_;
    const index_t* offsets = row_offsets_ + layout * query_blocks_;
    bool any = false;
    bool all = can_be_full;
    for (index_t r = row_begin; r <= row_last; ++r) {
      const index_t* row_first = columns_ + offsets[r];
      const index_t* row_end = columns_ + offsets[r + 1];
      const index_t* lo = detail::lower_bound_block(row_first, row_end, first_block);
      const index_t* hi = detail::lower_bound_block(lo, row_end, last_block + 1);
      // Rows are sorted and duplicate-free, so [lo, hi) covers the touched blocks exactly when
      // it has one entry per block.
      if (hi > lo) any = true;
      if (hi - lo != last_block - first_block + 1) all = false;
      if (any && !all) return tile_kind::partial;
    }
    if (!any) return tile_kind::empty;
    return all ? tile_kind::full : tile_kind::partial;
  }

  ATTNKIT_HOST_DEVICE constexpr bool allows(position q, position kv, head_index h) const noexcept {
    const index_t* first = nullptr;
    const index_t* last = nullptr;
    if (!row_of(q, h, first, last) || kv < 0) return false;
    const index_t block = kv / key_block_;
    if (block >= key_blocks_) return false;
    const index_t* it = detail::lower_bound_block(first, last, block);
    return it != last && *it == block;
  }

  // visit(begin, end) for each maximal run of visible keys in kv: adjacent listed blocks merge.
  template <class F>
  ATTNKIT_HOST_DEVICE constexpr void for_each_visible_run(position q, head_index h,
                                                          position_range kv, F&& visit) const {
    const index_t* first = nullptr;
    const index_t* last = nullptr;
    if (!row_of(q, h, first, last)) return;
    const position key_end = key_blocks_ * key_block_;
    const position kv_begin = kv.begin < 0 ? 0 : kv.begin;
    const position kv_end = kv.end > key_end ? key_end : kv.end;
    if (kv_begin >= kv_end) return;
    const index_t last_block = (kv_end - 1) / key_block_;
    const index_t* it = detail::lower_bound_block(first, last, kv_begin / key_block_);
    while (it != last && *it <= last_block) {
      const index_t run_first = *it;
      index_t run_last = run_first;
      ++it;
      while (it != last && *it == run_last + 1 && *it <= last_block) {
        run_last = *it;
        ++it;
      }
      const position begin = run_first * key_block_;
      const position end = (run_last + 1) * key_block_;
      visit(begin < kv_begin ? kv_begin : begin, end > kv_end ? kv_end : end);
    }
  }

  ATTNKIT_HOST_DEVICE constexpr bool varies_by_head() const noexcept { return layouts_ > 1; }

  // The listed blocks of the block rows that q touches, for the layouts of heads [first,
  // first + heads), as merged key ranges: the kernels then never look at the blocks no row lists.
  // A union of sorted rows, taken block by block (the smallest listed block at or after a cursor,
  // over every row); beyond 64 rows (a query_block much smaller than the tile) the union would
  // cost more than it saves, and the whole range is given instead.
  template <class F>
  ATTNKIT_HOST_DEVICE constexpr void for_each_key_range(position_range q, head_index first_head,
                                                        index_t heads, position_range kv,
                                                        F&& visit) const {
    const position key_end = key_blocks_ * key_block_;
    const position kv_begin = kv.begin < 0 ? 0 : kv.begin;
    const position kv_end = kv.end > key_end ? key_end : kv.end;
    if (q.begin >= q.end || kv_begin >= kv_end || heads < 1) return;
    index_t row_begin = detail::floor_div(q.begin - first_position_, query_block_);
    index_t row_last = detail::floor_div(q.end - 1 - first_position_, query_block_);
    row_begin = row_begin < 0 ? 0 : row_begin;
    row_last = row_last >= query_blocks_ ? query_blocks_ - 1 : row_last;
    index_t layout_begin = layout_of(first_head), layout_last = layout_of(first_head + heads - 1);
    layout_begin = layout_begin < 0 ? 0 : layout_begin;
    layout_last = layout_last >= layouts_ ? layouts_ - 1 : layout_last;
    if (row_begin > row_last || layout_begin > layout_last) return;
    if ((row_last - row_begin + 1) * (layout_last - layout_begin + 1) > 64) {
      visit(kv_begin, kv_end);
      return;
    }
    const index_t last_block = (kv_end - 1) / key_block_;
    // The smallest block >= cursor listed by any of the rows, or last_block + 1.
    auto next_listed = [&](index_t cursor) {
      index_t best = last_block + 1;
      for (index_t l = layout_begin; l <= layout_last; ++l)
        for (index_t r = row_begin; r <= row_last; ++r) {
          const index_t i = l * query_blocks_ + r;
          const index_t* row_end = columns_ + row_offsets_[i + 1];
          const index_t* it =
              detail::lower_bound_block(columns_ + row_offsets_[i], row_end, cursor);
          if (it != row_end && *it < best) best = *it;
        }
      return best;
    };
    index_t block = next_listed(kv_begin / key_block_);
    while (block <= last_block) {
      index_t run_last = block;
      index_t next = next_listed(block + 1);
      while (next == run_last + 1) {
        run_last = next;
        next = next_listed(next + 1);
      }
      const position begin = block * key_block_, end = (run_last + 1) * key_block_;
      visit(begin < kv_begin ? kv_begin : begin, end > kv_end ? kv_end : end);
      block = next;
    }
  }

  // Host-only: the layout must have one layout per head group, cover every key and every
  // non-negative query position of the call.
  void check(const attention_shape& shape) const {
    detail::require(layouts_ == 1 || layouts_ * query_heads_per_layout_ == shape.q_heads,
                    "attnkit::block_sparse: the layout has ", layouts_, " layouts x ",
                    query_heads_per_layout_,
                    " query heads per layout = ", layouts_ * query_heads_per_layout_,
                    " heads, but the call has q_heads ", shape.q_heads);
    detail::require(key_blocks_ * key_block_ >= shape.kv_tokens,
                    "attnkit::block_sparse: the layout covers ", key_blocks_, " KV blocks x ",
                    key_block_, " = ", key_blocks_ * key_block_,
                    " keys, but the call has kv_tokens ", shape.kv_tokens);
    const position first = shape.first_query_position() < 0 ? 0 : shape.first_query_position();
    const position end = shape.kv_tokens;  // one past the last query position
    if (first < end) {
      const position rows_end = first_position_ + query_blocks_ * query_block_;
      detail::require(first_position_ <= first && rows_end >= end,
                      "attnkit::block_sparse: the layout's block rows cover query positions [",
                      first_position_, ", ", rows_end, ") (", query_blocks_, " rows of ",
                      query_block_, " from ", first_position_,
                      "), but the call has query positions [", first, ", ", end, ")");
    }
  }

  // The same mask over copies of the layout's row offsets and columns (see mask/tile.hpp).
  template <class Copy>
  block_sparse relocated(Copy&& copy) const {
    const index_t rows = layouts_ * query_blocks_;
    block_sparse moved = *this;
    moved.row_offsets_ = copy(row_offsets_, rows + 1);
    moved.columns_ = copy(columns_, row_offsets_[rows]);
    return moved;
  }

  // Which layout query head h uses.
  ATTNKIT_HOST_DEVICE constexpr index_t layout_of(head_index h) const noexcept {
    return layouts_ == 1 ? 0 : h / query_heads_per_layout_;
  }

 private:
  // The listed KV blocks [first, last) of query position q's block row for head h; false when
  // q has no block row (or h no layout).
  ATTNKIT_HOST_DEVICE constexpr bool row_of(position q, head_index h, const index_t*& first,
                                            const index_t*& last) const noexcept {
    const index_t layout = layout_of(h);
    if (layout < 0 || layout >= layouts_) return false;
    const index_t r = detail::floor_div(q - first_position_, query_block_);
    if (r < 0 || r >= query_blocks_) return false;
    const index_t i = layout * query_blocks_ + r;
    first = columns_ + row_offsets_[i];
    last = columns_ + row_offsets_[i + 1];
    return true;
  }

  const index_t* row_offsets_ = nullptr;
  const index_t* columns_ = nullptr;
  index_t query_block_ = 1;
  index_t key_block_ = 1;
  index_t query_blocks_ = 0;
  index_t key_blocks_ = 0;
  index_t layouts_ = 1;
  index_t query_heads_per_layout_ = 1;
  position first_position_ = 0;
};

}  // namespace attnkit
