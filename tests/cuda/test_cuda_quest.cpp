// attnkit CUDA tests — Quest on backend::cuda (backend/cuda/page_selection.cuh) against the CPU
// (attention/quest.hpp, backend::reference), compiled by the host compiler; the device side is
// behind cuda/cuda_runner_quest.hpp.
//
//   * Bounds: cuda::device_page_bounds<B> holds the same bits as page_bounds<B> (min rounded
//     toward -inf, max toward +inf, padding zero) for every key type x bounds type, page sizes 1,
//     16 and 256 with a partial last page, strided key layouts and keys from subnormals to past
//     the half range; built at once, token by token, in chunks, and truncated. Paged caches with
//     per-head lengths (an empty head among them), Quest pages equal to, a multiple of and not a
//     multiple of the cache pages: rebuild, first_slots and appended updates. A contiguous update
//     after a paged one clamps its first_token to each head's count on the device.
//   * Selection: with dyadic keys and queries every score is exact in fp32 and fp64, so the
//     device must select exactly the CPU's pages (ties to the lower page included): page sizes
//     1, 16, 256 (2000 pages per head: several passes of the select block), GQA 1, 4, 8, top_pages
//     1, 2, between, pages - 1, pages, beyond; per-head lengths of a paged cache; the 0·inf rule
//     with half bounds past ±65504. With N(0,1) data the pages may differ only at near-ties
//     (scores within the fp32 rounding model of the reference's fp64 scores).
//   * Attention through layout.mask() on the device equals the CPU reference attention through the
//     CPU layout (contiguous and paged), and full attention when every page is kept.
//   * Errors: attnkit::error before anything is enqueued, bounds and layout unchanged.
//
// Without a CUDA device the executable prints why and exits with 77 (CTest: skipped).
#define CATCH_CONFIG_RUNNER
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <iterator>
#include <limits>
#include <numeric>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "attnkit/attnkit.hpp"
#include "cuda/cuda_runner.hpp"
#include "cuda/cuda_runner_quest.hpp"
#include "support/compare.hpp"
#include "support/random.hpp"
#include "support/tensor.hpp"

using namespace attnkit_test;
using attnkit::bfloat16;
using attnkit::block_layout;
using attnkit::half;
using attnkit::page_bounds;
using cuda::paged_update;
using cuda::quest_layout_copy;
using cuda::quest_session;

namespace {

constexpr attnkit::backend::reference reference{};

template <class B>
std::uint32_t bits_of(B x) {
  return attnkit::detail::storage_bits(x);
}

// The first n tokens of k (same strides).
template <class T>
tensor_view<const T, 3> prefix(const tensor3<T>& k, index_t n) {
  return {k.cview().data(), {n, k.extents[1], k.extents[2]}, k.strides};
}

// Keys N(0,1)·2^e, e uniform in [-30, 20]: fp32 subnormals (after the half/bf16 rounding of a
// bound) up to past the half range; exact zeros of both signs now and then. Finite in T.
template <class T>
void fill_wide(tensor3<T>& k, std::uint64_t seed) {
  rng r(seed);
  const double largest = std::is_same_v<T, half> ? 65504.0 : 1e30;
  fill_with(k, [&](const auto&) {
    const double x = r.normal() * std::ldexp(1.0, static_cast<int>(r.integer(-30, 20)));
    if (r.integer(0, 15) == 0) return x < 0 ? -0.0 : 0.0;
    return std::clamp(x, -largest, largest);
  });
}

// Multiples of 1/8 in [-limit, limit]: exact in every storage type for limit <= 16, and with
// |k| <= 4, |q| <= 2 and head_dim <= 128 every product and partial sum of a Quest score is a
// multiple of 1/64 below 2^11, so fp32 (in any order) and fp64 compute the same exact score.
template <class T>
void fill_dyadic(tensor3<T>& t, std::uint64_t seed, double limit) {
  rng r(seed);
  const auto m = static_cast<std::int64_t>(limit * 8);
  fill_with(t, [&](const auto&) { return static_cast<double>(r.integer(-m, m)) / 8.0; });
}

// The device bounds against the CPU's, bit for bit, for every page each head covers (padding
// lanes included), and the per-head token counts.
template <class B>
void check_same_bounds(const page_bounds<B>& cpu, const quest_session<B>& gpu) {
  REQUIRE(gpu.padded_head_dim() == cpu.padded_head_dim());
  const std::vector<B> storage = gpu.storage();
  const std::vector<index_t> tokens = gpu.device_tokens();
  const index_t stride = gpu.head_stride(), padded = cpu.padded_head_dim();
  index_t wrong_tokens = 0, wrong_bits = 0;
  for (index_t h = 0; h < cpu.kv_heads(); ++h) {
    if (tokens[static_cast<std::size_t>(h)] != cpu.tokens(h)) ++wrong_tokens;
    for (index_t p = 0; p < cpu.pages(h); ++p)
      for (index_t c = 0; c < padded; ++c) {
        const auto at = static_cast<std::size_t>(h * stride + p * 2 * padded + c);
        if (bits_of(storage[at]) != bits_of(cpu.min(h, p)[c]) ||
            bits_of(storage[at + static_cast<std::size_t>(padded)]) != bits_of(cpu.max(h, p)[c]))
          ++wrong_bits;
      }
  }
  CHECK(wrong_tokens == 0);
  CHECK(wrong_bits == 0);
}

template <class K, class B>
struct key_and_bounds {
  using key = K;
  using bounds = B;
};

using key_bounds_types = std::tuple<key_and_bounds<float, float>, key_and_bounds<float, half>,
                                    key_and_bounds<float, bfloat16>, key_and_bounds<half, float>,
                                    key_and_bounds<half, half>, key_and_bounds<half, bfloat16>,
                                    key_and_bounds<bfloat16, float>, key_and_bounds<bfloat16, half>,
                                    key_and_bounds<bfloat16, bfloat16>>;

// ---------------------------------------------------------------------------------------------
// A paged cache on the host: per-head pages [page_size, head_dim] in shuffled pool order, every
// slot of every page-table row filled (lengths say how many a head holds).
// ---------------------------------------------------------------------------------------------
template <class T>
struct paged_host {
  std::vector<T> keys, values;
  std::vector<attnkit::page_id> table;
  std::vector<index_t> lengths;
  index_t pages = 0, table_stride = 0, page_size = 1, dim = 0;

  index_t capacity() const { return table_stride * page_size; }
  attnkit::paged_kv_view<const T> view() const {
    return {keys.data(),  values.data(),   nullptr,
            table.data(), lengths.data(),  static_cast<index_t>(lengths.size()),
            dim,          page_size,       table_stride,
            dim,          page_size * dim, 0};
  }
};

// value(rng&) gives each key element; values are N(0,1).
template <class T, class F>
paged_host<T> make_paged(index_t kv_heads, index_t slots_per_head, index_t page_size, index_t dim,
                         std::uint64_t seed, F&& value) {
  paged_host<T> c;
  c.lengths.assign(static_cast<std::size_t>(kv_heads), 0);
  c.page_size = page_size;
  c.dim = dim;
  c.table_stride = (slots_per_head + page_size - 1) / page_size;
  c.pages = kv_heads * c.table_stride;
  std::vector<attnkit::page_id> order(static_cast<std::size_t>(c.pages));
  std::iota(order.begin(), order.end(), 0);
  rng r(seed);
  for (std::size_t i = order.size(); i > 1; --i)
    std::swap(order[i - 1], order[static_cast<std::size_t>(r.integer(0, i - 1))]);
  c.table.assign(order.begin(), order.end());
  c.keys.resize(static_cast<std::size_t>(c.pages * page_size * dim));
  c.values.resize(c.keys.size());
  for (std::size_t i = 0; i < c.keys.size(); ++i) {
    c.keys[i] = attnkit::from_float<T>(static_cast<float>(value(r)));
    c.values[i] = attnkit::from_float<T>(static_cast<float>(r.normal()));
  }
  return c;
}

std::vector<index_t> row_of(const block_layout& layout, index_t h) {
  const auto r = layout.row(h, 0);
  return {r.begin(), r.end()};
}

// The device selection against the CPU's: the same pages in every head's row.
void check_same_rows(const block_layout& cpu, const quest_layout_copy& gpu) {
  const index_t heads = cpu.shape().layouts;
  REQUIRE(gpu.shape.layouts == heads);
  REQUIRE(static_cast<index_t>(gpu.row_offsets.size()) == heads + 1);
  CHECK(gpu.row_offsets[0] == 0);
  for (index_t h = 0; h < heads; ++h) {
    INFO("KV head " << h);
    CHECK(gpu.row(h) == row_of(cpu, h));
  }
}

void check_same_shape(const attnkit::block_layout_shape& a, const attnkit::block_layout_shape& b) {
  CHECK(a.query_block == b.query_block);
  CHECK(a.key_block == b.key_block);
  CHECK(a.query_blocks == b.query_blocks);
  CHECK(a.key_blocks == b.key_blocks);
  CHECK(a.layouts == b.layouts);
  CHECK(a.query_heads_per_layout == b.query_heads_per_layout);
  CHECK(a.first_position == b.first_position);
}

}  // namespace

// =============================================================================================
// Bounds
// =============================================================================================

TEMPLATE_LIST_TEST_CASE("cuda quest: contiguous bounds equal the CPU's bit for bit",
                        "[cuda][quest]", key_bounds_types) {
  using TK = typename TestType::key;
  using B = typename TestType::bounds;
  struct config {
    index_t page, tokens, heads, dim;
    layout mem;
    bool wide;
  };
  const config configs[] = {
      {16, 300, 2, 40, layout::contiguous, false},   // partial last page, padded rows
      {1, 37, 3, 5, layout::padded, true},           // one token per page: min = max = the key
      {256, 700, 2, 128, layout::contiguous, true},  // 3 pages, the last partial
      {16, 100, 2, 24, layout::dim_strided, false},  // head_dim stride 2
      {7, 50, 2, 16, layout::bhsd, true},            // odd page size
  };
  for (const config& cf : configs) {
    DYNAMIC_SECTION("keys " << dtype_name<TK> << ", bounds " << dtype_name<B> << ", page "
                            << cf.page << ", tokens " << cf.tokens << ", dim " << cf.dim << ", "
                            << layout_name(cf.mem) << (cf.wide ? ", wide range" : "")) {
      auto k = make_tensor3<TK>(cf.tokens, cf.heads, cf.dim, cf.mem);
      if (cf.wide)
        fill_wide(k, 13 + cf.page);
      else
        fill_normal(k, 11 + cf.page);
      const index_t capacity = cf.tokens + 9;
      page_bounds<B> cpu(cf.page, cf.heads, cf.dim, capacity);
      cpu.update(reference, k.cview());

      // Built at once.
      quest_session<B> whole(cf.page, cf.heads, cf.dim, capacity, 4);
      whole.update(k.cview(), 0);
      CHECK(whole.host_tokens() == cf.tokens);
      check_same_bounds(cpu, whole);

      // The last 40 tokens one at a time (a decode loop), the rest in growing chunks.
      quest_session<B> stepped(cf.page, cf.heads, cf.dim, capacity, 4);
      const index_t chunked_end = std::max<index_t>(0, cf.tokens - 40);
      index_t done = 0;
      for (index_t step = 1; done < chunked_end; step += 7) {
        const index_t next = std::min(chunked_end, done + step);
        stepped.update(prefix(k, next), done);
        done = next;
      }
      for (index_t n = done + 1; n <= cf.tokens; ++n) stepped.update(prefix(k, n), n - 1);
      check_same_bounds(cpu, stepped);

      // Truncated to two thirds: the bounds of the shorter cache.
      const index_t shorter = cf.tokens * 2 / 3;
      stepped.update(prefix(k, shorter), shorter);
      page_bounds<B> direct(cf.page, cf.heads, cf.dim, capacity);
      direct.update(reference, prefix(k, shorter));
      check_same_bounds(direct, stepped);
    }
  }
}

TEMPLATE_LIST_TEST_CASE("cuda quest: paged bounds with per-head lengths equal the CPU's",
                        "[cuda][quest]", key_bounds_types) {
  using TK = typename TestType::key;
  using B = typename TestType::bounds;
  struct config {
    index_t quest_page, cache_page, dim;
  };
  // Quest page = cache page, a multiple of it, not a multiple of it, and single-slot pages.
  const config configs[] = {{16, 16, 64}, {16, 4, 40}, {16, 5, 24}, {1, 16, 8}, {256, 16, 32}};
  for (const config& cf : configs) {
    DYNAMIC_SECTION("keys " << dtype_name<TK> << ", bounds " << dtype_name<B> << ", quest page "
                            << cf.quest_page << ", cache page " << cf.cache_page << ", dim "
                            << cf.dim) {
      const index_t heads = 4;
      paged_host<TK> cache = make_paged<TK>(heads, 700, cf.cache_page, cf.dim, 29 + cf.cache_page,
                                            [](rng& r) { return r.normal(); });
      // The bounds must hold a whole page-table row on the device; the CPU's the same capacity
      // (so the two storages have the same layout).
      const index_t capacity = cache.capacity();
      page_bounds<B> cpu(cf.quest_page, heads, cf.dim, capacity);
      quest_session<B> gpu(cf.quest_page, heads, cf.dim, capacity, 4);

      // An empty head, a one-slot head, a partial page, a long head.
      cache.lengths = {0, 1, 37, 300};
      cpu.update(reference, cache.view());
      gpu.update_paged(cache.view(), cache.pages, paged_update::rebuild);
      CHECK_FALSE(gpu.host_tokens().has_value());
      check_same_bounds(cpu, gpu);

      // Growth (head 1 unchanged), appended: from each head's previous count.
      std::vector<index_t> before = cache.lengths;
      cache.lengths = {3, 1, 60, 333};
      cpu.update(reference, cache.view(), before);
      gpu.update_paged(cache.view(), cache.pages, paged_update::appended);
      check_same_bounds(cpu, gpu);

      // Explicit first slots: head 2 truncated (60 -> 45) and rewritten from slot 10.
      const std::vector<index_t> first = {3, 1, 10, 333};
      cache.lengths = {5, 20, 45, 340};
      cpu.update(reference, cache.view(), first);
      gpu.update_paged(cache.view(), cache.pages, paged_update::first_slots, first);
      check_same_bounds(cpu, gpu);

      // Appended with a truncation (45 -> 30): the device starts at min(previous, new).
      before = cache.lengths;
      cache.lengths = {5, 20, 30, 700};
      std::vector<index_t> from(before.size());
      for (std::size_t h = 0; h < from.size(); ++h) from[h] = std::min(before[h], cache.lengths[h]);
      cpu.update(reference, cache.view(), from);
      gpu.update_paged(cache.view(), cache.pages, paged_update::appended);
      check_same_bounds(cpu, gpu);

      // A contiguous update after the paged ones: k holds every head's slots 0..n-1 (so the slots
      // each head already covers are unchanged) and first_token = n claims nothing changed; the
      // device clamps it to each head's count and recomputes from there, giving the bounds of k.
      const index_t n = 650;
      auto k = make_tensor3<TK>(n, heads, cf.dim);
      const auto view = cache.view();
      fill_with(k, [&](const auto& at) {
        return static_cast<double>(attnkit::to_float(view.key(at[1], at[0])[at[2]]));
      });
      gpu.update(k.cview(), n);
      CHECK(gpu.host_tokens() == n);
      page_bounds<B> rebuilt(cf.quest_page, heads, cf.dim, capacity);
      rebuilt.update(reference, k.cview());
      check_same_bounds(rebuilt, gpu);
    }
  }
}

// =============================================================================================
// Selection
// =============================================================================================

namespace {

// Device and CPU selections over the same contiguous keys (dyadic: exact scores), for several
// top_pages; same rows and, contiguous, the same shape.
template <class B, class TQ, class TK>
void check_selection_exact(index_t page, index_t tokens, index_t kv_heads, index_t group,
                           index_t dim, index_t q_tokens, std::uint64_t seed,
                           bool with_workspace = false) {
  auto k = make_tensor3<TK>(tokens, kv_heads, dim);
  // Padded q: strided rows on the device, and a non-null view even with no query tokens.
  auto q = make_tensor3<TQ>(q_tokens, kv_heads * group, dim, layout::padded);
  fill_dyadic(k, seed, 4.0);
  fill_dyadic(q, seed + 1, 2.0);
  page_bounds<B> cpu(page, kv_heads, dim, tokens);
  cpu.update(reference, k.cview());
  const index_t pages = cpu.pages();
  quest_session<B> gpu(page, kv_heads, dim, tokens, pages, with_workspace);
  gpu.update(k.cview(), 0);
  for (const index_t top :
       {index_t{1}, index_t{2}, std::max<index_t>(1, pages / 3), pages - 1, pages, pages + 7}) {
    if (top < 1) continue;
    INFO("bounds " << dtype_name<B> << ", q " << dtype_name<TQ> << ", keys "
                   << dtype_name<TK> << ", page " << page << ", pages " << pages << ", GQA "
                   << group << ", q_tokens " << q_tokens << ", dim " << dim << ", top_pages "
                   << top);
    block_layout expected;
    attnkit::quest_select(reference, q.cview(), cpu, top, expected);
    const quest_layout_copy got = gpu.select(q.cview(), top);
    check_same_rows(expected, got);
    check_same_shape(got.shape, expected.shape());
  }
}

}  // namespace

TEMPLATE_TEST_CASE("cuda quest: selection equals the CPU's exactly on exact scores",
                   "[cuda][quest]", float, half, bfloat16) {
  using B = TestType;
  for (const index_t group : {1, 4, 8}) {
    DYNAMIC_SECTION("GQA " << group) {
      check_selection_exact<B, float, half>(1, 2000, 2, group, 64, 1, 100 + group);
      check_selection_exact<B, half, half>(16, 1000, 2, group, 37, 1, 200 + group);
      check_selection_exact<B, bfloat16, float>(256, 3000, 2, group, 128, 1, 300 + group);
    }
  }
  SECTION("several query tokens: the max over tokens and heads") {
    check_selection_exact<B, float, bfloat16>(16, 500, 3, 4, 48, 3, 7);
  }
  SECTION("no query tokens: every score is -inf, the lowest pages") {
    check_selection_exact<B, float, float>(4, 40, 2, 2, 16, 0, 9);
  }
  SECTION("scratch from a cuda_workspace") {
    check_selection_exact<B, float, half>(16, 1000, 2, 4, 64, 1, 11, true);
  }
  SECTION("over 8192 pages per head") {
    check_selection_exact<B, float, half>(1, 9000, 1, 2, 16, 1, 13);
  }
}

TEST_CASE("cuda quest: exact ties go to the lower page", "[cuda][quest]") {
  // Pages repeat with period 3 (page p holds the keys of page p % 3): every score appears on
  // about a third of the pages, bit-identical everywhere.
  const index_t page = 4, pages = 1500, dim = 16, n = page * pages;
  auto base = make_tensor3<float>(3 * page, 1, dim);
  fill_dyadic(base, 3, 4.0);
  auto k = make_tensor3<float>(n, 1, dim);
  fill_with(k, [&](const auto& at) { return base.cview()(at[0] % (3 * page), 0, at[2]); });
  auto q = make_tensor3<float>(1, 2, dim);
  fill_dyadic(q, 4, 2.0);
  page_bounds<float> cpu(page, 1, dim, n);
  cpu.update(reference, k.cview());
  quest_session<float> gpu(page, 1, dim, n, pages);
  gpu.update(k.cview(), 0);
  for (const index_t top : {2, 100, 499, 500, 501, 1000, 1499}) {
    INFO("top_pages " << top);
    block_layout expected;
    attnkit::quest_select(reference, q.cview(), cpu, top, expected);
    check_same_rows(expected, gpu.select(q.cview(), top));
  }
}

TEMPLATE_TEST_CASE("cuda quest: paged selection with per-head lengths equals the CPU's",
                   "[cuda][quest]", float, half, bfloat16) {
  using B = TestType;
  for (const index_t quest_page : {1, 16, 256}) {
    DYNAMIC_SECTION("quest page " << quest_page) {
      const index_t heads = 4, group = 4, dim = 64;
      paged_host<half> cache = make_paged<half>(heads, 2100, 16, dim, 41 + quest_page, [](rng& r) {
        return static_cast<double>(r.integer(-32, 32)) / 8.0;
      });
      cache.lengths = {0, 1, 700, 2100};  // an empty head, a single page, a partial one, a long one
      auto q = make_tensor3<float>(1, heads * group, dim);
      fill_dyadic(q, 43, 2.0);
      page_bounds<B> cpu(quest_page, heads, dim, cache.capacity());
      cpu.update(reference, cache.view());
      const index_t capacity_pages = (cache.capacity() + quest_page - 1) / quest_page;
      quest_session<B> gpu(quest_page, heads, dim, cache.capacity(), capacity_pages,
                           quest_page == 16);
      gpu.update_paged(cache.view(), cache.pages, paged_update::rebuild);
      for (const index_t top : {1, 3, 50, 5000}) {
        INFO("top_pages " << top);
        block_layout expected;
        attnkit::quest_select(reference, q.cview(), cpu, top, expected);
        const quest_layout_copy got = gpu.select(q.cview(), top);
        check_same_rows(expected, got);
        // The lengths are on the device: one block row over every position a query may have.
        CHECK(got.shape.first_position == -1);
        CHECK(got.shape.key_blocks == capacity_pages);
        CHECK(got.shape.query_block == capacity_pages * quest_page + 1);
        CHECK(got.shape.key_block == quest_page);
        CHECK(got.shape.query_heads_per_layout == group);
      }
    }
  }
}

TEST_CASE("cuda quest: 0·inf = 0 with half bounds past ±65504", "[cuda][quest]") {
  // Pages 3, 10 and 17 of both KV heads hold ±70000 in column 0 (max +inf or min -inf in half);
  // KV head 0's query heads have q_0 = 0 (the column adds nothing), KV head 1's do not (those
  // pages score +inf and are selected first).
  const index_t page = 16, pages = 40, dim = 32, n = page * pages, heads = 2, group = 2;
  auto k = make_tensor3<float>(n, heads, dim);
  rng r(5);
  fill_with(k, [&](const auto& at) {
    const index_t p = at[0] / page;
    if (at[2] == 0 && (p == 3 || p == 10 || p == 17)) return p == 10 ? -70000.0 : 70000.0;
    return static_cast<double>(r.integer(-16, 16)) / 8.0;  // |k| <= 2: exact scores (|q| <= 1)
  });
  auto q = make_tensor3<float>(1, heads * group, dim);
  rng s(6);
  fill_with(q, [&](const auto& at) {
    if (at[2] == 0) return at[1] < group ? 0.0 : (at[1] % 2 == 0 ? 1.0 : -1.0);
    return static_cast<double>(s.integer(-8, 8)) / 8.0;
  });
  page_bounds<half> cpu(page, heads, dim, n);
  cpu.update(reference, k.cview());
  REQUIRE(attnkit::to_float(cpu.max(0, 3)[0]) == std::numeric_limits<float>::infinity());
  REQUIRE(attnkit::to_float(cpu.min(0, 10)[0]) == -std::numeric_limits<float>::infinity());
  quest_session<half> gpu(page, heads, dim, n, pages);
  gpu.update(k.cview(), 0);
  check_same_bounds(cpu, gpu);
  for (const index_t top : {2, 4, 6, 20}) {
    INFO("top_pages " << top);
    block_layout expected;
    attnkit::quest_select(reference, q.cview(), cpu, top, expected);
    const quest_layout_copy got = gpu.select(q.cview(), top);
    check_same_rows(expected, got);
    // KV head 1 keeps its infinite pages first (as many as fit besides the last page).
    const std::vector<index_t> row = got.row(1);
    index_t infinite = 0;
    for (const index_t p : {3, 10, 17})
      if (std::find(row.begin(), row.end(), p) != row.end()) ++infinite;
    CHECK(infinite == std::min<index_t>(3, top - 1));
  }
}

TEMPLATE_TEST_CASE("cuda quest: N(0,1) selection equals the reference up to near-ties",
                   "[cuda][quest]", float, half, bfloat16) {
  using B = TestType;
  const index_t page = 16, n = 4000, heads = 2, group = 4, dim = 128;
  auto k = make_tensor3<half>(n, heads, dim);
  auto q = make_tensor3<float>(1, heads * group, dim);
  fill_normal(k, 61);
  fill_normal(q, 62);
  page_bounds<B> cpu(page, heads, dim, n);
  cpu.update(reference, k.cview());
  quest_session<B> gpu(page, heads, dim, n, cpu.pages());
  gpu.update(k.cview(), 0);
  // fp64 scores from the stored bounds and Σ|terms| per page (max over the group's rows); the
  // device sums 2·head_dim rounded fp32 terms in per-lane chains and a 5-step butterfly, an error
  // of at most about (head_dim / 32 + 6)·2^-24·Σ|terms|, well inside the CPU tests' model
  // 4·head_dim·2^-24·Σ|terms| used here.
  std::vector<std::vector<double>> score(heads), tol(heads);
  for (index_t h = 0; h < heads; ++h) {
    score[h].assign(static_cast<std::size_t>(cpu.pages()),
                    -std::numeric_limits<double>::infinity());
    tol[h].assign(static_cast<std::size_t>(cpu.pages()), 0.0);
    for (index_t p = 0; p < cpu.pages(); ++p)
      for (index_t g = 0; g < group; ++g) {
        double u = 0.0, magnitude = 0.0;
        for (index_t c = 0; c < dim; ++c) {
          const double x = q.cview()(0, h * group + g, c);
          if (x == 0.0) continue;
          const double lo = x * attnkit::to_float(cpu.min(h, p)[c]);
          const double hi = x * attnkit::to_float(cpu.max(h, p)[c]);
          u += std::max(lo, hi);
          magnitude += std::max(std::fabs(lo), std::fabs(hi));
        }
        const auto i = static_cast<std::size_t>(p);
        score[h][i] = std::max(score[h][i], u);
        tol[h][i] = std::max(tol[h][i], 4.0 * double(dim) * 0x1p-24 * magnitude);
      }
  }
  for (const index_t top : {1, 2, 16, 100, 249, 250}) {
    block_layout expected;
    attnkit::quest_select(reference, q.cview(), cpu, top, expected);
    const quest_layout_copy got = gpu.select(q.cview(), top);
    index_t swaps = 0, bad_swaps = 0;
    for (index_t h = 0; h < heads; ++h) {
      const std::vector<index_t> d = got.row(h), o = row_of(expected, h);
      REQUIRE(d.size() == o.size());
      CHECK(std::is_sorted(d.begin(), d.end()));
      CHECK(d.back() == cpu.pages() - 1);
      std::vector<index_t> only_device, only_cpu;
      std::set_difference(d.begin(), d.end(), o.begin(), o.end(), std::back_inserter(only_device));
      std::set_difference(o.begin(), o.end(), d.begin(), d.end(), std::back_inserter(only_cpu));
      for (const index_t a : only_device)
        for (const index_t b : only_cpu) {
          ++swaps;
          const auto ia = static_cast<std::size_t>(a), ib = static_cast<std::size_t>(b);
          if (std::fabs(score[h][ia] - score[h][ib]) > tol[h][ia] + tol[h][ib]) ++bad_swaps;
        }
    }
    INFO("top_pages " << top << ", near-tie swaps " << swaps);
    CHECK(bad_swaps == 0);
  }
}

// =============================================================================================
// Attention through the device layout
// =============================================================================================

namespace {

// |got - ref| <= 4·u_half·max|v| + 1e-5 + (u_float + 1e-5)·|ref| (test_cuda_attention.cpp's
// split-KV model: fp16 K/V, fp32 accumulation and output).
tolerance quest_attention_tolerance(double max_v) {
  return {4.0 * unit_roundoff<half>() * max_v + 1e-5, unit_roundoff<float>() + 1e-5};
}

}  // namespace

TEST_CASE("cuda quest: attention through the device layout equals the CPU's", "[cuda][quest]") {
  const index_t page = 16, n = 1000, heads = 2, group = 4, dim = 64;
  auto k = make_tensor3<half>(n, heads, dim);
  auto v = make_tensor3<half>(n, heads, dim);
  fill_dyadic(k, 71, 4.0);
  fill_normal(v, 72);
  page_bounds<half> cpu(page, heads, dim, n);
  cpu.update(reference, k.cview());
  quest_session<half> gpu(page, heads, dim, n, cpu.pages());
  gpu.update(k.cview(), 0);
  for (const index_t q_tokens : {1, 3}) {
    auto q = make_tensor3<float>(q_tokens, heads * group, dim);
    fill_dyadic(q, 73 + q_tokens, 2.0);
    for (const index_t top : {8, 63, 64}) {
      INFO("q_tokens " << q_tokens << ", top_pages " << top);
      block_layout layout;
      attnkit::quest_select(reference, q.cview(), cpu, top, layout);
      REQUIRE(gpu.select(q.cview(), top).columns ==
              std::vector<index_t>(layout.columns().begin(), layout.columns().end()));
      auto ref = make_tensor3<float>(q_tokens, heads * group, dim);
      auto out = make_tensor3<float>(q_tokens, heads * group, dim);
      attnkit::attention(reference, q.cview(), k.cview(), v.cview(), ref.view(),
                         attnkit::block_sparse{layout});
      gpu.attention(q.cview(), k.cview(), v.cview(), out.view());
      const comparison c = compare_output(
          out.cview(), ref.cview(), quest_attention_tolerance(max_abs(v)), "cuda quest attention");
      INFO(c.describe());
      CHECK(c.ok());
      CHECK(out.clobbered_outside() == 0);
      if (top >= cpu.pages()) {  // every page kept: full attention
        auto full = make_tensor3<float>(q_tokens, heads * group, dim);
        attnkit::attention(reference, q.cview(), k.cview(), v.cview(), full.view(),
                           attnkit::full{});
        const comparison f = compare_output(out.cview(), full.cview(),
                                            quest_attention_tolerance(max_abs(v)), "vs full");
        INFO(f.describe());
        CHECK(f.ok());
      }
    }
  }
}

TEST_CASE("cuda quest: paged attention through the device layout equals the CPU's",
          "[cuda][quest]") {
  const index_t page = 16, heads = 2, group = 4, dim = 64;
  paged_host<half> cache = make_paged<half>(heads, 1024, page, dim, 81, [](rng& r) {
    return static_cast<double>(r.integer(-32, 32)) / 8.0;
  });
  cache.lengths = {333, 1000};
  auto q = make_tensor3<float>(1, heads * group, dim);
  fill_dyadic(q, 82, 2.0);
  page_bounds<half> cpu(page, heads, dim, cache.capacity());
  cpu.update(reference, cache.view());
  quest_session<half> gpu(page, heads, dim, cache.capacity(), cache.table_stride);
  gpu.update_paged(cache.view(), cache.pages, paged_update::rebuild);
  double max_v = 0.0;
  for (const half x : cache.values)
    max_v = std::max(max_v, std::fabs(double(attnkit::to_float(x))));
  for (const index_t top : {1, 6, 100}) {
    INFO("top_pages " << top);
    block_layout layout;
    attnkit::quest_select(reference, q.cview(), cpu, top, layout);
    check_same_rows(layout, gpu.select(q.cview(), top));
    auto ref = make_tensor3<float>(1, heads * group, dim);
    auto out = make_tensor3<float>(1, heads * group, dim);
    attnkit::attention(reference, q.cview(), cache.view(), ref.view(),
                       attnkit::block_sparse{layout});
    gpu.attention_paged(q.cview(), cache.view(), cache.pages, out.view());
    const comparison c = compare_output(out.cview(), ref.cview(), quest_attention_tolerance(max_v),
                                        "cuda quest paged");
    INFO(c.describe());
    CHECK(c.ok());
  }
}

// =============================================================================================
// Errors
// =============================================================================================

TEST_CASE("cuda quest: invalid arguments throw before anything is enqueued", "[cuda][quest]") {
  const index_t page = 16, n = 100, heads = 2, dim = 32;
  auto k = make_tensor3<half>(n, heads, dim);
  fill_dyadic(k, 91, 4.0);
  auto q = make_tensor3<float>(1, 4, dim);
  fill_dyadic(q, 92, 2.0);
  quest_session<half> gpu(page, heads, dim, n, 4);

  SECTION("selection before any update") {
    CHECK_THROWS_WITH(gpu.select(q.cview(), 4), Catch::Contains("attnkit::cuda::quest_select") &&
                                                    Catch::Contains("hold 0 tokens"));
    CHECK_THROWS_WITH(
        gpu.attention(q.cview(), k.cview(), k.cview(), make_tensor3<float>(1, 4, dim).view()),
        Catch::Contains("nothing has been selected"));
  }

  gpu.update(k.cview(), 0);
  const quest_layout_copy selected = gpu.select(q.cview(), 4);
  const std::vector<half> bounds_before = gpu.storage();
  auto same_bits = [](const std::vector<half>& a, const std::vector<half>& b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i)
      if (a[i].bits != b[i].bits) return false;
    return true;
  };

  SECTION("selection arguments") {
    CHECK_THROWS_WITH(gpu.select(q.cview(), 0), Catch::Contains("top_pages is 0"));
    auto three = make_tensor3<float>(1, 3, dim);
    fill_dyadic(three, 93, 2.0);
    CHECK_THROWS_WITH(gpu.select(three.cview(), 4),
                      Catch::Contains("q_heads (q extent 1) is 3") &&
                          Catch::Contains("multiple of the page bounds' kv_heads (2)"));
    auto narrow = make_tensor3<float>(1, 4, dim - 1);
    fill_dyadic(narrow, 94, 2.0);
    CHECK_THROWS_WITH(gpu.select(narrow.cview(), 4),
                      Catch::Contains("q head_dim (extent 2) is 31"));
    auto many = make_tensor3<float>(n + 1, 4, dim);
    fill_dyadic(many, 95, 2.0);
    CHECK_THROWS_WITH(gpu.select(many.cview(), 4), Catch::Contains("q has 101 tokens"));
    CHECK_THROWS_WITH(gpu.select(q.cview(), 5),
                      Catch::Contains("device_block_layout holds 4 pages per KV head") &&
                          Catch::Contains("may keep 5"));
    // Nothing changed: the layout still holds the last valid selection.
    const quest_layout_copy after = gpu.layout();
    CHECK(after.row_offsets == selected.row_offsets);
    CHECK(after.columns == selected.columns);
  }

  SECTION("update arguments") {
    CHECK_THROWS_WITH(gpu.update(k.cview(), n + 1), Catch::Contains("first_token is 101"));
    auto longer = make_tensor3<half>(n + 5, heads, dim);
    fill_dyadic(longer, 96, 4.0);
    CHECK_THROWS_WITH(gpu.update(longer.cview(), 0),
                      Catch::Contains("k has 105 tokens") && Catch::Contains("capacity of 100"));
    auto wide = make_tensor3<half>(n, heads, dim + 1);
    fill_dyadic(wide, 97, 4.0);
    CHECK_THROWS_WITH(gpu.update(wide.cview(), 0), Catch::Contains("k head_dim (extent 2) is 33"));
    // A page-table row of 8 x 16 = 128 slots does not fit a capacity of 100 tokens.
    paged_host<half> cache =
        make_paged<half>(heads, 128, 16, dim, 98, [](rng& r) { return r.normal(); });
    cache.lengths = {10, 20};
    CHECK_THROWS_WITH(gpu.update_paged(cache.view(), cache.pages, paged_update::rebuild),
                      Catch::Contains("128 slots, over the bounds' capacity of 100"));
    CHECK_THROWS_WITH(gpu.update_paged(cache.view(), cache.pages, paged_update::first_slots,
                                       std::vector<index_t>{0, 0, 0}),
                      Catch::Contains("first_slots has 3 entries but there are 2 KV heads"));
    CHECK(same_bits(gpu.storage(), bounds_before));
    CHECK(gpu.host_tokens() == n);
  }

  SECTION("device memory, workspace, layout and mask construction") {
    using cuda::quest_misuse;
    CHECK_THROWS_WITH(cuda::quest_misuse_call(quest_misuse::update_host_keys),
                      Catch::Contains("device_page_bounds::update") && Catch::Contains("'k'") &&
                          Catch::Contains("host memory"));
    CHECK_THROWS_WITH(cuda::quest_misuse_call(quest_misuse::paged_host_lengths),
                      Catch::Contains("'kv.lengths'"));
    CHECK_THROWS_WITH(cuda::quest_misuse_call(quest_misuse::paged_first_slots_host),
                      Catch::Contains("'first_slots'"));
    CHECK_THROWS_WITH(cuda::quest_misuse_call(quest_misuse::select_host_query),
                      Catch::Contains("attnkit::cuda::quest_select") && Catch::Contains("'q'"));
    CHECK_THROWS_WITH(cuda::quest_misuse_call(quest_misuse::select_small_workspace),
                      Catch::Contains("cuda_workspace holds 16 bytes") &&
                          Catch::Contains("quest_select_workspace_bytes"));
    CHECK_THROWS_WITH(cuda::quest_misuse_call(quest_misuse::layout_zero_heads),
                      Catch::Contains("device_block_layout: kv_heads is 0"));
    CHECK_THROWS_WITH(cuda::quest_misuse_call(quest_misuse::bounds_zero_page_size),
                      Catch::Contains("device_page_bounds: page_size is 0"));
    CHECK_THROWS_WITH(cuda::quest_misuse_call(quest_misuse::raw_block_sparse_null),
                      Catch::Contains("row_offsets is null"));
  }
}

int main(int argc, char* argv[]) {
  if (cuda::device_count() == 0) {
    std::printf(
        "attnkit CUDA Quest tests: no CUDA device on this machine, so the kernels (compiled for "
        "sm_80 and sm_90) were not run: SKIPPED\n");
    return 77;
  }
  std::printf("attnkit CUDA Quest tests on %s\n", cuda::device_name().c_str());
  return Catch::Session().run(argc, argv);
}
