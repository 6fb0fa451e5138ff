// attnkit — the keys a tile of queries must visit: a mask turned into a list of key spans.
//
// This is what makes a kernel's cost follow what a mask keeps. The key range is classified in
// blocks of `coarse_keys` (64, aligned to absolute positions) — only inside the mask's key
// ranges, when it declares them (a window: two ranges; a block layout: its listed blocks);
// empty blocks vanish, full blocks
// become spans the kernel runs without any predicate, and partial blocks are classified again in
// chunks of `fine_keys` (16), so a page-granular selection (Quest, 16-token pages) reads only
// its pages. Adjacent non-empty pieces are merged up to the kernel's block size; a merged span is
// full only if all its pieces are. Cost: one classify per 64 keys, plus four per partial block.
//
// A split-KV work item takes a share of the visible keys (not of the key range), so the threads
// of a sliding-window or block-sparse decode each get an equal part of the real work.
#pragma once

#include <algorithm>

#include "attnkit/core/config.hpp"
#include "attnkit/mask/tile.hpp"

namespace attnkit {
namespace detail {

inline constexpr index_t coarse_keys = 64;
inline constexpr index_t fine_keys = 16;

struct key_span {
  position begin = 0;
  position end = 0;
  tile_kind kind = tile_kind::full;  // full or partial, never empty

  constexpr index_t size() const noexcept { return end - begin; }
};

// The mask's verdict for the query heads [first, first + heads): empty only if empty for all,
// full only if full for all. A mask that states it treats every head alike is asked once; one
// that says nothing is asked per head.
template <class Mask>
constexpr tile_kind classify_heads(const Mask& mask, position_range q, position_range kv,
                                   head_index first, index_t heads) {
  const tile_kind kind = mask.classify(q, kv, first);
  if (!mask_varies_by_head(mask)) return kind;
  for (index_t h = 1; h < heads; ++h)
    if (mask.classify(q, kv, first + h) != kind) return tile_kind::partial;
  return kind;
}

// Calls emit(key_span) for the non-empty spans of [kv_begin, kv_end), in increasing order, each
// at most max_keys long, for the queries q and query heads [first_head, first_head + heads).
template <class Mask, class Emit>
constexpr void walk_key_spans(const Mask& mask, position_range q, head_index first_head,
                              index_t heads, position kv_begin, position kv_end, index_t max_keys,
                              Emit&& emit) {
  key_span pending{0, 0, tile_kind::full};
  auto add = [&](position begin, position end, tile_kind kind) {
    if (pending.size() > 0 && pending.end == begin && pending.size() + (end - begin) <= max_keys) {
      pending.end = end;
      if (kind == tile_kind::partial) pending.kind = tile_kind::partial;
      return;
    }
    if (pending.size() > 0) emit(pending);
    // A piece longer than max_keys (a full coarse block under a small kernel block) is cut.
    for (; end - begin > max_keys; begin += max_keys) emit(key_span{begin, begin + max_keys, kind});
    pending = key_span{begin, end, kind};
  };
  auto walk_range = [&](position range_begin, position range_end) {
    for (position j0 = range_begin; j0 < range_end;) {
      const position j1 = std::min(range_end, (j0 / coarse_keys + 1) * coarse_keys);
      const tile_kind kind = classify_heads(mask, q, {j0, j1}, first_head, heads);
      if (kind == tile_kind::full) {
        add(j0, j1, kind);
      } else if (kind == tile_kind::partial) {
        for (position f0 = j0; f0 < j1;) {
          const position f1 = std::min(j1, (f0 / fine_keys + 1) * fine_keys);
          const tile_kind fine = classify_heads(mask, q, {f0, f1}, first_head, heads);
          if (fine != tile_kind::empty) add(f0, f1, fine);
          f0 = f1;
        }
      }
      j0 = j1;
    }
  };
  for_each_key_range(mask, q, first_head, heads, position_range{kv_begin, kv_end}, walk_range);
  if (pending.size() > 0) emit(pending);
}

// The number of keys walk_key_spans visits.
template <class Mask>
constexpr index_t count_visited_keys(const Mask& mask, position_range q, head_index first_head,
                                     index_t heads, position kv_begin, position kv_end) {
  index_t total = 0;
  walk_key_spans(mask, q, first_head, heads, kv_begin, kv_end, coarse_keys,
                 [&](const key_span& s) { total += s.size(); });
  return total;
}

// Writes to `out` the spans of walk_key_spans that fall within visited keys [skip, skip + take)
// (in visiting order, cut where needed); returns how many.
template <class Mask>
index_t collect_key_spans(const Mask& mask, position_range q, head_index first_head, index_t heads,
                          position kv_begin, position kv_end, index_t max_keys, index_t skip,
                          index_t take, key_span* out) {
  index_t count = 0;
  index_t seen = 0;
  walk_key_spans(mask, q, first_head, heads, kv_begin, kv_end, max_keys, [&](key_span s) {
    const index_t first = seen;
    seen += s.size();
    if (seen <= skip || first >= skip + take) return;
    s.begin += std::max<index_t>(0, skip - first);
    s.end -= std::max<index_t>(0, seen - (skip + take));
    out[count++] = s;
  });
  return count;
}

// An upper bound on the spans collect_key_spans can write for a key range.
constexpr index_t max_key_spans(index_t keys) { return keys / fine_keys + 2; }

}  // namespace detail
}  // namespace attnkit
