// attnkit — fastgen_policy: FastGen (Ge et al. 2024, "Model Tells You What to Discard: Adaptive
// KV Cache Compression for LLMs").
//
// Heads attend in different structures — to special tokens, to punctuation, locally, to a few
// frequent tokens, or broadly — so FastGen profiles each head on the prompt and gives it the
// cheapest compression policy that still recovers a fraction T (recovery, default 0.95) of the
// head's attention. The candidates are the paper's hybrid policies, in order of cost:
//
//   special → special + punctuation → + frequent → + local → full
//
// (special: special tokens; punctuation: punctuation tokens; frequent: the heavy hitters by
// accumulated attention, as H2O; local: the most recent tokens). Each candidate adds to the one
// before, so the first that recovers T is the cheapest. "Recovers" is measured as the share of
// the head's observed attention mass that falls on the tokens the candidate keeps: the mass of
// the observed prompt queries (the observer's `observed_queries` last ones; the paper profiles
// the whole prompt's attention map) summed over the head's GQA group. A head whose attention was
// not observed gets `full`.
//
// Sizes: the frequent set is the head's budget count of heaviest tokens and the local window the
// head's budget count of most recent tokens (the paper's ratios r_f and r_l of the sequence:
// budget::ratio(1 - r) gives both). Special and punctuation tokens are kept whatever their number,
// so FastGen keeps what its chosen policy keeps — not a fixed budget; that adaptivity is the
// method.
//
// Token classes: attnkit has no tokenizer, so the caller supplies one class byte per position
// (set_token_classes; bit 1 special, bit 2 punctuation; positions beyond the table are plain
// tokens), read through the cache's recorded positions. Keep the table up to date as tokens are
// generated (the span is not copied).
//
// Use: `options.observer = fastgen.observer(layer)` on every attention call of the layer (rows
// accumulate, as frequency needs); the first select() of a layer profiles its heads and fixes
// their policies (choice(layer, head)); later selects — during decode — apply each head's policy
// to the grown cache. reset() forgets the profile and the scores (a new prompt).
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

#include "attnkit/core/config.hpp"
#include "attnkit/core/error.hpp"
#include "attnkit/core/paged_kv_view.hpp"
#include "attnkit/kvcache/attention_scores.hpp"
#include "attnkit/kvcache/policy.hpp"
#include "attnkit/kvcache/top_slots.hpp"

namespace attnkit {

// Bits of a token class byte.
namespace token_class {
inline constexpr std::uint8_t special = 1;
inline constexpr std::uint8_t punctuation = 2;
}  // namespace token_class

enum class fastgen_choice : unsigned char {
  special,
  special_punctuation,
  special_punctuation_frequent,
  special_punctuation_frequent_local,
  full,
};

struct fastgen_options {
  double recovery = 0.95;         // T: the attention share a head's policy must keep
  index_t observed_queries = 64;  // last prompt queries whose attention is profiled
};

class fastgen_policy {
 public:
  explicit fastgen_policy(index_t layers = 1, fastgen_options options = {})
      : options_(checked(options)),
        scores_(layers, score_update::accumulate, options.observed_queries),
        profiled_(static_cast<std::size_t>(layers), 0),
        choices_(static_cast<std::size_t>(layers)) {}

  const fastgen_options& options() const noexcept { return options_; }
  attention_scores::observer_type& observer(index_t layer) { return scores_.observer(layer); }
  attention_scores& scores() noexcept { return scores_; }

  // One class byte per position (token_class bits); not copied.
  void set_token_classes(std::span<const std::uint8_t> classes) {
    detail::require(classes.data() != nullptr || classes.empty(),
                    "attnkit::fastgen_policy::set_token_classes: classes has null data but ",
                    classes.size(), " entries");
    classes_ = classes;
  }

  bool profiled(index_t layer) const {
    detail::check_layer_index("attnkit::fastgen_policy::profiled", layer, scores_.layers());
    return profiled_[static_cast<std::size_t>(layer)] != 0;
  }
  // The policy profiling chose for a head (profiled(layer) must be true).
  fastgen_choice choice(index_t layer, index_t head) const {
    constexpr const char* fn = "attnkit::fastgen_policy::choice";
    detail::require(profiled(layer), fn, ": layer ", layer, " has not been profiled yet");
    const auto& c = choices_[static_cast<std::size_t>(layer)];
    detail::require(head >= 0 && head < static_cast<index_t>(c.size()), fn, ": head is ", head,
                    " but the layer has ", c.size(), " KV heads");
    return c[static_cast<std::size_t>(head)];
  }

  template <class T>
  void select(const paged_kv_view<const T>& layer, index_t layer_index, const budget& b,
              keep_list& keep) {
    constexpr const char* fn = "attnkit::fastgen_policy::select";
    b.check(fn, layer.kv_heads);
    scores_.check(fn, layer_index, layer.kv_heads);
    auto& choices = choices_[static_cast<std::size_t>(layer_index)];
    const bool profiled_now = profiled_[static_cast<std::size_t>(layer_index)] != 0;
    detail::require(!profiled_now || static_cast<index_t>(choices.size()) == layer.kv_heads, fn,
                    ": layer ", layer_index, " was profiled with ", choices.size(),
                    " KV heads but now has ", layer.kv_heads);
    if (!profiled_now) {
      choices.assign(static_cast<std::size_t>(layer.kv_heads), fastgen_choice::full);
      for (index_t h = 0; h < layer.kv_heads; ++h)
        choices[static_cast<std::size_t>(h)] = profile(layer, layer_index, h, b);
      profiled_[static_cast<std::size_t>(layer_index)] = 1;
    }
    keep.reset(layer.kv_heads, layer.head_dim);
    for (index_t h = 0; h < layer.kv_heads; ++h) {
      const index_t n = layer.length(h);
      const fastgen_choice c = choices[static_cast<std::size_t>(h)];
      if (c == fastgen_choice::full) {
        keep.keep_range(h, 0, n);
        continue;
      }
      mark(layer, layer_index, h, b.keep_count(h, n), c);
      for (index_t j = 0; j < n; ++j)
        if (marks_[static_cast<std::size_t>(j)]) keep.keep(h, j);
    }
  }

  void on_retained(index_t layer_index, const keep_list& keep) {
    scores_.compact(layer_index, keep);
  }
  void reset() {
    scores_.reset();
    std::fill(profiled_.begin(), profiled_.end(), 0);
  }

 private:
  template <class T>
  fastgen_choice profile(const paged_kv_view<const T>& layer, index_t layer_index, index_t head,
                         const budget& b) {
    const index_t n = layer.length(head);
    const std::span<const float> mass =
        scores_.head("attnkit::fastgen_policy::select", layer_index, layer.kv_heads, head, n);
    double total = 0.0;
    for (const float m : mass) total += m;
    if (!(total > 0.0)) return fastgen_choice::full;  // nothing observed: nothing to judge by
    const index_t count = b.keep_count(head, n);
    for (const fastgen_choice c : {fastgen_choice::special, fastgen_choice::special_punctuation,
                                   fastgen_choice::special_punctuation_frequent,
                                   fastgen_choice::special_punctuation_frequent_local}) {
      mark(layer, layer_index, head, count, c);
      double kept = 0.0;
      for (index_t j = 0; j < n; ++j)
        if (marks_[static_cast<std::size_t>(j)]) kept += mass[static_cast<std::size_t>(j)];
      if (kept >= options_.recovery * total) return c;
    }
    return fastgen_choice::full;
  }

  // marks_[j] = 1 for the slots of `head` that policy c keeps.
  template <class T>
  void mark(const paged_kv_view<const T>& layer, index_t layer_index, index_t head, index_t count,
            fastgen_choice c) {
    const index_t n = layer.length(head);
    marks_.assign(static_cast<std::size_t>(n), 0);
    std::uint8_t classes = token_class::special;
    if (c != fastgen_choice::special) classes |= token_class::punctuation;
    for (index_t j = 0; j < n; ++j) {
      const position p = detail::position_or_slot(layer, head, j);
      if (p >= 0 && p < static_cast<position>(classes_.size()) &&
          (classes_[static_cast<std::size_t>(p)] & classes) != 0)
        marks_[static_cast<std::size_t>(j)] = 1;
    }
    if (c == fastgen_choice::special_punctuation_frequent ||
        c == fastgen_choice::special_punctuation_frequent_local) {
      const std::span<const float> mass =
          scores_.head("attnkit::fastgen_policy::select", layer_index, layer.kv_heads, head, n);
      top_.select(mass, count, [&](index_t slot) { marks_[static_cast<std::size_t>(slot)] = 1; });
    }
    if (c == fastgen_choice::special_punctuation_frequent_local)
      for (index_t j = std::max<index_t>(0, n - count); j < n; ++j)
        marks_[static_cast<std::size_t>(j)] = 1;
  }

  static fastgen_options checked(const fastgen_options& o) {
    detail::require(o.recovery >= 0.0 && o.recovery <= 1.0, "attnkit::fastgen_policy: recovery is ",
                    o.recovery, ", it must be in [0, 1]");
    detail::require(o.observed_queries >= 1, "attnkit::fastgen_policy: observed_queries is ",
                    o.observed_queries, ", it must be >= 1");
    return o;
  }

  fastgen_options options_;
  attention_scores scores_;
  std::vector<unsigned char> profiled_;
  std::vector<std::vector<fastgen_choice>> choices_;
  std::span<const std::uint8_t> classes_{};
  std::vector<unsigned char> marks_;
  detail::top_slots top_;
};

}  // namespace attnkit
