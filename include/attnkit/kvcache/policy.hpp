// attnkit — KV-cache eviction policies: the vocabulary every policy shares.
//
// A policy decides, for one layer of a cache, which slots each KV head keeps:
//
//   policy.select(layer_view, layer_index, budget, keep)      // required
//   policy.observer(layer_index)  -> an attention observer    // optional: score-based policies
//   policy.on_retained(layer_index, keep)                     // optional: after keep was applied
//
// * select() reads a paged_kv_view<const T> (what the kernels read; core/paged_kv_view.hpp) and
//   fills a keep_list: per KV head, the ascending slots to keep, and optionally one compensation
//   token (RazorAttention) to append after the kept ones. select() never changes the cache and
//   never changes what the policy knows about slots; it may be called only to look (evaluation
//   harnesses measure what a selection would keep).
// * Scores come from the attention kernels themselves, never from a second attention pass:
//   `options.observer = policy.observer(layer);` before the layer's attention call
//   (core/observer.hpp). The observer is a member of the policy, so it outlives the call.
// * Slots are renumbered when a selection is applied (the cache compacts: kept slot keep[i]
//   becomes slot i). A policy that keeps per-slot state (accumulated attention mass) renumbers it
//   in on_retained(layer, keep), which attnkit::compress calls right after it applied `keep`
//   (kvcache/compress.hpp). A separate hook rather than a select() that assumes its result will
//   be applied: select stays side-effect free, an aborted compression leaves the policy
//   consistent, and a caller that applies a keep list by hand calls on_retained itself. (A
//   compensation token's slot and count are the cache's to keep: kv_cache::set_merged.)
//
// Budgets: tokens per head (uniform), per-head token counts (AdaKV-style allocations computed
// elsewhere), or a compression ratio (the fraction of each head's tokens removed, as kvpress
// states it). A head never keeps more than it holds.
//
// Allocation: keep_list keeps its per-head vectors between calls (cleared, not freed), and the
// policies keep their scratch, so a decode loop that compresses every step allocates nothing
// once warmed up.
#pragma once

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <limits>
#include <memory>
#include <new>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include "attnkit/core/config.hpp"
#include "attnkit/core/error.hpp"
#include "attnkit/core/observer.hpp"
#include "attnkit/core/paged_kv_view.hpp"
#include "attnkit/core/shape.hpp"

namespace attnkit {

// How many tokens each head of a layer may keep.
class budget {
 public:
  enum class kind { tokens, per_head, ratio };

  // Every head keeps at most `per_head` tokens.
  static budget tokens(index_t per_head) {
    detail::require(per_head >= 0, "attnkit::budget::tokens: per_head is ", per_head,
                    ", it must be >= 0");
    budget b;
    b.kind_ = kind::tokens;
    b.tokens_ = per_head;
    return b;
  }

  // Head h keeps at most per_head[h] tokens. The span is not copied: it must outlive the budget's
  // use (no allocation per step), and have one entry per KV head of the layers it is used on.
  static budget per_head(std::span<const index_t> per_head) {
    detail::require(per_head.data() != nullptr || per_head.empty(),
                    "attnkit::budget::per_head: per_head has null data but ", per_head.size(),
                    " entries");
    for (std::size_t h = 0; h < per_head.size(); ++h)
      detail::require(per_head[h] >= 0, "attnkit::budget::per_head: per_head[", h, "] is ",
                      per_head[h], ", it must be >= 0");
    budget b;
    b.kind_ = kind::per_head;
    b.per_head_ = per_head;
    return b;
  }

  // Each head removes floor(compression_ratio · length) of its tokens (so a head that holds any
  // token keeps at least one). 0 keeps everything; 0.75 keeps a quarter.
  static budget ratio(double compression_ratio) {
    detail::require(
        std::isfinite(compression_ratio) && compression_ratio >= 0.0 && compression_ratio < 1.0,
        "attnkit::budget::ratio: compression_ratio is ", compression_ratio,
        ", it must be in [0, 1)");
    budget b;
    b.kind_ = kind::ratio;
    b.ratio_ = compression_ratio;
    return b;
  }

  kind type() const noexcept { return kind_; }
  index_t tokens_per_head() const noexcept { return tokens_; }
  std::span<const index_t> per_head_tokens() const noexcept { return per_head_; }
  double compression_ratio() const noexcept { return ratio_; }

  // Tokens head `head` keeps when it holds `length` (never more than length).
  index_t keep_count(index_t head, index_t length) const noexcept {
    index_t keep = length;
    switch (kind_) {
      case kind::tokens:
        keep = tokens_;
        break;
      case kind::per_head:
        keep = per_head_[static_cast<std::size_t>(head)];
        break;
      case kind::ratio:
        keep = length - static_cast<index_t>(std::floor(ratio_ * static_cast<double>(length)));
        break;
    }
    return std::min(keep, length);
  }

  // Throws unless the budget fits a layer of kv_heads heads.
  void check(const char* function, index_t kv_heads) const {
    if (kind_ == kind::per_head)
      detail::require(static_cast<index_t>(per_head_.size()) == kv_heads, function,
                      ": the per-head budget has ", per_head_.size(), " entries but the layer has ",
                      kv_heads, " KV heads");
  }

 private:
  budget() = default;
  kind kind_ = kind::tokens;
  index_t tokens_ = 0;
  std::span<const index_t> per_head_{};
  double ratio_ = 0.0;
};

// A token that stands for several evicted ones (RazorAttention's compensation token): appended
// to its head after the kept slots. fp32 whatever the cache type; the cache rounds on append.
struct compensation_token {
  std::vector<float> key;    // [head_dim]
  std::vector<float> value;  // [head_dim]
  position pos = 0;          // recorded as the token's position in the cache
  // How many evicted tokens it summarises. RazorAttention weights the token by this count in the
  // softmax (equivalently, adds ln(count) to its logit); see policies/razor.hpp.
  index_t count = 0;
};

namespace detail {

// std::allocator whose resize() leaves new elements of a trivial type unwritten: keep_list::slots
// writes every slot it adds anyway, 32K of them for a head of a 32K decode step, so the zero fill
// of std::vector would double that memory traffic.
template <class E>
struct uninitialized_allocator : std::allocator<E> {
  template <class U>
  struct rebind {
    using other = uninitialized_allocator<U>;
  };
  uninitialized_allocator() = default;
  template <class U>
  uninitialized_allocator(const uninitialized_allocator<U>&) noexcept {}
  template <class U>
  void construct(U* p) noexcept(std::is_nothrow_default_constructible_v<U>) {
    ::new (static_cast<void*>(p)) U;
  }
  template <class U, class... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};

}  // namespace detail

// What select() decided for one layer: per KV head, the kept slots as ascending runs of
// consecutive slots, and at most one compensation token. Runs rather than a slot per kept token:
// a decode step that evicts one token of 32K keeps two runs per head, so select() writes (and
// compress() and the score tables read) a few entries instead of 32K per head. Reused across
// calls: reset() clears it and keeps every buffer's capacity.
class keep_list {
 public:
  void reset(index_t kv_heads, index_t head_dim) {
    kv_heads_ = kv_heads;
    head_dim_ = head_dim;
    const auto heads = static_cast<std::size_t>(kv_heads);
    if (runs_.size() < heads) {
      runs_.resize(heads);
      kept_.resize(heads);
      compensations_.resize(heads);
      has_compensation_.resize(heads, 0);
    }
    for (std::size_t h = 0; h < heads; ++h) {
      runs_[h].clear();
      kept_[h] = 0;
      has_compensation_[h] = 0;
    }
  }

  index_t kv_heads() const noexcept { return kv_heads_; }
  index_t head_dim() const noexcept { return head_dim_; }

  // The head's kept slots as runs, ascending; adjacent keeps are merged into one run.
  std::span<const slot_run> runs(index_t head) const noexcept {
    return runs_[static_cast<std::size_t>(head)];
  }
  index_t kept(index_t head) const noexcept { return kept_[static_cast<std::size_t>(head)]; }

  // Appends slots; the caller keeps them ascending (compress() checks).
  void keep(index_t head, index_t slot) { keep_range(head, slot, slot + 1); }
  void keep_range(index_t head, index_t begin, index_t end) {
    if (end <= begin) return;
    const auto h = static_cast<std::size_t>(head);
    std::vector<slot_run>& runs = runs_[h];
    if (!runs.empty() && runs.back().end == begin)
      runs.back().end = end;
    else
      runs.push_back({begin, end});
    kept_[h] += end - begin;
  }
  // Replaces the head's kept slots (runs ascending; `runs` may be another head's of this list).
  void assign(index_t head, std::span<const slot_run> runs) {
    const auto h = static_cast<std::size_t>(head);
    runs_[h].assign(runs.begin(), runs.end());
    kept_[h] = 0;
    for (const slot_run& run : runs) kept_[h] += run.size();
  }

  // The head's kept slots one by one, ascending, written out into a buffer of the list: valid
  // until the list changes or writes out another head. For caches whose retain() takes slots.
  std::span<const index_t> slots(index_t head) {
    expanded_.resize(static_cast<std::size_t>(kept(head)));
    index_t* out = expanded_.data();
    for (const slot_run& run : runs(head))
      for (index_t slot = run.begin; slot < run.end; ++slot) *out++ = slot;  // vectorises
    return expanded_;
  }

  bool has_compensation(index_t head) const noexcept {
    return has_compensation_[static_cast<std::size_t>(head)] != 0;
  }
  const compensation_token& compensation(index_t head) const noexcept {
    return compensations_[static_cast<std::size_t>(head)];
  }
  // Marks head's compensation token present and returns it with key and value zeroed.
  compensation_token& add_compensation(index_t head) {
    const auto h = static_cast<std::size_t>(head);
    has_compensation_[h] = 1;
    compensation_token& token = compensations_[h];
    token.key.assign(static_cast<std::size_t>(head_dim_), 0.0f);
    token.value.assign(static_cast<std::size_t>(head_dim_), 0.0f);
    token.pos = 0;
    token.count = 0;
    return token;
  }

  // Throws unless this list fits the layer: one entry per head, slots ascending, unique and
  // below the head's length, compensation vectors of head_dim.
  template <class T>
  void check(const char* function, const paged_kv_view<T>& layer) const {
    detail::require(kv_heads_ == layer.kv_heads, function, ": the keep list has ", kv_heads_,
                    " heads but the layer has ", layer.kv_heads);
    for (index_t h = 0; h < kv_heads_; ++h) {
      const std::span<const slot_run> r = runs(h);
      const index_t n = layer.length(h);
      for (std::size_t i = 0; i < r.size(); ++i) {
        detail::require(r[i].begin >= 0 && r[i].end <= n && r[i].begin < r[i].end, function,
                        ": head ", h, " keeps slots [", r[i].begin, ", ", r[i].end, ") but holds ",
                        n, " tokens");
        detail::require(i == 0 || r[i].begin >= r[i - 1].end, function, ": head ", h,
                        " keeps slots out of order ([", r[i - 1].begin, ", ", r[i - 1].end,
                        ") then [", r[i].begin, ", ", r[i].end, "))");
      }
      if (has_compensation(h)) {
        const compensation_token& c = compensation(h);
        detail::require(static_cast<index_t>(c.key.size()) == layer.head_dim &&
                            static_cast<index_t>(c.value.size()) == layer.head_dim,
                        function, ": head ", h, "'s compensation token has ", c.key.size(),
                        " key and ", c.value.size(), " value elements but head_dim is ",
                        layer.head_dim);
        detail::require(c.count >= 1, function, ": head ", h, "'s compensation token stands for ",
                        c.count, " tokens, it must be >= 1");
      }
    }
  }

 private:
  index_t kv_heads_ = 0;
  index_t head_dim_ = 0;
  std::vector<std::vector<slot_run>> runs_;
  std::vector<index_t> kept_;
  std::vector<index_t, detail::uninitialized_allocator<index_t>> expanded_;
  std::vector<compensation_token> compensations_;
  std::vector<unsigned char> has_compensation_;
};

// A policy for caches of element type T.
template <class P, class T>
concept kv_policy = requires(P& policy, const paged_kv_view<const T>& layer, index_t layer_index,
                             const budget& b, keep_list& keep) {
  policy.select(layer, layer_index, b, keep);
};

// A policy that learns from the attention probabilities of the kernels.
template <class P>
concept observing_policy = requires(P& policy, index_t layer_index) {
  { policy.observer(layer_index) } -> std::convertible_to<attention_observer>;
};

// A policy with per-slot state to renumber after a keep list was applied.
template <class P>
concept retention_aware_policy = requires(P& policy, index_t layer_index, const keep_list& keep) {
  policy.on_retained(layer_index, keep);
};

namespace detail {

// The layer-index check every policy with per-layer state makes.
inline void check_layer_index(const char* function, index_t layer_index, index_t layers) {
  require(layer_index >= 0 && layer_index < layers, function, ": layer_index is ", layer_index,
          " but the policy was made for ", layers, " layers");
}

// Position of a slot, or the slot itself when the view records no positions.
template <class T>
position position_or_slot(const paged_kv_view<T>& layer, index_t head, index_t slot) noexcept {
  return layer.positions != nullptr ? layer.position_of(head, slot) : slot;
}

}  // namespace detail
}  // namespace attnkit
