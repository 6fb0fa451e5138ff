// attnkit — snapkv_policy: SnapKV (Li et al. 2024, "SnapKV: LLM Knows What You are Looking for
// Before Generation").
//
// At the end of prefill, the last `window` prompt queries (the observation window) vote: per KV
// head, the attention each earlier key received from the window's queries, summed over the
// window and over the query heads of the head's GQA group (SnapKV's GQA fix, kvpress'
// SnapKVPress, averages over the group: the same order), is smoothed by a 1-D pooling of
// `kernel` keys (stride 1, padding kernel / 2, so each key's score is pooled with its
// neighbours' and neighbouring tokens are kept together), and the head keeps the best
// budget - window keys plus the window itself.
//
// Pooling: the reference implementation (FasterDecoding/SnapKV, snapkv_utils.py) and kvpress
// default to average pooling (avg_pool1d: zero padding, always divided by the kernel size), with
// max pooling as the option; both are here, average by default. kernel must be odd (the pooled
// row keeps the key count). Defaults follow the reference implementation: window 32 (kvpress
// uses 64), kernel 5. With a budget smaller than the window, the latest budget tokens of the
// window are kept.
//
// Scores come from the kernel: `options.observer = snapkv.observer(layer)` on the layer's
// prefill call(s) — the observer asks for the last `window` queries, and each call replaces the
// previous observation, so with chunked prefill the last chunk (which should hold at least
// `window` queries) is the one that votes — then compress() once. SnapKV is a prefill policy.
#pragma once

#include <algorithm>
#include <limits>
#include <span>

#include "attnkit/core/config.hpp"
#include "attnkit/core/error.hpp"
#include "attnkit/core/paged_kv_view.hpp"
#include "attnkit/kvcache/attention_scores.hpp"
#include "attnkit/kvcache/policy.hpp"
#include "attnkit/kvcache/scored_select.hpp"

namespace attnkit {

enum class snapkv_pooling { average, max };

struct snapkv_options {
  index_t window = 32;  // observation window: the last prompt queries that vote, kept as well
  index_t kernel = 5;   // pooling kernel (odd)
  snapkv_pooling pooling = snapkv_pooling::average;
};

class snapkv_policy : public detail::observed_scores {
 public:
  explicit snapkv_policy(index_t layers = 1, snapkv_options options = {})
      : observed_scores(layers, score_update::replace, checked(options).window),
        options_(options) {}

  const snapkv_options& options() const noexcept { return options_; }

  template <class T>
  void select(const paged_kv_view<const T>& layer, index_t layer_index, const budget& b,
              keep_list& keep) {
    detail::select_by_scores(*this, "attnkit::snapkv_policy::select", layer, layer_index, b, keep,
                             scratch_);
  }
  // Scorer interface (validate: observed_scores'): pooled window votes before the window, +inf
  // on it.
  template <class T>
  void score(const paged_kv_view<const T>& layer, index_t layer_index, index_t head,
             index_t /*keep_count*/, std::span<float> out) {
    const auto n = static_cast<index_t>(out.size());
    const std::span<const float> votes =
        scores_.head("attnkit::snapkv_policy::select", layer_index, layer.kv_heads, head, n);
    const index_t prefix = n - std::min(options_.window, n);
    pool(votes.first(static_cast<std::size_t>(prefix)),
         out.first(static_cast<std::size_t>(prefix)));
    std::fill(out.begin() + prefix, out.end(), std::numeric_limits<float>::infinity());
  }

  // out[j] = pooling of in[j - kernel/2 .. j + kernel/2] (outside [0, n): zeros for the average,
  // nothing for the max).
  void pool(std::span<const float> in, std::span<float> out) const {
    const auto n = static_cast<index_t>(in.size());
    const index_t half = options_.kernel / 2;
    for (index_t j = 0; j < n; ++j) {
      const index_t begin = std::max<index_t>(0, j - half);
      const index_t end = std::min<index_t>(n, j + half + 1);
      float v = 0.0f;
      if (options_.pooling == snapkv_pooling::average) {
        for (index_t i = begin; i < end; ++i) v += in[static_cast<std::size_t>(i)];
        v /= static_cast<float>(options_.kernel);
      } else {
        v = -std::numeric_limits<float>::infinity();
        for (index_t i = begin; i < end; ++i) v = std::max(v, in[static_cast<std::size_t>(i)]);
      }
      out[static_cast<std::size_t>(j)] = v;
    }
  }

 private:
  static snapkv_options checked(const snapkv_options& o) {
    detail::require(o.window >= 1, "attnkit::snapkv_policy: window is ", o.window,
                    ", it must be >= 1");
    detail::require(o.kernel >= 1 && o.kernel % 2 == 1, "attnkit::snapkv_policy: kernel is ",
                    o.kernel, ", it must be odd and >= 1");
    return o;
  }

  snapkv_options options_;
};

}  // namespace attnkit
