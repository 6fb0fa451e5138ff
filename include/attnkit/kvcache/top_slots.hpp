// attnkit — top_slots: the `count` best-scoring slots of a head, in slot order, in O(n).
//
// Every score-based policy ends the same way: keep the `count` slots with the highest scores.
// The order is total and deterministic: higher score first, and among equal scores the later
// slot (recency is the better default for a language model's cache); NaN ranks below -inf. The
// kept slots come out ascending, as keep_list and kv_cache::retain want them, without a sort:
//
// * few evictions (n - count <= small_evictions, the decode case: one token over budget per
//   step): one pass keeps the lowest n - count (score, slot) pairs in a small sorted buffer,
//   passing over whole vectors of scores that cannot enter it;
// * otherwise: nth_element on a copy of the scores finds the threshold t, a counting pass finds
//   how many slots tie at t, and an ascending pass emits every slot above t and the latest ties.
//
// Both paths compute the same set (the tests compare them against a full sort). Scratch lives
// in the object and is reused: no allocation once it has seen the longest head.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <functional>
#include <limits>
#include <span>
#include <utility>
#include <vector>

#include "attnkit/core/config.hpp"
#include "attnkit/core/simd_include.hpp"

namespace attnkit::detail {

class top_slots {
 public:
  // Up to this many evictions take the one-pass path.
  static constexpr index_t small_evictions = 16;

  // Calls emit(slot) for the `count` best of scores[0 .. n), ascending.
  template <class Emit>
  void select(std::span<const float> scores, index_t count, Emit&& emit) {
    select_runs(scores, count, [&](index_t begin, index_t end) {
      for (index_t j = begin; j < end; ++j) emit(j);
    });
  }

  // The same as maximal runs of consecutive kept slots: emit_run(begin, end), ascending. A decode
  // step that evicts one token of 32K emits two runs, not 32K slots.
  template <class EmitRun>
  void select_runs(std::span<const float> scores, index_t count, EmitRun&& emit_run) {
    const auto n = static_cast<index_t>(scores.size());
    if (count >= n) {
      if (n > 0) emit_run(index_t{0}, n);
      return;
    }
    if (count <= 0) return;
    const index_t evictions = n - count;
    if (evictions <= small_evictions) {
      select_few_evictions(scores, evictions, emit_run);
    } else {
      select_by_threshold_runs(scores, count, emit_run);
    }
  }

  // The threshold path only, whatever the count (for tests of the two paths).
  template <class Emit>
  void select_by_threshold(std::span<const float> scores, index_t count, Emit&& emit) {
    const auto n = static_cast<index_t>(scores.size());
    if (count >= n) {
      for (index_t j = 0; j < n; ++j) emit(j);
      return;
    }
    if (count <= 0) return;
    select_by_threshold_runs(scores, count, [&](index_t begin, index_t end) {
      for (index_t j = begin; j < end; ++j) emit(j);
    });
  }

 private:
  // NaN ranks lowest, so that a broken score evicts its slot rather than break the order.
  static float rank_value(float s) noexcept {
    return std::isnan(s) ? -std::numeric_limits<float>::infinity() : s;
  }

  template <class EmitRun>
  void select_by_threshold_runs(std::span<const float> scores, index_t count, EmitRun&& emit_run) {
    const auto n = static_cast<index_t>(scores.size());
    copy_.resize(scores.size());
    for (std::size_t j = 0; j < scores.size(); ++j) copy_[j] = rank_value(scores[j]);
    const auto kth = copy_.begin() + static_cast<std::ptrdiff_t>(count - 1);
    std::nth_element(copy_.begin(), kth, copy_.end(), std::greater<float>());
    const float threshold = *kth;
    index_t above = 0;
    index_t ties = 0;
    for (const float s : scores) {
      const float r = rank_value(s);
      above += r > threshold ? 1 : 0;
      ties += r == threshold ? 1 : 0;
    }
    // Keep the latest (count - above) of the ties: skip the earliest ones.
    index_t skip = ties - (count - above);
    index_t run = -1;  // start of the current run of kept slots, or -1
    for (index_t j = 0; j < n; ++j) {
      const float r = rank_value(scores[static_cast<std::size_t>(j)]);
      bool kept = r > threshold;
      if (r == threshold) {
        if (skip > 0) {
          --skip;
        } else {
          kept = true;
        }
      }
      if (kept && run < 0) run = j;
      if (!kept && run >= 0) {
        emit_run(run, j);
        run = -1;
      }
    }
    if (run >= 0) emit_run(run, n);
  }

  template <class EmitRun>
  void select_few_evictions(std::span<const float> scores, index_t evictions, EmitRun&& emit_run) {
    // lowest_ holds the `evictions` worst (score, slot) seen so far, worst first. A later slot
    // with an equal score ranks higher, so it displaces nothing: only a strictly lower score does.
    lowest_.clear();
    const auto n = static_cast<index_t>(scores.size());
    const float* score = scores.data();
    auto consider = [&](index_t j) {
      const float r = rank_value(score[j]);
      if (static_cast<index_t>(lowest_.size()) == evictions) {
        if (!(r < lowest_.back().first)) return;
        lowest_.pop_back();
      }
      // Insert after every entry that ranks at or below (r, j): equal scores of earlier slots
      // rank lower, so they stay in front.
      auto at = lowest_.end();
      while (at != lowest_.begin() && (at - 1)->first > r) --at;
      lowest_.insert(at, {r, j});
    };
    index_t j = 0;
    for (; j < n && static_cast<index_t>(lowest_.size()) < evictions; ++j) consider(j);
    // Once the buffer is full, a slot enters only below its worst entry, which only falls: a
    // vector of slots all at or above it is passed over with one comparison (NaN compares false,
    // so a vector holding one goes through `consider`, which ranks it). On a decode step's 32K
    // slots this is a streaming read instead of a compare-and-branch per slot.
    using batch = xsimd::batch<float>;
    constexpr index_t width = static_cast<index_t>(batch::size);
    for (; j + width <= n; j += width) {
      if (xsimd::all(batch::load_unaligned(score + j) >= batch(lowest_.back().first))) continue;
      for (index_t i = j; i < j + width; ++i) consider(i);
    }
    for (; j < n; ++j) consider(j);
    evicted_.clear();
    for (const auto& entry : lowest_) evicted_.push_back(entry.second);
    std::sort(evicted_.begin(), evicted_.end());
    index_t begin = 0;
    for (const index_t e : evicted_) {
      if (e > begin) emit_run(begin, e);
      begin = e + 1;
    }
    if (n > begin) emit_run(begin, n);
  }

  std::vector<float> copy_;
  std::vector<std::pair<float, index_t>> lowest_;
  std::vector<index_t> evicted_;
};

}  // namespace attnkit::detail
