// attnkit — causal: a query sees the keys at or before its own position.
//
// Bottom-right aligned, as in FlashAttention 2.1+: query row i of n_q over n_kv keys sits at
// position n_kv - n_q + i. With n_q > n_kv the first n_q - n_kv rows see no key at all and come
// out as zeros with log-sum-exp -inf.
#pragma once

#include "attnkit/mask/tile.hpp"

namespace attnkit {

struct causal {
  ATTNKIT_HOST_DEVICE constexpr tile_kind classify(position_range q, position_range kv,
                                                   head_index) const noexcept {
    if (kv.begin > q.end - 1) return tile_kind::empty;  // every key is after every query
    if (kv.end - 1 <= q.begin) return tile_kind::full;  // every key is at or before every query
    return tile_kind::partial;
  }
  ATTNKIT_HOST_DEVICE constexpr bool allows(position q, position kv, head_index) const noexcept {
    return kv <= q;
  }
  template <class F>
  ATTNKIT_HOST_DEVICE constexpr void for_each_visible_run(position q, head_index, position_range kv,
                                                          F&& visit) const {
    const position end = kv.end < q + 1 ? kv.end : q + 1;
    if (kv.begin < end) visit(kv.begin, end);
  }
  ATTNKIT_HOST_DEVICE constexpr bool varies_by_head() const noexcept { return false; }
  // Keys after the last query are invisible to the whole tile.
  template <class F>
  ATTNKIT_HOST_DEVICE constexpr void for_each_key_range(position_range q, head_index, index_t,
                                                        position_range kv, F&& visit) const {
    const position end = kv.end < q.end ? kv.end : q.end;
    if (kv.begin < end) visit(kv.begin, end);
  }
};

}  // namespace attnkit
