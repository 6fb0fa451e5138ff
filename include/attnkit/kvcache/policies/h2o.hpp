// attnkit — h2o_policy: Heavy-Hitter Oracle (Zhang et al. 2023, "H2O: Heavy-Hitter Oracle for
// Efficient Generative Inference of Large Language Models").
//
// Each head keeps a recent window and the "heavy hitters": the older tokens with the largest
// attention mass accumulated over every query so far. The paper splits the cache budget evenly
// between the two (its reference code and Meta's llama-recipes H2O both state "half" for each);
// heavy_fraction changes that split: heavy = floor(budget · heavy_fraction), recent = the rest.
//
// Scores come from the kernels: `options.observer = h2o.observer(layer)` on every attention call
// of the layer, prefill and decode. H2O sums the attention of *all* queries; a prefill call hands
// the observer its last `observed_queries` query tokens (their probabilities cost
// observed_queries · q_heads · kv_tokens floats of kernel scratch), so a long prompt is observed
// through its last rows unless it is prefilled in chunks that are each observed whole. Decode
// steps are exact. The greedy per-step eviction of the paper is compress() with the budget after
// every decode step: one token over budget is one O(n) pass per head.
#pragma once

#include <limits>
#include <span>

#include "attnkit/core/config.hpp"
#include "attnkit/core/error.hpp"
#include "attnkit/core/paged_kv_view.hpp"
#include "attnkit/kvcache/attention_scores.hpp"
#include "attnkit/kvcache/policy.hpp"
#include "attnkit/kvcache/scored_select.hpp"

namespace attnkit {

struct h2o_options {
  double heavy_fraction = 0.5;    // share of the budget for heavy hitters; the rest is recent
  index_t observed_queries = 64;  // last query tokens of a prefill call that are observed
};

class h2o_policy : public detail::observed_scores {
 public:
  explicit h2o_policy(index_t layers = 1, h2o_options options = {})
      : observed_scores(layers, score_update::accumulate, checked(options).observed_queries),
        options_(options) {}

  const h2o_options& options() const noexcept { return options_; }

  // The same selection as select_by_scores over score() (the window at +inf), without writing
  // the scores out: the heavy hitters are the top of the mass before the window, read in place.
  template <class T>
  void select(const paged_kv_view<const T>& layer, index_t layer_index, const budget& b,
              keep_list& keep) {
    constexpr const char* fn = "attnkit::h2o_policy::select";
    detail::select_per_head(
        *this, fn, layer, layer_index, b, keep,
        [&](index_t h, index_t n) { return b.keep_count(h, n); },
        [&](index_t h, index_t n, index_t count) {
          const index_t heavy = heavy_count(count);
          const index_t recent = count - heavy;
          const std::span<const float> mass = scores_.head(fn, layer_index, layer.kv_heads, h, n);
          detail::keep_best(scratch_.top, mass.first(static_cast<std::size_t>(n - recent)), heavy,
                            keep, h);
          keep.keep_range(h, n - recent, n);
        });
  }
  // Scorer interface (validate: observed_scores'): +inf for the recent window (always kept),
  // accumulated mass before it.
  template <class T>
  void score(const paged_kv_view<const T>& layer, index_t layer_index, index_t head,
             index_t keep_count, std::span<float> out) {
    const auto n = static_cast<index_t>(out.size());
    const std::span<const float> mass =
        scores_.head("attnkit::h2o_policy::select", layer_index, layer.kv_heads, head, n);
    const index_t recent = std::min(n, keep_count - heavy_count(keep_count));
    for (index_t j = 0; j < n - recent; ++j)
      out[static_cast<std::size_t>(j)] = mass[static_cast<std::size_t>(j)];
    for (index_t j = n - recent; j < n; ++j)
      out[static_cast<std::size_t>(j)] = std::numeric_limits<float>::infinity();
  }

  index_t heavy_count(index_t keep_count) const noexcept {
    return static_cast<index_t>(static_cast<double>(keep_count) * options_.heavy_fraction);
  }

 private:
  static h2o_options checked(const h2o_options& o) {
    detail::require(o.heavy_fraction >= 0.0 && o.heavy_fraction <= 1.0,
                    "attnkit::h2o_policy: heavy_fraction is ", o.heavy_fraction,
                    ", it must be in [0, 1]");
    return o;
  }

  h2o_options options_;
};

}  // namespace attnkit
