// attnkit — the vocabulary every mask speaks: positions, tile ranges, and the mask concept.
//
// A mask answers two questions so that one kernel serves every attention family:
//   classify(q_range, kv_range, q_head) -> tile_kind   for a whole (query tile, KV tile) pair:
//       empty tiles are skipped without touching K or V, full tiles run without any predicate,
//       only partial tiles evaluate
//   allows(q_pos, kv_pos, q_head) -> bool               element by element.
// Positions are absolute token positions (bottom-right aligned: the last query row sits at the
// last key), ranges are half-open. classify may answer `partial` conservatively; it must never
// answer `empty` or `full` wrongly, since the kernels trust it.
//
// Three optional members make a mask faster or safer; the kernels detect them:
//   void check(const attention_shape&) const    throws attnkit::error if the mask cannot serve
//       a call of that shape (a table sized for other heads, a layout shorter than the keys).
//       attention() calls it before any work, so a bad mask changes nothing.
//   bool varies_by_head() const                 false when every query head sees the same keys.
//       Then tiles are classified once for a whole GQA group; when true (or when the member is
//       missing: the safe assumption), once per head, and decode runs one KV head per work item,
//       so each head reads only its own keys instead of the union over heads (what makes
//       per-head Quest selection pay off).
//   void for_each_key_range(position_range q, head_index first, index_t heads,
//                           position_range kv, F visit) const
//       calls visit(begin, end) for increasing, disjoint ranges within kv outside which no query
//       of q sees any key for the query heads [first, first + heads): the kernels then classify
//       only inside them, so a window or a sparse layout over a long sequence costs nothing for
//       the keys it drops, not even a classify per block.
//   void for_each_visible_run(position q, head_index h, position_range kv, F visit) const
//       calls visit(begin, end) for each maximal run of keys in kv that query q of head h sees,
//       in increasing order: a partial tile row is then masked in O(runs) instead of one
//       allows() call per key.
//   M relocated(Copy copy) const
//       for masks that point into tables (per-head windows, block layouts, bit masks): the same
//       mask with every table replaced by copy(data, count), a pointer to a copy of those count
//       elements. A device backend copies the tables into device memory with it
//       (attnkit::cuda::device_mask); masks without the member hold no pointers and are used as
//       they are.
#pragma once

#include <concepts>
#include <cstdint>

#include "attnkit/core/config.hpp"
#include "attnkit/core/shape.hpp"

namespace attnkit {

struct position_range {
  position begin = 0;
  position end = 0;  // one past the last position
};

enum class tile_kind : std::uint8_t { empty, partial, full };

template <class M>
concept attention_mask = requires(const M& mask, position_range range, position p, head_index h) {
  { mask.classify(range, range, h) } -> std::same_as<tile_kind>;
  { mask.allows(p, p, h) } -> std::convertible_to<bool>;
};

namespace detail {

// Floor and ceiling of a / b and a mod b in [0, b), for b > 0 and any a: positions relative to a
// mask's origin may be negative, and C++ division truncates toward zero.
ATTNKIT_HOST_DEVICE constexpr index_t floor_div(index_t a, index_t b) noexcept {
  const index_t quotient = a / b;
  return (a % b != 0 && a < 0) ? quotient - 1 : quotient;
}
ATTNKIT_HOST_DEVICE constexpr index_t ceil_div(index_t a, index_t b) noexcept {
  const index_t quotient = a / b;
  return (a % b != 0 && a > 0) ? quotient + 1 : quotient;
}
ATTNKIT_HOST_DEVICE constexpr index_t floor_mod(index_t a, index_t b) noexcept {
  const index_t remainder = a % b;
  return remainder < 0 ? remainder + b : remainder;
}

struct ignore_run {
  constexpr void operator()(position, position) const noexcept {}
};

template <class M>
concept has_mask_check = requires(const M& mask, const attention_shape& shape) {
  mask.check(shape);
};
template <class M>
concept has_varies_by_head = requires(const M& mask) {
  { mask.varies_by_head() } -> std::convertible_to<bool>;
};
template <class M>
concept has_visible_runs = requires(const M& mask, position p, head_index h, position_range kv,
                                    ignore_run visit) {
  mask.for_each_visible_run(p, h, kv, visit);
};

template <class M>
void check_mask(const M& mask, const attention_shape& shape) {
  if constexpr (has_mask_check<M>) mask.check(shape);
}

template <class M>
concept has_key_ranges = requires(const M& mask, position_range r, head_index h, ignore_run visit) {
  mask.for_each_key_range(r, h, h, r, visit);
};

// copy(data, count) -> const T*: what relocated() calls for each table (see above).
struct keep_table_in_place {
  template <class T>
  constexpr const T* operator()(const T* data, index_t) const noexcept {
    return data;
  }
};
template <class M>
concept has_mask_tables = requires(const M& mask, keep_table_in_place copy) {
  { mask.relocated(copy) } -> std::same_as<M>;
};

// Undeclared means "may vary": the safe answer.
template <class M>
ATTNKIT_HOST_DEVICE constexpr bool mask_varies_by_head(const M& mask) {
  if constexpr (has_varies_by_head<M>)
    return mask.varies_by_head();
  else
    return true;
}

// visit(begin, end) for the mask's key ranges (see above), or the whole of kv.
template <class M, class F>
ATTNKIT_HOST_DEVICE constexpr void for_each_key_range(const M& mask, position_range q,
                                                      head_index first, index_t heads,
                                                      position_range kv, F&& visit) {
  if constexpr (has_key_ranges<M>) {
    mask.for_each_key_range(q, first, heads, kv, visit);
  } else if (kv.begin < kv.end) {
    visit(kv.begin, kv.end);
  }
}

// visit(begin, end) for each maximal run of visible keys in kv, from the mask's own enumeration
// when it has one, else from allows() key by key.
template <class M, class F>
ATTNKIT_HOST_DEVICE constexpr void for_each_visible_run(const M& mask, position q, head_index h,
                                                        position_range kv, F&& visit) {
  if constexpr (has_visible_runs<M>) {
    mask.for_each_visible_run(q, h, kv, visit);
  } else {
    position j = kv.begin;
    while (j < kv.end) {
      while (j < kv.end && !mask.allows(q, j, h)) ++j;
      const position run_begin = j;
      while (j < kv.end && mask.allows(q, j, h)) ++j;
      if (run_begin < j) visit(run_begin, j);
    }
  }
}

}  // namespace detail
}  // namespace attnkit
