// KV-cache policies that need no attention scores — budgets, keep lists, StreamingLLM, random,
// Knorm, DuoAttention, RazorAttention, head tables — and compress() on a real kv_cache: hand
// computed selections, exact budgets, and errors that leave the cache unchanged.
//
// Caches hold float, so the rows a test wrote come back bit for bit; the compensation token's
// mean is computed in double by the policy and rounded once to float, so it is compared to the
// double mean with a relative tolerance of 2^-23 (one float rounding) plus the float rounding of
// the cached value (another 2^-24 relative).
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "attnkit/kvcache/compress.hpp"
#include "attnkit/kvcache/head_table.hpp"
#include "attnkit/kvcache/kv_cache.hpp"
#include "attnkit/kvcache/policies/duo.hpp"
#include "attnkit/kvcache/policies/full.hpp"
#include "attnkit/kvcache/policies/knorm.hpp"
#include "attnkit/kvcache/policies/random.hpp"
#include "attnkit/kvcache/policies/razor.hpp"
#include "attnkit/kvcache/policies/streaming.hpp"
#include "attnkit/kvcache/policy.hpp"
#include "support/kv_policy.hpp"

using attnkit::budget;
using attnkit::head_role;
using attnkit::head_table;
using attnkit::index_t;
using attnkit::keep_list;
using attnkit::position;
using attnkit_test::positions_of;
using attnkit_test::range;
using attnkit_test::slots_of;

namespace {

// Element i of the key of token t in head h: distinct for every (head, token, i), exact in float.
float key_element(index_t head, index_t token, index_t i) {
  return static_cast<float>(head * 1000 + token) + 0.25f * static_cast<float>(i);
}
float value_element(index_t head, index_t token, index_t i) {
  return -key_element(head, token, i) + 0.5f;
}

// A float cache of `layers` x `kv_heads` heads with `tokens` tokens appended to every layer
// (positions 0 .. tokens-1), in pages of page_size (several per head, so views are really paged).
attnkit::kv_cache<float> make_cache(index_t layers, index_t kv_heads, index_t head_dim,
                                    index_t tokens, index_t page_size = 4) {
  const index_t pages = layers * kv_heads * ((tokens + page_size - 1) / page_size + 4);
  attnkit::kv_cache<float> cache({layers, kv_heads, head_dim, page_size, pages});
  std::vector<float> k(static_cast<std::size_t>(tokens * kv_heads * head_dim));
  std::vector<float> v(k.size());
  for (index_t t = 0; t < tokens; ++t)
    for (index_t h = 0; h < kv_heads; ++h)
      for (index_t i = 0; i < head_dim; ++i) {
        const auto at = static_cast<std::size_t>((t * kv_heads + h) * head_dim + i);
        k[at] = key_element(h, t, i);
        v[at] = value_element(h, t, i);
      }
  for (index_t l = 0; l < layers; ++l)
    cache.append(l, attnkit::tensor_view<const float, 3>(k.data(), {tokens, kv_heads, head_dim}),
                 attnkit::tensor_view<const float, 3>(v.data(), {tokens, kv_heads, head_dim}));
  return cache;
}

std::vector<index_t> concat(std::vector<index_t> a, const std::vector<index_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// Everything a policy can change in a cache: lengths, positions, key and value rows.
struct cache_snapshot {
  std::vector<std::vector<position>> positions;
  std::vector<std::vector<float>> rows;
  bool operator==(const cache_snapshot&) const = default;
};
cache_snapshot snapshot(const attnkit::kv_cache<float>& cache) {
  cache_snapshot s;
  for (index_t l = 0; l < cache.layers(); ++l) {
    const auto view = cache.view(l);
    for (index_t h = 0; h < cache.kv_heads(); ++h) {
      s.positions.push_back(positions_of(cache, l, h));
      std::vector<float> rows;
      for (index_t slot = 0; slot < view.length(h); ++slot)
        for (index_t i = 0; i < view.head_dim; ++i) {
          rows.push_back(view.key(h, slot)[i]);
          rows.push_back(view.value(h, slot)[i]);
        }
      s.rows.push_back(rows);
    }
  }
  return s;
}

// Checks that every head kept exactly min(budget, length) slots, ascending and in range.
template <class T>
void require_exact_budget(const attnkit::paged_kv_view<const T>& view, const budget& b,
                          const keep_list& keep) {
  REQUIRE(keep.kv_heads() == view.kv_heads);
  for (index_t h = 0; h < view.kv_heads; ++h) {
    const index_t n = view.length(h);
    INFO("head " << h << " length " << n);
    REQUIRE(keep.kept(h) == std::min(b.keep_count(h, n), n));
    const auto s = slots_of(keep, h);
    for (std::size_t i = 0; i < s.size(); ++i) {
      REQUIRE(s[i] >= 0);
      REQUIRE(s[i] < n);
      if (i > 0) REQUIRE(s[i] > s[i - 1]);
    }
  }
}

// A cache type of the engine's: retain takes slots (not runs) and no merged keys can be marked.
struct slot_retaining_cache {
  attnkit::kv_cache<float>& cache;
  attnkit::paged_kv_view<const float> view(index_t layer) const { return cache.view(layer); }
  index_t length(index_t layer, index_t head) const { return cache.length(layer, head); }
  void retain(index_t layer, index_t head, std::span<const index_t> slots) {
    cache.retain(layer, head, slots);
  }
  void append_token(index_t layer, index_t head, std::span<const float> key,
                    std::span<const float> value, position pos) {
    cache.append_token(layer, head, key, value, pos);
  }
};

}  // namespace

TEST_CASE("budget: counts per head, and invalid budgets are errors", "[policies]") {
  CHECK(budget::tokens(5).keep_count(0, 10) == 5);
  CHECK(budget::tokens(5).keep_count(0, 3) == 3);  // never more than the head holds
  CHECK(budget::tokens(0).keep_count(0, 3) == 0);
  // ratio r removes floor(r · n): 0.75 of 10 removes 7, keeps 3; 0.5 of 7 removes 3, keeps 4.
  CHECK(budget::ratio(0.75).keep_count(0, 10) == 3);
  CHECK(budget::ratio(0.5).keep_count(0, 7) == 4);
  CHECK(budget::ratio(0.0).keep_count(0, 7) == 7);
  CHECK(budget::ratio(0.99).keep_count(0, 7) == 1);
  const std::vector<index_t> per_head{3, 0, 9};
  const budget b = budget::per_head(per_head);
  CHECK(b.keep_count(0, 10) == 3);
  CHECK(b.keep_count(1, 10) == 0);
  CHECK(b.keep_count(2, 5) == 5);

  CHECK_THROWS_AS(budget::tokens(-1), attnkit::error);
  CHECK_THROWS_WITH(budget::tokens(-3), Catch::Contains("per_head is -3"));
  CHECK_THROWS_AS(budget::ratio(-0.1), attnkit::error);
  CHECK_THROWS_AS(budget::ratio(1.0), attnkit::error);
  CHECK_THROWS_AS(budget::ratio(1.5), attnkit::error);
  CHECK_THROWS_AS(budget::ratio(std::nan("")), attnkit::error);
  CHECK_THROWS_WITH(budget::ratio(1.0), Catch::Contains("[0, 1)"));
  const std::vector<index_t> negative{3, -2};
  CHECK_THROWS_WITH(budget::per_head(negative), Catch::Contains("per_head[1] is -2"));
}

TEST_CASE("keep_list: reused without reallocating", "[policies]") {
  auto cache = make_cache(1, 2, 8, 40);
  attnkit::streaming_policy policy(4);
  keep_list keep;
  policy.select(cache.view(0), 0, budget::tokens(20), keep);
  const attnkit::slot_run* first = keep.runs(0).data();
  const attnkit::slot_run* second = keep.runs(1).data();
  const index_t* expanded = keep.slots(0).data();
  for (int step = 0; step < 5; ++step) {
    policy.select(cache.view(0), 0, budget::tokens(10 + step), keep);
    CHECK(keep.runs(0).data() == first);  // cleared, not freed: the same buffer
    CHECK(keep.runs(1).data() == second);
    CHECK(keep.slots(1).data() == expanded);  // written out into one reused buffer
  }
}

TEST_CASE("keep_list: kept slots as merged runs, written out on request", "[policies]") {
  keep_list keep;
  keep.reset(3, 4);
  keep.keep(0, 2);
  keep.keep(0, 3);  // adjacent: the same run
  keep.keep_range(0, 4, 7);
  keep.keep_range(0, 9, 9);  // empty: nothing
  keep.keep(0, 10);
  keep.keep_range(1, 0, 5);
  keep.keep_range(1, 5, 6);
  CHECK(keep.kept(0) == 6);
  REQUIRE(keep.runs(0).size() == 2);
  CHECK(keep.runs(0)[0].begin == 2);
  CHECK(keep.runs(0)[0].end == 7);
  CHECK(keep.runs(0)[1].begin == 10);
  CHECK(keep.runs(0)[1].end == 11);
  CHECK(keep.runs(1).size() == 1);
  CHECK(keep.kept(1) == 6);
  CHECK(keep.kept(2) == 0);
  CHECK(keep.runs(2).empty());
  const auto written = keep.slots(0);
  CHECK(std::vector<index_t>(written.begin(), written.end()) ==
        std::vector<index_t>{2, 3, 4, 5, 6, 10});
  CHECK(slots_of(keep, 0) == std::vector<index_t>{2, 3, 4, 5, 6, 10});
  keep.assign(2, keep.runs(0));
  CHECK(slots_of(keep, 2) == slots_of(keep, 0));
  CHECK(keep.kept(2) == 6);
  keep.reset(2, 4);  // fewer heads: the rest are gone, the first are empty
  CHECK(keep.kv_heads() == 2);
  CHECK(keep.kept(0) == 0);
  CHECK(keep.runs(1).empty());

  // check(): runs out of order, overlapping or past the head's length name the head and runs.
  auto cache = make_cache(1, 2, 4, 12);
  keep.keep_range(0, 0, 4);
  keep.keep_range(1, 5, 8);
  CHECK_NOTHROW(keep.check("f", cache.view(0)));
  keep.keep(1, 6);
  CHECK_THROWS_WITH(keep.check("f", cache.view(0)),
                    Catch::Contains("f: head 1 keeps slots out of order ([5, 8) then [6, 7))"));
  keep.reset(2, 4);
  keep.keep_range(0, 10, 13);
  CHECK_THROWS_WITH(keep.check("f", cache.view(0)),
                    Catch::Contains("f: head 0 keeps slots [10, 13) but holds 12 tokens"));
}

TEST_CASE("full_policy keeps everything", "[policies]") {
  auto cache = make_cache(1, 2, 4, 9);
  attnkit::full_policy policy;
  keep_list keep;
  policy.select(cache.view(0), 0, budget::tokens(3), keep);
  CHECK(slots_of(keep, 0) == range(0, 9));
  CHECK(slots_of(keep, 1) == range(0, 9));
}

TEST_CASE("StreamingLLM keeps tokens 0..3 and the last w", "[policies]") {
  auto cache = make_cache(1, 2, 4, 20);
  attnkit::streaming_policy policy;  // 4 sinks, the paper's choice
  CHECK(policy.sinks() == 4);
  keep_list keep;

  policy.select(cache.view(0), 0, budget::tokens(10), keep);  // w = 10 - 4 = 6
  CHECK(slots_of(keep, 0) == concat(range(0, 4), range(14, 20)));
  CHECK(slots_of(keep, 1) == concat(range(0, 4), range(14, 20)));

  policy.select(cache.view(0), 0, budget::tokens(3), keep);  // below the sinks: the first 3
  CHECK(slots_of(keep, 0) == range(0, 3));
  policy.select(cache.view(0), 0, budget::tokens(25), keep);  // more than held: everything
  CHECK(slots_of(keep, 0) == range(0, 20));
  policy.select(cache.view(0), 0, budget::ratio(0.5), keep);  // keeps 10
  CHECK(slots_of(keep, 0) == concat(range(0, 4), range(14, 20)));

  // Through compress: the cache keeps those tokens with their original positions, and a decode
  // loop (append one, compress) keeps the sinks and slides the window.
  attnkit::compress(cache, 0, policy, budget::tokens(10), keep);
  CHECK(cache.length(0, 0) == 10);
  CHECK(positions_of(cache, 0, 1) == std::vector<position>{0, 1, 2, 3, 14, 15, 16, 17, 18, 19});
  CHECK(cache.view(0).key(1, 4)[2] == key_element(1, 14, 2));
  for (index_t t = 20; t < 23; ++t) {
    std::vector<float> k(4), v(4);
    for (index_t i = 0; i < 4; ++i) {
      k[static_cast<std::size_t>(i)] = key_element(0, t, i);
      v[static_cast<std::size_t>(i)] = value_element(0, t, i);
    }
    for (index_t h = 0; h < 2; ++h)
      cache.append_token(0, h, std::span<const float>(k), std::span<const float>(v), t);
    attnkit::compress(cache, 0, policy, budget::tokens(10), keep);
  }
  CHECK(positions_of(cache, 0, 0) == std::vector<position>{0, 1, 2, 3, 17, 18, 19, 20, 21, 22});
}

TEST_CASE("random_policy keeps a seeded uniform subset of exactly the budget", "[policies]") {
  auto cache = make_cache(1, 3, 4, 50);
  keep_list a, b, c;
  attnkit::random_policy first(7), second(7), other(8);
  first.select(cache.view(0), 0, budget::tokens(20), a);
  second.select(cache.view(0), 0, budget::tokens(20), b);
  other.select(cache.view(0), 0, budget::tokens(20), c);
  require_exact_budget(cache.view(0), budget::tokens(20), a);
  for (index_t h = 0; h < 3; ++h) CHECK(slots_of(a, h) == slots_of(b, h));  // same seed
  bool differs = false;
  for (index_t h = 0; h < 3; ++h) differs = differs || slots_of(a, h) != slots_of(c, h);
  CHECK(differs);
  // Uniform: over many draws every slot is kept about budget / n = 0.4 of the time. 400 draws
  // of 50 slots: each count is Binomial(400, 0.4), sd ≈ 9.8; 6 sd bounds never fail by chance.
  std::vector<int> counts(50, 0);
  for (int draw = 0; draw < 400; ++draw) {
    first.select(cache.view(0), 0, budget::tokens(20), a);
    for (const index_t s : a.slots(0)) ++counts[static_cast<std::size_t>(s)];
  }
  for (const int n : counts) {
    CHECK(n > 160 - 60);
    CHECK(n < 160 + 60);
  }
}

TEST_CASE("knorm keeps the keys with the smallest L2 norm", "[policies]") {
  // key_element grows with the token index, so norms grow with the slot: reverse that for head 1
  // by building the cache by hand: head 0 keys are t·(1, 0, 0, 0); head 1 keys have norms
  // 5, 1, 4, 2, 3, 0.5 (slot order) along (0, 0.6, 0.8, 0).
  attnkit::kv_cache<float> cache({1, 2, 4, 2, 16});
  const std::vector<float> head1_norms{5, 1, 4, 2, 3, 0.5f};
  for (index_t t = 0; t < 6; ++t) {
    const std::vector<float> k0{static_cast<float>(t + 1), 0, 0, 0};
    const float r = head1_norms[static_cast<std::size_t>(t)];
    const std::vector<float> k1{0, 0.6f * r, 0.8f * r, 0};
    const std::vector<float> v{1, 2, 3, 4};
    cache.append_token(0, 0, std::span<const float>(k0), std::span<const float>(v), t);
    cache.append_token(0, 1, std::span<const float>(k1), std::span<const float>(v), t);
  }
  attnkit::knorm_policy policy;
  keep_list keep;
  policy.select(cache.view(0), 0, budget::tokens(3), keep);
  CHECK(slots_of(keep, 0) == std::vector<index_t>{0, 1, 2});  // norms 1, 2, 3
  CHECK(slots_of(keep, 1) == std::vector<index_t>{1, 3, 5});  // norms 1, 2, 0.5
  // Half-precision keys: the same order (the norms differ by far more than half's rounding).
  attnkit::kv_cache<attnkit::half> half_cache({1, 2, 4, 2, 16});
  for (index_t t = 0; t < 6; ++t)
    for (index_t h = 0; h < 2; ++h) {
      const float* k = cache.view(0).key(h, t);
      const float* v = cache.view(0).value(h, t);
      half_cache.append_token(0, h, std::span<const float>(k, 4), std::span<const float>(v, 4), t);
    }
  policy.select(half_cache.view(0), 0, budget::tokens(3), keep);
  CHECK(slots_of(keep, 1) == std::vector<index_t>{1, 3, 5});
}

TEST_CASE("a hand-built paged view (one engine's memory) works like the cache's", "[policies]") {
  // Two heads over a shared pool of 4-token pages, [pages, page_size, head_dim]; head 0 holds 7
  // tokens in pages 2 and 0, head 1 holds 3 tokens in page 1. Key norms: slot s of head 0 has
  // norm 10 - s, head 1's slots 1, 3, 2.
  constexpr index_t d = 2, page = 4;
  std::vector<float> keys(3 * page * d, 0.0f), values(keys.size(), 1.0f);
  auto put = [&](index_t pg, index_t row, float norm) {
    keys[static_cast<std::size_t>((pg * page + row) * d)] = norm;
  };
  for (index_t s = 0; s < 7; ++s) put(s < 4 ? 2 : 0, s % 4, static_cast<float>(10 - s));
  put(1, 0, 1);
  put(1, 1, 3);
  put(1, 2, 2);
  const std::vector<attnkit::page_id> table{2, 0, 1, -1};
  const std::vector<index_t> lengths{7, 3};
  attnkit::paged_kv_view<const float> view;
  view.keys = keys.data();
  view.values = values.data();
  view.page_table = table.data();
  view.lengths = lengths.data();
  view.kv_heads = 2;
  view.head_dim = d;
  view.page_size = page;
  view.page_table_stride = 2;
  view.row_stride = d;
  view.page_stride = page * d;
  view.head_stride = 0;
  attnkit::knorm_policy policy;
  keep_list keep;
  policy.select(view, 0, budget::tokens(2), keep);
  CHECK(slots_of(keep, 0) == std::vector<index_t>{5, 6});  // norms 5 and 4
  CHECK(slots_of(keep, 1) == std::vector<index_t>{0, 2});  // norms 1 and 2
  attnkit::streaming_policy streaming(1);
  streaming.select(view, 0, budget::tokens(3), keep);
  CHECK(slots_of(keep, 0) == std::vector<index_t>{0, 5, 6});
  CHECK(slots_of(keep, 1) == std::vector<index_t>{0, 1, 2});
}

TEST_CASE("budget-driven policies keep exactly their budget", "[policies]") {
  // Heads of different lengths (a cache another policy already compressed head-wise).
  auto cache = make_cache(1, 3, 4, 30);
  keep_list keep;
  cache.retain(0, 1, range(0, 12));
  cache.retain(0, 2, std::vector<index_t>{3});
  std::vector<budget> budgets;
  for (index_t t : {0, 1, 2, 5, 11, 12, 13, 29, 30, 31, 100}) budgets.push_back(budget::tokens(t));
  for (double r : {0.0, 0.25, 0.5, 0.75, 0.875, 0.999}) budgets.push_back(budget::ratio(r));
  const std::vector<index_t> per_head{7, 12, 0};
  budgets.push_back(budget::per_head(per_head));
  attnkit::streaming_policy streaming;
  attnkit::random_policy random(3);
  attnkit::knorm_policy knorm;
  head_table all_streaming(1, 3, head_role::streaming);
  attnkit::duo_policy duo(all_streaming, 2);
  for (const budget& b : budgets) {
    streaming.select(cache.view(0), 0, b, keep);
    require_exact_budget(cache.view(0), b, keep);
    random.select(cache.view(0), 0, b, keep);
    require_exact_budget(cache.view(0), b, keep);
    knorm.select(cache.view(0), 0, b, keep);
    require_exact_budget(cache.view(0), b, keep);
    duo.select(cache.view(0), 0, b, keep);
    require_exact_budget(cache.view(0), b, keep);
  }
}

TEST_CASE("DuoAttention leaves retrieval heads intact", "[policies]") {
  auto cache = make_cache(2, 3, 4, 16);
  head_table heads(2, 3, head_role::streaming);
  heads.set(0, 1, head_role::retrieval);
  heads.set(1, 0, head_role::retrieval);
  attnkit::duo_policy policy(heads, /*sinks*/ 2);
  keep_list keep;
  policy.select(cache.view(0), 0, budget::tokens(6), keep);
  CHECK(slots_of(keep, 0) == concat(range(0, 2), range(12, 16)));
  CHECK(slots_of(keep, 1) == range(0, 16));
  CHECK(slots_of(keep, 2) == concat(range(0, 2), range(12, 16)));
  const cache_snapshot before = snapshot(cache);
  attnkit::compress(cache, 1, policy, budget::tokens(6), keep);
  CHECK(cache.length(1, 0) == 16);
  CHECK(cache.length(1, 1) == 6);
  CHECK(cache.length(1, 2) == 6);
  CHECK(positions_of(cache, 1, 2) == std::vector<position>{0, 1, 12, 13, 14, 15});
  // The retrieval head's rows and layer 0 are untouched.
  const cache_snapshot after = snapshot(cache);
  CHECK(after.rows[0] == before.rows[0]);
  CHECK(after.rows[3] == before.rows[3]);
  CHECK(after.positions[3] == before.positions[3]);
}

TEST_CASE("RazorAttention's compensation token is the mean of the evicted entries", "[policies]") {
  constexpr index_t d = 4;
  auto cache = make_cache(1, 2, d, 16);
  head_table heads(1, 2);  // head 0 retrieval
  heads.set(0, 1, head_role::streaming);
  attnkit::razor_policy policy(heads, {.sinks = 2, .min_window = 0});
  keep_list keep;

  // Budget 6: 2 sinks + 3 recent + the compensation token; slots 2 .. 12 (11 tokens) folded.
  policy.select(cache.view(0), 0, budget::tokens(6), keep);
  CHECK(slots_of(keep, 0) == range(0, 16));
  CHECK_FALSE(keep.has_compensation(0));
  CHECK(slots_of(keep, 1) == std::vector<index_t>{0, 1, 13, 14, 15});
  REQUIRE(keep.has_compensation(1));
  const attnkit::compensation_token& token = keep.compensation(1);
  CHECK(token.count == 11);
  CHECK(token.pos == 7);  // mean of positions 2 .. 12
  auto mean_of = [&](const std::vector<index_t>& tokens, bool key, index_t i) {
    double sum = 0.0;
    for (const index_t t : tokens) sum += key ? key_element(1, t, i) : value_element(1, t, i);
    return sum / static_cast<double>(tokens.size());
  };
  const double tolerance = 0x1p-23;
  for (index_t i = 0; i < d; ++i) {
    const double k = mean_of(range(2, 13), true, i), v = mean_of(range(2, 13), false, i);
    CHECK(std::abs(token.key[static_cast<std::size_t>(i)] - k) <= tolerance * std::abs(k));
    CHECK(std::abs(token.value[static_cast<std::size_t>(i)] - v) <= tolerance * std::abs(v));
  }

  // Applied: head 1 holds the 5 kept tokens and the token at slot 5, marked as merged.
  attnkit::compress(cache, 0, policy, budget::tokens(6), keep);
  CHECK(cache.length(0, 0) == 16);
  CHECK(cache.length(0, 1) == 6);
  CHECK(positions_of(cache, 0, 1) == std::vector<position>{0, 1, 13, 14, 15, 7});
  CHECK(cache.merged(0, 1).slot == 5);
  CHECK(cache.merged(0, 1).count == 11.0f);
  CHECK(cache.merged(0, 0).slot == -1);
  for (index_t i = 0; i < d; ++i)
    CHECK(cache.view(0).key(1, 5)[i] == token.key[static_cast<std::size_t>(i)]);

  // Decode 4 tokens (positions 16 .. 19), compress again: the new token stands for every token
  // dropped so far — 2 .. 12, then 13, 14, 15 and 16 — and is their plain mean.
  for (index_t t = 16; t < 20; ++t) {
    std::vector<float> k(d), v(d);
    for (index_t i = 0; i < d; ++i) {
      k[static_cast<std::size_t>(i)] = key_element(1, t, i);
      v[static_cast<std::size_t>(i)] = value_element(1, t, i);
    }
    cache.append_token(0, 1, std::span<const float>(k), std::span<const float>(v), t);
  }
  // Head 1: sinks 0, 1; 13, 14, 15; the token (slot 5); 16 .. 19 → 10 slots.
  attnkit::compress(cache, 0, policy, budget::tokens(6), keep);
  CHECK(positions_of(cache, 0, 1)[0] == 0);
  CHECK(positions_of(cache, 0, 1)[1] == 1);
  CHECK(positions_of(cache, 0, 1)[2] == 17);
  CHECK(positions_of(cache, 0, 1)[4] == 19);
  CHECK(cache.length(0, 1) == 6);
  CHECK(cache.merged(0, 1).slot == 5);
  CHECK(cache.merged(0, 1).count == 15.0f);
  // The float cache rounded the first token once (2^-24 relative); the merge adds one rounding.
  const double merged_tolerance = 3 * 0x1p-24;
  for (index_t i = 0; i < d; ++i) {
    const double k = mean_of(range(2, 17), true, i), v = mean_of(range(2, 17), false, i);
    CHECK(std::abs(cache.view(0).key(1, 5)[i] - k) <= merged_tolerance * std::abs(k));
    CHECK(std::abs(cache.view(0).value(1, 5)[i] - v) <= merged_tolerance * std::abs(v));
  }
  CHECK(cache.position_of(0, 1, 5) == 9);  // floor(mean of 2 .. 16)

  // A budget that covers the head keeps everything, token and mark included.
  attnkit::compress(cache, 0, policy, budget::tokens(100), keep);
  CHECK(cache.merged(0, 1).slot == 5);
  // Budget 1: nothing but the token (sinks shrink to budget - 1 = 0).
  attnkit::compress(cache, 0, policy, budget::tokens(1), keep);
  CHECK(cache.length(0, 1) == 1);
  CHECK(cache.merged(0, 1).slot == 0);
  CHECK(cache.merged(0, 1).count == 20.0f);
}

TEST_CASE("head_table: the text format, and strict errors", "[policies]") {
  const std::string text =
      "# DuoAttention roles for a 2-layer, 2-head model\n"
      "0 0 retrieval 0.9\n"
      "\n"
      "0\t1\tstreaming   # gate 0.1\n"
      "  1 0 streaming 0.05\n"
      "1 1 retrieval -1e-3\r\n";
  const head_table table = head_table::parse(text, "roles.txt", 2, 2);
  CHECK(table.role(0, 0) == head_role::retrieval);
  CHECK(table.role(0, 1) == head_role::streaming);
  CHECK(table.role(1, 0) == head_role::streaming);
  CHECK(table.role(1, 1) == head_role::retrieval);
  CHECK(table.score(0, 0) == 0.9);
  CHECK_FALSE(table.score(0, 1).has_value());
  CHECK(table.score(1, 1) == -1e-3);

  auto fails = [](const std::string& body, const std::string& message) {
    INFO(body);
    CHECK_THROWS_WITH(head_table::parse(body, "heads.txt", 2, 2), Catch::Contains(message));
  };
  const std::string rest = "0 1 streaming\n1 0 streaming\n1 1 streaming\n";
  fails("0 0\n" + rest, "heads.txt:1: expected 'layer head role [score]', found 2 fields");
  fails("0 0 retrieval 1 2\n" + rest, "heads.txt:1: expected");
  fails("x 0 retrieval\n" + rest, "heads.txt:1: layer 'x' is not a non-negative integer");
  fails("0 -1 retrieval\n" + rest, "heads.txt:1: head '-1' is not a non-negative integer");
  fails("0 1.5 retrieval\n" + rest, "head '1.5' is not");
  fails(rest + "2 0 retrieval\n", "heads.txt:4: layer 2 is out of range (the model has 2 layers)");
  fails(rest + "0 2 retrieval\n", "heads.txt:4: head 2 is out of range (the model has 2 KV heads)");
  fails("0 0 global\n" + rest, "heads.txt:1: role 'global' is neither");
  fails("0 0 retrieval nan\n" + rest, "heads.txt:1: score 'nan' is not a finite number");
  fails("0 0 retrieval inf\n" + rest, "score 'inf'");
  fails("0 0 retrieval 0.5x\n" + rest, "score '0.5x'");
  fails("# header\n0 0 retrieval\n" + rest + "0 1 retrieval\n",
        "heads.txt:6: layer 0 head 1 appears twice");
  fails(rest, "heads.txt: layer 0 head 0 is missing");
  CHECK_THROWS_WITH(head_table::load("/nonexistent/heads.txt", 2, 2),
                    Catch::Contains("cannot open '/nonexistent/heads.txt'"));

  // Roles from scores: the lowest half become streaming.
  head_table scored(2, 2);
  scored.set(0, 0, head_role::retrieval, 0.7);
  scored.set(0, 1, head_role::retrieval, 0.1);
  scored.set(1, 0, head_role::retrieval, 0.9);
  scored.set(1, 1, head_role::retrieval, 0.2);
  scored.assign_streaming_by_score(0.5);
  CHECK(scored.role(0, 0) == head_role::retrieval);
  CHECK(scored.role(0, 1) == head_role::streaming);
  CHECK(scored.role(1, 0) == head_role::retrieval);
  CHECK(scored.role(1, 1) == head_role::streaming);
  head_table unscored(1, 2);
  CHECK_THROWS_WITH(unscored.assign_streaming_by_score(0.5), Catch::Contains("has no score"));
}

TEST_CASE("compress: a cache whose retain takes slots gets the keep list written out",
          "[policies]") {
  // compress() hands kv_cache the runs; a cache type with only retain(layer, head, slots) gets
  // the same decision slot by slot.
  auto direct = make_cache(1, 3, 4, 40);
  auto through_slots = make_cache(1, 3, 4, 40);
  slot_retaining_cache wrapped{through_slots};
  keep_list keep;
  attnkit::random_policy a(7), b(7);
  attnkit::compress(direct, 0, a, budget::tokens(17), keep);
  attnkit::compress(wrapped, 0, b, budget::tokens(17), keep);
  CHECK(snapshot(direct) == snapshot(through_slots));
  CHECK(direct.length(0, 2) == 17);
}

TEST_CASE("invalid budgets, tables and shapes throw with the cache unchanged", "[policies]") {
  auto cache = make_cache(2, 3, 4, 12);
  const cache_snapshot before = snapshot(cache);
  keep_list keep;
  const std::vector<index_t> two_heads{4, 4};
  attnkit::streaming_policy streaming;
  CHECK_THROWS_WITH(attnkit::compress(cache, 0, streaming, budget::per_head(two_heads), keep),
                    Catch::Contains("per-head budget has 2 entries but the layer has 3"));

  head_table wrong_heads(2, 2, head_role::streaming);
  attnkit::duo_policy duo(wrong_heads, 2);
  CHECK_THROWS_WITH(attnkit::compress(cache, 0, duo, budget::tokens(4), keep),
                    Catch::Contains("the layer has 3 KV heads but the head table has 2"));
  head_table one_layer(1, 3, head_role::streaming);
  attnkit::razor_policy razor(one_layer);
  CHECK_THROWS_WITH(attnkit::compress(cache, 1, razor, budget::tokens(4), keep),
                    Catch::Contains("layer_index is 1 but the head table has 1 layers"));
  // A cache type that cannot mark a merged key (slot_retaining_cache) cannot take a compensation
  // token.
  slot_retaining_cache unmarked{cache};
  CHECK_THROWS_WITH(attnkit::compress(unmarked, 0, razor, budget::tokens(4), keep),
                    Catch::Contains("attnkit::compress: the policy folded head 0's dropped tokens "
                                    "into a compensation token, but the cache type has no "
                                    "set_merged(layer, head, merged_key) to weight it by the 9 "
                                    "tokens it stands for"));

  // A policy of the caller's that returns slots out of order or out of range.
  struct broken_policy {
    index_t mode = 0;
    void select(const attnkit::paged_kv_view<const float>& layer, index_t, const budget&,
                keep_list& keep) const {
      keep.reset(layer.kv_heads, layer.head_dim);
      for (index_t h = 0; h < layer.kv_heads; ++h) keep.keep_range(h, 0, 3);
      if (mode == 0) keep.keep(2, 1);                    // 0 1 2 1: out of order
      if (mode == 1) keep.keep(2, layer.length(2));      // past the end
      if (mode == 2) keep.reset(layer.kv_heads - 1, 4);  // a head short
    }
  };
  for (index_t mode = 0; mode < 3; ++mode) {
    broken_policy broken{mode};
    CHECK_THROWS_AS(attnkit::compress(cache, 0, broken, budget::tokens(4), keep), attnkit::error);
  }
  CHECK(snapshot(cache) == before);
}
