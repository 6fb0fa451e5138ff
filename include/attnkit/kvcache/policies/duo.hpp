// attnkit — duo_policy: DuoAttention (Xiao et al. 2024, "DuoAttention: Efficient Long-Context LLM
// Inference with Retrieval and Streaming Heads").
//
// Heads are classified offline (a head_table, kvcache/head_table.hpp): retrieval heads keep
// their whole cache; streaming heads keep the attention sinks and a recent window, a constant
// size however long the context. Here a streaming head keeps exactly its budget: its first
// `sinks` tokens and the most recent budget - sinks (so `budget::tokens(sinks + recent)` is the
// paper's constant-size streaming cache, and a ratio budget compresses streaming heads by that
// ratio). The budget does not apply to retrieval heads. DuoAttention's released patterns give
// sink and recent sizes in their config.json and a gate value per head; load the gate values as
// table scores and call head_table::assign_streaming_by_score to pick the streaming fraction.
#pragma once

#include <algorithm>
#include <utility>

#include "attnkit/core/config.hpp"
#include "attnkit/core/error.hpp"
#include "attnkit/core/paged_kv_view.hpp"
#include "attnkit/kvcache/head_table.hpp"
#include "attnkit/kvcache/policies/streaming.hpp"
#include "attnkit/kvcache/policy.hpp"

namespace attnkit {
namespace detail {

// The split DuoAttention and RazorAttention share: resets `keep` for the layer, keeps every slot
// of its retrieval heads and calls select_other(head, length) for every other head.
template <class T, class SelectOther>
void keep_retrieval_heads_whole(const head_table& heads, const paged_kv_view<const T>& layer,
                                index_t layer_index, keep_list& keep, SelectOther&& select_other) {
  keep.reset(layer.kv_heads, layer.head_dim);
  for (index_t h = 0; h < layer.kv_heads; ++h) {
    const index_t n = layer.length(h);
    if (heads.role(layer_index, h) == head_role::retrieval)
      keep.keep_range(h, 0, n);
    else
      select_other(h, n);
  }
}

}  // namespace detail

class duo_policy {
 public:
  explicit duo_policy(head_table heads, index_t sinks = 64)
      : heads_(std::move(heads)), sinks_(sinks) {
    detail::require(sinks >= 0, "attnkit::duo_policy: sinks is ", sinks, ", it must be >= 0");
  }

  const head_table& heads() const noexcept { return heads_; }
  index_t sinks() const noexcept { return sinks_; }

  template <class T>
  void select(const paged_kv_view<const T>& layer, index_t layer_index, const budget& b,
              keep_list& keep) const {
    constexpr const char* fn = "attnkit::duo_policy::select";
    b.check(fn, layer.kv_heads);
    heads_.check(fn, layer_index, layer.kv_heads);
    detail::keep_retrieval_heads_whole(heads_, layer, layer_index, keep, [&](index_t h, index_t n) {
      detail::keep_sinks_and_recent(keep, h, n, b.keep_count(h, n), sinks_);
    });
  }

 private:
  head_table heads_;
  index_t sinks_;
};

}  // namespace attnkit
