// Score-based KV-cache policies — H2O, TOVA, SnapKV, PyramidKV, AdaKV, FastGen — fed with
// constructed attention rows through their observers (as the kernels deliver them,
// core/observer.hpp), the top-k selection and score table they share, and one run of the real
// attnkit::attention (reference and CPU backends) with a policy's observer attached.
//
// Hand-computed cases use probabilities that are sums of a few binary fractions or whose
// comparisons are far apart, so float accumulation cannot reorder them; the real-attention test
// compares the policy's table with probabilities computed here in double, within 1e-5 (an fp32
// softmax over 12 keys errs by a few 1e-7; see tests/test_observers.cpp for the kernel's bound).
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "attnkit/attention/attention.hpp"
#include "attnkit/attention/key_mass.hpp"
#include "attnkit/kvcache/attention_scores.hpp"
#include "attnkit/kvcache/compress.hpp"
#include "attnkit/kvcache/kv_cache.hpp"
#include "attnkit/kvcache/policies/adakv.hpp"
#include "attnkit/kvcache/policies/fastgen.hpp"
#include "attnkit/kvcache/policies/h2o.hpp"
#include "attnkit/kvcache/policies/knorm.hpp"
#include "attnkit/kvcache/policies/pyramidkv.hpp"
#include "attnkit/kvcache/policies/snapkv.hpp"
#include "attnkit/kvcache/policies/tova.hpp"
#include "attnkit/kvcache/policy.hpp"
#include "attnkit/kvcache/top_slots.hpp"
#include "support/cpu_kernel.hpp"
#include "support/kv_policy.hpp"
#include "support/random.hpp"

using attnkit::attention_shape;
using attnkit::budget;
using attnkit::index_t;
using attnkit::keep_list;
using attnkit::observed_row;
using attnkit::position;
using attnkit_test::positions_of;
using attnkit_test::range;
using attnkit_test::slots_of;

namespace {

constexpr float inf = std::numeric_limits<float>::infinity();

// A float cache with `tokens` tokens (positions 0 ..) in every head of every layer.
attnkit::kv_cache<float> make_cache(index_t layers, index_t kv_heads, index_t tokens,
                                    index_t head_dim = 4) {
  const index_t page = 4;
  attnkit::kv_cache<float> cache(
      {layers, kv_heads, head_dim, page, layers * kv_heads * ((tokens + page - 1) / page + 4)});
  std::vector<float> k(static_cast<std::size_t>(tokens * kv_heads * head_dim));
  for (std::size_t i = 0; i < k.size(); ++i) k[i] = static_cast<float>(i % 7) * 0.125f;
  for (index_t l = 0; l < layers; ++l)
    cache.append(l, attnkit::tensor_view<const float, 3>(k.data(), {tokens, kv_heads, head_dim}),
                 attnkit::tensor_view<const float, 3>(k.data(), {tokens, kv_heads, head_dim}));
  return cache;
}

void append_token(attnkit::kv_cache<float>& cache, index_t layer, position pos) {
  const std::vector<float> row(static_cast<std::size_t>(cache.head_dim()), 0.5f);
  for (index_t h = 0; h < cache.kv_heads(); ++h)
    cache.append_token(layer, h, std::span<const float>(row), std::span<const float>(row), pos);
}

// A probability row of n keys with the given (slot, p) entries, zero elsewhere.
std::vector<float> row_of(index_t n, std::initializer_list<std::pair<index_t, float>> entries) {
  std::vector<float> row(static_cast<std::size_t>(n), 0.0f);
  for (const auto& [slot, p] : entries) row[static_cast<std::size_t>(slot)] = p;
  return row;
}

// One attention call as the kernel delivers it: check(shape) once, then each row.
// rows[t][h]: query token t (of the observed ones), query head h.
template <class Observer>
void observe_call(Observer& observer, index_t kv_heads, index_t kv_tokens,
                  const std::vector<std::vector<std::vector<float>>>& rows) {
  const auto q_tokens = static_cast<index_t>(rows.size());
  const auto q_heads = static_cast<index_t>(rows.front().size());
  observer.check(attention_shape{q_tokens, kv_tokens, q_heads, kv_heads});
  const index_t group = q_heads / kv_heads;
  for (index_t t = 0; t < q_tokens; ++t)
    for (index_t h = 0; h < q_heads; ++h) {
      const auto& p = rows[static_cast<std::size_t>(t)][static_cast<std::size_t>(h)];
      observer(observed_row{t, h, h / group, std::span<const float>(p)});
    }
}

// Scores given by the test, for AdaKV.
struct fixed_scorer {
  std::vector<std::vector<float>> scores;
  template <class T>
  void validate(const char*, const attnkit::paged_kv_view<const T>&, index_t) const {}
  template <class T>
  void score(const attnkit::paged_kv_view<const T>&, index_t, index_t head, index_t,
             std::span<float> out) const {
    std::copy_n(scores[static_cast<std::size_t>(head)].begin(), out.size(), out.begin());
  }
};

}  // namespace

TEST_CASE("top_slots: both paths keep the best count, latest first among ties", "[policies]") {
  attnkit_test::rng random(11);
  attnkit::detail::top_slots top;
  for (int trial = 0; trial < 400; ++trial) {
    // Every third trial is long enough for the few-evictions path's vector pre-filter to pass
    // over whole vectors once its buffer is full.
    const index_t n = trial % 3 == 0 ? random.integer(40, 400) : random.integer(0, 70);
    std::vector<float> scores(static_cast<std::size_t>(n));
    for (float& s : scores) {
      const auto kind = random.integer(0, 9);
      s = kind == 0   ? std::nanf("")
          : kind == 1 ? inf
          : kind == 2 ? -inf
                      : static_cast<float>(random.integer(0, 5));  // many ties
    }
    // Brute force: order by (score, slot) descending with NaN lowest, take count, sort.
    auto rank = [](float s) { return std::isnan(s) ? -inf : s; };
    std::vector<index_t> order = range(0, n);
    std::sort(order.begin(), order.end(), [&](index_t a, index_t b) {
      const float ra = rank(scores[static_cast<std::size_t>(a)]);
      const float rb = rank(scores[static_cast<std::size_t>(b)]);
      return ra != rb ? ra > rb : a > b;
    });
    // Half the trials evict at most small_evictions (the decode step's one-pass path).
    const index_t count =
        trial % 2 == 0
            ? std::max<index_t>(
                  0, n - random.integer(1, attnkit::detail::top_slots::small_evictions + 1))
            : random.integer(0, n + 1);
    std::vector<index_t> expected(order.begin(),
                                  order.begin() + static_cast<std::ptrdiff_t>(std::min(count, n)));
    std::sort(expected.begin(), expected.end());
    std::vector<index_t> fast, threshold;
    top.select(scores, count, [&](index_t s) { fast.push_back(s); });
    top.select_by_threshold(scores, count, [&](index_t s) { threshold.push_back(s); });
    INFO("trial " << trial << " n " << n << " count " << count);
    CHECK(fast == expected);
    CHECK(threshold == expected);
  }
}

TEST_CASE("attention_scores: accumulate, replace, renumber, and shape errors", "[policies]") {
  attnkit::attention_scores acc(2, attnkit::score_update::accumulate, 4);
  attnkit::attention_scores rep(2, attnkit::score_update::replace, 4);
  CHECK(acc.observer(1).observed_queries() == 4);
  for (int call = 0; call < 2; ++call) {
    observe_call(acc.observer(1), 1, 5, {{row_of(5, {{1, 0.5f}, {3, 0.5f}})}});
    observe_call(rep.observer(1), 1, 5, {{row_of(5, {{1, 0.5f}, {3, 0.5f}})}});
  }
  auto head = [](attnkit::attention_scores& s, index_t n) {
    const auto h = s.head("test", 1, 1, 0, n);
    return std::vector<float>(h.begin(), h.end());
  };
  CHECK(head(acc, 5) == std::vector<float>{0, 1, 0, 1, 0});
  CHECK(head(rep, 5) == std::vector<float>{0, 0.5f, 0, 0.5f, 0});
  CHECK(head(acc, 7) == std::vector<float>{0, 1, 0, 1, 0, 0, 0});  // beyond: zero
  CHECK(acc.q_heads(1) == 1);

  keep_list keep;
  keep.reset(1, 4);
  keep.keep(0, 1);
  keep.keep(0, 4);
  acc.compact(1, keep);  // slot 1 -> 0, slot 4 -> 1, the rest zero
  CHECK(head(acc, 5) == std::vector<float>{1, 0, 0, 0, 0});
  // A call with another head count is refused before the kernel would run.
  CHECK_THROWS_WITH(
      acc.observer(1).check(attention_shape{1, 5, 2, 2}),
      Catch::Contains("the layer has 2 KV heads but its attention was observed with 1"));
  CHECK_THROWS_WITH(acc.observer(2), Catch::Contains("layer_index is 2"));
  // Growth keeps what was there.
  observe_call(acc.observer(1), 1, 300, {{row_of(300, {{299, 1.0f}})}});
  CHECK(head(acc, 300)[0] == 1.0f);
  CHECK(head(acc, 300)[299] == 1.0f);
}

TEST_CASE("attention_scores: replace clears each head's previous call, however it is read",
          "[policies]") {
  // Under score_update::replace a call's check() marks every head stale and a head's row is
  // cleared when it is first asked for (the kernel's rows) or before any host-side read.
  attnkit::attention_scores rep(1, attnkit::score_update::replace, 1);
  auto head = [&](index_t h, index_t n) {
    const auto row = rep.head("test", 0, 2, h, n);
    return std::vector<float>(row.begin(), row.end());
  };
  observe_call(rep.observer(0), 2, 300, {{row_of(300, {{299, 1.0f}}), row_of(300, {{7, 1.0f}})}});
  // A shorter call: its keys replace, and the slots only the longer call reached are 0.
  observe_call(rep.observer(0), 2, 5, {{row_of(5, {{1, 1.0f}}), row_of(5, {{2, 1.0f}})}});
  std::vector<float> expected(300, 0.0f);
  expected[1] = 1.0f;
  CHECK(head(0, 300) == expected);
  expected[1] = 0.0f;
  expected[2] = 1.0f;
  CHECK(head(1, 300) == expected);
  // A call whose rows never came (its kernel failed): nothing of the previous call remains.
  rep.observer(0).check(attention_shape{1, 5, 2, 2});
  CHECK(head(0, 300) == std::vector<float>(300, 0.0f));
  CHECK(head(1, 300) == std::vector<float>(300, 0.0f));
  // Only head 0's rows came: head 1 still reads as cleared.
  observe_call(rep.observer(0), 2, 5, {{row_of(5, {{3, 1.0f}}), row_of(5, {{4, 1.0f}})}});
  rep.observer(0).check(attention_shape{1, 5, 2, 2});
  rep.observer(0)(observed_row{0, 0, 0, std::span<const float>(row_of(5, {{0, 1.0f}}))});
  CHECK(head(0, 5) == std::vector<float>{1, 0, 0, 0, 0});
  CHECK(head(1, 5) == std::vector<float>(5, 0.0f));

  // The SIMD kernel's rows (added by each unsplit item on the serial executor, or after the
  // split-KV merge on the default pool): a table that saw a longer call and then a shorter one
  // equals, bit for bit, a table that saw only the shorter one.
  constexpr index_t q_heads = 8, kv_heads = 4, d = 64, n = 3000, shorter = 2100;
  attnkit_test::rng random(11);
  std::vector<float> q(static_cast<std::size_t>(2 * q_heads * d)),
      k(static_cast<std::size_t>(n * kv_heads * d)), v(k.size()), out(q.size() / 2);
  for (float& x : q) x = static_cast<float>(random.normal());
  for (float& x : k) x = static_cast<float>(random.normal());
  for (float& x : v) x = static_cast<float>(random.normal());
  auto attend = [&](attnkit::attention_scores& scores, index_t call, index_t keys,
                    const attnkit_test::any_executor* executor) {
    attnkit::attention_options options;
    options.observer = scores.observer(0);
    attnkit_test::cpu_attention(
        attnkit_test::erase(
            attnkit::tensor_view<const float, 3>(q.data() + call * q_heads * d, {1, q_heads, d})),
        attnkit_test::erase(attnkit::tensor_view<const float, 3>(k.data(), {keys, kv_heads, d})),
        attnkit_test::erase(attnkit::tensor_view<const float, 3>(v.data(), {keys, kv_heads, d})),
        attnkit_test::erase(attnkit::tensor_view<float, 3>(out.data(), {1, q_heads, d})),
        attnkit_test::builtin_mask::causal, options, executor);
  };
  for (const attnkit_test::any_executor* executor :
       {static_cast<const attnkit_test::any_executor*>(nullptr), attnkit_test::serial_executor()}) {
    attnkit::attention_scores both(1, attnkit::score_update::replace, 1),
        last(1, attnkit::score_update::replace, 1);
    attend(both, 0, n, executor);
    attend(both, 1, shorter, executor);
    attend(last, 1, shorter, executor);
    INFO((executor == nullptr ? "default pool" : "serial executor"));
    for (index_t h = 0; h < kv_heads; ++h) {
      const auto a = both.head("test", 0, kv_heads, h, n);
      const auto b = last.head("test", 0, kv_heads, h, n);
      CHECK(std::equal(a.begin(), a.end(), b.begin()));
      CHECK(std::all_of(a.begin() + shorter, a.end(), [](float x) { return x == 0.0f; }));
      CHECK(std::any_of(a.begin(), a.begin() + shorter, [](float x) { return x > 0.0f; }));
    }
  }
}

TEST_CASE("H2O keeps the largest accumulated scores plus the recent window", "[policies]") {
  auto cache = make_cache(1, 1, 12);
  attnkit::h2o_policy h2o(1);
  keep_list keep;
  // Two decode steps, 2 query heads sharing the KV head. After step 1 the heavy hitters would
  // be 8 (0.6), 2 (0.5), 0 (0.4); after step 2 the sums are 0: 0.7, 2: 0.7, 5: 0.8, 8: 0.6,
  // 9: 0.5, 11: 0.7.
  observe_call(h2o.observer(0), 1, 12,
               {{row_of(12, {{8, 0.6f}, {0, 0.4f}}), row_of(12, {{2, 0.5f}, {9, 0.5f}})}});
  h2o.select(cache.view(0), 0, budget::tokens(6), keep);
  CHECK(slots_of(keep, 0) == std::vector<index_t>{0, 2, 8, 9, 10, 11});
  observe_call(
      h2o.observer(0), 1, 12,
      {{row_of(12, {{0, 0.3f}, {5, 0.7f}}), row_of(12, {{2, 0.2f}, {5, 0.1f}, {11, 0.7f}})}});
  // Budget 6: recent 3 (9, 10, 11) + heavy 3 among 0 .. 8: 5, 0, 2.
  h2o.select(cache.view(0), 0, budget::tokens(6), keep);
  CHECK(slots_of(keep, 0) == std::vector<index_t>{0, 2, 5, 9, 10, 11});
  // heavy_fraction 0.25 of 8: heavy 2 (5, then 0 and 2 tie at 0.7: the later, 2), recent 6.
  attnkit::h2o_policy quarter(1, {.heavy_fraction = 0.25});
  observe_call(quarter.observer(0), 1, 12, {{row_of(12, {{0, 0.7f}, {2, 0.7f}, {5, 0.8f}})}});
  quarter.select(cache.view(0), 0, budget::tokens(8), keep);
  CHECK(slots_of(keep, 0) == std::vector<index_t>{2, 5, 6, 7, 8, 9, 10, 11});

  // Applied: the scores move with their tokens.
  attnkit::compress(cache, 0, h2o, budget::tokens(6), keep);
  CHECK(positions_of(cache, 0, 0) == std::vector<position>{0, 2, 5, 9, 10, 11});
  const auto mass = h2o.scores().head("test", 0, 1, 0, 7);
  const std::vector<float> moved{0.7f, 0.7f, 0.8f, 0.5f, 0.0f, 0.7f, 0.0f};
  for (std::size_t i = 0; i < moved.size(); ++i) CHECK(mass[i] == Approx(moved[i]).margin(1e-6));

  // A decode step: the new token (slot 6, position 12) makes the head one over budget. Its
  // attention puts 1.0 on slot 3 (position 9), 0.75 on itself and 0.25 on slot 0: heavy among
  // slots 0 .. 3 are 3 (1.5), 0 (0.95) and 2 (0.8); slot 1 (position 2, 0.7) goes.
  append_token(cache, 0, 12);
  observe_call(h2o.observer(0), 1, 7,
               {{row_of(7, {{3, 1.0f}}), row_of(7, {{6, 0.75f}, {0, 0.25f}})}});
  attnkit::compress(cache, 0, h2o, budget::tokens(6), keep);
  CHECK(positions_of(cache, 0, 0) == std::vector<position>{0, 5, 9, 10, 11, 12});
}

TEST_CASE("TOVA evicts by the current query's weights averaged over the layer's heads",
          "[policies]") {
  auto cache = make_cache(1, 2, 8);
  attnkit::tova_policy tova(1);
  keep_list keep;
  // 4 query heads, 2 per KV head. Averages over the 4: slot 1 0.5, slot 3 0.25, slots 5 and 6
  // 0.125. Budget 3: 1, 3, and the later of the tie, 6 — in both heads.
  const std::vector<std::vector<std::vector<float>>> call{
      {row_of(8, {{1, 1.0f}}), row_of(8, {{1, 1.0f}}), row_of(8, {{3, 0.5f}, {5, 0.5f}}),
       row_of(8, {{3, 0.5f}, {6, 0.5f}})}};
  observe_call(tova.observer(0), 2, 8, call);
  tova.select(cache.view(0), 0, budget::tokens(3), keep);
  CHECK(slots_of(keep, 0) == std::vector<index_t>{1, 3, 6});
  CHECK(slots_of(keep, 1) == std::vector<index_t>{1, 3, 6});
  std::vector<float> averaged(8);
  tova.score(cache.view(0), 0, 0, 3, std::span<float>(averaged));
  CHECK(averaged == std::vector<float>{0, 0.5f, 0, 0.25f, 0, 0.125f, 0.125f, 0});

  // Head-wise variant: head 0 ranks 1 then zeros (latest: 6, 7); head 1 ranks 3, 5, 6.
  attnkit::tova_policy per_head(1, {.per_head = true});
  observe_call(per_head.observer(0), 2, 8, call);
  per_head.select(cache.view(0), 0, budget::tokens(3), keep);
  CHECK(slots_of(keep, 0) == std::vector<index_t>{1, 6, 7});
  CHECK(slots_of(keep, 1) == std::vector<index_t>{3, 5, 6});

  // The next call's query replaces the last one's: only slot 0 has weight now.
  observe_call(tova.observer(0), 2, 8,
               {{row_of(8, {{0, 1.0f}}), row_of(8, {{0, 1.0f}}), row_of(8, {{0, 1.0f}}),
                 row_of(8, {{0, 1.0f}})}});
  tova.select(cache.view(0), 0, budget::tokens(3), keep);
  CHECK(slots_of(keep, 0) == std::vector<index_t>{0, 6, 7});

  // Layer-wise needs the heads to hold the same slots.
  cache.retain(0, 1, range(0, 5));
  CHECK_THROWS_WITH(tova.select(cache.view(0), 0, budget::tokens(3), keep),
                    Catch::Contains("head 0 holds 8 and head 1 holds 5"));
  per_head.select(cache.view(0), 0, budget::tokens(3), keep);  // fine head-wise
  CHECK(keep.kept(1) == 3);
}

TEST_CASE("SnapKV pools the window's votes and keeps the top-k plus the window", "[policies]") {
  // 20 tokens, window 4: 4 prefill queries x 2 query heads of one KV head vote. Each of the 8
  // rows gives slot 2 and slot 3 0.25, slot 7 0.4125, its own window slot the rest; the votes
  // before the window sum to slot 2: 2.0, slot 3: 2.0, slot 7: 3.3.
  std::vector<std::vector<std::vector<float>>> rows;
  for (index_t t = 0; t < 4; ++t) {
    const auto r = row_of(20, {{2, 0.25f}, {3, 0.25f}, {7, 0.4125f}, {16 + t, 0.0875f}});
    rows.push_back({r, r});
  }
  auto kept = [&](attnkit::snapkv_options options, index_t budget_tokens) {
    auto cache = make_cache(1, 1, 20);
    attnkit::snapkv_policy snapkv(1, options);
    CHECK(snapkv.observer(0).observed_queries() == options.window);
    observe_call(snapkv.observer(0), 1, 20, rows);
    keep_list keep;
    snapkv.select(cache.view(0), 0, budget::tokens(budget_tokens), keep);
    return slots_of(keep, 0);
  };
  const std::vector<index_t> window{16, 17, 18, 19};
  auto with_window = [&](std::vector<index_t> s) {
    s.insert(s.end(), window.begin(), window.end());
    return s;
  };
  // Average pooling, kernel 3: slots 2 and 3 pool to 4/3, slots 6, 7, 8 to 1.1, slots 1 and 4
  // to 2/3. The best 3: 2, 3, and the latest of the 1.1 tie, 8.
  CHECK(kept({.window = 4, .kernel = 3}, 7) == with_window({2, 3, 8}));
  CHECK(kept({.window = 4, .kernel = 3}, 9) == with_window({2, 3, 6, 7, 8}));
  // Max pooling: 6, 7, 8 pool to 3.3 and win.
  CHECK(kept({.window = 4, .kernel = 3, .pooling = attnkit::snapkv_pooling::max}, 7) ==
        with_window({6, 7, 8}));
  // No pooling (kernel 1): the raw votes, 7, 3, 2.
  CHECK(kept({.window = 4, .kernel = 1}, 7) == with_window({2, 3, 7}));
  // A budget below the window keeps the window's latest tokens.
  CHECK(kept({.window = 4, .kernel = 3}, 2) == std::vector<index_t>{18, 19});

  // pool() against the definition (avg_pool1d with zero padding, max_pool1d) on random rows.
  attnkit_test::rng random(5);
  for (const auto pooling : {attnkit::snapkv_pooling::average, attnkit::snapkv_pooling::max})
    for (index_t kernel : {1, 3, 5, 7}) {
      attnkit::snapkv_policy snapkv(1, {.window = 1, .kernel = kernel, .pooling = pooling});
      std::vector<float> in(static_cast<std::size_t>(random.integer(1, 30)));
      for (float& x : in) x = static_cast<float>(random.uniform());
      std::vector<float> out(in.size());
      snapkv.pool(in, out);
      const auto n = static_cast<index_t>(in.size());
      for (index_t j = 0; j < n; ++j) {
        double sum = 0.0, max = -1.0;
        for (index_t i = j - kernel / 2; i <= j + kernel / 2; ++i) {
          const double x = i >= 0 && i < n ? in[static_cast<std::size_t>(i)] : 0.0;
          sum += x;
          if (i >= 0 && i < n) max = std::max(max, x);
        }
        const double expected = pooling == attnkit::snapkv_pooling::average ? sum / kernel : max;
        CHECK(out[static_cast<std::size_t>(j)] == Approx(expected).epsilon(1e-6));
      }
    }
  CHECK_THROWS_WITH(attnkit::snapkv_policy(1, {.window = 4, .kernel = 4}),
                    Catch::Contains("kernel is 4, it must be odd"));
}

TEST_CASE("PyramidKV: per-layer budgets shrink upward and keep the total", "[policies]") {
  attnkit::pyramidkv_policy pyramid(4, {.snapkv = {.window = 4, .kernel = 3}, .beta = 20});
  // n 100, average 20: b = 16, min 0.8, max 31.2, step 10.1333: shares 31.2, 21.07, 10.93, 0.8
  // round down to 31, 21, 10, 0 (62); the 2 missing tokens go to layers 0 and 1.
  CHECK(pyramid.layer_budget(0, 100, 20) == 4 + 32);
  CHECK(pyramid.layer_budget(1, 100, 20) == 4 + 22);
  CHECK(pyramid.layer_budget(2, 100, 20) == 4 + 10);
  CHECK(pyramid.layer_budget(3, 100, 20) == 4 + 0);
  // n 30: max 31.2 > n - w = 26 clamps to 26, min = 32 - 26 = 6: shares 26, 19.33, 12.67, 6
  // round down to 26, 19, 12, 6 (63); layer 0 is at the cap, so the missing one goes to layer 1.
  CHECK(pyramid.layer_budget(0, 30, 20) == 4 + 26);
  CHECK(pyramid.layer_budget(1, 30, 20) == 4 + 20);
  CHECK(pyramid.layer_budget(2, 30, 20) == 4 + 12);
  CHECK(pyramid.layer_budget(3, 30, 20) == 4 + 6);
  // The total over the layers is what the uniform budget gives, for many shapes.
  for (index_t n : {10, 37, 64, 100, 513})
    for (index_t average : {0, 3, 4, 5, 9, 20, 36, 60})
      for (index_t layers : {1, 2, 3, 7, 32}) {
        attnkit::pyramidkv_policy p(layers, {.snapkv = {.window = 4}});
        index_t total = 0;
        for (index_t l = 0; l < layers; ++l) {
          const index_t count = p.layer_budget(l, n, std::min(average, n));
          CHECK(count <= n);
          if (l > 0) CHECK(count <= p.layer_budget(l - 1, n, std::min(average, n)));
          total += count;
        }
        INFO("n " << n << " average " << average << " layers " << layers);
        CHECK(total == layers * std::min(average, n));
      }
  // select keeps the layer's count: the window plus SnapKV's best.
  auto cache = make_cache(4, 2, 100);
  keep_list keep;
  for (index_t l = 0; l < 4; ++l) {
    observe_call(pyramid.observer(l), 2, 100,
                 {{row_of(100, {{50, 1.0f}}), row_of(100, {{60, 1.0f}})}});
    pyramid.select(cache.view(l), l, budget::tokens(20), keep);
    CHECK(keep.kept(0) == pyramid.layer_budget(l, 100, 20));
    CHECK(keep.slots(0).back() == 99);
  }
  // Layer 2 keeps 14: the window and the 10 best pooled votes. Kernel 3 pools head 0's vote on
  // 50 over 49, 50, 51 equally, ahead of the zero-vote tie (of which the latest are kept).
  pyramid.select(cache.view(2), 2, budget::tokens(20), keep);
  CHECK(slots_of(keep, 0) ==
        std::vector<index_t>{49, 50, 51, 89, 90, 91, 92, 93, 94, 95, 96, 97, 98, 99});
  CHECK(slots_of(keep, 1) ==
        std::vector<index_t>{59, 60, 61, 89, 90, 91, 92, 93, 94, 95, 96, 97, 98, 99});
}

TEST_CASE("AdaKV splits a layer's budget across heads by score, with a floor", "[policies]") {
  auto cache = make_cache(1, 2, 8);
  keep_list keep;
  const fixed_scorer scores{
      {{9, 8, 7, 6, 5, 4, 3, 2}, {0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f, 0.7f, 0.8f}}};
  // Budget 4 per head: the layer keeps 8. alpha 0.25: each head keeps its best floor(0.25 · 4)
  // = 1 whatever the others score; the other 7 are the best of what is left: head 0's 9 .. 3.
  attnkit::adakv_policy<fixed_scorer> ada(scores, 0.25);
  ada.select(cache.view(0), 0, budget::tokens(4), keep);
  CHECK(slots_of(keep, 0) == range(0, 7));
  CHECK(slots_of(keep, 1) == std::vector<index_t>{7});
  // No floor: head 0 takes all 8.
  attnkit::adakv_policy<fixed_scorer> greedy(scores, 0.0);
  greedy.select(cache.view(0), 0, budget::tokens(4), keep);
  CHECK(slots_of(keep, 0) == range(0, 8));
  CHECK(keep.kept(1) == 0);
  // alpha 0.5: floors of 2 (head 0: 0, 1; head 1: 6, 7), then 7, 6, 5, 4 of head 0.
  attnkit::adakv_policy<fixed_scorer> half(scores, 0.5);
  half.select(cache.view(0), 0, budget::tokens(4), keep);
  CHECK(slots_of(keep, 0) == range(0, 6));
  CHECK(slots_of(keep, 1) == std::vector<index_t>{6, 7});
  // Per-head budgets add up the same way: 3 + 1 = 4, floors 0 at alpha 0.25 → 9, 8, 7, 6.
  const std::vector<index_t> per_head{3, 1};
  ada.select(cache.view(0), 0, budget::per_head(per_head), keep);
  CHECK(slots_of(keep, 0) == range(0, 4));
  CHECK(keep.kept(1) == 0);

  // Ada-SnapKV: every head keeps its window (+inf votes), the rest goes where attention went.
  attnkit::adakv_policy<> ada_snap(attnkit::snapkv_policy(1, {.window = 2, .kernel = 1}), 0.0);
  auto snap_cache = make_cache(1, 2, 10);
  observe_call(ada_snap.observer(0), 2, 10,
               {{row_of(10, {{1, 0.5f}, {3, 0.3f}, {5, 0.2f}}), row_of(10, {{4, 0.1f}})}});
  ada_snap.select(snap_cache.view(0), 0, budget::tokens(4), keep);
  // The layer keeps 8: four windows slots, then votes 0.5, 0.3, 0.2 (head 0) and 0.1 (head 1).
  CHECK(slots_of(keep, 0) == std::vector<index_t>{1, 3, 5, 8, 9});
  CHECK(slots_of(keep, 1) == std::vector<index_t>{4, 8, 9});
}

TEST_CASE("FastGen chooses each head's cheapest policy that recovers 95%", "[policies]") {
  // 16 tokens; position 0 is a special token (BOS), 5 and 10 punctuation. Budget 3: the
  // frequent set is the 3 heaviest tokens, the local window the last 3.
  std::vector<std::uint8_t> classes(16, 0);
  classes[0] = attnkit::token_class::special;
  classes[5] = classes[10] = attnkit::token_class::punctuation;
  auto cache = make_cache(1, 5, 16);
  attnkit::fastgen_policy fastgen(1);
  fastgen.set_token_classes(classes);
  const float third = 0.1f / 3.0f;
  std::vector<float> uniform(16, 1.0f / 16.0f);
  observe_call(fastgen.observer(0), 5, 16,
               {{row_of(16, {{0, 1.0f}}),                           // special
                 row_of(16, {{0, 0.5f}, {5, 0.25f}, {10, 0.25f}}),  // + punctuation
                 row_of(16, {{2, 0.5f}, {7, 0.5f}}),                // + frequent
                 row_of(16, {{2, 0.3f},
                             {3, 0.3f},
                             {4, 0.3f},
                             {13, third},
                             {14, third},
                             {15, third}}),  // frequent 0.9 < 0.95: + local
                 uniform}});                 // 6/16 with everything: full
  keep_list keep;
  CHECK_FALSE(fastgen.profiled(0));
  fastgen.select(cache.view(0), 0, budget::tokens(3), keep);
  REQUIRE(fastgen.profiled(0));
  using attnkit::fastgen_choice;
  CHECK(fastgen.choice(0, 0) == fastgen_choice::special);
  CHECK(fastgen.choice(0, 1) == fastgen_choice::special_punctuation);
  CHECK(fastgen.choice(0, 2) == fastgen_choice::special_punctuation_frequent);
  CHECK(fastgen.choice(0, 3) == fastgen_choice::special_punctuation_frequent_local);
  CHECK(fastgen.choice(0, 4) == fastgen_choice::full);
  CHECK(slots_of(keep, 0) == std::vector<index_t>{0});
  CHECK(slots_of(keep, 1) == std::vector<index_t>{0, 5, 10});
  // Frequent: 2 and 7, then the latest of the zero-mass tie, 15.
  CHECK(slots_of(keep, 2) == std::vector<index_t>{0, 2, 5, 7, 10, 15});
  CHECK(slots_of(keep, 3) == std::vector<index_t>{0, 2, 3, 4, 5, 10, 13, 14, 15});
  CHECK(slots_of(keep, 4) == range(0, 16));

  // Applied, then a decode step: the policies stay fixed; the new token (position 16, a
  // punctuation mark) is kept by the heads whose policy keeps punctuation.
  attnkit::compress(cache, 0, fastgen, budget::tokens(3), keep);
  classes.push_back(attnkit::token_class::punctuation);
  fastgen.set_token_classes(classes);
  append_token(cache, 0, 16);
  fastgen.select(cache.view(0), 0, budget::tokens(3), keep);
  CHECK(slots_of(keep, 0) == std::vector<index_t>{0});
  CHECK(slots_of(keep, 1) == std::vector<index_t>{0, 1, 2, 3});
  CHECK(keep.slots(4).size() == 17);
  CHECK(fastgen.choice(0, 1) == fastgen_choice::special_punctuation);
  CHECK_THROWS_WITH(fastgen.choice(0, 5), Catch::Contains("head is 5"));
  fastgen.reset();
  CHECK_FALSE(fastgen.profiled(0));
}

TEST_CASE("score-based policies keep exactly their budget", "[policies]") {
  auto cache = make_cache(2, 3, 40);
  cache.retain(1, 1, range(0, 17));  // head-wise lengths in layer 1
  keep_list keep;
  attnkit::h2o_policy h2o(2);
  attnkit::snapkv_policy snapkv(2, {.window = 8});
  attnkit::tova_policy tova(2, {.per_head = true});
  attnkit::adakv_policy<attnkit::h2o_policy> ada(attnkit::h2o_policy(2));
  attnkit_test::rng random(9);
  for (index_t l = 0; l < 2; ++l) {
    std::vector<std::vector<float>> rows;
    for (int h = 0; h < 6; ++h) {
      std::vector<float> r(40);
      for (float& x : r) x = static_cast<float>(random.uniform()) / 40.0f;
      rows.push_back(r);
    }
    observe_call(h2o.observer(l), 3, 40, {rows});
    observe_call(snapkv.observer(l), 3, 40, {rows});
    observe_call(tova.observer(l), 3, 40, {rows});
    observe_call(ada.observer(l), 3, 40, {rows});
    for (index_t t : {0, 1, 3, 8, 9, 16, 17, 39, 40, 41}) {
      const budget b = budget::tokens(t);
      const auto view = cache.view(l);
      auto check_heads = [&] {
        for (index_t h = 0; h < 3; ++h) CHECK(keep.kept(h) == b.keep_count(h, view.length(h)));
      };
      h2o.select(view, l, b, keep);
      check_heads();
      snapkv.select(view, l, b, keep);
      check_heads();
      tova.select(view, l, b, keep);
      check_heads();
      ada.select(view, l, b, keep);
      index_t total = 0, expected = 0;
      for (index_t h = 0; h < 3; ++h) {
        total += keep.kept(h);
        expected += b.keep_count(h, view.length(h));
      }
      CHECK(total == expected);
    }
  }
}

TEST_CASE("a policy's observer in the real attention call feeds its scores", "[policies]") {
  // Decode: 1 query, 4 query heads over 2 KV heads, 12 keys of head_dim 8; then a causal
  // prefill of 12 queries observed by SnapKV's window of 4. The policy's table must equal the
  // probabilities computed here in double, summed per KV head: within 1e-5 absolute (fp32) where
  // the table is exact (the reference backend, or precision single), and within 2^-10 relative
  // more where the SIMD kernel may round each probability to fp16 (the tables' default,
  // observed_precision::half: 2^-11 per probability plus 2^-25, core/observer.hpp).
  constexpr index_t q_heads = 4, kv_heads = 2, d = 8, n = 12;
  attnkit_test::rng random(3);
  std::vector<float> q(static_cast<std::size_t>(n * q_heads * d)),
      k(static_cast<std::size_t>(n * kv_heads * d)), v(k.size()), out(q.size());
  for (float& x : q) x = static_cast<float>(random.normal());
  for (float& x : k) x = static_cast<float>(random.normal());
  for (float& x : v) x = static_cast<float>(random.normal());
  auto expected_mass = [&](index_t q_tokens, index_t observed) {
    std::vector<double> mass(static_cast<std::size_t>(kv_heads * n), 0.0);
    const double scale = 1.0 / std::sqrt(static_cast<double>(d));
    for (index_t t = q_tokens - observed; t < q_tokens; ++t)
      for (index_t h = 0; h < q_heads; ++h) {
        const index_t kvh = h / (q_heads / kv_heads);
        const index_t visible = n - q_tokens + t + 1;  // causal, bottom-right aligned
        std::vector<double> logits(static_cast<std::size_t>(visible));
        double max = -1e300;
        for (index_t j = 0; j < visible; ++j) {
          double s = 0.0;
          for (index_t i = 0; i < d; ++i)
            s += static_cast<double>(q[static_cast<std::size_t>((t * q_heads + h) * d + i)]) *
                 k[static_cast<std::size_t>((j * kv_heads + kvh) * d + i)];
          logits[static_cast<std::size_t>(j)] = s * scale;
          max = std::max(max, s * scale);
        }
        double sum = 0.0;
        for (double& l : logits) sum += (l = std::exp(l - max));
        for (index_t j = 0; j < visible; ++j)
          mass[static_cast<std::size_t>(kvh * n + j)] += logits[static_cast<std::size_t>(j)] / sum;
      }
    return mass;
  };
  auto check_table = [&](attnkit::attention_scores& scores, const std::vector<double>& mass,
                         double factor, bool rounded) {
    for (index_t h = 0; h < kv_heads; ++h) {
      const auto got = scores.head("test", 0, kv_heads, h, n);
      for (index_t j = 0; j < n; ++j) {
        const double expected = factor * mass[static_cast<std::size_t>(h * n + j)];
        const double allowed = 1e-5 + (rounded ? 0x1p-10 * expected : 0.0);
        CHECK(std::fabs(got[static_cast<std::size_t>(j)] - expected) <= allowed);
      }
    }
  };
  const attnkit::tensor_view<const float, 3> k_view(k.data(), {n, kv_heads, d});
  const attnkit::tensor_view<const float, 3> v_view(v.data(), {n, kv_heads, d});

  // Decode on both backends, twice each: H2O's table accumulates.
  const auto decode_mass = expected_mass(1, 1);
  const attnkit::tensor_view<const float, 3> q_decode(q.data(), {1, q_heads, d});
  const attnkit::tensor_view<float, 3> out_decode(out.data(), {1, q_heads, d});
  attnkit::h2o_policy reference_h2o(1), cpu_h2o(1);
  attnkit::attention_options options;
  options.observer = reference_h2o.observer(0);
  attnkit::attention(attnkit::backend::reference{}, q_decode, k_view, v_view, out_decode,
                     attnkit::causal{}, options);
  check_table(reference_h2o.scores(), decode_mass, 1.0, false);
  attnkit::attention(attnkit::backend::reference{}, q_decode, k_view, v_view, out_decode,
                     attnkit::causal{}, options);
  check_table(reference_h2o.scores(), decode_mass, 2.0, false);
  attnkit::h2o_policy cpu_exact_h2o(1);
  cpu_exact_h2o.scores().set_precision(attnkit::observed_precision::single);
  for (attnkit::h2o_policy* policy : {&cpu_h2o, &cpu_exact_h2o}) {
    options.observer = policy->observer(0);
    for (int step = 0; step < 2; ++step)
      attnkit_test::cpu_attention(attnkit_test::erase(q_decode), attnkit_test::erase(k_view),
                                  attnkit_test::erase(v_view), attnkit_test::erase(out_decode),
                                  attnkit_test::builtin_mask::causal, options);
    check_table(policy->scores(), decode_mass, 2.0, policy == &cpu_h2o);
  }

  // Prefill observed by SnapKV: the last 4 queries, once (the table is replaced per call).
  const auto window_mass = expected_mass(n, 4);
  attnkit::snapkv_policy snapkv(1, {.window = 4});
  options.observer = snapkv.observer(0);
  const attnkit::tensor_view<const float, 3> q_prefill(q.data(), {n, q_heads, d});
  const attnkit::tensor_view<float, 3> out_prefill(out.data(), {n, q_heads, d});
  for (int call = 0; call < 2; ++call)
    attnkit_test::cpu_attention(attnkit_test::erase(q_prefill), attnkit_test::erase(k_view),
                                attnkit_test::erase(v_view), attnkit_test::erase(out_prefill),
                                attnkit_test::builtin_mask::causal, options);
  check_table(snapkv.scores(), window_mass, 1.0, true);
  // And the selection it drives matches SnapKV on the same votes fed by hand.
  auto cache = make_cache(1, kv_heads, n, d);
  keep_list from_kernel;
  snapkv.select(cache.view(0), 0, budget::tokens(7), from_kernel);
  CHECK(from_kernel.kept(0) == 7);
  CHECK(from_kernel.kept(1) == 7);
}
