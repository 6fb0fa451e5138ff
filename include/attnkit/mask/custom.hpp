// attnkit — custom: an arbitrary mask given as bits (tree attention for speculative decoding,
// packed documents, any pattern no formula describes), and custom_bits, the owning builder.
//
// Layout: one bit per (layout, query row, key), row-major, each row padded to whole 64-bit words.
// Query position p is row p - first_position; key j is bit j % 64 of word j / 64 of its row.
// With layouts == 1 every head shares the bits; with layouts > 1 query head h uses layout
// h / query_heads_per_layout (one layout per head, or per group of heads). Positions outside the
// rows and keys >= keys see nothing. Bits of the last word past `keys` are ignored.
//
// classify is exact: it tests whole words of each row of the tile against the tile's key range,
// so a 64 x 64 tile costs 64-128 word tests rather than 4096 bit tests.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "attnkit/core/config.hpp"
#include "attnkit/core/error.hpp"
#include "attnkit/mask/tile.hpp"

namespace attnkit {

namespace detail::bitmask {

constexpr index_t word_bits = 64;

ATTNKIT_HOST_DEVICE constexpr index_t words_for(index_t bits) noexcept {
  return (bits + word_bits - 1) / word_bits;
}

// The bits of word `word` that lie in the bit range [begin, end) of a row (begin < end).
ATTNKIT_HOST_DEVICE constexpr std::uint64_t word_range(index_t word, index_t begin,
                                                       index_t end) noexcept {
  std::uint64_t bits = ~std::uint64_t{0};
  if (word == begin / word_bits) bits &= ~std::uint64_t{0} << (begin % word_bits);
  if (word == (end - 1) / word_bits)
    bits &= ~std::uint64_t{0} >> (word_bits - 1 - (end - 1) % word_bits);
  return bits;
}

// Index of the lowest set bit of a non-zero word. std::countr_zero is a host-only constexpr
// function to nvcc; __ffsll is its device counterpart.
ATTNKIT_HOST_DEVICE constexpr index_t lowest_set_bit(std::uint64_t word) noexcept {
#if defined(__CUDA_ARCH__)
  return __ffsll(static_cast<long long>(word)) - 1;
#else
  return std::countr_zero(word);
#endif
}

// The first key in [from, end) whose bit equals `value`, or end.
ATTNKIT_HOST_DEVICE constexpr index_t find_bit(const std::uint64_t* row, index_t from, index_t end,
                                               bool value) noexcept {
  while (from < end) {
    std::uint64_t word = row[from / word_bits];
    if (!value) word = ~word;
    // Shifting brings bit `from` to bit 0; the zeros shifted in read as "not found here".
    word >>= from % word_bits;
    if (word != 0) {
      const index_t found = from + lowest_set_bit(word);
      return found < end ? found : end;
    }
    from = (from / word_bits + 1) * word_bits;
  }
  return end;
}

}  // namespace detail::bitmask

struct custom {
  const std::uint64_t* bits = nullptr;
  position first_position = 0;  // absolute query position of row 0
  index_t rows = 0;
  index_t keys = 0;
  index_t layouts = 1;                 // 1: shared by all heads; else one per group of heads
  index_t query_heads_per_layout = 1;  // used when layouts > 1

  ATTNKIT_HOST_DEVICE constexpr index_t words_per_row() const noexcept {
    return detail::bitmask::words_for(keys);
  }
  ATTNKIT_HOST_DEVICE constexpr index_t layout_of(head_index h) const noexcept {
    return layouts > 1 ? h / query_heads_per_layout : 0;
  }
  // Words of query position p (which must be one of the rows) for head h.
  ATTNKIT_HOST_DEVICE constexpr const std::uint64_t* row(position p, head_index h) const noexcept {
    return bits + (layout_of(h) * rows + (p - first_position)) * words_per_row();
  }
  ATTNKIT_HOST_DEVICE constexpr bool has_row(position p) const noexcept {
    return p >= first_position && p - first_position < rows;
  }

  ATTNKIT_HOST_DEVICE constexpr bool allows(position p, position j, head_index h) const noexcept {
    if (!has_row(p) || j < 0 || j >= keys) return false;
    return (row(p, h)[j / detail::bitmask::word_bits] >> (j % detail::bitmask::word_bits)) & 1u;
  }

  // Exact: the tile's queries and keys are cut to the rows and keys that exist (pairs outside
  // see nothing, so they rule out `full`), then each row's words over the key range are tested
  // for all-zero and all-one, stopping as soon as both a visible and a hidden pair are found.
  ATTNKIT_HOST_DEVICE constexpr tile_kind classify(position_range q, position_range kv,
                                                   head_index h) const noexcept {
    if (q.begin >= q.end || kv.begin >= kv.end) return tile_kind::empty;
    const position last_row = first_position + rows;
    const position q_begin = q.begin > first_position ? q.begin : first_position;
    const position q_end = q.end < last_row ? q.end : last_row;
    const position kv_begin = kv.begin > 0 ? kv.begin : 0;
    const position kv_end = kv.end < keys ? kv.end : keys;
    if (q_begin >= q_end || kv_begin >= kv_end) return tile_kind::empty;
    bool some_hidden =
        q_begin != q.begin || q_end != q.end || kv_begin != kv.begin || kv_end != kv.end;
    bool some_visible = false;
    const index_t first_word = kv_begin / detail::bitmask::word_bits;
    const index_t last_word = (kv_end - 1) / detail::bitmask::word_bits;
    for (position p = q_begin; p < q_end; ++p) {
      const std::uint64_t* words = row(p, h);
      for (index_t w = first_word; w <= last_word; ++w) {
        const std::uint64_t in_range = detail::bitmask::word_range(w, kv_begin, kv_end);
        const std::uint64_t visible = words[w] & in_range;
        some_visible = some_visible || visible != 0;
        some_hidden = some_hidden || visible != in_range;
        if (some_visible && some_hidden) return tile_kind::partial;
      }
    }
    return some_visible ? tile_kind::full : tile_kind::empty;
  }

  // O(words of the range + runs): count trailing zeros / ones a word at a time.
  template <class F>
  ATTNKIT_HOST_DEVICE constexpr void for_each_visible_run(position p, head_index h,
                                                          position_range kv, F&& visit) const {
    if (!has_row(p)) return;
    const position end = kv.end < keys ? kv.end : keys;
    position j = kv.begin > 0 ? kv.begin : 0;
    const std::uint64_t* words = row(p, h);
    while (j < end) {
      const position run_begin = detail::bitmask::find_bit(words, j, end, true);
      if (run_begin == end) return;
      j = detail::bitmask::find_bit(words, run_begin, end, false);
      visit(run_begin, j);
    }
  }

  ATTNKIT_HOST_DEVICE constexpr bool varies_by_head() const noexcept { return layouts > 1; }

  // The same mask over copy(bits, layouts · rows · words_per_row()) (see mask/tile.hpp).
  template <class Copy>
  custom relocated(Copy&& copy) const {
    custom moved = *this;
    moved.bits = copy(bits, layouts * rows * words_per_row());
    return moved;
  }

  // Throws attnkit::error unless the bits describe every query position and key of the call.
  // Query positions are [kv_tokens - q_tokens, kv_tokens); when q_tokens > kv_tokens the first
  // ones are negative and, as under causal, are not required to have rows (without one they see
  // nothing), so only the non-negative positions [max(0, kv_tokens - q_tokens), kv_tokens) must.
  void check(const attention_shape& shape) const {
    detail::require(rows >= 0, "attnkit::custom: rows is ", rows, ", it must be >= 0");
    detail::require(keys >= 0, "attnkit::custom: keys is ", keys, ", it must be >= 0");
    detail::require(layouts >= 1, "attnkit::custom: layouts is ", layouts, ", it must be >= 1");
    detail::require(query_heads_per_layout >= 1, "attnkit::custom: query_heads_per_layout is ",
                    query_heads_per_layout, ", it must be >= 1");
    if (layouts > 1)
      detail::require(layouts * query_heads_per_layout == shape.q_heads,
                      "attnkit::custom: layouts (", layouts, ") x query_heads_per_layout (",
                      query_heads_per_layout, ") = ", layouts * query_heads_per_layout,
                      ", but the call has q_heads = ", shape.q_heads);
    const position first_needed =
        shape.first_query_position() > 0 ? shape.first_query_position() : 0;
    if (shape.q_tokens > 0 && first_needed < shape.kv_tokens)
      detail::require(first_position <= first_needed && first_position + rows >= shape.kv_tokens,
                      "attnkit::custom: the rows cover query positions [", first_position, ", ",
                      first_position + rows, "), but the call has query positions [", first_needed,
                      ", ", shape.kv_tokens, ")");
    detail::require(keys >= shape.kv_tokens, "attnkit::custom: keys is ", keys,
                    ", but the call has kv_tokens = ", shape.kv_tokens);
    detail::require(bits != nullptr || rows == 0 || keys == 0, "attnkit::custom: bits is null, ",
                    "but the mask has ", rows, " rows x ", keys, " keys");
  }
};

// Owns the bits of a custom mask. Everything starts hidden; set() shows (or hides) one pair.
class custom_bits {
 public:
  custom_bits(index_t rows, index_t keys, index_t layouts = 1, index_t query_heads_per_layout = 1,
              position first_position = 0)
      : first_position_(first_position),
        rows_(rows),
        keys_(keys),
        layouts_(layouts),
        query_heads_per_layout_(query_heads_per_layout) {
    detail::require(rows >= 0, "attnkit::custom_bits: rows is ", rows, ", it must be >= 0");
    detail::require(keys >= 0, "attnkit::custom_bits: keys is ", keys, ", it must be >= 0");
    detail::require(layouts >= 1, "attnkit::custom_bits: layouts is ", layouts,
                    ", it must be >= 1");
    detail::require(query_heads_per_layout >= 1, "attnkit::custom_bits: query_heads_per_layout is ",
                    query_heads_per_layout, ", it must be >= 1");
    words_.assign(static_cast<std::size_t>(layouts * rows * detail::bitmask::words_for(keys)), 0);
  }

  // A mask whose bit (layout, q, kv) is allows(q, kv, layout), for q in the rows and kv < keys.
  template <class F>
  static custom_bits from_predicate(index_t rows, index_t keys, index_t layouts,
                                    index_t query_heads_per_layout, position first_position,
                                    F&& allows) {
    custom_bits result(rows, keys, layouts, query_heads_per_layout, first_position);
    for (index_t layout = 0; layout < layouts; ++layout)
      for (position q = first_position; q < first_position + rows; ++q)
        for (position kv = 0; kv < keys; ++kv)
          if (allows(q, kv, layout)) result.word(layout, q, kv) |= bit(kv);
    return result;
  }

  void set(index_t layout, position q, position kv, bool value = true) {
    require_in_range("set", layout, q, kv);
    if (value)
      word(layout, q, kv) |= bit(kv);
    else
      word(layout, q, kv) &= ~bit(kv);
  }
  bool test(index_t layout, position q, position kv) const {
    require_in_range("test", layout, q, kv);
    return (word(layout, q, kv) & bit(kv)) != 0;
  }

  // The non-owning view the kernels take; valid while this object lives and is not resized.
  custom mask() const noexcept {
    return {words_.data(), first_position_, rows_, keys_, layouts_, query_heads_per_layout_};
  }

  // The packed words, [layouts][rows][words_per_row], for filling in bulk.
  std::span<std::uint64_t> words() noexcept { return words_; }
  std::span<const std::uint64_t> words() const noexcept { return words_; }

  position first_position() const noexcept { return first_position_; }
  index_t rows() const noexcept { return rows_; }
  index_t keys() const noexcept { return keys_; }
  index_t layouts() const noexcept { return layouts_; }
  index_t query_heads_per_layout() const noexcept { return query_heads_per_layout_; }
  index_t words_per_row() const noexcept { return detail::bitmask::words_for(keys_); }

 private:
  static constexpr std::uint64_t bit(position kv) noexcept {
    return std::uint64_t{1} << (kv % detail::bitmask::word_bits);
  }
  std::size_t word_index(index_t layout, position q, position kv) const noexcept {
    return static_cast<std::size_t>((layout * rows_ + (q - first_position_)) * words_per_row() +
                                    kv / detail::bitmask::word_bits);
  }
  std::uint64_t& word(index_t layout, position q, position kv) {
    return words_[word_index(layout, q, kv)];
  }
  const std::uint64_t& word(index_t layout, position q, position kv) const {
    return words_[word_index(layout, q, kv)];
  }
  void require_in_range(const char* function, index_t layout, position q, position kv) const {
    detail::require(layout >= 0 && layout < layouts_, "attnkit::custom_bits::", function,
                    ": layout is ", layout, ", it must be in [0, ", layouts_, ")");
    detail::require(q >= first_position_ && q - first_position_ < rows_,
                    "attnkit::custom_bits::", function, ": q is ", q, ", it must be in [",
                    first_position_, ", ", first_position_ + rows_, ")");
    detail::require(kv >= 0 && kv < keys_, "attnkit::custom_bits::", function, ": kv is ", kv,
                    ", it must be in [0, ", keys_, ")");
  }

  std::vector<std::uint64_t> words_;
  position first_position_;
  index_t rows_;
  index_t keys_;
  index_t layouts_;
  index_t query_heads_per_layout_;
};

}  // namespace attnkit
