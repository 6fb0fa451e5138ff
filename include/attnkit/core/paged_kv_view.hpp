// attnkit — paged_kv_view: one layer of a paged KV cache, as the attention kernels read it.
//
// A paged cache stores each KV head's tokens in fixed-size pages drawn from a shared pool, with a
// page table per head (vLLM's PagedAttention, per head rather than per sequence). Each head has
// its own length, so a head-wise eviction policy that keeps 512 tokens in one head and 8192 in
// another really holds 16 + 256 pages of 32 tokens, not 2 x 256.
//
// The view is non-owning and kernel-facing: `kv_cache<T>::view(layer)` makes one, and an engine
// with its own page allocator can build one over its memory. Slot s of head h (0 <= s <
// lengths[h]) lives in page page_table[h · page_table_stride + s / page_size], row s % page_size:
//
//   key(h, s)   = keys   + page · page_stride + h · head_stride + (s % page_size) · row_stride
//   value(h, s) = values + (same offset)
//
// The default strides describe per-(layer, head) pages [page_size, head_dim]: row_stride =
// head_dim, page_stride = page_size · head_dim, head_stride = 0. A vLLM-style pool whose page
// holds every head ([pages, page_size, kv_heads, head_dim]) is row_stride = kv_heads · head_dim,
// head_stride = head_dim, and the same page-table row for every head.
//
// Kernels treat slots as the sequence: masks, causal alignment and ALiBi distances use slot
// indices, and the query row i of a call with q_tokens rows sits at slot lengths[h] - q_tokens + i
// of its KV head (bottom-right aligned per head). `positions`, when present, records the original
// token position of each slot (what RoPE-aware engines and eviction policies need); kernels do not
// read it.
//
// Merged keys: `merged_keys`, when present, names for each KV head at most one slot that stands
// for several tokens — RazorAttention's compensation token, the mean of the keys and values a head
// dropped. The kernels weight that slot's softmax term by its count, exp(s)·count, i.e. its logit
// (after softcap and ALiBi) gains ln(count): attending to it is exactly attending to `count`
// copies of it (the paper's equation 5). kv_cache<T> keeps the entries in step with its slots.
#pragma once

#include <cstdint>
#include <type_traits>

#include "attnkit/core/config.hpp"
#include "attnkit/core/shape.hpp"

namespace attnkit {

using page_id = std::int32_t;

// One KV head's merged key: slot `slot` stands for `count` tokens (finite, > 0). slot -1: none.
struct merged_key {
  index_t slot = -1;
  float count = 1.0f;
};

// Slots [begin, end) of one KV head: how a keep list names what a head keeps (kvcache/policy.hpp)
// and how kv_cache::retain can take it.
struct slot_run {
  index_t begin = 0;
  index_t end = 0;
  index_t size() const noexcept { return end - begin; }
};

template <class T>  // float, half or bfloat16, usually const
struct paged_kv_view {
  T* keys = nullptr;                    // page pool of keys
  T* values = nullptr;                  // page pool of values (same page ids and strides as keys)
  const position* positions = nullptr;  // optional: original positions, [pages, page_size]
  const page_id* page_table = nullptr;  // [kv_heads, page_table_stride]
  const index_t* lengths = nullptr;     // [kv_heads]: tokens held by each head
  index_t kv_heads = 0;
  index_t head_dim = 0;
  index_t page_size = 0;
  index_t page_table_stride = 0;  // entries between the page-table rows of two heads
  index_t row_stride = 0;         // elements between consecutive slots of one page
  index_t page_stride = 0;        // elements between consecutive pages of the pool
  index_t head_stride = 0;        // elements added per KV head inside a page (0: per-head pages)
  const merged_key* merged_keys = nullptr;  // optional [kv_heads] (see above); null: none

  // A view of T reads as a view of const T (what the kernels take).
  // (A template, so that paged_kv_view<const T> has no conversion to its own type.)
  template <class U = T>
  requires(!std::is_const_v<U>) constexpr operator paged_kv_view<const U>()
      const noexcept {  // NOLINT: implicit on purpose
    return {keys,        values,      positions,  page_table,        lengths,
            kv_heads,    head_dim,    page_size,  page_table_stride, row_stride,
            page_stride, head_stride, merged_keys};
  }

  ATTNKIT_HOST_DEVICE constexpr index_t length(index_t head) const noexcept {
    return lengths[head];
  }

  // The longest head: the kv_tokens an observer or a mask check sees for the whole call.
  ATTNKIT_HOST_DEVICE constexpr index_t max_length() const noexcept {
    index_t longest = 0;
    for (index_t h = 0; h < kv_heads; ++h) longest = lengths[h] > longest ? lengths[h] : longest;
    return longest;
  }

  // The head's merged key, or {-1, 1} when it has none.
  ATTNKIT_HOST_DEVICE constexpr merged_key merged(index_t head) const noexcept {
    return merged_keys != nullptr ? merged_keys[head] : merged_key{};
  }

  ATTNKIT_HOST_DEVICE constexpr page_id page_of(index_t head, index_t slot) const noexcept {
    return page_table[head * page_table_stride + slot / page_size];
  }
  ATTNKIT_HOST_DEVICE constexpr index_t offset_of(index_t head, index_t slot) const noexcept {
    return static_cast<index_t>(page_of(head, slot)) * page_stride + head * head_stride +
           (slot % page_size) * row_stride;
  }
  ATTNKIT_HOST_DEVICE constexpr T* key(index_t head, index_t slot) const noexcept {
    return keys + offset_of(head, slot);
  }
  ATTNKIT_HOST_DEVICE constexpr T* value(index_t head, index_t slot) const noexcept {
    return values + offset_of(head, slot);
  }
  // Slots s .. s + n - 1 are consecutive rows (stride row_stride) when they share a page: the
  // number of slots from s to the end of its page.
  ATTNKIT_HOST_DEVICE constexpr index_t slots_left_in_page(index_t slot) const noexcept {
    return page_size - slot % page_size;
  }
  ATTNKIT_HOST_DEVICE constexpr position position_of(index_t head, index_t slot) const noexcept {
    return positions[static_cast<index_t>(page_of(head, slot)) * page_size + slot % page_size];
  }
};

}  // namespace attnkit
