// attnkit — pyramidkv_policy: PyramidKV (Cai et al. 2024, "PyramidKV: Dynamic KV Cache
// Compression based on Pyramidal Information Funneling").
//
// Lower layers attend broadly, higher layers to a few tokens, so the budget forms a pyramid:
// SnapKV's scores and selection (policies/snapkv.hpp) with a per-layer budget that shrinks
// linearly from the first layer to the last while the total over the layers stays what a
// uniform budget gives. As in the paper's code (and kvpress' PyramidKVPress), with b the average
// budget beyond the observation window w:
//
//   min = b / beta,  max = 2b - min;     if max > n - w:  max = n - w, min = 2b - max;
//   layer l keeps  w + (max - l · (max - min) / (layers - 1))   (an arithmetic sequence, mean b)
//
// beta (default 20) sets the steepness. Each layer's share is rounded down and the tokens that
// loses (fewer than one per layer) go one each to the lowest layers, so the counts never grow
// upward and their sum over the layers is exactly layers · (w + b). A budget no larger than the
// window, or a single layer, is SnapKV's uniform budget.
#pragma once

#include <algorithm>
#include <cmath>
#include <span>

#include "attnkit/core/config.hpp"
#include "attnkit/core/error.hpp"
#include "attnkit/core/paged_kv_view.hpp"
#include "attnkit/kvcache/policies/snapkv.hpp"
#include "attnkit/kvcache/policy.hpp"
#include "attnkit/kvcache/scored_select.hpp"

namespace attnkit {

struct pyramidkv_options {
  snapkv_options snapkv{};
  double beta = 20.0;
};

class pyramidkv_policy {
 public:
  // layers: the model's layer count (the pyramid spans all of them).
  explicit pyramidkv_policy(index_t layers, pyramidkv_options options = {})
      : beta_(checked_beta(options.beta)), snapkv_(layers, options.snapkv) {}

  index_t layers() const noexcept { return snapkv_.layers(); }
  double beta() const noexcept { return beta_; }
  attention_scores::observer_type& observer(index_t layer) { return snapkv_.observer(layer); }
  snapkv_policy& snapkv() noexcept { return snapkv_; }

  // Tokens layer `layer_index` keeps in a head of `length` tokens when a uniform budget would
  // keep `average` (the pyramid around it).
  index_t layer_budget(index_t layer_index, index_t length, index_t average) const {
    detail::check_layer_index("attnkit::pyramidkv_policy::layer_budget", layer_index, layers());
    const index_t layers_count = layers();
    const index_t w = std::min(snapkv_.options().window, length);
    if (average >= length) return length;
    const double b = static_cast<double>(average - w);
    if (b <= 0.0 || layers_count == 1) return average;
    double low = b / beta_;
    double high = 2.0 * b - low;
    if (high > static_cast<double>(length - w)) {
      high = static_cast<double>(length - w);
      low = 2.0 * b - high;
    }
    // Each layer gets the floor of its share; the shortfall (fewer than `layers` tokens) goes
    // one each to the lowest layers that are below the cap n - w, so the counts never grow
    // upward, never exceed the head, and sum to exactly layers · b.
    const double step = (high - low) / static_cast<double>(layers_count - 1);
    const index_t cap = length - w;
    // The shares are rationals that are often whole numbers (6 = 26 - 3 · 20/3); the relative
    // nudge keeps their floor from depending on rounding (or on the compiler contracting
    // high - step · l into an FMA) without moving a share that is not whole.
    auto share = [&](index_t l) {
      const double exact = high - step * static_cast<double>(l);
      const auto s = static_cast<index_t>(std::floor(exact + 1e-9 * std::max(1.0, exact)));
      return std::clamp<index_t>(s, 0, cap);
    };
    index_t floors = 0, capped = 0;
    for (index_t l = 0; l < layers_count; ++l) {
      floors += share(l);
      capped += share(l) == cap ? 1 : 0;  // a prefix: the shares do not increase
    }
    const index_t shortfall = layers_count * (average - w) - floors;
    const bool gets_one = layer_index >= capped && layer_index < capped + shortfall;
    const index_t beyond = share(layer_index) + (gets_one ? 1 : 0);
    return std::min(length, w + beyond);
  }

  template <class T>
  void select(const paged_kv_view<const T>& layer, index_t layer_index, const budget& b,
              keep_list& keep) {
    detail::select_by_scores(
        snapkv_, "attnkit::pyramidkv_policy::select", layer, layer_index, b, keep, scratch_,
        [&](index_t h, index_t n) { return layer_budget(layer_index, n, b.keep_count(h, n)); });
  }
  void on_retained(index_t layer_index, const keep_list& keep) {
    snapkv_.on_retained(layer_index, keep);
  }
  void reset() { snapkv_.reset(); }

  // Scorer interface: SnapKV's scores.
  template <class T>
  void validate(const char* function, const paged_kv_view<const T>& layer,
                index_t layer_index) const {
    snapkv_.validate(function, layer, layer_index);
  }
  template <class T>
  void score(const paged_kv_view<const T>& layer, index_t layer_index, index_t head,
             index_t keep_count, std::span<float> out) {
    snapkv_.score(layer, layer_index, head, keep_count, out);
  }

 private:
  static double checked_beta(double beta) {
    detail::require(std::isfinite(beta) && beta >= 1.0, "attnkit::pyramidkv_policy: beta is ", beta,
                    ", it must be >= 1");
    return beta;
  }

  double beta_;
  snapkv_policy snapkv_;
  detail::score_scratch scratch_;
};

}  // namespace attnkit
