// attnkit — streaming_policy: StreamingLLM (Xiao et al. 2023, "Efficient Streaming Language
// Models with Attention Sinks").
//
// Each head keeps its first `sinks` tokens — the attention sinks that soak up the probability a
// softmax must put somewhere (the paper uses 4) — and the most recent tokens, budget - sinks of
// them. With a budget below `sinks`, the first `budget` tokens are kept. No scores: this policy
// never needs an observer. The slots are the head's slots, so after earlier evictions the "first"
// tokens are the first still held — the sinks themselves, since this policy never evicts them.
#pragma once

#include <algorithm>

#include "attnkit/core/config.hpp"
#include "attnkit/core/error.hpp"
#include "attnkit/core/paged_kv_view.hpp"
#include "attnkit/kvcache/policy.hpp"

namespace attnkit {
namespace detail {

// StreamingLLM's choice for one head of `length` slots that keeps `count`: its first
// min(sinks, count) slots and the most recent rest (also DuoAttention's streaming heads).
inline void keep_sinks_and_recent(keep_list& keep, index_t head, index_t length, index_t count,
                                  index_t sinks) {
  const index_t first = std::min(sinks, count);
  keep.keep_range(head, 0, first);
  keep.keep_range(head, length - (count - first), length);
}

}  // namespace detail

class streaming_policy {
 public:
  explicit streaming_policy(index_t sinks = 4) : sinks_(sinks) {
    detail::require(sinks >= 0, "attnkit::streaming_policy: sinks is ", sinks, ", it must be >= 0");
  }

  index_t sinks() const noexcept { return sinks_; }

  template <class T>
  void select(const paged_kv_view<const T>& layer, index_t /*layer_index*/, const budget& b,
              keep_list& keep) const {
    b.check("attnkit::streaming_policy::select", layer.kv_heads);
    keep.reset(layer.kv_heads, layer.head_dim);
    for (index_t h = 0; h < layer.kv_heads; ++h) {
      const index_t n = layer.length(h);
      detail::keep_sinks_and_recent(keep, h, n, b.keep_count(h, n), sinks_);
    }
  }

 private:
  index_t sinks_;
};

}  // namespace attnkit
