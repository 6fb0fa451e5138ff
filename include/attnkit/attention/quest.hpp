// attnkit — Quest page selection for decode (Tang et al. 2024, "Quest: Query-Aware Sparsity for
// Efficient Long-Context LLM Inference").
//
// The KV cache is cut into pages of page_size tokens. For every (KV head, page) page_bounds keeps
// the element-wise minimum and maximum of the page's keys. For a query q, no key k of the page can
// have a larger logit than
//   U(page) = Σ_c max(q_c·min_c, q_c·max_c)    (term c bounds q_c·k_c since min_c <= k_c <= max_c)
// so the pages with the largest U are the ones that may hold the largest attention weights.
// quest_select keeps the top_pages of them per KV head (plus always the last page: the newest
// tokens, the query's own among them) and writes a block_layout for attnkit::block_sparse; the
// attention call then reads only those pages' K and V.
//
//   attnkit::page_bounds<attnkit::half> bounds(16, kv_heads, head_dim, max_tokens);
//   attnkit::block_layout layout;
//   // each decode step, after appending the new token's k (cache now holds n tokens):
//   bounds.update(attnkit::cpu, k_cache_view_of_n_tokens, n - 1);   // touches the last page only
//   attnkit::quest_select(attnkit::cpu, q, bounds, 256, layout);     // 256 pages = 4096 tokens
//   attnkit::attention(attnkit::cpu, q, k, v, out, attnkit::block_sparse{layout});
//
// Paged caches (core/paged_kv_view.hpp). page_bounds::update(backend, paged view, first_slots)
// computes the bounds of each head from its own slots through the page table; the heads may hold
// different lengths (tokens(h)). Quest pages are pages of slots, so any Quest page size works
// with any cache page size; when they are equal a Quest page is a cache page. quest_select then
// keeps min(top_pages, pages(h)) pages per head (its last page always; none for an empty head),
// and the layout serves attention() on the paged view:
//
//   bounds.update(attnkit::cpu, cache.view(layer), lengths_before_append);
//   attnkit::quest_select(attnkit::cpu, q, bounds, 256, layout);
//   attnkit::attention(attnkit::cpu, q, cache.view(layer), out, attnkit::block_sparse{layout});
//
// Storage type. A decode step's selection streams every page's bounds (2 · head_dim values per
// page and KV head, 1/8 of fp16 K and V at pages of 16), which makes it the largest part of a
// Quest step; page_bounds<half> or page_bounds<bfloat16> halve that stream against the default
// page_bounds<float>. The bounds stay bounds: the minimum is rounded toward -inf (the largest T
// <= the fp32 minimum), the maximum toward +inf (core/directed_rounding.hpp), so every stored
// min_c <= k_c <= max_c exactly and U still bounds every logit; they are looser by at most one
// unit in the last place of T. With fp16 keys, page_bounds<half> is exact (no rounding at all).
//
// Infinite bounds. A half bound overflows for keys beyond ±65504 (bfloat16 only beyond fp32's own
// range): the maximum becomes +inf, the minimum -inf (never the other way round, so min stays
// finite or -inf and max finite or +inf). The score then uses 0·inf = 0: a query component that
// is exactly zero contributes 0 whatever its bounds (the limit the bound has as q_c -> 0, and
// what keeps U from becoming NaN); a non-zero one facing an infinite bound makes U = +inf, so that
// page ranks first (ties among +inf pages: the lower page), as it may hold an unbounded logit.
//
// Scale and softcap are monotone in the logit and are left out of the bound. ALiBi is not: its
// bias -slope·|q_pos - j| depends on where the key sits, so with alibi_slopes in the options each
// query row's bound becomes a bound on its logits, softcap(scale·U) plus the largest bias over the
// page's slots (at the slot nearest the query for a positive slope), and pages are ranked by that
// (core/page_bounds_layout.hpp). Pass the attention call's options and the selection ranks what
// that call will compute.
//
// Merged keys. A paged update records each head's merged key (paged_kv_view::merged_keys, e.g.
// RazorAttention's compensation token, whose logit the kernels raise by ln(count)). The page
// holding it then competes with the score whose logit is its bound's plus ln(count)
// (core/page_bounds_layout.hpp): still an upper bound on what the page contributes, now
// including the weight. That needs the logit's scale and softcap: quest_select takes the
// attention_options the attention call uses (default: 1/sqrt(head_dim), no softcap, as
// attention's default).
//
// Keys are assumed finite; a NaN key is not rejected: min/max skip or keep it depending on its
// position in the page and the backend (reference: the page's first token's NaN sticks, later
// ones are skipped; SIMD vector path: vminps/vmaxps return their second operand, so only the
// page's last token's NaN survives), the directed rounding keeps NaN as NaN, and a NaN bound
// makes that page's score NaN, which the selection orders by its bits (a positive NaN above
// +inf). Both functions validate everything before they write, so on attnkit::error the bounds
// and the layout are exactly as they were.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include "attnkit/attention/check.hpp"
#include "attnkit/backend/reference/page_selection.hpp"
#include "attnkit/backend/simd/page_selection.hpp"
#include "attnkit/backend/tags.hpp"
#include "attnkit/core/aligned_memory.hpp"
#include "attnkit/core/directed_rounding.hpp"
#include "attnkit/core/error.hpp"
#include "attnkit/core/float16.hpp"
#include "attnkit/core/page_bounds_layout.hpp"
#include "attnkit/core/paged_kv_view.hpp"
#include "attnkit/core/tensor_view.hpp"
#include "attnkit/mask/block_sparse.hpp"
#include "attnkit/parallel/executor.hpp"
#include "attnkit/parallel/thread_pool.hpp"

namespace attnkit {
namespace detail {

// The bounds as the backend kernels see them (the `Rows` of backend/*/page_selection.hpp): page p
// of KV head h is one record of 2 * padded_dim values of T, its min row then its max row.
template <class T>
struct page_bounds_rows {
  using value_type = T;
  T* data = nullptr;
  index_t page_size = 0;
  index_t kv_heads = 0;
  index_t head_dim = 0;
  index_t padded_dim = 0;   // row length: head_dim rounded up to 64 bytes of T, zero padded
  index_t head_stride = 0;  // elements between KV heads
  index_t pages = 0;        // pages holding tokens (after an update: the new count)

  T* min_row(index_t kv_head, index_t page) const noexcept {
    return data + kv_head * head_stride + page * 2 * padded_dim;
  }
  T* max_row(index_t kv_head, index_t page) const noexcept {
    return min_row(kv_head, page) + padded_dim;
  }
};

// The calling thread's buffers for the layout quest_select assigns (reused every step).
struct quest_layout_scratch {
  std::vector<index_t> row_offsets;
  std::vector<index_t> columns;
  std::vector<merged_page> merged;  // per KV head, when the bounds hold merged keys
};

inline quest_layout_scratch& quest_scratch() {
  thread_local quest_layout_scratch scratch;
  return scratch;
}

// Hands the kernels page_bounds' storage (page_bounds::rows is private).
struct page_bounds_access;

}  // namespace detail

// Element-wise min and max of the keys of every (KV head, page), stored as T (float, half or
// bfloat16; the min rounded toward -inf, the max toward +inf, see the header comment) in storage
// allocated once for capacity_tokens. Rows are padded with zeros to padded_head_dim() elements
// (64 bytes: 16 floats or 32 16-bit values) and 64-byte aligned. `page_bounds b(...)` deduces
// page_bounds<float>.
template <class T = float>
class page_bounds {
  static_assert(is_storage_type_v<T>,
                "attnkit::page_bounds: T (the bounds' storage type) must be float, half or "
                "bfloat16");

 public:
  using value_type = T;

  page_bounds(index_t page_size, index_t kv_heads, index_t head_dim, index_t capacity_tokens)
      : page_size_(page_size),
        kv_heads_(kv_heads),
        head_dim_(head_dim),
        capacity_tokens_(capacity_tokens) {
    const detail::page_bounds_layout layout = detail::check_page_bounds_shape<T>(
        "attnkit::page_bounds", page_size, kv_heads, head_dim, capacity_tokens);
    padded_dim_ = layout.padded_dim;
    capacity_pages_ = layout.capacity_pages;
    const std::size_t elements =
        static_cast<std::size_t>(kv_heads * capacity_pages_ * 2 * padded_dim_);
    if (elements > 0) {
      storage_ = detail::allocate_aligned<T>(elements);
      // Zeros in the padding lanes make them add nothing to the SIMD dot products (+0 is all
      // zero bits in every storage type).
      std::memset(storage_.get(), 0, detail::aligned_bytes<T>(elements));
    }
  }

  index_t page_size() const noexcept { return page_size_; }
  index_t kv_heads() const noexcept { return kv_heads_; }
  index_t head_dim() const noexcept { return head_dim_; }
  index_t padded_head_dim() const noexcept { return padded_dim_; }
  index_t capacity_tokens() const noexcept { return capacity_tokens_; }
  // Tokens covered: the longest head's (every head's, after a contiguous update).
  index_t tokens() const noexcept { return tokens_; }
  // Tokens covered in one KV head (they differ after a paged update of a cache whose heads hold
  // different lengths).
  index_t tokens(index_t kv_head) const noexcept {
    return head_tokens_.empty() ? tokens_ : head_tokens_[static_cast<std::size_t>(kv_head)];
  }
  index_t pages() const noexcept { return pages_for(tokens_); }
  index_t pages(index_t kv_head) const noexcept { return pages_for(tokens(kv_head)); }

  // Rows of head_dim values (padded_head_dim() allocated), for page < pages().
  const T* min(index_t kv_head, index_t page) const noexcept {
    return rows(pages()).min_row(kv_head, page);
  }
  const T* max(index_t kv_head, index_t page) const noexcept {
    return rows(pages()).max_row(kv_head, page);
  }

  // Recomputes the bounds of every page touched by tokens [first_token, k.extent(0)) from
  // k [tokens, kv_heads, head_dim] (the whole cache so far; a touched page is rebuilt from its
  // first token), after which tokens() == k.extent(0). An engine appending one token per step
  // calls update(backend, k, tokens_before): only the last page is touched. first_token = 0
  // rebuilds everything; k shorter than tokens() truncates (a rollback).
  template <class Backend, class TK, parallel::executor E>
  void update(const Backend& backend, tensor_view<TK, 3> k, index_t first_token, E&& executor) {
    using K = std::remove_cv_t<TK>;
    static_assert(is_storage_type_v<K>,
                  "attnkit::page_bounds::update: k must hold float, half "
                  "or bfloat16");
    static_assert(!std::is_same_v<Backend, backend::cuda>,
                  "attnkit::page_bounds holds host memory; on backend::cuda use "
                  "attnkit::cuda::device_page_bounds (<attnkit/cuda.cuh>)");
    constexpr const char* function = "attnkit::page_bounds::update";
    const index_t tokens = k.extent(0);
    detail::require(k.extent(2) == head_dim_, function, ": k head_dim (extent 2) is ", k.extent(2),
                    " but the bounds have head_dim ", head_dim_);
    detail::require(k.extent(1) == kv_heads_, function, ": k kv_heads (extent 1) is ", k.extent(1),
                    " but the bounds have kv_heads ", kv_heads_);
    detail::require(tokens <= capacity_tokens_, function, ": k has ", tokens,
                    " tokens (extent 0), over the bounds' capacity of ", capacity_tokens_,
                    " tokens");
    const index_t held = shortest_head();
    detail::require(first_token >= 0 && first_token <= held, function, ": first_token is ",
                    first_token, " but the bounds hold ", held,
                    held == tokens_ ? " tokens; it must be in [0, tokens()]"
                                    : " tokens in their shortest head; it must be in [0, that]");
    detail::require(first_token <= tokens, function, ": first_token is ", first_token,
                    " but k has only ", tokens, " tokens");
    detail::require(k.data() != nullptr || k.empty(), function, ": k has null data but ", k.size(),
                    " elements");
    const index_t first_page = first_token / page_size_;
    const index_t end_page = pages_for(tokens);
    detail::page_bounds_update_impl(backend, tensor_view<const K, 3>(k), first_page, end_page,
                                    rows(end_page), executor);
    tokens_ = tokens;
    head_tokens_.clear();
    merged_.clear();
  }

  template <class Backend, class TK>
  void update(const Backend& backend, tensor_view<TK, 3> k, index_t first_token = 0) {
    update(backend, k, first_token, parallel::default_thread_pool());
  }

  // The same from one layer of a paged cache (core/paged_kv_view.hpp) whose heads may hold
  // different lengths: for every KV head h, recomputes the pages touched by slots
  // [first_slots[h], kv.lengths[h]), after which tokens(h) == kv.lengths[h] (and tokens() is the
  // longest head's). Slots are what the bounds index: Quest page p of head h covers slots
  // [p·page_size, (p+1)·page_size) of that head, read through the page table, so any Quest page
  // size works with any cache page size. With equal sizes a Quest page is exactly a cache page;
  // with a Quest page a multiple of the cache's, each Quest page reads whole cache pages. An
  // engine appending one token to every head passes each head's length before the append; after
  // an eviction that rewrote a head's slots from s on, it passes s for that head (0 rebuilds
  // it). first_slots[h] must be in [0, min(tokens(h), kv.lengths[h])]; shorter lengths
  // truncate. The view is validated as attention() validates it. The view's merged keys are
  // recorded (merged(h)) whatever first_slots says, so an update after set_merged with
  // first_slots = the lengths records a new mark without rebuilding a page.
  template <class Backend, class TK, parallel::executor E>
  void update(const Backend& backend, paged_kv_view<TK> kv, std::span<const index_t> first_slots,
              E&& executor) {
    using K = std::remove_cv_t<TK>;
    static_assert(is_storage_type_v<K>,
                  "attnkit::page_bounds::update: the cache must hold float, half or bfloat16");
    static_assert(!std::is_same_v<Backend, backend::cuda>,
                  "attnkit::page_bounds holds host memory; on backend::cuda use "
                  "attnkit::cuda::device_page_bounds (<attnkit/cuda.cuh>)");
    constexpr const char* function = "attnkit::page_bounds::update";
    detail::require(kv.head_dim == head_dim_, function, ": kv.head_dim is ", kv.head_dim,
                    " but the bounds have head_dim ", head_dim_);
    detail::require(kv.kv_heads == kv_heads_, function, ": kv.kv_heads is ", kv.kv_heads,
                    " but the bounds have kv_heads ", kv_heads_);
    detail::check_paged_kv_view(function, kv);
    detail::check_merged_keys(function, kv);
    detail::require(static_cast<index_t>(first_slots.size()) == kv_heads_, function,
                    ": first_slots has ", first_slots.size(), " entries but there are ", kv_heads_,
                    " KV heads");
    for (index_t h = 0; h < kv_heads_; ++h) {
      const index_t length = kv.lengths[h];
      const index_t first = first_slots[static_cast<std::size_t>(h)];
      detail::require(length <= capacity_tokens_, function, ": kv.lengths[", h, "] is ", length,
                      ", over the bounds' capacity of ", capacity_tokens_, " tokens");
      detail::require(first >= 0 && first <= tokens(h) && first <= length, function,
                      ": first_slots[", h, "] is ", first, " but head ", h, " has ", tokens(h),
                      " tokens in the bounds and ", length,
                      " in the cache; it must be in [0, the smaller]");
    }
    index_t longest = 0;
    std::vector<index_t> first_pages(static_cast<std::size_t>(kv_heads_));
    for (index_t h = 0; h < kv_heads_; ++h) {
      longest = std::max(longest, kv.lengths[h]);
      first_pages[static_cast<std::size_t>(h)] =
          first_slots[static_cast<std::size_t>(h)] / page_size_;
    }
    // Reserve before writing anything, so a failed allocation leaves the bounds as they were.
    head_tokens_.reserve(static_cast<std::size_t>(kv_heads_));
    if (kv.merged_keys != nullptr) merged_.reserve(static_cast<std::size_t>(kv_heads_));
    const paged_kv_view<const K> cache = kv;
    detail::page_bounds_update_impl(backend, cache, first_pages.data(), rows(pages_for(longest)),
                                    executor);
    head_tokens_.assign(kv.lengths, kv.lengths + kv_heads_);
    if (kv.merged_keys != nullptr)
      merged_.assign(kv.merged_keys, kv.merged_keys + kv_heads_);
    else
      merged_.clear();
    tokens_ = longest;
  }

  template <class Backend, class TK>
  void update(const Backend& backend, paged_kv_view<TK> kv, std::span<const index_t> first_slots) {
    update(backend, kv, first_slots, parallel::default_thread_pool());
  }

  // Rebuilds every page of every head from the cache.
  template <class Backend, class TK>
  void update(const Backend& backend, paged_kv_view<TK> kv) {
    const std::vector<index_t> zeros(static_cast<std::size_t>(kv_heads_), 0);
    update(backend, kv, zeros, parallel::default_thread_pool());
  }

  // True when every head covers the same tokens (always, after a contiguous update).
  bool uniform() const noexcept { return shortest_head() == tokens_; }

  // The merged key of a KV head as the last paged update read it from the view (slot -1: none;
  // always none after a contiguous update). quest_select weighs the page holding it.
  merged_key merged(index_t kv_head) const noexcept {
    return merged_.empty() ? merged_key{} : merged_[static_cast<std::size_t>(kv_head)];
  }
  bool has_merged_keys() const noexcept { return !merged_.empty(); }

 private:
  friend struct detail::page_bounds_access;

  // The kernels' view of the first `pages` pages.
  detail::page_bounds_rows<T> rows(index_t pages) const noexcept {
    return {storage_.get(), page_size_,  kv_heads_,
            head_dim_,      padded_dim_, capacity_pages_ * 2 * padded_dim_,
            pages};
  }

  index_t pages_for(index_t tokens) const noexcept {
    return (tokens + page_size_ - 1) / page_size_;
  }

  index_t shortest_head() const noexcept {
    if (head_tokens_.empty()) return tokens_;
    return *std::min_element(head_tokens_.begin(), head_tokens_.end());
  }

  index_t page_size_ = 0;
  index_t kv_heads_ = 0;
  index_t head_dim_ = 0;
  index_t capacity_tokens_ = 0;
  index_t padded_dim_ = 0;
  index_t capacity_pages_ = 0;
  index_t tokens_ = 0;
  std::vector<index_t> head_tokens_;  // per KV head after a paged update; empty: all tokens_
  std::vector<merged_key> merged_;    // per KV head after a paged update of a view with marks
  detail::aligned_array<T> storage_;
};

namespace detail {
struct page_bounds_access {
  template <class T>
  static page_bounds_rows<T> rows(const page_bounds<T>& bounds) noexcept {
    return bounds.rows(bounds.pages());
  }
};
}  // namespace detail

namespace detail {
// The selection's view of the bounds' merged keys: per KV head, the page holding the key, its
// count and the logit transform it is weighed under; null when the bounds hold none.
template <class T>
const merged_page* merged_pages(const page_bounds<T>& bounds, logit_transform logits,
                                std::vector<merged_page>& pages) {
  if (!bounds.has_merged_keys()) return nullptr;
  pages.resize(static_cast<std::size_t>(bounds.kv_heads()));
  for (index_t h = 0; h < bounds.kv_heads(); ++h) {
    const merged_key key = bounds.merged(h);
    pages[static_cast<std::size_t>(h)] = {key.slot < 0 ? -1 : key.slot / bounds.page_size(),
                                          key.count, logits.scale, logits.softcap};
  }
  return pages.data();
}

// quest_select for bounds whose heads cover different lengths (a paged update): each head h
// scores only its own pages(h), keeps min(top_pages, pages(h)) of them (its last page always, none
// for an empty head), one backend selection per head. The layout's single block row must hold
// every head's queries, which sit at slots tokens(h) - q_tokens + i: it starts at the shortest
// head's first query and ends at the longest head's last.
template <class Backend, class Q, class T, class E>
void quest_select_per_head(const Backend& backend, tensor_view<const Q, 3> q,
                           const page_bounds<T>& bounds, index_t top_pages, block_layout& layout,
                           const merged_page* merged, const alibi_pages* alibi, E& executor) {
  const index_t kv_heads = bounds.kv_heads();
  const index_t group = q.extent(1) / kv_heads;
  const index_t q_tokens = q.extent(0);
  quest_layout_scratch& scratch = quest_scratch();
  scratch.row_offsets.resize(static_cast<std::size_t>(kv_heads + 1));
  scratch.row_offsets[0] = 0;
  index_t shortest = bounds.tokens();
  for (index_t h = 0; h < kv_heads; ++h) {
    const index_t kept = std::min(top_pages, bounds.pages(h));
    scratch.row_offsets[static_cast<std::size_t>(h + 1)] =
        scratch.row_offsets[static_cast<std::size_t>(h)] + kept;
    shortest = std::min(shortest, bounds.tokens(h));
  }
  scratch.columns.resize(static_cast<std::size_t>(scratch.row_offsets.back()));
  const page_bounds_rows<T> all = page_bounds_access::rows(bounds);
  for (index_t h = 0; h < kv_heads; ++h) {
    const index_t offset = scratch.row_offsets[static_cast<std::size_t>(h)];
    const index_t kept = scratch.row_offsets[static_cast<std::size_t>(h + 1)] - offset;
    if (kept == 0) continue;
    page_bounds_rows<T> head_rows = all;
    head_rows.data = all.min_row(h, 0);
    head_rows.kv_heads = 1;
    head_rows.pages = bounds.pages(h);
    const tensor_view<const Q, 3> head_q(q.row(0, h * group), {q_tokens, group, q.extent(2)},
                                         q.strides());
    // Under ALiBi the head's rows see its own length and its own group's slopes.
    alibi_pages head_alibi;
    if (alibi != nullptr) {
      head_alibi = *alibi;
      head_alibi.slopes = alibi->slopes + h * group * alibi->stride;
      head_alibi.tokens = bounds.tokens(h);
    }
    quest_select_impl(backend, head_q, head_rows, kept, scratch.columns.data() + offset,
                      merged == nullptr ? nullptr : merged + h,
                      alibi == nullptr ? nullptr : &head_alibi, executor);
  }

  block_layout_shape shape;
  shape.first_position = shortest - q_tokens;
  shape.query_block = std::max<index_t>(1, bounds.tokens() - shape.first_position);
  shape.key_block = bounds.page_size();
  shape.query_blocks = 1;
  shape.key_blocks = bounds.pages();
  shape.layouts = kv_heads;
  shape.query_heads_per_layout = group;
  layout.assign(shape, scratch.row_offsets, scratch.columns);
}
}  // namespace detail

// Selects, for every KV head, the pages whose Quest bound is largest for q
// [q_tokens, q_heads, head_dim] (the newest q_tokens tokens of the cache) and writes them to
// `layout`:
//   score(page, kv head) = max over the head's query heads and the query tokens of
//                          Σ_c max(q_c·min_c, q_c·max_c)   (a term with q_c = 0 is 0)
//   keep the top_pages best (ties: the lower page), always including the last page, rows sorted;
//   top_pages >= pages() keeps every page (block_sparse attention then equals full attention).
// The layout: key_block = page_size, key_blocks = pages, one layout per KV head
// (query_heads_per_layout = q_heads / kv_heads), one block row of max(1, q_tokens) queries
// starting at position tokens - q_tokens. After a paged update whose heads differ in length, each
// head h scores only its pages(h) pages and keeps min(top_pages, pages(h)) (none when empty), and
// the block row spans from the shortest head's first query to the longest head's last (each
// head's queries sit at its own last slots). It serves attention over the same cache with causal
// or full masking composed as the caller wishes. When the bounds hold merged keys (a paged update
// of a view with marks), the page holding one is scored with its weight under `options`' scale
// and softcap. With `options.alibi_slopes` ([q_heads], finite) the pages are ranked by their
// logit bounds under the bias instead: max over the rows of softcap(scale·U) + the page's largest
// bias, plus ln(count) for a merged key's page. Pass the attention_options of the attention call;
// its other fields (log_sum_exp, observer) are ignored.
// Runs on `executor`; the overloads without one use parallel::default_thread_pool(), those
// without options attention's defaults. The bounds may be stored in any T: the kernels widen them
// to fp32 (SIMD) or fp64 (reference) as they read them.
template <class Backend, class TQ, class T, parallel::executor E>
void quest_select(const Backend& backend, tensor_view<TQ, 3> q, const page_bounds<T>& bounds,
                  index_t top_pages, block_layout& layout, const attention_options& options,
                  E&& executor) {
  using Q = std::remove_cv_t<TQ>;
  static_assert(is_storage_type_v<Q>, "attnkit::quest_select: q must hold float, half or bfloat16");
  static_assert(!std::is_same_v<Backend, backend::cuda>,
                "attnkit::quest_select with backend::cuda takes attnkit::cuda::device_page_bounds "
                "and cuda::device_block_layout (<attnkit/cuda.cuh>)");
  constexpr const char* function = "attnkit::quest_select";
  const index_t q_tokens = q.extent(0);
  const index_t q_heads = q.extent(1);
  const index_t kv_heads = bounds.kv_heads();
  const index_t tokens = bounds.tokens();
  detail::require(q.extent(2) == bounds.head_dim(), function, ": q head_dim (extent 2) is ",
                  q.extent(2), " but the page bounds have head_dim ", bounds.head_dim());
  detail::require(q_heads >= 1 && q_heads % kv_heads == 0, function, ": q_heads (q extent 1) is ",
                  q_heads, ", it must be a positive multiple of the page bounds' kv_heads (",
                  kv_heads, ")");
  detail::require(top_pages >= 1, function, ": top_pages is ", top_pages, ", it must be >= 1");
  detail::require(tokens >= 1, function,
                  ": the page bounds hold 0 tokens; call page_bounds::update first");
  detail::require(q_tokens <= tokens, function, ": q has ", q_tokens,
                  " tokens (extent 0) but the page bounds hold only ", tokens,
                  "; the queries are the newest tokens of the cache");
  detail::require(q.data() != nullptr || q.empty(), function, ": q has null data but ", q.size(),
                  " elements");
  const detail::logit_transform logits =
      detail::check_logit_transform(function, options, bounds.head_dim());
  detail::alibi_pages alibi_ranking;
  const detail::alibi_pages* alibi = nullptr;
  if (detail::has_alibi(options)) {
    detail::check_alibi_slopes(function, options, q_heads);
    alibi_ranking = {options.alibi_slopes.data(),
                     options.alibi_slopes.stride(0),
                     q_heads / kv_heads,
                     q_tokens,
                     tokens,
                     bounds.page_size(),
                     logits.scale,
                     logits.softcap};
    alibi = &alibi_ranking;
  }

  detail::quest_layout_scratch& scratch = detail::quest_scratch();
  const detail::merged_page* merged = detail::merged_pages(bounds, logits, scratch.merged);
  if (!bounds.uniform()) {
    detail::quest_select_per_head(backend, tensor_view<const Q, 3>(q), bounds, top_pages, layout,
                                  merged, alibi, executor);
    return;
  }
  const index_t pages = bounds.pages();
  const index_t kept = top_pages < pages ? top_pages : pages;
  scratch.row_offsets.resize(static_cast<std::size_t>(kv_heads + 1));
  scratch.columns.resize(static_cast<std::size_t>(kv_heads * kept));
  for (index_t h = 0; h <= kv_heads; ++h)
    scratch.row_offsets[static_cast<std::size_t>(h)] = h * kept;
  detail::quest_select_impl(backend, tensor_view<const Q, 3>(q),
                            detail::page_bounds_access::rows(bounds), kept, scratch.columns.data(),
                            merged, alibi, executor);

  block_layout_shape shape;
  shape.query_block = q_tokens > 1 ? q_tokens : 1;
  shape.key_block = bounds.page_size();
  shape.query_blocks = 1;
  shape.key_blocks = pages;
  shape.layouts = kv_heads;
  shape.query_heads_per_layout = q_heads / kv_heads;
  shape.first_position = tokens - q_tokens;
  layout.assign(shape, scratch.row_offsets, scratch.columns);
}

template <class Backend, class TQ, class T>
void quest_select(const Backend& backend, tensor_view<TQ, 3> q, const page_bounds<T>& bounds,
                  index_t top_pages, block_layout& layout, const attention_options& options) {
  quest_select(backend, q, bounds, top_pages, layout, options, parallel::default_thread_pool());
}

template <class Backend, class TQ, class T, parallel::executor E>
void quest_select(const Backend& backend, tensor_view<TQ, 3> q, const page_bounds<T>& bounds,
                  index_t top_pages, block_layout& layout, E&& executor) {
  quest_select(backend, q, bounds, top_pages, layout, attention_options{},
               std::forward<E>(executor));
}

template <class Backend, class TQ, class T>
void quest_select(const Backend& backend, tensor_view<TQ, 3> q, const page_bounds<T>& bounds,
                  index_t top_pages, block_layout& layout) {
  quest_select(backend, q, bounds, top_pages, layout, attention_options{},
               parallel::default_thread_pool());
}

}  // namespace attnkit
