// attnkit — the end every score-based policy shares: per head, keep the budget's best slots.
//
// A scorer is a type with
//   template <class T> void validate(const char* function, const paged_kv_view<const T>& layer,
//                                    index_t layer_index);    // throws before anything changes
//   template <class T> void score(const paged_kv_view<const T>& layer, index_t layer_index,
//                                 index_t head, index_t keep_count, std::span<float> out);
// score() writes one score per slot of the head (higher = keep; +inf = always keep, as windows
// that a policy protects) given how many slots the head will keep. select_by_scores() keeps the
// keep_count best of each head; AdaKV (policies/adakv.hpp) pools them across the heads instead.
#pragma once

#include <span>
#include <vector>

#include "attnkit/core/config.hpp"
#include "attnkit/core/paged_kv_view.hpp"
#include "attnkit/kvcache/policy.hpp"
#include "attnkit/kvcache/top_slots.hpp"

namespace attnkit {

template <class S, class T>
concept kv_scorer = requires(S& scorer, const paged_kv_view<const T>& layer, index_t layer_index,
                             index_t head, index_t keep_count, std::span<float> out) {
  scorer.validate("", layer, layer_index);
  scorer.score(layer, layer_index, head, keep_count, out);
};

namespace detail {

// Reusable buffers of one score-based select.
struct score_scratch {
  std::vector<float> scores;
  top_slots top;

  std::span<float> for_head(index_t length) {
    if (static_cast<index_t>(scores.size()) < length)
      scores.resize(static_cast<std::size_t>(length));
    return {scores.data(), static_cast<std::size_t>(length)};
  }
};

template <class Scorer, class T>
void select_by_scores(Scorer& scorer, const char* function, const paged_kv_view<const T>& layer,
                      index_t layer_index, const budget& b, keep_list& keep,
                      score_scratch& scratch) {
  b.check(function, layer.kv_heads);
  scorer.validate(function, layer, layer_index);
  keep.reset(layer.kv_heads, layer.head_dim);
  for (index_t h = 0; h < layer.kv_heads; ++h) {
    const index_t n = layer.length(h);
    const index_t count = b.keep_count(h, n);
    if (count >= n) {
      keep.keep_range(h, 0, n);
      continue;
    }
    const std::span<float> scores = scratch.for_head(n);
    scorer.score(layer, layer_index, h, count, scores);
    scratch.top.select_runs(scores, count,
                            [&](index_t begin, index_t end) { keep.keep_range(h, begin, end); });
  }
}

}  // namespace detail
}  // namespace attnkit
