// attnkit — sliding_window: local (band) attention with attention sinks and dilation, and
// sliding_window_per_head, a window per query head (MSWA).
//
// The query at absolute position p sees key j (j >= 0) exactly when
//     j <= p + right  and  ( j < sinks                                         [sinks]
//                          or ( p - left <= j  and  (p - j) % dilation == 0 ) ) [band]
// So {w, 0} is causal attention over the last w + 1 tokens, {w, w} a symmetric band, {w, 0, 4}
// StreamingLLM (the first 4 tokens stay visible), and dilation > 1 keeps every dilation-th key
// of the band (1-D neighborhood attention). The sinks obey the band's upper edge on purpose:
// under {w, 0, s} an early prompt token does not see sink tokens after it, so the mask stays
// causal. Keys at negative positions do not exist and are never visible.
//
// classify is exact for every dilation: `empty` iff no pair of the tile is visible, `full` iff
// every pair is. Every comparison is written on differences of positions, so windows as large
// as std::numeric_limits<index_t>::max() ("everything") cannot overflow.
#pragma once

#include <cstddef>
#include <span>

#include "attnkit/core/config.hpp"
#include "attnkit/core/error.hpp"
#include "attnkit/mask/tile.hpp"

namespace attnkit {

namespace detail::window {

// The ranges of sliding_window::for_each_key_range, written without overflow for windows as
// large as the index type.
template <class F>
ATTNKIT_HOST_DEVICE constexpr void key_ranges(position_range q, position_range kv, index_t left,
                                              index_t right, index_t sinks, F&& visit) {
  if (q.begin >= q.end) return;
  const position begin = kv.begin < 0 ? 0 : kv.begin;
  // end = min(kv.end, last query + right + 1), band_begin = max(begin, first query - left).
  const position end = kv.end - q.end < right ? kv.end : q.end + right;
  if (begin >= end) return;
  const position sinks_end = sinks < end ? sinks : end;
  const position band_begin = q.begin - begin <= left ? begin : q.begin - left;
  if (begin < sinks_end && band_begin <= sinks_end) {
    visit(begin, end);
    return;
  }
  if (begin < sinks_end) visit(begin, sinks_end);
  if (band_begin < end) visit(band_begin, end);
}

}  // namespace detail::window

struct sliding_window {
  index_t left = 0;      // keys up to `left` positions before the query
  index_t right = 0;     // keys up to `right` positions after the query (0: causal)
  index_t sinks = 0;     // the first `sinks` keys stay visible (StreamingLLM)
  index_t dilation = 1;  // the band keeps keys whose distance to the query is a multiple of this

  ATTNKIT_HOST_DEVICE constexpr bool allows(position p, position j, head_index) const noexcept {
    if (j < 0 || j - p > right) return false;
    if (j < sinks) return true;
    const index_t distance = p - j;  // >= -right here
    // C++'s % truncates toward zero, which is harmless for a test against 0.
    return distance <= left && distance % dilation == 0;
  }

  // With qa..ql the queries and ka..kl the existing keys (ka >= 0) of the tile:
  //  - some sink pair is visible iff the smallest key is a sink visible to the last query;
  //  - the distances p - j over the tile are every integer of [qa - kl, ql - ka], so some band
  //    pair is visible iff that interval, cut to [-right, left], holds a multiple of dilation;
  //  - every pair is visible iff every key is <= qa + right and, for the non-sink keys ks..kl,
  //    every distance (ql - ks at most) is <= left and a multiple of dilation: with dilation > 1
  //    only one distance can be (two consecutive integers never both are), i.e. one query and
  //    one non-sink key.
  ATTNKIT_HOST_DEVICE constexpr tile_kind classify(position_range q, position_range kv,
                                                   head_index) const noexcept {
    if (q.begin >= q.end || kv.begin >= kv.end) return tile_kind::empty;
    const position first_query = q.begin, last_query = q.end - 1;
    const position first_key = kv.begin < 0 ? 0 : kv.begin, last_key = kv.end - 1;
    if (first_key > last_key) return tile_kind::empty;            // only keys at negative positions
    if (first_key - last_query > right) return tile_kind::empty;  // every key after every band

    const bool some_sink = first_key < sinks;
    const index_t lowest = first_query - last_key < -right ? -right : first_query - last_key;
    const index_t highest = last_query - first_key > left ? left : last_query - first_key;
    const bool some_band = lowest <= highest && detail::ceil_div(lowest, dilation) <=
                                                    detail::floor_div(highest, dilation);
    if (!some_sink && !some_band) return tile_kind::empty;

    if (kv.begin < 0 || last_key - first_query > right) return tile_kind::partial;
    if (last_key < sinks) return tile_kind::full;
    const position first_band_key = first_key < sinks ? sinks : first_key;
    if (last_query - first_band_key > left) return tile_kind::partial;
    if (dilation == 1) return tile_kind::full;
    const bool one_distance = first_query == last_query && first_band_key == last_key;
    return one_distance && (last_query - last_key) % dilation == 0 ? tile_kind::full
                                                                   : tile_kind::partial;
  }

  // visit(begin, end) for each maximal run of keys in kv that query p sees, in increasing order,
  // in O(runs): the sinks run, then the band, which is one run for dilation 1 and one key per
  // run otherwise (band keys inside or just after the sinks run join it).
  template <class F>
  ATTNKIT_HOST_DEVICE constexpr void for_each_visible_run(position p, head_index, position_range kv,
                                                          F&& visit) const {
    const position begin = kv.begin < 0 ? 0 : kv.begin;
    // Keys after p + right are never visible: end = min(kv.end, p + right + 1) without overflow.
    const position end = kv.end - 1 - p <= right ? kv.end : p + right + 1;
    if (begin >= end) return;
    const position sinks_end = sinks < end ? sinks : end;  // sinks run: [begin, sinks_end)
    // Band: [band_begin, end); band_begin = max(begin, p - left) without overflow.
    const position band_begin = p - begin <= left ? begin : p - left;
    if (dilation == 1) {
      if (begin < sinks_end && band_begin <= sinks_end) {
        visit(begin, end);  // the band touches or overlaps the sinks: one run
        return;
      }
      if (begin < sinks_end) visit(begin, sinks_end);
      if (band_begin < end) visit(band_begin, end);
      return;
    }
    position run_end = begin < sinks_end ? sinks_end : begin;  // first key after the sinks run
    // First band key at or after run_end: the smallest j >= max(band_begin, run_end) with
    // j = p (mod dilation).
    position key = band_begin > run_end ? band_begin : run_end;
    if (key >= end) {
      if (begin < sinks_end) visit(begin, sinks_end);
      return;
    }
    key += detail::floor_mod(p - key, dilation);
    if (begin < sinks_end) {
      // A band key inside the sinks is already visited; one right after them extends the run.
      if (key == sinks_end && key < end) {
        visit(begin, sinks_end + 1);
        if (end - key <= dilation) return;
        key += dilation;
      } else {
        visit(begin, sinks_end);
      }
    }
    while (key < end) {
      visit(key, key + 1);
      if (end - key <= dilation) return;
      key += dilation;
    }
  }

  ATTNKIT_HOST_DEVICE constexpr bool varies_by_head() const noexcept { return false; }

  // At most two ranges hold every visible key of the tile: the sinks [0, sinks) and the band
  // [first query - left, last query + right] (dilation ignored: the ranges may be loose, never
  // short), both cut to keys <= last query + right.
  template <class F>
  ATTNKIT_HOST_DEVICE constexpr void for_each_key_range(position_range q, head_index, index_t,
                                                        position_range kv, F&& visit) const {
    detail::window::key_ranges(q, kv, left, right, sinks, visit);
  }

  // Throws attnkit::error unless left, right, sinks >= 0 and dilation >= 1.
  void check(const attention_shape&) const { validate("attnkit::sliding_window: "); }

  // The same validation, with the caller's message prefix (sliding_window_per_head names the
  // head).
  template <class... Context>
  void validate(const Context&... context) const {
    detail::require(left >= 0, context..., "left is ", left, ", it must be >= 0");
    detail::require(right >= 0, context..., "right is ", right, ", it must be >= 0");
    detail::require(sinks >= 0, context..., "sinks is ", sinks, ", it must be >= 0");
    detail::require(dilation >= 1, context..., "dilation is ", dilation, ", it must be >= 1");
  }
};

// A window per query head (MSWA: heads, and layers, use windows of different sizes): query head
// h uses windows[h]. A non-owning view; the table must outlive the call (backend::cuda reads a
// copy in device memory: cuda::device_mask).
class sliding_window_per_head {
 public:
  // Holds the table's address and size (a span's members are host-only to nvcc, so the pointer
  // and count are kept apart for device code).
  constexpr sliding_window_per_head(std::span<const sliding_window> windows) noexcept  // NOLINT
      : windows_(windows.data()), count_(static_cast<index_t>(windows.size())) {}

  constexpr std::span<const sliding_window> windows() const noexcept {
    return {windows_, static_cast<std::size_t>(count_)};
  }
  ATTNKIT_HOST_DEVICE constexpr const sliding_window& window(head_index h) const noexcept {
    return windows_[h];
  }

  ATTNKIT_HOST_DEVICE constexpr tile_kind classify(position_range q, position_range kv,
                                                   head_index h) const noexcept {
    return window(h).classify(q, kv, h);
  }
  ATTNKIT_HOST_DEVICE constexpr bool allows(position p, position j, head_index h) const noexcept {
    return window(h).allows(p, j, h);
  }
  template <class F>
  ATTNKIT_HOST_DEVICE constexpr void for_each_visible_run(position p, head_index h,
                                                          position_range kv, F&& visit) const {
    window(h).for_each_visible_run(p, h, kv, visit);
  }
  ATTNKIT_HOST_DEVICE constexpr bool varies_by_head() const noexcept { return true; }

  // The ranges of a window as wide as the widest of the heads asked about.
  template <class F>
  ATTNKIT_HOST_DEVICE constexpr void for_each_key_range(position_range q, head_index first,
                                                        index_t heads, position_range kv,
                                                        F&& visit) const {
    index_t left = 0, right = 0, sinks = 0;
    for (head_index h = first; h < first + heads; ++h) {
      left = window(h).left > left ? window(h).left : left;
      right = window(h).right > right ? window(h).right : right;
      sinks = window(h).sinks > sinks ? window(h).sinks : sinks;
    }
    detail::window::key_ranges(q, kv, left, right, sinks, visit);
  }

  // The same windows, read from copy(table, count) (see mask/tile.hpp).
  template <class Copy>
  sliding_window_per_head relocated(Copy&& copy) const {
    sliding_window_per_head moved = *this;
    moved.windows_ = copy(windows_, count_);
    return moved;
  }

  // Throws attnkit::error unless there is one valid window per query head of the call.
  void check(const attention_shape& shape) const {
    const index_t count = count_;
    detail::require(count == shape.q_heads, "attnkit::sliding_window_per_head: windows has ", count,
                    " entries, but the call has q_heads = ", shape.q_heads,
                    " (one window per query head)");
    for (index_t h = 0; h < count; ++h)
      window(h).validate("attnkit::sliding_window_per_head: the window of head ", h, ": ");
  }

 private:
  const sliding_window* windows_ = nullptr;
  index_t count_ = 0;
};

}  // namespace attnkit
