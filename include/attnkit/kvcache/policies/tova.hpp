// attnkit — tova_policy: Token Omission Via Attention (Oren et al. 2024, "Transformers are
// Multi-State RNNs").
//
// When the cache is over budget, TOVA drops the tokens with the lowest attention weight from the
// *current* query — no accumulation over past queries (that is H2O). The paper applies the rule
// per layer, with the weights averaged over the layer's heads, so every head of a layer keeps the
// same tokens (it reports the layer-wise rule beating a head-wise one; kvpress' TOVAPress, which
// an author reviewed, averages over the heads the same way). per_head = true is the head-wise
// variant: each KV head ranks by its own group's weights.
//
// The layer-wise rule needs the heads' slots to be the same tokens: every head of the layer must
// hold the same number of slots and get the same budget (true of a cache only TOVA compresses);
// select() throws otherwise. Unlike kvpress, the current token is not protected: the paper
// lets it be evicted like any other when its weight is the lowest.
//
// Use: `options.observer = tova.observer(layer)`; each attention call's rows replace the previous
// call's (its observer's check() starts a new observation), then compress() with the budget
// after each decode step evicts the lowest.
#pragma once

#include <algorithm>
#include <span>
#include <vector>

#include "attnkit/core/config.hpp"
#include "attnkit/core/error.hpp"
#include "attnkit/core/paged_kv_view.hpp"
#include "attnkit/core/simd_include.hpp"
#include "attnkit/kvcache/attention_scores.hpp"
#include "attnkit/kvcache/policy.hpp"
#include "attnkit/kvcache/scored_select.hpp"

namespace attnkit {

struct tova_options {
  bool per_head = false;  // false: the paper's layer-wise rule
};

class tova_policy : public detail::observed_scores {
 public:
  explicit tova_policy(index_t layers = 1, tova_options options = {})
      : observed_scores(layers, score_update::replace, 1), options_(options) {}

  const tova_options& options() const noexcept { return options_; }

  template <class T>
  void select(const paged_kv_view<const T>& layer, index_t layer_index, const budget& b,
              keep_list& keep) {
    constexpr const char* fn = "attnkit::tova_policy::select";
    if (options_.per_head) {
      detail::select_by_scores(*this, fn, layer, layer_index, b, keep, scratch_);
      return;
    }
    detail::begin_select(*this, fn, layer, layer_index, b, keep);
    if (layer.kv_heads == 0) return;
    const index_t n = layer.length(0);
    const index_t count = b.keep_count(0, n);
    for (index_t h = 1; h < layer.kv_heads; ++h)
      detail::require(b.keep_count(h, n) == count, fn,
                      ": the layer-wise rule keeps the same tokens in every head, but the budget "
                      "gives head 0 ",
                      count, " tokens and head ", h, " ", b.keep_count(h, n));
    if (count >= n) {
      for (index_t h = 0; h < layer.kv_heads; ++h) keep.keep_range(h, 0, n);
      return;
    }
    const std::span<float> scores = scratch_.for_head(n);
    score(layer, layer_index, 0, count, scores);
    detail::keep_best(scratch_.top, scores, count, keep, 0);
    for (index_t h = 1; h < layer.kv_heads; ++h) keep.assign(h, keep.runs(0));
  }
  // Scorer interface: the current query's weights, averaged over the layer's query heads
  // (layer-wise) or summed over the head's group (per_head; the same order as the average).
  template <class T>
  void validate(const char* function, const paged_kv_view<const T>& layer,
                index_t layer_index) const {
    observed_scores::validate(function, layer, layer_index);
    if (options_.per_head) return;
    for (index_t h = 1; h < layer.kv_heads; ++h)
      detail::require(layer.length(h) == layer.length(0), function,
                      ": the layer-wise rule needs every head to hold the same slots, but head 0 "
                      "holds ",
                      layer.length(0), " and head ", h, " holds ", layer.length(h),
                      " (use tova_options::per_head for head-wise caches)");
  }
  template <class T>
  void score(const paged_kv_view<const T>& layer, index_t layer_index, index_t head,
             index_t /*keep_count*/, std::span<float> out) {
    constexpr const char* fn = "attnkit::tova_policy::select";
    const auto n = static_cast<index_t>(out.size());
    if (options_.per_head) {
      const std::span<const float> mass = scores_.head(fn, layer_index, layer.kv_heads, head, n);
      std::copy(mass.begin(), mass.end(), out.begin());
      return;
    }
    // Σ over KV heads of the group sums is Σ over every query head: divided by q_heads (as the
    // observed calls reported it) it is the average the paper ranks by. A vector of slots at a
    // time over every head's row: one pass over the tables, the sum in a register (the same
    // additions in the same order as head by head over the whole row, so the same bits).
    heads_.clear();
    for (index_t h = 0; h < layer.kv_heads; ++h)
      heads_.push_back(scores_.head(fn, layer_index, layer.kv_heads, h, n).data());
    const float inverse =
        1.0f / static_cast<float>(std::max<index_t>(1, scores_.q_heads(layer_index)));
    using batch = xsimd::batch<float>;
    constexpr index_t width = static_cast<index_t>(batch::size);
    index_t j = 0;
    for (; j + width <= n; j += width) {
      batch sum(0.0f);
      for (const float* mass : heads_) sum += batch::load_unaligned(mass + j);
      (sum * batch(inverse)).store_unaligned(out.data() + j);
    }
    for (; j < n; ++j) {
      float sum = 0.0f;
      for (const float* mass : heads_) sum += mass[j];
      out[static_cast<std::size_t>(j)] = sum * inverse;
    }
  }

 private:
  tova_options options_;
  std::vector<const float*> heads_;  // each KV head's score row, for score()
};

}  // namespace attnkit
