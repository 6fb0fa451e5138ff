// attnkit — razor_policy: RazorAttention (Tang et al. 2024, "RazorAttention: Efficient KV Cache
// Compression Through Retrieval Heads").
//
// Retrieval heads (a head_table, kvcache/head_table.hpp) keep their whole cache. Every other head
// keeps N0 sink tokens and a buffer of the most recent tokens, and the remote tokens it drops are
// not lost outright: they are folded into ONE compensation token per head, the mean of their keys
// and the mean of their values (the paper's equation 4: k̂ = (1/N_d) Σ_{m∈D} k_m,
// v̂ = (1/N_d) Σ_{m∈D} v_m over the N_d dropped tokens D; keys after the rotary embedding, i.e. as
// cached).
//
// Budget: a non-retrieval head keeps exactly its budget B when it holds more: `sinks` (N0, the
// paper's sink count, default 4) sink tokens, the compensation token, and the recent
// B - sinks - 1 tokens — or `min_window` recent tokens if that is more (the paper's buffer
// L_h = max(S0, N/C): min_window is S0, and budget::ratio(1 - 1/C) gives N/C). Retrieval heads
// ignore the budget.
//
// The compensation token is appended after the kept tokens (compress() does it), at the slot
// keep.kept(h), and marked as the head's merged key with count N_d (kv_cache::set_merged); its
// position is the mean position of the tokens it stands for. The paper's equation 5 weights it by
// N_d in the softmax, exp(q·k̂)·N_d: the kernels do exactly that for a merged key (a logit bias of
// ln N_d on that one slot, core/paged_kv_view.hpp), so attending to it is attending to N_d copies
// of the mean token. Later compressions read the mark from the view and merge the token with the
// newly dropped ones, weighted by the count it already stands for, so it stays the mean of every
// token the head ever dropped. The policy itself holds no per-slot state: the cache keeps the
// mark in step with its slots. (A view without merged keys — an engine's own cache that does not
// keep them — makes an earlier compensation token count as one ordinary token.)
#pragma once

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "attnkit/core/config.hpp"
#include "attnkit/core/error.hpp"
#include "attnkit/core/float16.hpp"
#include "attnkit/core/paged_kv_view.hpp"
#include "attnkit/kvcache/head_table.hpp"
#include "attnkit/kvcache/policies/duo.hpp"
#include "attnkit/kvcache/policy.hpp"

namespace attnkit {

struct razor_options {
  index_t sinks = 4;       // N0
  index_t min_window = 0;  // S0: the least recent tokens a non-retrieval head keeps
};

class razor_policy {
 public:
  explicit razor_policy(head_table heads, razor_options options = {})
      : heads_(std::move(heads)), options_(checked(options)) {}

  const head_table& heads() const noexcept { return heads_; }
  const razor_options& options() const noexcept { return options_; }

  template <class T>
  void select(const paged_kv_view<const T>& layer, index_t layer_index, const budget& b,
              keep_list& keep) {
    constexpr const char* fn = "attnkit::razor_policy::select";
    b.check(fn, layer.kv_heads);
    heads_.check(fn, layer_index, layer.kv_heads);
    for (index_t h = 0; h < layer.kv_heads; ++h) {
      const merged_key old = layer.merged(h);
      detail::require(old.slot >= -1 && old.slot < layer.length(h), fn, ": layer ", layer_index,
                      " head ", h, "'s merged key is at slot ", old.slot, " but the head holds ",
                      layer.length(h), " tokens");
    }
    detail::keep_retrieval_heads_whole(heads_, layer, layer_index, keep, [&](index_t h, index_t n) {
      select_streaming_head(layer, h, b.keep_count(h, n), keep);
    });
  }

 private:
  template <class T>
  void select_streaming_head(const paged_kv_view<const T>& layer, index_t head, index_t count,
                             keep_list& keep) {
    const index_t n = layer.length(head);
    const merged_key old_key = layer.merged(head);
    const index_t old = old_key.slot;
    if (count >= n) {
      keep.keep_range(head, 0, n);
      return;
    }
    if (count == 0) return;  // nothing kept, not even a compensation token
    // Real tokens (every slot but the old compensation token), renumbered 0 .. real - 1.
    const index_t real = old >= 0 ? n - 1 : n;
    auto slot_of = [old](index_t r) { return old >= 0 && r >= old ? r + 1 : r; };
    const index_t sinks = std::min(options_.sinks, count - 1);
    const index_t window = std::min(real - sinks, std::max(options_.min_window, count - 1 - sinks));
    const index_t dropped_begin = sinks;
    const index_t dropped_end = real - window;
    if (dropped_end <= dropped_begin) {  // the buffer covers everything: nothing to fold
      keep.keep_range(head, 0, n);
      return;
    }
    for (index_t r = 0; r < dropped_begin; ++r) keep.keep(head, slot_of(r));
    for (index_t r = dropped_end; r < real; ++r) keep.keep(head, slot_of(r));

    // The compensation token: the mean over every token it stands for, in double (it may
    // average tens of thousands of rows); the old token counts as the old_count it stands for.
    const auto d = static_cast<std::size_t>(layer.head_dim);
    key_sum_.assign(d, 0.0);
    value_sum_.assign(d, 0.0);
    double position_sum = 0.0;
    auto add = [&](index_t slot, double weight) {
      const T* k = layer.key(head, slot);
      const T* v = layer.value(head, slot);
      for (std::size_t i = 0; i < d; ++i) {
        key_sum_[i] += weight * static_cast<double>(to_float(k[i]));
        value_sum_[i] += weight * static_cast<double>(to_float(v[i]));
      }
      position_sum += weight * static_cast<double>(detail::position_or_slot(layer, head, slot));
    };
    for (index_t r = dropped_begin; r < dropped_end; ++r) add(slot_of(r), 1.0);
    index_t total = dropped_end - dropped_begin;
    if (old >= 0) {
      // Counts are whole numbers of tokens when this policy made them; round any other weight.
      const auto old_count = std::max<index_t>(1, std::llround(old_key.count));
      add(old, static_cast<double>(old_count));
      total += old_count;
    }
    compensation_token& token = keep.add_compensation(head);
    const double inverse = 1.0 / static_cast<double>(total);
    for (std::size_t i = 0; i < d; ++i) {
      token.key[i] = static_cast<float>(key_sum_[i] * inverse);
      token.value[i] = static_cast<float>(value_sum_[i] * inverse);
    }
    token.pos = static_cast<position>(std::floor(position_sum * inverse));
    token.count = total;
  }

  static razor_options checked(const razor_options& o) {
    detail::require(o.sinks >= 0, "attnkit::razor_policy: sinks is ", o.sinks, ", it must be >= 0");
    detail::require(o.min_window >= 0, "attnkit::razor_policy: min_window is ", o.min_window,
                    ", it must be >= 0");
    return o;
  }

  head_table heads_;
  razor_options options_;
  std::vector<double> key_sum_;
  std::vector<double> value_sum_;
};

}  // namespace attnkit
