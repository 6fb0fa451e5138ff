// attnkit — full: every query sees every key (encoders, cross-attention, decode over a cache).
#pragma once

#include "attnkit/mask/tile.hpp"

namespace attnkit {

struct full {
  ATTNKIT_HOST_DEVICE constexpr tile_kind classify(position_range, position_range,
                                                   head_index) const noexcept {
    return tile_kind::full;
  }
  ATTNKIT_HOST_DEVICE constexpr bool allows(position, position, head_index) const noexcept {
    return true;
  }
  template <class F>
  ATTNKIT_HOST_DEVICE constexpr void for_each_visible_run(position, head_index, position_range kv,
                                                          F&& visit) const {
    if (kv.begin < kv.end) visit(kv.begin, kv.end);
  }
  ATTNKIT_HOST_DEVICE constexpr bool varies_by_head() const noexcept { return false; }
};

}  // namespace attnkit
