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
#include "attnkit/kvcache/attention_scores.hpp"
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

// The start of every score-based select: the budget and the scorer's own checks (both throw
// before anything changes), then an empty keep list shaped for the layer.
template <class Scorer, class T>
void begin_select(Scorer& scorer, const char* function, const paged_kv_view<const T>& layer,
                  index_t layer_index, const budget& b, keep_list& keep) {
  b.check(function, layer.kv_heads);
  scorer.validate(function, layer, layer_index);
  keep.reset(layer.kv_heads, layer.head_dim);
}

// Keeps the `count` best-scored slots of `head` (ties to the lower slot), run by run.
inline void keep_best(top_slots& top, std::span<const float> scores, index_t count, keep_list& keep,
                      index_t head) {
  top.select_runs(scores, count,
                  [&](index_t begin, index_t end) { keep.keep_range(head, begin, end); });
}

// begin_select, then per head: the head's keep count is count_of(head, length); a head that
// keeps all its slots keeps them, any other calls choose(head, length, count).
template <class Scorer, class T, class CountOf, class Choose>
void select_per_head(Scorer& scorer, const char* function, const paged_kv_view<const T>& layer,
                     index_t layer_index, const budget& b, keep_list& keep, CountOf&& count_of,
                     Choose&& choose) {
  begin_select(scorer, function, layer, layer_index, b, keep);
  for (index_t h = 0; h < layer.kv_heads; ++h) {
    const index_t n = layer.length(h);
    const index_t count = count_of(h, n);
    if (count >= n) {
      keep.keep_range(h, 0, n);
      continue;
    }
    choose(h, n, count);
  }
}

// Per head, the budget's keep count of best-scored slots. count_of(head, length) gives a head's
// keep count where it is not the budget's own (PyramidKV's per-layer budgets).
template <class Scorer, class T, class CountOf>
void select_by_scores(Scorer& scorer, const char* function, const paged_kv_view<const T>& layer,
                      index_t layer_index, const budget& b, keep_list& keep, score_scratch& scratch,
                      CountOf&& count_of) {
  select_per_head(scorer, function, layer, layer_index, b, keep, count_of,
                  [&](index_t h, index_t n, index_t count) {
                    const std::span<float> scores = scratch.for_head(n);
                    scorer.score(layer, layer_index, h, count, scores);
                    keep_best(scratch.top, scores, count, keep, h);
                  });
}

template <class Scorer, class T>
void select_by_scores(Scorer& scorer, const char* function, const paged_kv_view<const T>& layer,
                      index_t layer_index, const budget& b, keep_list& keep,
                      score_scratch& scratch) {
  select_by_scores(scorer, function, layer, layer_index, b, keep, scratch,
                   [&](index_t h, index_t n) { return b.keep_count(h, n); });
}

// The base of the policies that score from observed attention (H2O, SnapKV, TOVA): the score
// table the kernels' observer fills, kept aligned with the cache through on_retained(), the
// select scratch, and the scorer's check that the table covers the layer.
class observed_scores {
 public:
  observed_scores(index_t layers, score_update update, index_t observed_queries)
      : scores_(layers, update, observed_queries) {}

  index_t layers() const noexcept { return scores_.layers(); }
  attention_scores::observer_type& observer(index_t layer) { return scores_.observer(layer); }
  attention_scores& scores() noexcept { return scores_; }
  void on_retained(index_t layer_index, const keep_list& keep) {
    scores_.compact(layer_index, keep);
  }
  void reset() { scores_.reset(); }

  template <class T>
  void validate(const char* function, const paged_kv_view<const T>& layer,
                index_t layer_index) const {
    scores_.check(function, layer_index, layer.kv_heads);
  }

 protected:
  attention_scores scores_;
  score_scratch scratch_;
};

}  // namespace detail
}  // namespace attnkit
