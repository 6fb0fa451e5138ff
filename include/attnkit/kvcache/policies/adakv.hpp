// attnkit — adakv_policy: Ada-KV (Feng et al. 2024, "Ada-KV: Optimizing KV Cache Eviction by
// Adaptive Budget Allocation for Efficient LLM Inference").
//
// A uniform budget wastes slots on heads whose attention is concentrated and starves heads whose
// attention is spread. Ada-KV pools a layer's budget: the layer keeps Σ_h budget_h slots, chosen
// as the best scores over all its heads together, so a head with many high scores gets more
// slots than one with a few. A safeguard keeps each head's best floor(alpha · budget_h) slots
// whatever the others score (kvpress' AdaKVPress, alpha_safeguard = 0.20 by default).
//
// Scores come from a scorer (scored_select.hpp): SnapKV by default, as in the paper's Ada-SnapKV
// (its window scores are +inf, so every head keeps its window); H2O, TOVA (per_head), Knorm or
// random work too. Scores are compared across heads, so they must share a scale: attention
// masses do (each observed row of a head sums to one per query head). Ties across heads go to
// the later head, within a head to the later slot (top_slots.hpp).
//
// `observer(layer)` and `on_retained` forward to the scorer when it has them.
#pragma once

#include <cmath>
#include <limits>
#include <span>
#include <utility>
#include <vector>

#include "attnkit/core/config.hpp"
#include "attnkit/core/error.hpp"
#include "attnkit/core/paged_kv_view.hpp"
#include "attnkit/kvcache/policies/snapkv.hpp"
#include "attnkit/kvcache/policy.hpp"
#include "attnkit/kvcache/scored_select.hpp"
#include "attnkit/kvcache/top_slots.hpp"

namespace attnkit {

template <class Scorer = snapkv_policy>
class adakv_policy {
 public:
  explicit adakv_policy(Scorer scorer = Scorer(), double alpha = 0.2)
      : scorer_(std::move(scorer)), alpha_(checked_alpha(alpha)) {}

  double alpha() const noexcept { return alpha_; }
  Scorer& scorer() noexcept { return scorer_; }

  decltype(auto) observer(index_t layer) requires observing_policy<Scorer> {
    return scorer_.observer(layer);
  }
  void on_retained(index_t layer_index, const keep_list& keep) {
    if constexpr (retention_aware_policy<Scorer>) scorer_.on_retained(layer_index, keep);
  }

  template <class T>
  void select(const paged_kv_view<const T>& layer, index_t layer_index, const budget& b,
              keep_list& keep) {
    constexpr const char* fn = "attnkit::adakv_policy::select";
    detail::begin_select(scorer_, fn, layer, layer_index, b, keep);
    const auto heads = static_cast<std::size_t>(layer.kv_heads);
    offsets_.assign(heads + 1, 0);
    index_t layer_budget = 0;
    for (index_t h = 0; h < layer.kv_heads; ++h) {
      const index_t n = layer.length(h);
      offsets_[static_cast<std::size_t>(h) + 1] = offsets_[static_cast<std::size_t>(h)] + n;
      layer_budget += b.keep_count(h, n);
    }
    const index_t total = offsets_[heads];
    if (layer_budget >= total) {
      for (index_t h = 0; h < layer.kv_heads; ++h) keep.keep_range(h, 0, layer.length(h));
      return;
    }
    if (static_cast<index_t>(flat_.size()) < total) flat_.resize(static_cast<std::size_t>(total));
    for (index_t h = 0; h < layer.kv_heads; ++h) {
      const index_t n = layer.length(h);
      const index_t count = b.keep_count(h, n);
      const std::span<float> scores(flat_.data() + offsets_[static_cast<std::size_t>(h)],
                                    static_cast<std::size_t>(n));
      scorer_.score(layer, layer_index, h, count, scores);
      // The safeguard: the head's best floor(alpha · count) rise above every score.
      const auto safe = static_cast<index_t>(std::floor(alpha_ * static_cast<double>(count)));
      if (safe > 0) {
        head_keep_.clear();
        top_.select(std::span<const float>(scores), safe,
                    [&](index_t slot) { head_keep_.push_back(slot); });
        for (const index_t slot : head_keep_)
          scores[static_cast<std::size_t>(slot)] = std::numeric_limits<float>::infinity();
      }
    }
    index_t head = 0;
    top_.select(std::span<const float>(flat_.data(), static_cast<std::size_t>(total)), layer_budget,
                [&](index_t flat_index) {
                  while (flat_index >= offsets_[static_cast<std::size_t>(head) + 1]) ++head;
                  keep.keep(head, flat_index - offsets_[static_cast<std::size_t>(head)]);
                });
  }

 private:
  static double checked_alpha(double alpha) {
    detail::require(alpha >= 0.0 && alpha <= 1.0, "attnkit::adakv_policy: alpha is ", alpha,
                    ", it must be in [0, 1]");
    return alpha;
  }

  Scorer scorer_;
  double alpha_;
  std::vector<index_t> offsets_;
  std::vector<float> flat_;
  std::vector<index_t> head_keep_;
  detail::top_slots top_;
};

}  // namespace attnkit
