// attnkit — kv_cache: one sequence's paged KV cache, per layer and per KV head.
//
// Each (layer, KV head) has its own page table and its own length, so a head-wise eviction policy
// that keeps 512 tokens in one head and 8192 in another holds 512 / page_size pages in the first,
// not as many as the longest head (design.md §7). Pages come from a kv_page_pool<T>.
//
// Batches of sequences: one cache per sequence over a shared page pool. A cache either owns its
// pool (constructed from a config with capacity_pages) or shares one with the other sequences of
// a batch, so that pages freed by one sequence's eviction serve another's growth; the pool is a
// separate object for exactly that reason. All caches on one pool must agree on page_size and
// head_dim (the page shape); their layers and kv_heads may differ.
//
// Invariants (what the tests check):
// - Slots 0 .. length-1 of a head are its tokens in the order they were appended, less the evicted
//   ones; there are never holes. Head h of a layer with length n holds exactly
//   ceil(n / page_size) pages, so bytes_used() is Σ over heads of ceil(length / page_size) pages
//   — it falls with the tokens each head evicts, to within one page per head.
// - Rows past a head's length in its last page hold finite values (zeros from the first append
//   into the page, or tokens evicted since), never uninitialised memory, so a kernel may load a
//   whole page and mask the tail.
// - view(layer) costs nothing: page tables and lengths of a layer live in contiguous arrays in
//   exactly the layout paged_kv_view reads. A view is valid until the next mutation of this
//   cache (append, retain, evict, compact, clear, assignment, destruction); other caches on the
//   same pool never invalidate it.
//
// Merged keys: a head may mark one slot as standing for several tokens (set_merged;
// RazorAttention's compensation token, which compress() appends and marks). The view carries the
// marks and the kernels weight that slot's softmax term by its count (core/paged_kv_view.hpp).
// retain() and evict() move the mark with its slot and drop it with the slot; appends leave it.
//
// Positions: each head records the original position of every token (RoPE-aware engines and
// policies need them; kernels do not read them). append() without positions continues each head
// from its next position: one past the largest position appended to that head so far — for the
// usual increasing positions, one past the last — independent of evictions.
//
// Errors: every function validates all its arguments first and throws attnkit::error naming the
// function, the argument and the values, with the cache and the pool unchanged. Appending beyond
// the pool's capacity is such an error too: every page an append needs is allocated before
// anything is written (strong guarantee).
//
// Thread safety: like a standard container — const calls may run concurrently, a mutation needs
// exclusive access to its cache. Caches that share a pool may be mutated from different threads
// at the same time (the pool locks its free list).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <limits>
#include <memory>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include "attnkit/core/config.hpp"
#include "attnkit/core/error.hpp"
#include "attnkit/core/float16.hpp"
#include "attnkit/core/paged_kv_view.hpp"
#include "attnkit/core/shape.hpp"
#include "attnkit/core/tensor_view.hpp"
#include "attnkit/kvcache/page_pool.hpp"

namespace attnkit {

struct kv_cache_config {
  index_t layers = 0;
  index_t kv_heads = 0;
  index_t head_dim = 0;
  index_t page_size = 16;      // tokens per page, 1..max_page_size (any value, not only 2^k)
  index_t capacity_pages = 0;  // size of the owned pool; ignored when the pool is shared
};

namespace detail {

// One row of head_dim elements from the caller's layout (any element stride) into a page row,
// converted to the storage type with round-to-nearest-even when it narrows.
template <class T, class U>
void store_row(T* ATTNKIT_RESTRICT dst, const U* ATTNKIT_RESTRICT src, index_t stride,
               index_t n) noexcept {
  if constexpr (std::is_same_v<T, U>) {
    if (stride == 1) {
      std::memcpy(dst, src, static_cast<std::size_t>(n) * sizeof(T));
      return;
    }
    for (index_t i = 0; i < n; ++i) dst[i] = src[i * stride];
  } else {
    for (index_t i = 0; i < n; ++i) dst[i] = from_float<T>(to_float(src[i * stride]));
  }
}

}  // namespace detail

template <class T>
class kv_cache {
  static_assert(is_storage_type_v<T>, "kv_cache<T>: T must be float, half or bfloat16");

 public:
  using value_type = T;
  using pool_type = kv_page_pool<T>;

  // Owns a pool of config.capacity_pages pages.
  explicit kv_cache(const kv_cache_config& config)
      : kv_cache(config, make_owned_pool(config), "attnkit::kv_cache") {}

  // Shares `pool` (batched serving); config.capacity_pages is ignored.
  kv_cache(const kv_cache_config& config, std::shared_ptr<pool_type> pool)
      : kv_cache(config, std::move(pool), "attnkit::kv_cache") {}

  kv_cache(const kv_cache&) = delete;
  kv_cache& operator=(const kv_cache&) = delete;

  // A moved-from cache holds no pages and no pool: it may only be destroyed or assigned to.
  kv_cache(kv_cache&& other) noexcept
      : config_(std::exchange(other.config_, moved_from_config(other.config_))),
        pool_(std::move(other.pool_)),
        layers_(std::move(other.layers_)),
        pages_held_(std::exchange(other.pages_held_, 0)),
        scratch_(std::move(other.scratch_)) {
    other.layers_.clear();
  }
  kv_cache& operator=(kv_cache&& other) noexcept {
    if (this != &other) {
      release_all();
      config_ = std::exchange(other.config_, moved_from_config(other.config_));
      pool_ = std::move(other.pool_);
      layers_ = std::move(other.layers_);
      other.layers_.clear();
      pages_held_ = std::exchange(other.pages_held_, 0);
      scratch_ = std::move(other.scratch_);
    }
    return *this;
  }
  ~kv_cache() { release_all(); }

  index_t layers() const noexcept { return config_.layers; }
  index_t kv_heads() const noexcept { return config_.kv_heads; }
  index_t head_dim() const noexcept { return config_.head_dim; }
  index_t page_size() const noexcept { return config_.page_size; }
  const kv_cache_config& config() const noexcept { return config_; }

  const pool_type& pool() const noexcept { return *pool_; }
  const std::shared_ptr<pool_type>& shared_pool() const noexcept { return pool_; }

  // Tokens held by one head.
  index_t length(index_t layer, index_t head) const {
    check_head("attnkit::kv_cache::length", layer, head);
    return layers_[static_cast<std::size_t>(layer)].lengths[static_cast<std::size_t>(head)];
  }

  // Original position of a slot (0 <= slot < length).
  position position_of(index_t layer, index_t head, index_t slot) const {
    constexpr const char* fn = "attnkit::kv_cache::position_of";
    check_head(fn, layer, head);
    const index_t n =
        layers_[static_cast<std::size_t>(layer)].lengths[static_cast<std::size_t>(head)];
    detail::require(slot >= 0 && slot < n, fn, ": slot is ", slot, " but head ", head, " of layer ",
                    layer, " holds ", n, " tokens");
    return *position_ptr(layer, head, slot);
  }

  // The position append() without explicit positions gives this head's next token.
  position next_position(index_t layer, index_t head) const {
    check_head("attnkit::kv_cache::next_position", layer, head);
    return layers_[static_cast<std::size_t>(layer)].next_positions[static_cast<std::size_t>(head)];
  }

  // What the kernels read: no copy, valid until the next mutation of this cache.
  paged_kv_view<const T> view(index_t layer) const {
    check_layer("attnkit::kv_cache::view", layer);
    const layer_state& state = layers_[static_cast<std::size_t>(layer)];
    paged_kv_view<const T> v;
    v.keys = pool_->keys();
    v.values = pool_->values();
    v.positions = pool_->positions();
    v.page_table = state.page_table.data();
    v.lengths = state.lengths.data();
    v.kv_heads = config_.kv_heads;
    v.head_dim = config_.head_dim;
    v.page_size = config_.page_size;
    v.page_table_stride = state.stride;
    v.row_stride = config_.head_dim;
    v.page_stride = pool_->page_stride();
    v.head_stride = 0;
    // Without marks the view passes no table, and the kernels skip it.
    const bool marked = std::any_of(state.merged.begin(), state.merged.end(),
                                    [](const merged_key& key) { return key.slot >= 0; });
    v.merged_keys = marked ? state.merged.data() : nullptr;
    return v;
  }

  // The head's merged key ({-1, 1}: none).
  merged_key merged(index_t layer, index_t head) const {
    check_head("attnkit::kv_cache::merged", layer, head);
    return layers_[static_cast<std::size_t>(layer)].merged[static_cast<std::size_t>(head)];
  }

  // Marks slot key.slot of a head as standing for key.count tokens (finite, > 0), replacing the
  // head's previous mark; key.slot = -1 removes it.
  void set_merged(index_t layer, index_t head, merged_key key) {
    constexpr const char* fn = "attnkit::kv_cache::set_merged";
    check_head(fn, layer, head);
    const index_t n = length_of(layer, head);
    detail::require(key.slot >= -1 && key.slot < n, fn, ": key.slot is ", key.slot, " but head ",
                    head, " of layer ", layer, " holds ", n, " tokens (-1: no merged key)");
    detail::require(key.slot == -1 || (std::isfinite(key.count) && key.count > 0.0f), fn,
                    ": key.count is ", key.count, ", it must be finite and > 0");
    layers_[static_cast<std::size_t>(layer)].merged[static_cast<std::size_t>(head)] =
        key.slot == -1 ? merged_key{} : key;
  }

  // Appends tokens [tokens, kv_heads, head_dim] (float, half or bfloat16, any strides; converted
  // to T with round-to-nearest-even) to every head of the layer. Head h's token t goes to slot
  // length(layer, h) + t with position next_position(layer, h) + t.
  template <class U>
  void append(index_t layer, tensor_view<const U, 3> k, tensor_view<const U, 3> v) {
    append_rows("attnkit::kv_cache::append", layer, k, v, nullptr);
  }
  template <class U>
  requires(!std::is_const_v<U>) void append(index_t layer, tensor_view<U, 3> k,
                                            tensor_view<U, 3> v) {
    append(layer, tensor_view<const U, 3>(k), tensor_view<const U, 3>(v));
  }

  // As above with explicit positions [tokens], the same for every head.
  template <class U>
  void append(index_t layer, tensor_view<const U, 3> k, tensor_view<const U, 3> v,
              std::span<const position> positions) {
    constexpr const char* fn = "attnkit::kv_cache::append";
    detail::require(static_cast<index_t>(positions.size()) == k.extent(0), fn, ": positions has ",
                    positions.size(), " entries but k has ", k.extent(0), " tokens (extent 0)");
    detail::require(positions.data() != nullptr || positions.empty(), fn,
                    ": positions has null data but ", positions.size(), " entries");
    for (std::size_t t = 0; t < positions.size(); ++t)
      check_position(fn, "positions", t, positions[t]);
    append_rows(fn, layer, k, v, positions.data());
  }
  template <class U>
  requires(!std::is_const_v<U>) void append(index_t layer, tensor_view<U, 3> k, tensor_view<U, 3> v,
                                            std::span<const position> positions) {
    append(layer, tensor_view<const U, 3>(k), tensor_view<const U, 3>(v), positions);
  }

  // One token into one head (compensation tokens of RazorAttention, re-inserted tokens).
  template <class U>
  void append_token(index_t layer, index_t head, std::span<const U> key, std::span<const U> value,
                    position pos) {
    static_assert(is_storage_type_v<U>,
                  "kv_cache::append_token: U must be float, half or bfloat16");
    constexpr const char* fn = "attnkit::kv_cache::append_token";
    check_head(fn, layer, head);
    detail::require(static_cast<index_t>(key.size()) == config_.head_dim, fn, ": key has ",
                    key.size(), " elements but head_dim is ", config_.head_dim);
    detail::require(static_cast<index_t>(value.size()) == config_.head_dim, fn, ": value has ",
                    value.size(), " elements but head_dim is ", config_.head_dim);
    detail::require(key.data() != nullptr, fn, ": key has null data");
    detail::require(value.data() != nullptr, fn, ": value has null data");
    check_position(fn, "pos", 0, pos);

    layer_state& state = layers_[static_cast<std::size_t>(layer)];
    const auto h = static_cast<std::size_t>(head);
    const index_t n = state.lengths[h];
    if (n % config_.page_size == 0) {
      // A new page: grow the table (if needed) and take the page before changing anything.
      std::vector<page_id> grown = grown_table(state, pages_for(n + 1));
      page_id page = 0;
      if (!pool_->try_allocate(std::span<page_id>(&page, 1))) fail_exhausted(fn, layer, 1, 1);
      if (!grown.empty()) adopt_table(state, std::move(grown));
      state.page_table[h * static_cast<std::size_t>(state.stride) +
                       static_cast<std::size_t>(n / config_.page_size)] = page;
      ++pages_held_;
      clear_page_tail(page, 1);
    }
    T* k_row = key_ptr(layer, head, n);
    T* v_row = value_ptr(layer, head, n);
    detail::store_row(k_row, key.data(), 1, config_.head_dim);
    detail::store_row(v_row, value.data(), 1, config_.head_dim);
    *position_ptr(layer, head, n) = pos;
    state.lengths[h] = n + 1;
    state.next_positions[h] = std::max(state.next_positions[h], pos + 1);
  }
  template <class U>
  void append_token(index_t layer, index_t head, std::span<U> key, std::span<U> value,
                    position pos) requires(!std::is_const_v<U>) {
    append_token(layer, head, std::span<const U>(key), std::span<const U>(value), pos);
  }

  // Keeps exactly the given slots of a head (ascending, unique, each < length); the rest are
  // evicted. Kept tokens keep their order and positions and move down to slots 0 .. n-1 (rows
  // after the first evicted slot are copied down, within this head's pages); the pages no longer
  // needed return to the pool at once.
  void retain(index_t layer, index_t head, std::span<const index_t> keep_slots) {
    constexpr const char* fn = "attnkit::kv_cache::retain";
    check_head(fn, layer, head);
    check_slots(fn, "keep_slots", layer, head, keep_slots);
    retain_rows(layer, head, static_cast<index_t>(keep_slots.size()), [&](auto&& keep_slot) {
      for (const index_t slot : keep_slots) keep_slot(slot);
    });
  }
  // The same with the kept slots as runs (ascending, non-empty, not overlapping, within the
  // length), as a keep_list holds them (compress() uses this one).
  void retain(index_t layer, index_t head, std::span<const slot_run> keep_runs) {
    constexpr const char* fn = "attnkit::kv_cache::retain";
    check_head(fn, layer, head);
    const index_t n = length_of(layer, head);
    detail::require(keep_runs.data() != nullptr || keep_runs.empty(), fn,
                    ": keep_runs has null data but ", keep_runs.size(), " entries");
    index_t kept = 0;
    for (std::size_t i = 0; i < keep_runs.size(); ++i) {
      const slot_run r = keep_runs[i];
      detail::require(r.begin >= 0 && r.begin < r.end && r.end <= n, fn, ": keep_runs[", i,
                      "] is [", r.begin, ", ", r.end, ") but head ", head, " of layer ", layer,
                      " holds ", n, " tokens (runs must be non-empty)");
      detail::require(i == 0 || r.begin >= keep_runs[i - 1].end, fn, ": keep_runs[", i, "] is [",
                      r.begin, ", ", r.end, ") after [", keep_runs[i - 1].begin, ", ",
                      keep_runs[i - 1].end, "), runs must be ascending and not overlap");
      kept += r.size();
    }
    retain_rows(layer, head, kept, [&](auto&& keep_slot) {
      for (const slot_run& r : keep_runs)
        for (index_t slot = r.begin; slot < r.end; ++slot) keep_slot(slot);
    });
  }

  // The complement: evicts the given slots (ascending, unique, each < length), keeps the rest.
  void evict(index_t layer, index_t head, std::span<const index_t> slots) {
    constexpr const char* fn = "attnkit::kv_cache::evict";
    check_head(fn, layer, head);
    check_slots(fn, "slots", layer, head, slots);
    if (slots.empty()) return;
    const index_t n = length_of(layer, head);
    std::size_t next_evicted = 0;
    index_t destination = slots[0];
    for (index_t source = slots[0]; source < n; ++source) {
      if (next_evicted < slots.size() && slots[next_evicted] == source) {
        ++next_evicted;
        continue;
      }
      move_row(layer, head, source, destination++);
    }
    shrink_head(layer, head, destination);
    merged_key& mark =
        layers_[static_cast<std::size_t>(layer)].merged[static_cast<std::size_t>(head)];
    if (mark.slot >= 0) {
      const auto after = std::lower_bound(slots.begin(), slots.end(), mark.slot);
      const bool evicted_it = after != slots.end() && *after == mark.slot;
      mark = evicted_it
                 ? merged_key{}
                 : merged_key{mark.slot - static_cast<index_t>(after - slots.begin()), mark.count};
    }
  }

  // Token storage never needs compacting here: retain() and evict() compact eagerly, so every
  // head already holds the fewest pages its length allows and no page is partly wasted except
  // each head's last. What compact() reclaims is the cache's own metadata: page tables grow
  // geometrically with the longest head of each layer and never shrink on eviction, so after a
  // policy cuts a long prompt down, compact() repacks each layer's table to the stride its
  // longest head now needs and returns the excess (and the append scratch) to the allocator. It
  // moves no token and frees no page; views are invalidated (the table moves).
  void compact() {
    for (index_t layer = 0; layer < config_.layers; ++layer) {
      layer_state& state = layers_[static_cast<std::size_t>(layer)];
      index_t needed = 0;
      for (const index_t n : state.lengths) needed = std::max(needed, pages_for(n));
      if (needed < state.stride) {
        std::vector<page_id> packed = repack(state, needed);  // may throw: nothing changed yet
        state.page_table = std::move(packed);
        state.stride = needed;
      }
      state.page_table.shrink_to_fit();
    }
    scratch_ = {};
  }

  // Pages this sequence holds × bytes per page (keys, values and positions of page_size tokens).
  // Page tables and lengths are not counted: they are metadata of a few bytes per page and per
  // head, reported by metadata_bytes().
  std::size_t bytes_used() const noexcept {
    return static_cast<std::size_t>(pages_held_) * (pool_ ? pool_->bytes_per_page() : 0);
  }
  index_t pages_held() const noexcept { return pages_held_; }
  std::size_t metadata_bytes() const noexcept {
    std::size_t bytes = 0;
    for (const layer_state& state : layers_)
      bytes += state.page_table.capacity() * sizeof(page_id) +
               (state.lengths.capacity() + state.next_positions.capacity()) * sizeof(index_t) +
               state.merged.capacity() * sizeof(merged_key);
    return bytes;
  }

  // Evicts every token of every head and returns every page; next positions restart at 0. The
  // page tables keep their capacity (compact() returns it).
  void clear() noexcept {
    release_all();
    for (layer_state& state : layers_) {
      std::fill(state.lengths.begin(), state.lengths.end(), 0);
      std::fill(state.next_positions.begin(), state.next_positions.end(), 0);
      std::fill(state.merged.begin(), state.merged.end(), merged_key{});
    }
  }

 private:
  struct layer_state {
    std::vector<page_id> page_table;       // [kv_heads, stride]; entries past a head's pages: -1
    std::vector<index_t> lengths;          // [kv_heads]
    std::vector<position> next_positions;  // [kv_heads]
    std::vector<merged_key> merged;        // [kv_heads]
    index_t stride = 0;                    // page-table entries per head
  };

  kv_cache(const kv_cache_config& config, std::shared_ptr<pool_type> pool, const char* fn)
      : config_(config), pool_(std::move(pool)) {
    check_config(fn, config_);
    detail::require(pool_ != nullptr, fn, ": the shared pool is null");
    detail::require(pool_->page_size() == config_.page_size, fn, ": config.page_size is ",
                    config_.page_size, " but the pool's page_size is ", pool_->page_size());
    detail::require(pool_->head_dim() == config_.head_dim, fn, ": config.head_dim is ",
                    config_.head_dim, " but the pool's head_dim is ", pool_->head_dim());
    layers_.resize(static_cast<std::size_t>(config_.layers));
    for (layer_state& state : layers_) {
      state.lengths.assign(static_cast<std::size_t>(config_.kv_heads), 0);
      state.next_positions.assign(static_cast<std::size_t>(config_.kv_heads), 0);
      state.merged.assign(static_cast<std::size_t>(config_.kv_heads), merged_key{});
    }
  }

  static void check_config(const char* fn, const kv_cache_config& c) {
    detail::require(c.layers >= 1, fn, ": config.layers is ", c.layers, ", it must be >= 1");
    detail::require(c.kv_heads >= 1, fn, ": config.kv_heads is ", c.kv_heads, ", it must be >= 1");
    detail::require(c.head_dim >= 1, fn, ": config.head_dim is ", c.head_dim, ", it must be >= 1");
    detail::require(c.page_size >= 1 && c.page_size <= max_page_size, fn, ": config.page_size is ",
                    c.page_size, ", it must be in 1..", max_page_size);
  }

  static std::shared_ptr<pool_type> make_owned_pool(const kv_cache_config& c) {
    constexpr const char* fn = "attnkit::kv_cache";
    check_config(fn, c);
    detail::require(c.capacity_pages >= 1, fn, ": config.capacity_pages is ", c.capacity_pages,
                    ", a cache that owns its pool needs at least 1 page");
    return std::make_shared<pool_type>(
        kv_page_pool_config{c.capacity_pages, c.page_size, c.head_dim});
  }

  static kv_cache_config moved_from_config(const kv_cache_config& c) noexcept {
    return {0, 0, c.head_dim, c.page_size, 0};
  }

  // ---- argument checks ----

  void check_layer(const char* fn, index_t layer) const {
    detail::require(layer >= 0 && layer < config_.layers, fn, ": layer is ", layer,
                    ", the cache has ", config_.layers, " layers");
  }
  void check_head(const char* fn, index_t layer, index_t head) const {
    check_layer(fn, layer);
    detail::require(head >= 0 && head < config_.kv_heads, fn, ": head is ", head,
                    ", the cache has ", config_.kv_heads, " kv_heads");
  }
  static void check_position(const char* fn, const char* name, std::size_t i, position pos) {
    // next_position is pos + 1: keep it representable.
    detail::require(pos < std::numeric_limits<position>::max(), fn, ": ", name, "[", i, "] is ",
                    pos, ", positions must be < ", std::numeric_limits<position>::max());
  }
  void check_slots(const char* fn, const char* name, index_t layer, index_t head,
                   std::span<const index_t> slots) const {
    const index_t n = length_of(layer, head);
    detail::require(slots.data() != nullptr || slots.empty(), fn, ": ", name, " has null data but ",
                    slots.size(), " entries");
    for (std::size_t i = 0; i < slots.size(); ++i) {
      detail::require(slots[i] >= 0 && slots[i] < n, fn, ": ", name, "[", i, "] is ", slots[i],
                      " but head ", head, " of layer ", layer, " holds ", n, " tokens");
      detail::require(i == 0 || slots[i] > slots[i - 1], fn, ": ", name, "[", i, "] is ", slots[i],
                      " after ", name, "[", i - 1, "] = ", slots[i - 1],
                      ", slots must be sorted ascending and unique");
    }
  }

  template <class U>
  void check_tokens(const char* fn, index_t layer, const tensor_view<const U, 3>& k,
                    const tensor_view<const U, 3>& v) const {
    check_layer(fn, layer);
    const char* dims[3] = {"tokens (extent 0)", "kv_heads (extent 1)", "head_dim (extent 2)"};
    detail::require(k.extent(1) == config_.kv_heads, fn, ": k ", dims[1], " is ", k.extent(1),
                    " but the cache has ", config_.kv_heads, " kv_heads");
    detail::require(k.extent(2) == config_.head_dim, fn, ": k ", dims[2], " is ", k.extent(2),
                    " but the cache's head_dim is ", config_.head_dim);
    for (std::size_t d = 0; d < 3; ++d)
      detail::require(v.extent(d) == k.extent(d), fn, ": v ", dims[d], " is ", v.extent(d),
                      " but k ", dims[d], " is ", k.extent(d));
    detail::require(k.data() != nullptr || k.empty(), fn, ": 'k' has null data but ", k.size(),
                    " elements");
    detail::require(v.data() != nullptr || v.empty(), fn, ": 'v' has null data but ", v.size(),
                    " elements");
  }

  [[noreturn]] void fail_exhausted(const char* fn, index_t layer, index_t tokens,
                                   index_t pages) const {
    detail::fail(fn, ": layer ", layer, " needs ", pages, " new pages for ", tokens,
                 " tokens but the pool has ", pool_->free_pages(), " free of ",
                 pool_->capacity_pages(), " (page_size ", config_.page_size,
                 "); nothing was appended");
  }

  // ---- layout ----

  index_t pages_for(index_t tokens) const noexcept {
    return (tokens + config_.page_size - 1) / config_.page_size;
  }
  index_t length_of(index_t layer, index_t head) const noexcept {
    return layers_[static_cast<std::size_t>(layer)].lengths[static_cast<std::size_t>(head)];
  }
  page_id page_at(index_t layer, index_t head, index_t slot) const noexcept {
    const layer_state& state = layers_[static_cast<std::size_t>(layer)];
    return state
        .page_table[static_cast<std::size_t>(head * state.stride + slot / config_.page_size)];
  }
  index_t row_offset(index_t layer, index_t head, index_t slot) const noexcept {
    return static_cast<index_t>(page_at(layer, head, slot)) * pool_->page_stride() +
           (slot % config_.page_size) * config_.head_dim;
  }
  T* key_ptr(index_t layer, index_t head, index_t slot) noexcept {
    return pool_->keys() + row_offset(layer, head, slot);
  }
  T* value_ptr(index_t layer, index_t head, index_t slot) noexcept {
    return pool_->values() + row_offset(layer, head, slot);
  }
  position* position_ptr(index_t layer, index_t head, index_t slot) noexcept {
    return pool_->positions() +
           static_cast<index_t>(page_at(layer, head, slot)) * config_.page_size +
           slot % config_.page_size;
  }
  const position* position_ptr(index_t layer, index_t head, index_t slot) const noexcept {
    return pool_->positions() +
           static_cast<index_t>(page_at(layer, head, slot)) * config_.page_size +
           slot % config_.page_size;
  }

  // The layer's table re-laid with `stride` entries per head (stride >= every head's pages).
  std::vector<page_id> repack(const layer_state& state, index_t stride) const {
    std::vector<page_id> table(static_cast<std::size_t>(config_.kv_heads * stride), page_id{-1});
    for (index_t h = 0; h < config_.kv_heads; ++h) {
      const index_t pages = pages_for(state.lengths[static_cast<std::size_t>(h)]);
      std::copy_n(state.page_table.begin() + h * state.stride, pages, table.begin() + h * stride);
    }
    return table;
  }

  // Empty when `pages` entries per head already fit; otherwise the table with a larger stride
  // (doubling, so a sequence that grows one token at a time repacks O(log n) times).
  std::vector<page_id> grown_table(const layer_state& state, index_t pages) const {
    if (pages <= state.stride) return {};
    return repack(state, std::max(pages, 2 * state.stride));
  }
  static void adopt_table(layer_state& state, std::vector<page_id>&& table) noexcept {
    state.stride = static_cast<index_t>(table.size() / state.lengths.size());
    state.page_table = std::move(table);
  }

  // Zeros rows first_row .. page_size-1 of a page just taken from the pool, so the tail past a
  // head's length is never uninitialised memory (kernels may load whole pages).
  void clear_page_tail(page_id page, index_t first_row) noexcept {
    const index_t rows = config_.page_size - first_row;
    if (rows <= 0) return;
    const auto bytes = static_cast<std::size_t>(rows * config_.head_dim) * sizeof(T);
    std::memset(static_cast<void*>(pool_->key_page(page) + first_row * config_.head_dim), 0, bytes);
    std::memset(static_cast<void*>(pool_->value_page(page) + first_row * config_.head_dim), 0,
                bytes);
    std::fill_n(pool_->position_page(page) + first_row, rows, position{0});
  }

  template <class U>
  void append_rows(const char* fn, index_t layer, const tensor_view<const U, 3>& k,
                   const tensor_view<const U, 3>& v, const position* positions) {
    static_assert(is_storage_type_v<U>, "kv_cache::append: U must be float, half or bfloat16");
    check_tokens(fn, layer, k, v);
    const index_t tokens = k.extent(0);
    if (tokens == 0) return;

    layer_state& state = layers_[static_cast<std::size_t>(layer)];
    const index_t heads = config_.kv_heads;
    index_t new_pages = 0;
    index_t most_pages = 0;
    for (index_t h = 0; h < heads; ++h) {
      const index_t n = state.lengths[static_cast<std::size_t>(h)];
      new_pages += pages_for(n + tokens) - pages_for(n);
      most_pages = std::max(most_pages, pages_for(n + tokens));
    }

    // Everything that can fail happens before the first write: the table growth and the scratch
    // (std::bad_alloc) and the pool (exhausted).
    std::vector<page_id> grown = grown_table(state, most_pages);
    if (scratch_.size() < static_cast<std::size_t>(new_pages))
      scratch_.resize(static_cast<std::size_t>(new_pages));
    if (!pool_->try_allocate(
            std::span<page_id>(scratch_.data(), static_cast<std::size_t>(new_pages))))
      fail_exhausted(fn, layer, tokens, new_pages);

    // Commit (nothing below throws).
    if (!grown.empty()) adopt_table(state, std::move(grown));
    index_t taken = 0;
    for (index_t h = 0; h < heads; ++h) {
      const auto hs = static_cast<std::size_t>(h);
      const index_t n = state.lengths[hs];
      const index_t end = n + tokens;
      for (index_t p = pages_for(n); p < pages_for(end); ++p) {
        const page_id page = scratch_[static_cast<std::size_t>(taken++)];
        state.page_table[static_cast<std::size_t>(h * state.stride + p)] = page;
        // Only the head's new last page can have rows this append does not fill.
        if (p == pages_for(end) - 1) clear_page_tail(page, end - p * config_.page_size);
      }
      const position next = state.next_positions[hs];
      position largest = next - 1;
      for (index_t t = 0; t < tokens; ++t) {
        const index_t slot = n + t;
        detail::store_row(key_ptr(layer, h, slot), k.row(t, h), k.stride(2), config_.head_dim);
        detail::store_row(value_ptr(layer, h, slot), v.row(t, h), v.stride(2), config_.head_dim);
        const position pos = positions != nullptr ? positions[t] : next + t;
        *position_ptr(layer, h, slot) = pos;
        largest = std::max(largest, pos);
      }
      state.lengths[hs] = end;
      state.next_positions[hs] = largest + 1;
    }
    pages_held_ += new_pages;
  }

  // retain() once its arguments are checked: for_each_kept(keep_slot) calls keep_slot(slot) for
  // the `kept` kept slots, ascending.
  template <class ForEachKept>
  void retain_rows(index_t layer, index_t head, index_t kept, ForEachKept&& for_each_kept) {
    merged_key& mark =
        layers_[static_cast<std::size_t>(layer)].merged[static_cast<std::size_t>(head)];
    merged_key moved_mark{};  // the mark follows its slot, or goes with it
    index_t to = 0;
    for_each_kept([&](index_t slot) {
      if (slot != to) move_row(layer, head, slot, to);  // slot >= to: ascending and unique
      if (slot == mark.slot) moved_mark = {to, mark.count};
      ++to;
    });
    shrink_head(layer, head, kept);
    mark = moved_mark;
  }

  // Copies slot `from` of a head to slot `to` (to < from: compaction only moves rows down).
  void move_row(index_t layer, index_t head, index_t from, index_t to) noexcept {
    const auto bytes = static_cast<std::size_t>(config_.head_dim) * sizeof(T);
    std::memcpy(key_ptr(layer, head, to), key_ptr(layer, head, from), bytes);
    std::memcpy(value_ptr(layer, head, to), value_ptr(layer, head, from), bytes);
    *position_ptr(layer, head, to) = *position_ptr(layer, head, from);
  }

  // Sets a head's length to `kept` (<= its length) and returns the pages past it to the pool.
  void shrink_head(index_t layer, index_t head, index_t kept) {
    layer_state& state = layers_[static_cast<std::size_t>(layer)];
    const auto h = static_cast<std::size_t>(head);
    const index_t before = pages_for(state.lengths[h]);
    const index_t after = pages_for(kept);
    page_id* row = state.page_table.data() + head * state.stride;
    if (after < before) {
      pool_->release(
          std::span<const page_id>(row + after, static_cast<std::size_t>(before - after)));
      std::fill(row + after, row + before, page_id{-1});
      pages_held_ -= before - after;
    }
    state.lengths[h] = kept;
  }

  void release_all() noexcept {
    if (!pool_) return;
    for (layer_state& state : layers_) {
      for (std::size_t h = 0; h < state.lengths.size(); ++h) {
        page_id* row = state.page_table.data() + static_cast<index_t>(h) * state.stride;
        const index_t pages = pages_for(state.lengths[h]);
        // Cannot throw: these ids were allocated by this cache and are released once.
        if (pages > 0) {
          try {
            pool_->release(std::span<const page_id>(row, static_cast<std::size_t>(pages)));
          } catch (...) {
          }
          std::fill(row, row + pages, page_id{-1});
        }
        state.lengths[h] = 0;
      }
    }
    pages_held_ = 0;
  }

  kv_cache_config config_;
  std::shared_ptr<pool_type> pool_;
  std::vector<layer_state> layers_;
  index_t pages_held_ = 0;
  std::vector<page_id>
      scratch_;  // page ids of one append (kept: steady-state appends allocate nothing)
};

}  // namespace attnkit
