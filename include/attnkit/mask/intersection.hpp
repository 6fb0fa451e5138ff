// attnkit — a & b: the keys both masks allow (a window within a document, a block-sparse layout
// under causality, a custom pattern cut to a band).
//
// classify combines the operands' answers: empty if either is, full if both are, else partial.
// That is never wrong but may be conservative (two partial tiles can intersect to nothing).
// Masks nest: a & b & c is intersection<intersection<A, B>, C>.
#pragma once

#include "attnkit/core/config.hpp"
#include "attnkit/mask/tile.hpp"

namespace attnkit {

namespace detail {
template <class M, class Copy>
M relocated_operand(const M& mask, Copy& copy) {
  if constexpr (has_mask_tables<M>)
    return mask.relocated(copy);
  else
    return mask;
}
}  // namespace detail

template <attention_mask A, attention_mask B>
struct intersection {
  A first;
  B second;

  ATTNKIT_HOST_DEVICE constexpr tile_kind classify(position_range q, position_range kv,
                                                   head_index h) const noexcept {
    const tile_kind a = first.classify(q, kv, h);
    if (a == tile_kind::empty) return tile_kind::empty;
    const tile_kind b = second.classify(q, kv, h);
    if (b == tile_kind::empty) return tile_kind::empty;
    return a == tile_kind::full && b == tile_kind::full ? tile_kind::full : tile_kind::partial;
  }

  ATTNKIT_HOST_DEVICE constexpr bool allows(position p, position j, head_index h) const noexcept {
    return first.allows(p, j, h) && second.allows(p, j, h);
  }

  // Each run of `first` is cut by the runs of `second` inside it. second's enumeration over a
  // sub-range costs O(its runs there) (or the sub-range's length when it only has allows()), so
  // the whole is O(runs of first + runs of second). The pieces are maximal and increasing: two
  // pieces from one run of `first` are separated by a key second hides, two from different runs
  // by a key first hides.
  template <class F>
  ATTNKIT_HOST_DEVICE constexpr void for_each_visible_run(position p, head_index h,
                                                          position_range kv, F&& visit) const {
    detail::for_each_visible_run(first, p, h, kv, [&](position begin, position end) {
      detail::for_each_visible_run(second, p, h, position_range{begin, end}, visit);
    });
  }

  // The ranges of `second` inside each range of `first`.
  template <class F>
  ATTNKIT_HOST_DEVICE constexpr void for_each_key_range(position_range q, head_index first_head,
                                                        index_t heads, position_range kv,
                                                        F&& visit) const {
    detail::for_each_key_range(first, q, first_head, heads, kv, [&](position b, position e) {
      detail::for_each_key_range(second, q, first_head, heads, position_range{b, e}, visit);
    });
  }

  ATTNKIT_HOST_DEVICE constexpr bool varies_by_head() const noexcept {
    return detail::mask_varies_by_head(first) || detail::mask_varies_by_head(second);
  }

  // Both operands' tables copied (see mask/tile.hpp); an operand without tables is kept.
  template <class Copy>
  intersection relocated(Copy&& copy) const
      requires(detail::has_mask_tables<A> || detail::has_mask_tables<B>) {
    return {detail::relocated_operand(first, copy), detail::relocated_operand(second, copy)};
  }

  void check(const attention_shape& shape) const {
    detail::check_mask(first, shape);
    detail::check_mask(second, shape);
  }
};

// Found by argument-dependent lookup whenever an operand is an attnkit type.
template <attention_mask A, attention_mask B>
ATTNKIT_HOST_DEVICE constexpr intersection<A, B> operator&(const A& a, const B& b) {
  return {a, b};
}

}  // namespace attnkit
