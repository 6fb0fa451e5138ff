// attnkit::attention_batch: a ragged batch of sequences in one call, over packed contiguous K/V
// or one paged cache per sequence.
//
// The batch promises the results of attention() on each sequence alone, run either on one thread
// (parallel::serial) or, for a sequence too large to run alone, with the batch's executor. Both
// are deterministic for a given executor concurrency (tests/test_executors.cpp), so every check
// here is bit-exact: each sequence's output rows and log-sum-exp columns (and observer tables)
// must equal those of the per-sequence call with one of the two executors, and every row of the
// packed output must be written (the output starts as NaN). attention() itself is held to the
// fp64 reference by the rest of the suite.
//
// Batches mix decode (1 query), prefill chunks, a sequence with no queries, one with no keys
// (zeros, log-sum-exp -inf) and lengths around the tile sizes; GQA 4 and 16 and MHA; head dims
// 64, 80, 128; fp32 / fp16 / bf16 K/V; ALiBi and softcap; serial, the built-in pool and an engine
// executor that claims four threads but runs its items in reverse order on one; the reference
// backend through the same front door. The scheduler (detail::run_batch) is checked on its own:
// each sequence once, the wide ones on the caller's executor, the others longest first. Every
// invalid argument throws attnkit::error naming it, with nothing written.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <memory>
#include <numeric>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "attnkit/attention/attention_batch.hpp"
#include "attnkit/attention/key_mass.hpp"
#include "attnkit/kvcache/kv_cache.hpp"
#include "attnkit/kvcache/page_pool.hpp"
#include "attnkit/mask/sliding_window.hpp"
#include "support/harness.hpp"

using namespace attnkit_test;
using attnkit::batch_layout;
using attnkit::parallel::serial;

namespace {

// An engine executor: claims `threads`, runs every item on the calling thread in reverse order
// (a static, not dynamic, distribution), so results are deterministic and the scheduler cannot
// rely on the order in which items start.
struct reverse_engine {
  std::size_t threads = 4;
  std::size_t calls = 0;
  std::size_t concurrency() const { return threads; }
  template <class Item>
  void operator()(std::size_t n, Item&& item) {
    ++calls;
    for (std::size_t i = n; i-- > 0;) item(i);
  }
};

struct sequence_shape {
  index_t q_tokens = 1;
  index_t kv_tokens = 1;
};

std::vector<index_t> indptr_of(const std::vector<sequence_shape>& seqs, bool queries) {
  std::vector<index_t> p{0};
  for (const sequence_shape& s : seqs) p.push_back(p.back() + (queries ? s.q_tokens : s.kv_tokens));
  return p;
}

template <class T>
bool same_bits_range(const T* a, const T* b, std::size_t n) {
  return n == 0 || std::memcmp(a, b, n * sizeof(T)) == 0;
}

// The packed inputs of a contiguous batch.
template <class TQ, class TKV>
struct packed_batch {
  std::vector<sequence_shape> seqs;
  index_t q_heads = 8, kv_heads = 2, head_dim = 64;
  std::vector<index_t> q_indptr, kv_indptr;
  tensor3<TQ> q;
  tensor3<TKV> k, v;

  packed_batch(std::vector<sequence_shape> s, index_t qh, index_t kvh, index_t d,
               std::uint64_t seed)
      : seqs(std::move(s)), q_heads(qh), kv_heads(kvh), head_dim(d) {
    q_indptr = indptr_of(seqs, true);
    kv_indptr = indptr_of(seqs, false);
    q = make_tensor3<TQ>(q_indptr.back(), q_heads, head_dim);
    k = make_tensor3<TKV>(kv_indptr.back(), kv_heads, head_dim);
    v = make_tensor3<TKV>(kv_indptr.back(), kv_heads, head_dim);
    fill_normal(q, seed * 10 + 1);
    fill_normal(k, seed * 10 + 2);
    fill_normal(v, seed * 10 + 3);
  }
  index_t sequences() const { return static_cast<index_t>(seqs.size()); }
  template <class T>
  static tensor_view<const T, 3> rows(const tensor3<T>& t, index_t begin, index_t end) {
    return {t.storage.data() + t.offset + begin * t.strides[0],
            {end - begin, t.extents[1], t.extents[2]},
            t.strides};
  }
  tensor_view<const TQ, 3> q_of(index_t i) const { return rows(q, q_indptr[i], q_indptr[i + 1]); }
  tensor_view<const TKV, 3> k_of(index_t i) const {
    return rows(k, kv_indptr[i], kv_indptr[i + 1]);
  }
  tensor_view<const TKV, 3> v_of(index_t i) const {
    return rows(v, kv_indptr[i], kv_indptr[i + 1]);
  }
};

// What one sequence produced: its output rows and log-sum-exp columns, as floats/bit copies.
template <class TO>
struct sequence_result {
  std::vector<TO> out;
  std::vector<float> lse;
  bool operator==(const sequence_result& o) const {
    return out.size() == o.out.size() && lse.size() == o.lse.size() &&
           same_bits_range(out.data(), o.out.data(), out.size()) &&
           same_bits_range(lse.data(), o.lse.data(), lse.size());
  }
};

// Rows [begin, end) of a contiguous [tokens, heads, dim] output and columns of a [heads, tokens]
// log-sum-exp.
template <class TO>
sequence_result<TO> slice_result(const tensor3<TO>& out, const tensor2<float>& lse, index_t begin,
                                 index_t end) {
  sequence_result<TO> r;
  const index_t row = out.extents[1] * out.extents[2];
  r.out.assign(out.storage.begin() + begin * row, out.storage.begin() + end * row);
  for (index_t h = 0; h < lse.extents[0]; ++h)
    for (index_t t = begin; t < end; ++t)
      r.lse.push_back(lse.storage[static_cast<std::size_t>(h * lse.strides[0] + t)]);
  return r;
}

template <class TO>
bool all_written(const tensor3<TO>& out, const tensor2<float>& lse) {
  for (const TO& x : out.storage)
    if (std::isnan(attnkit::to_float(x))) return false;
  for (float x : lse.storage)
    if (std::isnan(x)) return false;
  return true;
}

// One sequence alone through attention(), with `executor`.
template <class TO, class TQ, class TKV, class Mask, class Executor>
sequence_result<TO> alone(const packed_batch<TQ, TKV>& b, index_t i, const Mask& mask,
                          attnkit::attention_options options, Executor&& executor) {
  const index_t n = b.q_indptr[i + 1] - b.q_indptr[i];
  tensor3<TO> out = make_tensor3<TO>(n, b.q_heads, b.head_dim);
  tensor2<float> lse = make_lse(b.q_heads, n);
  options.log_sum_exp = lse.view();
  attnkit::attention(attnkit::cpu, b.q_of(i), b.k_of(i), b.v_of(i), out.view(), mask, options,
                     executor);
  return slice_result(out, lse, 0, n);
}

// The batch through attention_batch with `executor`; then each sequence against the
// per-sequence calls.
template <class TQ, class TKV, class TO, class Mask, class Executor>
void check_contiguous(const packed_batch<TQ, TKV>& b, const Mask& mask,
                      const attnkit::attention_options& base, Executor& executor,
                      const std::string& label) {
  INFO(label);
  const index_t total = b.q_indptr.back();
  tensor3<TO> out = make_tensor3<TO>(total, b.q_heads, b.head_dim);
  tensor2<float> lse = make_lse(b.q_heads, total);
  attnkit::attention_options options = base;
  options.log_sum_exp = lse.view();
  attnkit::attention_batch(attnkit::cpu, b.q.cview(), b.k.cview(), b.v.cview(), out.view(),
                           batch_layout{.q_indptr = b.q_indptr, .kv_indptr = b.kv_indptr}, mask,
                           options, executor);
  REQUIRE(all_written(out, lse));
  for (index_t i = 0; i < b.sequences(); ++i) {
    INFO("sequence " << i << ": " << b.seqs[static_cast<std::size_t>(i)].q_tokens << " queries, "
                     << b.seqs[static_cast<std::size_t>(i)].kv_tokens << " keys");
    const sequence_result<TO> got = slice_result(out, lse, b.q_indptr[i], b.q_indptr[i + 1]);
    const sequence_result<TO> one_thread = alone<TO>(b, i, mask, base, serial{});
    if (got == one_thread) continue;
    CHECK(got == alone<TO>(b, i, mask, base, executor));
  }
}

const std::vector<sequence_shape> mixed_batch{{1, 300}, {1, 1}, {0, 5},  {5, 5},   {1, 0}, {17, 40},
                                              {1, 65},  {3, 1}, {1, 64}, {2, 257}, {1, 7}};

}  // namespace

TEST_CASE("attention_batch: contiguous ragged batches equal per-sequence attention calls",
          "[batch]") {
  attnkit::parallel::thread_pool pool(2);
  reverse_engine engine;
  serial one;
  SECTION("fp32 queries over fp16 K/V, GQA 4, head dim 128, ALiBi and softcap") {
    const packed_batch<float, half> b(mixed_batch, 8, 2, 128, 1);
    std::vector<float> slopes = alibi_slopes(8);
    attnkit::attention_options o;
    o.alibi_slopes = tensor_view<const float, 1>(slopes.data(), {8});
    o.softcap = 30.0f;
    check_contiguous<float, half, float>(b, attnkit::causal{}, o, pool, "pool, causal");
    check_contiguous<float, half, float>(b, attnkit::full{}, o, engine, "engine, full");
    check_contiguous<float, half, float>(b, attnkit::causal{}, o, one, "serial, causal");
  }
  SECTION("bf16 everything, MQA 16:1, head dim 80") {
    const packed_batch<bfloat16, bfloat16> b(mixed_batch, 16, 1, 80, 2);
    check_contiguous<bfloat16, bfloat16, bfloat16>(b, attnkit::causal{}, {}, pool, "pool");
    check_contiguous<bfloat16, bfloat16, bfloat16>(b, attnkit::causal{}, {}, engine, "engine");
  }
  SECTION("fp32 MHA head dim 64, sliding window with sinks, many equal decodes") {
    std::vector<sequence_shape> decodes(24, sequence_shape{1, 100});
    decodes[5].kv_tokens = 3000;  // one sequence far above a thread's share: runs wide
    const packed_batch<float, float> b(decodes, 4, 4, 64, 3);
    const attnkit::sliding_window window{33, 4};
    check_contiguous<float, float, float>(b, window, {}, pool, "pool");
    check_contiguous<float, float, float>(b, window, {}, engine, "engine");
  }
}

TEST_CASE("attention_batch: the reference backend equals its per-sequence calls", "[batch]") {
  const packed_batch<float, half> b(mixed_batch, 8, 2, 64, 6);
  const index_t total = b.q_indptr.back();
  tensor3<float> out = make_tensor3<float>(total, b.q_heads, b.head_dim);
  tensor2<float> lse = make_lse(b.q_heads, total);
  attnkit::attention_options options;
  options.log_sum_exp = lse.view();
  attnkit::parallel::thread_pool pool(2);
  attnkit::attention_batch(attnkit::backend::reference{}, b.q.cview(), b.k.cview(), b.v.cview(),
                           out.view(),
                           batch_layout{.q_indptr = b.q_indptr, .kv_indptr = b.kv_indptr},
                           attnkit::causal{}, options, pool);
  REQUIRE(all_written(out, lse));
  for (index_t i = 0; i < b.sequences(); ++i) {
    const index_t n = b.q_indptr[i + 1] - b.q_indptr[i];
    tensor3<float> alone = make_tensor3<float>(n, b.q_heads, b.head_dim);
    tensor2<float> alone_lse = make_lse(b.q_heads, n);
    attnkit::attention_options o;
    o.log_sum_exp = alone_lse.view();
    attnkit::attention(attnkit::backend::reference{}, b.q_of(i), b.k_of(i), b.v_of(i), alone.view(),
                       attnkit::causal{}, o, serial{});
    INFO("sequence " << i);
    CHECK(slice_result(out, lse, b.q_indptr[i], b.q_indptr[i + 1]) ==
          slice_result(alone, alone_lse, 0, n));
  }
}

TEST_CASE("attention_batch: an empty batch and a batch of empty sequences write nothing",
          "[batch]") {
  float sentinel = 1.5f;
  const std::vector<index_t> none{0};
  attnkit::attention_batch(attnkit::cpu, tensor_view<const float, 3>(nullptr, {0, 4, 64}),
                           tensor_view<const float, 3>(nullptr, {0, 2, 64}),
                           tensor_view<const float, 3>(nullptr, {0, 2, 64}),
                           tensor_view<float, 3>(nullptr, {0, 4, 64}),
                           batch_layout{.q_indptr = none, .kv_indptr = none}, attnkit::causal{});
  const packed_batch<float, float> b({{0, 10}, {0, 0}}, 4, 2, 64, 4);
  const std::vector<index_t> zero_q{0, 0, 0};
  attnkit::attention_batch(attnkit::cpu, b.q.cview(), b.k.cview(), b.v.cview(),
                           tensor_view<float, 3>(&sentinel, {0, 4, 64}),
                           batch_layout{.q_indptr = zero_q, .kv_indptr = b.kv_indptr},
                           attnkit::causal{});
  CHECK(sentinel == 1.5f);
}

TEST_CASE("attention_batch: the scheduler runs each sequence once, wide ones across threads",
          "[batch]") {
  // Four threads. Candidates: k = 0, 1, 2 wide (40 is a third of a thread's share of what is
  // left, 540 / 4 / 3 = 45). Estimates: k = 0: LPT of everything, 1000; k = 1: 1000 / 4 + 400;
  // k = 2: 1400 / 4 + 140 (40 and fifty 10s on four threads: 40 + 9 · 10 ... 140) = 490: best.
  // One sequence of cost 0 has nothing to do.
  std::vector<double> costs{10, 10, 1000, 10, 0, 40, 400};
  costs.resize(costs.size() + 47, 10.0);
  attnkit::detail::batch_workspace workspace;
  reverse_engine engine;
  std::vector<std::pair<index_t, bool>> ran;  // sequence, on the caller's executor
  attnkit::detail::run_batch(
      workspace, static_cast<index_t>(costs.size()),
      [&](index_t i) { return costs[static_cast<std::size_t>(i)]; },
      [&](index_t i, auto& run_on) {
        ran.emplace_back(i, std::is_same_v<std::remove_cvref_t<decltype(run_on)>, reverse_engine>);
      },
      engine);
  REQUIRE(ran.size() == costs.size() - 1);
  CHECK(ran[0] == std::pair<index_t, bool>{2, true});
  CHECK(ran[1] == std::pair<index_t, bool>{6, true});
  CHECK(ran[2] == std::pair<index_t, bool>{5, false});
  // Then the 10s, equal costs in batch order (the sort is stable), whichever item drew them.
  std::vector<index_t> tens{0, 1, 3};
  for (index_t i = 7; i < static_cast<index_t>(costs.size()); ++i) tens.push_back(i);
  std::vector<index_t> narrow;
  for (std::size_t r = 3; r < ran.size(); ++r) {
    CHECK_FALSE(ran[r].second);
    narrow.push_back(ran[r].first);
  }
  CHECK(narrow == tens);
  CHECK(engine.calls == 1);

  // How many run wide, for other batches.
  auto wide_count = [&](const std::vector<double>& c, std::size_t threads) {
    reverse_engine e{threads};
    std::size_t wide = 0;
    attnkit::detail::run_batch(
        workspace, static_cast<index_t>(c.size()),
        [&](index_t i) { return c[static_cast<std::size_t>(i)]; },
        [&](index_t, auto& run_on) {
          wide += std::is_same_v<std::remove_cvref_t<decltype(run_on)>, reverse_engine>;
        },
        e);
    return wide;
  };
  // Four long sequences that two threads share evenly one by one (16 + 4 = 12 + 8): none wide.
  CHECK(wide_count({4, 16, 8, 12}, 2) == 0);
  // Five equal ones on two threads: one wide, then two each (2.5 rather than 3).
  CHECK(wide_count({5, 5, 5, 5, 5}, 2) == 1);
  // Three equal ones on four threads: all wide.
  CHECK(wide_count({5, 5, 5}, 4) == 3);
  // A hundred equal ones on 64 threads: 36 wide, then one each (1.5625 rather than 2); found
  // among 26 candidates (k = 0, 4, 8 ... 100: at most 33 are simulated).
  CHECK(wide_count(std::vector<double>(100, 1.0), 64) == 36);
  // Many short ones: none wide.
  CHECK(wide_count(std::vector<double>(40, 3.0), 4) == 0);

  // One thread: every sequence in batch order on the caller's executor.
  serial one;
  ran.clear();
  attnkit::detail::run_batch(
      workspace, static_cast<index_t>(costs.size()),
      [&](index_t i) { return costs[static_cast<std::size_t>(i)]; },
      [&](index_t i, auto&) { ran.emplace_back(i, true); }, one);
  std::vector<index_t> order;
  for (const auto& r : ran) order.push_back(r.first);
  std::vector<index_t> expected(costs.size());
  std::iota(expected.begin(), expected.end(), index_t{0});
  expected.erase(expected.begin() + 4);  // cost 0
  CHECK(order == expected);
}

namespace {

// A batch of kv_cache<half> sequences over one shared page pool, heads of each trimmed to
// different lengths (per-head eviction), one sequence left empty, merged keys on some heads.
struct paged_batch {
  static constexpr index_t kv_heads = 2, head_dim = 128, q_heads = 8;
  std::shared_ptr<attnkit::kv_page_pool<half>> pool;
  std::vector<attnkit::kv_cache<half>> caches;
  std::vector<sequence_shape> seqs;
  std::vector<index_t> q_indptr;
  tensor3<float> q;

  explicit paged_batch(const std::vector<sequence_shape>& s, index_t page_size) : seqs(s) {
    pool = std::make_shared<attnkit::kv_page_pool<half>>(
        attnkit::kv_page_pool_config{4096, page_size, head_dim});
    for (std::size_t i = 0; i < seqs.size(); ++i) {
      caches.emplace_back(attnkit::kv_cache_config{1, kv_heads, head_dim, page_size, 0}, pool);
      const index_t n = seqs[i].kv_tokens;
      if (n == 0) continue;
      tensor3<float> k = make_tensor3<float>(n, kv_heads, head_dim);
      tensor3<float> v = make_tensor3<float>(n, kv_heads, head_dim);
      fill_normal(k, 100 + i);
      fill_normal(v, 200 + i);
      caches.back().append(0, k.cview(), v.cview());
      // Head 1 keeps every other slot beyond the first few: a shorter head, pages freed.
      std::vector<index_t> keep;
      for (index_t j = 0; j < n; ++j)
        if (j < 4 || j % 2 == 1 || j == n - 1) keep.push_back(j);
      caches.back().retain(0, 1, keep);
      // Merged keys on some heads (RazorAttention's compensation token): weighed in the batch as
      // in each sequence's own call.
      if (n > 6 && i % 3 == 0) caches.back().set_merged(0, 0, {n / 2, static_cast<float>(3 + i)});
      if (n > 6 && i % 2 == 1) caches.back().set_merged(0, 1, {2, 5.0f});
    }
    q_indptr = indptr_of(seqs, true);
    q = make_tensor3<float>(q_indptr.back(), q_heads, head_dim);
    fill_normal(q, 7);
  }
  std::vector<attnkit::paged_kv_view<const half>> views() const {
    std::vector<attnkit::paged_kv_view<const half>> v;
    for (const auto& c : caches) v.push_back(c.view(0));
    return v;
  }
  tensor_view<const float, 3> q_of(index_t i) const {
    return packed_batch<float, half>::rows(q, q_indptr[i], q_indptr[i + 1]);
  }
};

// Sequence i alone on its paged cache, with a key-mass observer when `observe`.
struct paged_result {
  sequence_result<float> rows;
  std::vector<float> mass;
  bool operator==(const paged_result& o) const {
    return rows == o.rows && mass.size() == o.mass.size() &&
           same_bits_range(mass.data(), o.mass.data(), mass.size());
  }
};

template <class Executor>
paged_result paged_alone(const paged_batch& b, index_t i, bool observe, Executor&& executor) {
  const index_t n = b.q_indptr[i + 1] - b.q_indptr[i];
  tensor3<float> out = make_tensor3<float>(n, b.q_heads, b.head_dim);
  tensor2<float> lse = make_lse(b.q_heads, n);
  const auto view = b.caches[static_cast<std::size_t>(i)].view(0);
  paged_result r;
  r.mass.assign(static_cast<std::size_t>(b.kv_heads * std::max<index_t>(1, view.max_length())),
                0.0f);
  attnkit::accumulate_key_mass key_mass(
      tensor_view<float, 2>(r.mass.data(), {b.kv_heads, std::max<index_t>(1, view.max_length())}));
  attnkit::attention_options options;
  options.log_sum_exp = lse.view();
  if (observe) options.observer = key_mass;
  attnkit::attention(attnkit::cpu, b.q_of(i), view, out.view(), attnkit::causal{}, options,
                     executor);
  r.rows = slice_result(out, lse, 0, n);
  return r;
}

template <class Executor>
void check_paged(const paged_batch& b, bool observe, Executor& executor, const std::string& label) {
  INFO(label << (observe ? ", key-mass observers" : ""));
  const index_t total = b.q_indptr.back();
  const index_t sequences = static_cast<index_t>(b.seqs.size());
  tensor3<float> out = make_tensor3<float>(total, b.q_heads, b.head_dim);
  tensor2<float> lse = make_lse(b.q_heads, total);
  const auto views = b.views();
  std::vector<std::vector<float>> masses;
  std::vector<attnkit::accumulate_key_mass> key_masses;
  masses.reserve(b.seqs.size());
  key_masses.reserve(b.seqs.size());
  for (const auto& view : views) {
    const index_t width = std::max<index_t>(1, view.max_length());
    masses.emplace_back(static_cast<std::size_t>(b.kv_heads * width), 0.0f);
    key_masses.emplace_back(tensor_view<float, 2>(masses.back().data(), {b.kv_heads, width}));
  }
  std::vector<attnkit::attention_observer> observers;
  if (observe)
    for (auto& km : key_masses) observers.emplace_back(km);
  attnkit::attention_options options;
  options.log_sum_exp = lse.view();
  attnkit::attention_batch(attnkit::cpu, b.q.cview(), views, out.view(),
                           batch_layout{.q_indptr = b.q_indptr, .observers = observers},
                           attnkit::causal{}, options, executor);
  REQUIRE(all_written(out, lse));
  for (index_t i = 0; i < sequences; ++i) {
    INFO("sequence " << i);
    paged_result got;
    got.rows = slice_result(out, lse, b.q_indptr[i], b.q_indptr[i + 1]);
    got.mass = masses[static_cast<std::size_t>(i)];
    if (got == paged_alone(b, i, observe, serial{})) continue;
    CHECK(got == paged_alone(b, i, observe, executor));
  }
}

}  // namespace

TEST_CASE("attention_batch: paged caches over a shared pool equal per-sequence calls", "[batch]") {
  attnkit::parallel::thread_pool pool(2);
  reverse_engine engine;
  for (index_t page_size : {16, 5}) {
    std::vector<sequence_shape> seqs{{1, 500}, {1, 33}, {4, 70},  {1, 0},
                                     {1, 1},   {0, 9},  {1, 130}, {2, 2}};
    for (index_t i = 0; i < 12; ++i) seqs.push_back({1, 20 + 3 * i});  // narrow ones
    const paged_batch b(seqs, page_size);
    const std::string label = "pages of " + std::to_string(page_size);
    check_paged(b, false, pool, label + ", pool");
    check_paged(b, true, pool, label + ", pool");
    check_paged(b, true, engine, label + ", engine");
  }
}

TEST_CASE("attention_batch: invalid arguments throw attnkit::error and write nothing", "[batch]") {
  const packed_batch<float, half> b({{1, 10}, {3, 3}, {1, 40}}, 8, 2, 64, 5);
  tensor3<float> out = make_tensor3<float>(b.q_indptr.back(), 8, 64);
  const std::vector<float> before = out.snapshot();
  auto run = [&](std::vector<index_t> q_indptr, std::vector<index_t> kv_indptr,
                 const attnkit::attention_options& options = {},
                 std::span<const attnkit::attention_observer> observers = {}) {
    attnkit::attention_batch(
        attnkit::cpu, b.q.cview(), b.k.cview(), b.v.cview(), out.view(),
        batch_layout{.q_indptr = q_indptr, .kv_indptr = kv_indptr, .observers = observers},
        attnkit::causal{}, options);
  };
  using Catch::Matchers::Contains;
  const std::vector<index_t> q_ok = b.q_indptr, kv_ok = b.kv_indptr;
  CHECK_THROWS_WITH(run({}, kv_ok), Contains("q_indptr is empty"));
  CHECK_THROWS_WITH(run({0, 1, 5}, kv_ok),
                    Contains("kv_indptr has 4 entries but a batch of 2 sequences needs 3"));
  CHECK_THROWS_WITH(run({1, 1, 4, 5}, kv_ok), Contains("q_indptr[0] is 1, it must be 0"));
  CHECK_THROWS_WITH(run({0, 4, 1, 5}, kv_ok),
                    Contains("q_indptr[2] (1) is less than q_indptr[1] (4)"));
  CHECK_THROWS_WITH(run({0, 1, 4, 6}, kv_ok),
                    Contains("q_indptr[3] is 6 but q tokens (q extent 0) is 5"));
  CHECK_THROWS_WITH(run(q_ok, {0, 10, 13, 52}),
                    Contains("kv_indptr[3] is 52 but k tokens (k extent 0) is 53"));

  // The checks of one sequence: its mask against its own shape (a block layout for another
  // length), found before any sequence runs, here in the last sequence.
  {
    std::vector<float> small(2 * 20, 0.0f), big(2 * 40, 0.0f);
    attnkit::accumulate_key_mass fits(tensor_view<float, 2>(big.data(), {2, 40}));
    attnkit::accumulate_key_mass too_small(tensor_view<float, 2>(small.data(), {2, 20}));
    const std::vector<attnkit::attention_observer> observers{fits, fits, too_small};
    CHECK_THROWS_WITH(run(q_ok, kv_ok, {}, observers),
                      Contains("mass extent 1 is 20 but the call has 40 keys"));
    CHECK(std::all_of(big.begin(), big.end(), [](float x) { return x == 0.0f; }));
    const std::vector<attnkit::attention_observer> two{fits, fits};
    CHECK_THROWS_WITH(run(q_ok, kv_ok, {}, two),
                      Contains("batch.observers has 2 entries for 3 sequences"));
    attnkit::attention_options shared;
    shared.observer = fits;
    CHECK_THROWS_WITH(run(q_ok, kv_ok, shared), Contains("options.observer is set"));
  }
  {
    std::vector<float> lse(8 * 4);
    attnkit::attention_options o;
    o.log_sum_exp = tensor_view<float, 2>(lse.data(), {8, 4});
    CHECK_THROWS_WITH(run(q_ok, kv_ok, o), Contains("log_sum_exp extent 1 is 4 but q tokens is 5"));
  }
  CHECK(out.unchanged_since(before));

  // Paged: one view per sequence, no kv_indptr, every view checked.
  const paged_batch p({{1, 20}, {2, 30}}, 16);
  tensor3<float> paged_out = make_tensor3<float>(p.q_indptr.back(), p.q_heads, p.head_dim);
  const std::vector<float> paged_before = paged_out.snapshot();
  auto views = p.views();
  auto run_paged = [&](const std::vector<attnkit::paged_kv_view<const half>>& v,
                       std::span<const index_t> kv_indptr = {}) {
    attnkit::attention_batch(attnkit::cpu, p.q.cview(), v, paged_out.view(),
                             batch_layout{.q_indptr = p.q_indptr, .kv_indptr = kv_indptr},
                             attnkit::causal{});
  };
  CHECK_THROWS_WITH(run_paged({views[0]}), Contains("kv has 1 views for 2 sequences"));
  const std::vector<index_t> stray{0, 20, 50};
  CHECK_THROWS_WITH(run_paged(views, stray), Contains("kv_indptr has 3 entries; the paged call"));
  auto wrong_dim = views;
  wrong_dim[1].head_dim = 64;
  CHECK_THROWS_WITH(run_paged(wrong_dim), Contains("kv.head_dim is 64 but q head_dim is 128"));
  CHECK(paged_out.unchanged_since(paged_before));
}
