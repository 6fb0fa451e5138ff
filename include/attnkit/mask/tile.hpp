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
#pragma once

#include <concepts>
#include <cstdint>

#include "attnkit/core/config.hpp"

namespace attnkit {

using position = index_t;
using head_index = index_t;

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

}  // namespace attnkit
