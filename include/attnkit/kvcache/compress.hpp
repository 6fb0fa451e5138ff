// attnkit — compress(): run a policy on one layer of a cache and apply its decision.
//
//   attnkit::keep_list keep;                       // reused: no allocation once warm
//   attnkit::h2o_policy h2o(layers);
//   options.observer = h2o.observer(layer);        // the kernels feed the scores
//   attnkit::attention(...);
//   attnkit::compress(cache, layer, h2o, attnkit::budget::tokens(1024), keep);
//
// Steps: select() on cache.view(layer); the keep list is checked against the layer (a policy of
// your own cannot corrupt the cache); then each head retains its kept slots (skipped when it keeps
// them all), each compensation token is appended after them (so it sits at slot keep.kept(h))
// and marked as the head's merged key standing for the tokens it summarises (the kernels weight
// it by that count, core/paged_kv_view.hpp), and finally the policy's on_retained(layer, keep)
// renumbers its per-slot state. Every check runs before the cache changes: when compress throws
// attnkit::error from select or the checks, the cache and the policy are as they were.
//
// The cache is any type with kv_cache<T>'s members (kvcache/kv_cache.hpp): view(layer),
// length(layer, head), retain(layer, head, slots) (or retain(layer, head, runs), which compress
// prefers: keep_list::runs), append_token(layer, head, key, value, position), and for policies that
// fold tokens into a compensation token (razor_policy), set_merged(layer, head, merged_key);
// without it such a keep list is an error.
#pragma once

#include <concepts>
#include <span>
#include <type_traits>

#include "attnkit/core/config.hpp"
#include "attnkit/core/error.hpp"
#include "attnkit/core/paged_kv_view.hpp"
#include "attnkit/kvcache/policy.hpp"

namespace attnkit {

template <class C>
concept compressible_cache = requires(C& cache, const C& const_cache, index_t layer, index_t head,
                                      std::span<const index_t> slots, std::span<const float> row,
                                      position pos) {
  const_cache.view(layer);
  { const_cache.length(layer, head) } -> std::convertible_to<index_t>;
  cache.retain(layer, head, slots);
  cache.append_token(layer, head, row, row, pos);
};

template <class C>
concept merging_cache = requires(C& cache, index_t layer, index_t head, merged_key key) {
  cache.set_merged(layer, head, key);
};

template <compressible_cache Cache, class Policy>
void compress(Cache& cache, index_t layer, Policy& policy, const budget& b, keep_list& keep) {
  const auto view = cache.view(layer);
  using T = std::remove_const_t<std::remove_pointer_t<decltype(view.keys)>>;
  static_assert(kv_policy<Policy, T>,
                "attnkit::compress: Policy needs select(const paged_kv_view<const T>&, index_t, "
                "const budget&, keep_list&) for the cache's element type");
  const paged_kv_view<const T> layer_view = view;
  policy.select(layer_view, layer, b, keep);
  keep.check("attnkit::compress", layer_view);
  if constexpr (!merging_cache<Cache>) {
    for (index_t h = 0; h < keep.kv_heads(); ++h)
      detail::require(!keep.has_compensation(h), "attnkit::compress: the policy folded head ", h,
                      "'s dropped tokens into a compensation token, but the cache type has no "
                      "set_merged(layer, head, merged_key) to weight it by the ",
                      keep.compensation(h).count, " tokens it stands for");
  }
  // The view is stale after the first mutation: lengths are asked of the cache from here on.
  // A cache that takes runs (kv_cache does) gets them; any other gets the slots written out.
  for (index_t h = 0; h < keep.kv_heads(); ++h) {
    if (keep.kept(h) == cache.length(layer, h)) continue;
    if constexpr (requires { cache.retain(layer, h, keep.runs(h)); })
      cache.retain(layer, h, keep.runs(h));
    else
      cache.retain(layer, h, keep.slots(h));
  }
  for (index_t h = 0; h < keep.kv_heads(); ++h) {
    if (!keep.has_compensation(h)) continue;
    const compensation_token& token = keep.compensation(h);
    cache.append_token(layer, h, std::span<const float>(token.key),
                       std::span<const float>(token.value), token.pos);
    if constexpr (merging_cache<Cache>)
      cache.set_merged(layer, h, {keep.kept(h), static_cast<float>(token.count)});
  }
  if constexpr (retention_aware_policy<Policy>) policy.on_retained(layer, keep);
}

}  // namespace attnkit
