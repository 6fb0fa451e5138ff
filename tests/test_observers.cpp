// Observers on attnkit::cpu: accumulate_key_mass and custom observers against the probabilities
// the fp64 reference delivers to its own observer, for decode (split-KV included), prefill windows
// of the last queries, masks (windows, per-head windows, Quest layouts), accumulation across
// calls, the delivery contract of core/observer.hpp, and argument errors.
//
// Tolerance for one probability p (the kernel's) against p_ref (the reference's fp64 value,
// rounded once to float). The kernel computes p = 2^(s2 - lse2) from the base-2 logit s2 it kept
// and the row's final base-2 log-sum-exp, in fp32. With x = ln p_ref:
//   * the logit is off by at most δs (support/harness.hpp's logit error) and the log-sum-exp by
//     at most the harness's lse tolerance δlse = δs + eps·(24 + 2·sqrt(n_kv)) + 8·eps·|lse|, the
//     sqrt(n_kv) term being the fp32 accumulation of the row's sum over its n_kv keys;
//     exp turns an absolute error of the exponent into the same relative error of p;
//   * s2 - lse2 rounds by eps·|x| relative to the exponent (again relative in p), the fast exp2
//     errs by ~2 ulp and both sides round to float once (eps each): eps·(|x| + 6) altogether;
//   * the fast exp2 returns exact zero below 2^-126, and turning a kept value into a probability
//     flushes results below 2^-125 to zero (scale_by_exp2 keeps a rounding step of margin above
//     the subnormals), so a p_ref under 2^-125 — or just above it, with the logit error — may
//     come out as 0.
// So |p - p_ref| <= p_ref·(δs + δlse + eps·(|x| + 6)) + 2^-125. accumulate_key_mass adds the
// rows of a KV head in float: each addition rounds by eps relative to the running sum, which is at
// most the final entry, so an entry that received `adds` rows may err by a further
// adds·eps·|entry|. Keys that no observed row can see must come out as exactly 0 (their logits
// never exist).
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "attnkit/attention/key_mass.hpp"
#include "attnkit/attention/quest.hpp"
#include "attnkit/mask/block_sparse.hpp"
#include "attnkit/mask/sliding_window.hpp"
#include "support/masked_harness.hpp"

using namespace attnkit_test;
using attnkit::accumulate_key_mass;
using attnkit::observed_row;
using attnkit::sliding_window;

namespace {

constexpr double eps = 0x1p-24;
constexpr attnkit::backend::reference reference{};

const any_mask causal_mask(attnkit::causal{}, "causal");
const any_mask full_mask(attnkit::full{}, "full");

// Every row an observer receives, with the thread it arrived on. Rows of different KV heads may
// arrive concurrently, hence the lock.
struct row_collector {
  struct row {
    index_t token, head, kv_head;
    std::vector<float> probabilities;
    std::thread::id thread;
  };
  std::mutex lock;
  std::vector<row> rows;

  void operator()(const observed_row& r) {
    const std::lock_guard<std::mutex> guard(lock);
    rows.push_back({r.q_token, r.q_head, r.kv_head,
                    std::vector<float>(r.probabilities.begin(), r.probabilities.end()),
                    std::this_thread::get_id()});
  }
};

// The reference's observed rows, with their log-sum-exp and the error model of the case.
struct reference_rows {
  std::vector<row_collector::row> rows;
  std::vector<float> lse;  // [q_heads, q_tokens]
  error_model model;
  index_t q_tokens = 0;

  float lse_of(const row_collector::row& r) const {
    return lse[static_cast<std::size_t>(r.head * q_tokens + r.token)];
  }
  // Allowed |p - p_ref| for one probability of row r (see the top of the file).
  double allowed(const row_collector::row& r, double p_ref) const {
    if (p_ref == 0.0) return 0x1p-125;
    const double lse_error = model.lse_tolerance().allowed(lse_of(r));
    return p_ref * (model.logit_error() + lse_error + eps * (std::fabs(std::log(p_ref)) + 6.0)) +
           0x1p-125;
  }
};

template <class TQ, class TKV>
reference_rows observe_reference(const attention_case& c, const attention_inputs<TQ, TKV>& in,
                                 const any_mask& mask, index_t last_queries) {
  row_collector collector;
  auto out = make_tensor3<float>(c.q_tokens, c.q_heads, c.head_dim);
  auto lse = make_lse(c.q_heads, c.q_tokens);
  std::vector<float> slopes;
  attnkit::attention_options options = make_options(c, slopes, lse.view());
  options.observer = attnkit::attention_observer(collector, last_queries);
  attnkit::attention(reference, in.q.cview(), in.k.cview(), in.v.cview(), out.view(), mask,
                     options);
  return {std::move(collector.rows), lse.storage, model_for(c, in), c.q_tokens};
}

// The mass the reference's rows add to [kv_heads, capacity], with its tolerance, and which keys
// some observed row of the KV head can see.
struct mass_expectation {
  index_t kv_heads = 0, capacity = 0;
  std::vector<double> mass, allowed;
  std::vector<index_t> adds;     // rows added into each entry
  std::vector<bool> visible;     // some observed row of the KV head sees the key
  std::vector<double> row_sums;  // per KV head: observed rows that see a key (each sums to 1)

  mass_expectation(index_t heads, index_t keys)
      : kv_heads(heads),
        capacity(keys),
        mass(static_cast<std::size_t>(heads * keys), 0.0),
        allowed(mass.size(), 0.0),
        adds(mass.size(), 0),
        visible(mass.size(), false),
        row_sums(static_cast<std::size_t>(heads), 0.0) {}

  std::size_t at(index_t kv_head, index_t key) const {
    return static_cast<std::size_t>(kv_head * capacity + key);
  }

  // roundings: how many times the kernel may round a kept value to fp16 before adding it (0:
  // fp32 kept values), each off by at most 2^-11 of itself plus 2^-25 (core/observer.hpp).
  void add(const attention_case& c, const reference_rows& ref, const any_mask& mask,
           int roundings = 0) {
    for (const auto& r : ref.rows) {
      const position p = c.kv_tokens - c.q_tokens + r.token;
      bool sees = false;
      for (index_t j = 0; j < c.kv_tokens; ++j) {
        const double p_ref = r.probabilities[static_cast<std::size_t>(j)];
        const std::size_t i = at(r.kv_head, j);
        mass[i] += p_ref;
        allowed[i] += ref.allowed(r, p_ref) + roundings * (0x1p-11 * p_ref + 0x1p-25);
        ++adds[i];
        if (mask.allows(p, j, r.head)) {
          visible[i] = true;
          sees = true;
        }
      }
      if (sees) row_sums[static_cast<std::size_t>(r.kv_head)] += 1.0;
    }
  }
};

// Compares a mass table (which started as `base` everywhere) with the expectation: every entry
// within tolerance, entries no observed row sees exactly `base`, and each KV head's sum equal to
// the number of its observed rows that see a key.
inline void check_mass(tensor_view<const float, 2> got, float base, const mass_expectation& e,
                       const std::string& label) {
  INFO(label);
  index_t violations = 0, hidden_nonzero = 0;
  double worst_ratio = 0.0;
  std::string worst;
  for (index_t h = 0; h < e.kv_heads; ++h) {
    double sum = 0.0, sum_allowed = 0.0;
    for (index_t j = 0; j < e.capacity; ++j) {
      const std::size_t i = e.at(h, j);
      const double value = static_cast<double>(got(h, j));
      const double expected = base + e.mass[i];
      if (!e.visible[i]) {
        if (value != base) ++hidden_nonzero;
        continue;
      }
      const double allowed =
          e.allowed[i] + static_cast<double>(e.adds[i] + 1) * eps * std::fabs(expected);
      const double error = std::fabs(value - expected);
      if (!(error <= allowed)) ++violations;
      if (!(error <= worst_ratio * allowed)) {
        worst_ratio = error / allowed;
        std::ostringstream s;
        s << "worst entry [kv head " << h << ", key " << j << "]: got " << value << ", expected "
          << expected << ", allowed " << allowed;
        worst = s.str();
      }
      sum += value - base;
      sum_allowed += allowed;
    }
    INFO("KV head " << h << ": mass sums to " << sum << ", expected "
                    << e.row_sums[static_cast<std::size_t>(h)] << " (rows that see a key), allowed "
                    << sum_allowed);
    CHECK(std::fabs(sum - e.row_sums[static_cast<std::size_t>(h)]) <= sum_allowed);
  }
#if defined(ATTNKIT_TEST_PRINT_RATIOS)
  // Calibration aid: how close the entries come to their tolerance (1.0 = at the limit).
  std::printf("ratio mass %.4f | %s\n", worst_ratio, label.c_str());
#endif
  INFO(worst);
  CHECK(violations == 0);
  CHECK(hidden_nonzero == 0);
}

std::string describe(const attention_case& c, const any_mask& mask, index_t last_queries,
                     const any_executor* executor) {
  std::ostringstream s;
  s << "q " << c.q_tokens << " x " << c.q_heads << " heads, kv " << c.kv_tokens << " x "
    << c.kv_heads << " heads, d " << c.head_dim << ", mask " << mask.name() << ", last_queries "
    << last_queries
    << (executor == wide_executor()     ? ", wide executor"
        : executor == serial_executor() ? ", serial executor"
                                        : "")
    << ", seed " << c.seed;
  return s.str();
}

// Runs attnkit::cpu with accumulate_key_mass (mass starting at 0) and checks the mass against the
// reference's probabilities; also that observing changes neither output nor log-sum-exp by a bit.
// With observed_precision::half, each kept value may be rounded `roundings` times.
template <class TO, class TQ, class TKV>
void check_key_mass(const attention_case& c, const attention_inputs<TQ, TKV>& in,
                    const any_mask& mask, index_t last_queries,
                    const any_executor* executor = nullptr,
                    attnkit::observed_precision precision = attnkit::observed_precision::single,
                    int roundings = 1) {
  const bool half = precision == attnkit::observed_precision::half;
  const std::string label =
      describe(c, mask, last_queries, executor) + (half ? ", kept in fp16" : "");
  mass_expectation expected(c.kv_heads, c.kv_tokens);
  expected.add(c, observe_reference(c, in, mask, last_queries), mask, half ? roundings : 0);

  std::vector<float> mass(static_cast<std::size_t>(c.kv_heads * c.kv_tokens), 0.0f);
  const tensor_view<float, 2> mass_view(mass.data(), {c.kv_heads, c.kv_tokens});
  accumulate_key_mass key_mass(mass_view, last_queries, precision);
  kernel_result<TO> observed{make_tensor3<TO>(c.q_tokens, c.q_heads, c.head_dim),
                             make_lse(c.q_heads, c.q_tokens)};
  std::vector<float> slopes;
  attnkit::attention_options options = make_options(c, slopes, observed.lse.view());
  options.observer = key_mass;
  cpu_masked{executor}(in.q.cview(), in.k.cview(), in.v.cview(), observed.out.view(), mask,
                       options);
  check_mass(tensor_view<const float, 2>(mass_view), 0.0f, expected, label);

  const kernel_result<TO> plain = run_masked<TO>(c, in, mask, executor);
  INFO(label);
  CHECK(identical_bits(plain.out.storage, observed.out.storage));
  CHECK(identical_bits(plain.lse.storage, observed.lse.storage));
}

std::string window_name(const sliding_window& w) {
  std::ostringstream s;
  s << "window{" << w.left << ", " << w.right << ", " << w.sinks << ", " << w.dilation << "}";
  return s.str();
}

}  // namespace

TEST_CASE("observers: decode key mass matches the reference and sums to the group size",
          "[observers][decode]") {
  // One query token: the mass of a KV head is the sum of its group's probability rows, so each
  // KV head's mass sums to group_size. The long caches split the keys across threads (on the
  // default pool as soon as the machine has two threads; always on the wide executor): the
  // probabilities must use the merged log-sum-exp, not a split's. On the serial executor, 4 or
  // more KV heads give one unsplit item per head, which adds its own rows (GQA 1, 4 and 16).
  struct run {
    attention_case c;
    const any_mask* mask;
    const any_executor* executor;
  };
  std::uint64_t seed = 30000;
  for (run r : {run{shape(1, 257, 8, 2, 128), &full_mask, nullptr},
                run{shape(1, 1000, 32, 8, 64), &causal_mask, nullptr},
                run{shape(1, 3000, 8, 1, 128), &causal_mask, wide_executor()},
                run{shape(1, 5000, 4, 4, 80), &full_mask, wide_executor()},
                run{shape(1, 20000, 16, 1, 64), &causal_mask, nullptr},
                run{shape(1, 12000, 8, 2, 64), &full_mask, wide_executor()},
                run{shape(1, 3000, 16, 4, 128), &causal_mask, serial_executor()},
                run{shape(1, 2500, 8, 8, 96), &full_mask, serial_executor()},
                run{shape(1, 1500, 64, 4, 80), &causal_mask, serial_executor()}}) {
    r.c.seed = ++seed;
    const auto in = make_inputs<float, float>(r.c);
    check_key_mass<float>(r.c, in, *r.mask, 1, r.executor);
  }
  // 16-bit caches and the all-bf16 combination.
  attention_case c = shape(1, 4099, 8, 2, 128);
  c.seed = ++seed;
  check_key_mass<float>(c, make_inputs<float, attnkit::half>(c), causal_mask, 1, wide_executor());
  check_key_mass<attnkit::bfloat16>(c, make_inputs<attnkit::bfloat16, attnkit::bfloat16>(c),
                                    causal_mask, 1, wide_executor());
  c = shape(1, 4099, 16, 4, 128);
  c.seed = ++seed;
  check_key_mass<float>(c, make_inputs<float, attnkit::half>(c), causal_mask, 1, serial_executor());
}

TEST_CASE("observers: steep logit ramps (ALiBi, large logits) keep exact probabilities",
          "[observers][decode][prefill]") {
  // The kernels keep 2^(s - reference) per (row, work item) and rebase a row's kept keys when
  // its running maximum climbs more than 64 (base 2) above the reference. Steep ALiBi slopes
  // make the logits of a decode query climb with every key (far keys underflow to exactly 0,
  // near keys carry the mass), so rows rebase span after span; large logits (q_sd 30) move the
  // maximum by hundreds at random points. Both on one split and split across threads.
  std::uint64_t seed = 30500;
  for (const any_executor* executor :
       {static_cast<const any_executor*>(nullptr), wide_executor()}) {
    attention_case c = shape(1, 3001, 8, 2, 64);
    c.alibi = {0.03f, 0.25f, 1.0f, 4.0f, 0.5f, 2.0f, 8.0f, 0.1f};
    c.seed = ++seed;
    check_key_mass<float>(c, make_inputs<float, float>(c), causal_mask, 1, executor);
    c = shape(1, 4099, 8, 2, 128);
    c.q_sd = 30.0;
    c.seed = ++seed;
    check_key_mass<float>(c, make_inputs<float, attnkit::half>(c), full_mask, 1, executor);
  }
  {  // The same ramps where each unsplit item adds its own rows (serial executor, 4 KV heads).
    attention_case c = shape(1, 3001, 8, 4, 64);
    c.alibi = {0.03f, 0.25f, 1.0f, 4.0f, 0.5f, 2.0f, 8.0f, 0.1f};
    c.seed = ++seed;
    check_key_mass<float>(c, make_inputs<float, float>(c), causal_mask, 1, serial_executor());
    c = shape(1, 4099, 8, 4, 128);
    c.q_sd = 30.0;
    c.seed = ++seed;
    check_key_mass<float>(c, make_inputs<float, attnkit::half>(c), full_mask, 1, serial_executor());
  }
  // Prefill's observation window (the column kernel) under the same ramps.
  attention_case c = shape(40, 700, 8, 2, 64);
  c.alibi = {0.03f, 0.25f, 1.0f, 4.0f, 0.5f, 2.0f, 8.0f, 0.1f};
  c.seed = ++seed;
  check_key_mass<float>(c, make_inputs<float, float>(c), causal_mask, 24);
}

TEST_CASE("observers: key mass kept in fp16 (observed_precision::half) within its rounding",
          "[observers][decode][prefill]") {
  // The kernel keeps the rows in fp16 and adds them to the table directly: each probability
  // within the fp32 model's tolerance plus 2^-11 of itself and 2^-25 per rounding — once, where
  // no row rebases; under steep ramps a value is rounded again at each rebase, but a rebase
  // shrinks it below 2^-15 of the new maximum, so after four roundings it is 0 (rounded at most
  // 4 times with an error). Decode on one split and split across threads, 16-bit caches, ALiBi
  // ramps, large logits, a prefill window (the column kernel's strided keep). The fp16 table
  // must also differ from the fp32 one: otherwise nothing was rounded and this tests nothing.
  constexpr auto half = attnkit::observed_precision::half;
  std::uint64_t seed = 30600;
  for (const any_executor* executor :
       {static_cast<const any_executor*>(nullptr), wide_executor()}) {
    attention_case c = shape(1, 5000, 8, 2, 128);
    c.seed = ++seed;
    check_key_mass<float>(c, make_inputs<float, attnkit::half>(c), causal_mask, 1, executor, half);
    c = shape(1, 3001, 8, 2, 64);
    c.alibi = {0.03f, 0.25f, 1.0f, 4.0f, 0.5f, 2.0f, 8.0f, 0.1f};
    c.seed = ++seed;
    check_key_mass<float>(c, make_inputs<float, float>(c), causal_mask, 1, executor, half, 4);
    c = shape(1, 4099, 8, 2, 128);
    c.q_sd = 30.0;
    c.seed = ++seed;
    check_key_mass<float>(c, make_inputs<float, attnkit::half>(c), full_mask, 1, executor, half, 4);
  }
  {  // Each unsplit item adds its own rows (serial executor, 4 KV heads), ramps included.
    attention_case c = shape(1, 5000, 16, 4, 128);
    c.seed = ++seed;
    check_key_mass<float>(c, make_inputs<float, attnkit::half>(c), causal_mask, 1,
                          serial_executor(), half);
    c = shape(1, 3001, 8, 4, 64);
    c.alibi = {0.03f, 0.25f, 1.0f, 4.0f, 0.5f, 2.0f, 8.0f, 0.1f};
    c.seed = ++seed;
    check_key_mass<float>(c, make_inputs<float, float>(c), causal_mask, 1, serial_executor(), half,
                          4);
  }
  attention_case c = shape(40, 700, 8, 2, 64);
  c.seed = ++seed;
  check_key_mass<float>(c, make_inputs<float, float>(c), causal_mask, 24, nullptr, half);

  c = shape(1, 3001, 16, 4, 128);
  c.seed = ++seed;
  const auto in = make_inputs<float, attnkit::half>(c);
  std::vector<std::vector<float>> tables;
  for (auto precision : {attnkit::observed_precision::single, half}) {
    std::vector<float> mass(static_cast<std::size_t>(c.kv_heads * c.kv_tokens), 0.0f);
    accumulate_key_mass key_mass({mass.data(), {c.kv_heads, c.kv_tokens}}, 1, precision);
    auto out = make_tensor3<float>(c.q_tokens, c.q_heads, c.head_dim);
    attnkit::attention_options options;
    options.observer = key_mass;
    cpu_masked{wide_executor()}(in.q.cview(), in.k.cview(), in.v.cview(), out.view(), causal_mask,
                                options);
    tables.push_back(std::move(mass));
  }
  CHECK(!identical_bits(tables[0], tables[1]));
}

TEST_CASE("observers: the kernel's direct key-mass sum equals adding the delivered rows",
          "[observers][decode][prefill]") {
  // accumulate_key_mass exposes key_mass_row(), so the SIMD kernel adds its rows into the table
  // itself, 1024 keys at a time; a callable that adds the same rows from observed_row gets them
  // materialised one by one. Same additions in the same order: the tables must be bit-identical
  // (keys past a chunk boundary, windows cutting chunks, a split decode, a prefill window).
  struct run {
    attention_case c;
    any_mask mask;
    index_t last_queries;
  };
  std::uint64_t seed = 30700;
  // On the serial executor, each unsplit item of a 4-KV-head decode adds its own rows, whole
  // chunks in one pass over the table and chunks a window cuts row by row.
  for (run r : {run{shape(1, 5000, 8, 2, 64), any_mask(sliding_window{1500, 0, 4}, "window"), 1},
                run{shape(1, 3001, 16, 4, 128), causal_mask, 1},
                run{shape(48, 2100, 8, 2, 64), causal_mask, 17},
                run{shape(1, 5000, 16, 4, 64), any_mask(sliding_window{1500, 0, 4}, "window"), 1},
                run{shape(1, 2100, 64, 4, 80), full_mask, 1},
                run{shape(20, 2100, 16, 4, 64), causal_mask, 5}})
    for (const any_executor* executor : {wide_executor(), serial_executor()}) {
      r.c.seed = ++seed;
      const auto in = make_inputs<float, attnkit::half>(r.c);
      const auto table_size = static_cast<std::size_t>(r.c.kv_heads * r.c.kv_tokens);
      std::vector<float> direct(table_size, 0.25f), by_rows(table_size, 0.25f);
      accumulate_key_mass key_mass({direct.data(), {r.c.kv_heads, r.c.kv_tokens}}, r.last_queries);
      row_adder adder{{by_rows.data(), {r.c.kv_heads, r.c.kv_tokens}}};
      for (int pass = 0; pass < 2; ++pass) {
        auto out = make_tensor3<float>(r.c.q_tokens, r.c.q_heads, r.c.head_dim);
        attnkit::attention_options options;
        options.observer = pass == 0 ? attnkit::attention_observer(key_mass)
                                     : attnkit::attention_observer(adder, r.last_queries);
        cpu_masked{executor}(in.q.cview(), in.k.cview(), in.v.cview(), out.view(), r.mask, options);
      }
      INFO(describe(r.c, r.mask, r.last_queries, executor));
      CHECK(identical_bits(direct, by_rows));
      CHECK(direct != std::vector<float>(table_size, 0.25f));
    }
}

TEST_CASE("observers: decode key mass under masks (windows, per-head windows, Quest)",
          "[observers][decode][masks]") {
  // Keys a mask hides must get exactly zero mass. Windows far smaller than a split and one
  // spanning several; per-head windows (per-head decode jobs, heads of a group differ); Quest
  // pages (per-head layouts, single-key pages included).
  std::uint64_t seed = 31000;
  attention_case c = shape(1, 5000, 8, 2, 128);
  c.seed = ++seed;
  const auto in = make_inputs<float, float>(c);
  attention_case unsplit = shape(1, 5000, 16, 4, 64);  // serial: items add their own rows
  unsplit.seed = ++seed;
  const auto unsplit_in = make_inputs<float, float>(unsplit);
  for (const sliding_window& w :
       {sliding_window{17, 0, 4}, sliding_window{100, 0, 0, 3}, sliding_window{2000, 0, 4}}) {
    for (const any_executor* executor :
         {static_cast<const any_executor*>(nullptr), wide_executor()})
      check_key_mass<float>(c, in, any_mask(w, window_name(w)), 1, executor);
    check_key_mass<float>(unsplit, unsplit_in, any_mask(w, window_name(w)), 1, serial_executor());
  }

  const std::vector<sliding_window> table = {{0, 0}, {17, 0, 4}, {100, 0, 0, 2}, {4000, 0},
                                             {1, 0}, {64, 64},   {5, 0, 4, 3},   {2000, 0, 4}};
  check_key_mass<float>(c, in,
                        any_mask(attnkit::sliding_window_per_head{table}, "per-head windows"), 1,
                        wide_executor());

  for (index_t page_size : {1, 16, 64}) {
    attnkit::page_bounds bounds(page_size, c.kv_heads, c.head_dim, c.kv_tokens);
    bounds.update(reference, in.k.cview());
    attnkit::block_layout layout;
    attnkit::quest_select(reference, in.q.cview(), bounds, 1024 / page_size, layout);
    check_key_mass<float>(
        c, in, any_mask(attnkit::block_sparse{layout}, "Quest page " + std::to_string(page_size)),
        1, wide_executor());
  }
}

TEST_CASE("observers: prefill key mass over a window of the last queries", "[observers][prefill]") {
  // SnapKV's observation window: the last 1, 7, or more queries than the call has (then every
  // query). With n_q > n_kv the first rows see nothing and add nothing.
  std::uint64_t seed = 32000;
  for (attention_case c : {shape(65, 65, 8, 2, 64), shape(100, 300, 4, 1, 32),
                           shape(20, 10, 4, 2, 32), shape(3, 2000, 4, 1, 64)}) {
    c.seed = ++seed;
    const auto in = make_inputs<float, float>(c);
    const any_executor* executor = c.q_tokens <= 3 ? wide_executor() : nullptr;
    for (index_t last : {index_t{1}, index_t{7}, c.q_tokens + 100})
      check_key_mass<float>(c, in, causal_mask, last, executor);
  }
  // Prefill under a window and per-head windows.
  attention_case c = shape(130, 130, 8, 2, 64);
  c.seed = ++seed;
  const auto in = make_inputs<float, float>(c);
  check_key_mass<float>(c, in, any_mask(sliding_window{31, 0, 4}, "window{31, 0, 4}"), 40);
  const std::vector<sliding_window> table = {{0, 0}, {17, 0, 4}, {100, 0, 0, 2}, {4000, 0},
                                             {1, 0}, {64, 64},   {5, 0, 4, 3},   {2000, 0, 4}};
  check_key_mass<float>(c, in,
                        any_mask(attnkit::sliding_window_per_head{table}, "per-head windows"), 9);
}

TEST_CASE("observers: key mass accumulates across calls and leaves the rest of the table alone",
          "[observers][accumulate]") {
  // Two decode steps (the cache grows by one token) into one table of capacity 1100, every entry
  // starting at 0.25: the result is 0.25 + step 1 + step 2 where keys are seen and 0.25 exactly
  // elsewhere, keys past the cache included. Once contiguous, once through a strided view.
  for (const bool strided : {false, true}) {
    const index_t kv_heads = 2, q_heads = 8, d = 64, capacity = 1100;
    attention_case first = shape(1, 1000, q_heads, kv_heads, d);
    first.seed = 33000;
    attention_case second = shape(1, 1001, q_heads, kv_heads, d);
    second.seed = 33001;
    const auto in_first = make_inputs<float, float>(first);
    const auto in_second = make_inputs<float, float>(second);
    const any_mask window(sliding_window{600, 0, 4}, "window{600, 0, 4}");

    const index_t step = strided ? 2 : 1;
    std::vector<float> storage(static_cast<std::size_t>(kv_heads * capacity * step), 0.25f);
    const tensor_view<float, 2> mass(storage.data(), {kv_heads, capacity}, {capacity * step, step});
    accumulate_key_mass key_mass(mass, 1);
    for (const auto* run : {&first, &second}) {
      const auto& in = run == &first ? in_first : in_second;
      auto out = make_tensor3<float>(run->q_tokens, run->q_heads, run->head_dim);
      attnkit::attention_options options;
      options.observer = key_mass;
      cpu_attention_masked(erase(in.q.cview()), erase(in.k.cview()), erase(in.v.cview()),
                           erase(out.view()), window, options, wide_executor());
    }
    mass_expectation expected(kv_heads, capacity);
    expected.add(first, observe_reference(first, in_first, window, 1), window);
    expected.add(second, observe_reference(second, in_second, window, 1), window);
    check_mass(tensor_view<const float, 2>(mass), 0.25f, expected,
               strided ? "two steps, strided table" : "two steps, contiguous table");
    if (strided)  // the elements between the view's entries are not the table's
      for (std::size_t i = 1; i < storage.size(); i += 2) REQUIRE(storage[i] == 0.25f);
  }
}

namespace {

// A row_collector that says how many last queries it wants and checks the call's shape.
struct windowed_collector : row_collector {
  index_t wanted = 3;
  index_t observed_queries() const { return wanted; }
  void check(const attnkit::attention_shape& shape) const {
    attnkit::detail::require(shape.kv_heads >= 1, "windowed_collector: no KV head");
  }
};

// Checks the delivery contract for the rows the CPU kernel delivered against the reference's.
void check_delivery(const attention_case& c, const any_mask& mask,
                    const std::vector<row_collector::row>& rows, const reference_rows& ref,
                    index_t last_queries, const std::string& label) {
  INFO(label);
  const index_t observed_tokens = std::min(last_queries, c.q_tokens);
  const index_t group = c.q_heads / c.kv_heads;
  CHECK(static_cast<index_t>(rows.size()) == observed_tokens * c.q_heads);
  std::map<std::pair<index_t, index_t>, const row_collector::row*> reference_by_row;
  for (const auto& r : ref.rows) reference_by_row[{r.token, r.head}] = &r;
  std::map<std::pair<index_t, index_t>, int> seen;
  std::map<index_t, std::thread::id> thread_of_kv_head;
  index_t bad_entries = 0, hidden_nonzero = 0;
  double worst_ratio = 0.0;
  for (const auto& r : rows) {
    INFO("row token " << r.token << " head " << r.head);
    CHECK(++seen[{r.token, r.head}] == 1);
    CHECK(r.token >= c.q_tokens - observed_tokens);
    CHECK(r.token < c.q_tokens);
    CHECK(r.head >= 0);
    CHECK(r.head < c.q_heads);
    CHECK(r.kv_head == r.head / group);
    REQUIRE(static_cast<index_t>(r.probabilities.size()) == c.kv_tokens);
    // Rows of one KV head come one after another on one thread.
    const auto [it, first] = thread_of_kv_head.emplace(r.kv_head, r.thread);
    CHECK((first || it->second == r.thread));
    const auto found = reference_by_row.find({r.token, r.head});
    REQUIRE(found != reference_by_row.end());
    const row_collector::row& expected = *found->second;
    double sum = 0.0, sum_allowed = 0.0, reference_sum = 0.0;
    for (index_t j = 0; j < c.kv_tokens; ++j) {
      const double p = r.probabilities[static_cast<std::size_t>(j)];
      const double p_ref = expected.probabilities[static_cast<std::size_t>(j)];
      const double allowed = ref.allowed(expected, p_ref);
      if (!(std::fabs(p - p_ref) <= allowed)) ++bad_entries;
      worst_ratio = std::max(worst_ratio, std::fabs(p - p_ref) / allowed);
      sum += p;
      sum_allowed += allowed;
      reference_sum += p_ref;
    }
    if (reference_sum == 0.0) {
      CHECK(sum == 0.0);  // a row that sees no key is all zeros
    } else {
      CHECK(std::fabs(sum - 1.0) <= sum_allowed);
    }
    // Keys the mask hides are exactly 0.
    const position p = c.kv_tokens - c.q_tokens + r.token;
    for (index_t j = 0; j < c.kv_tokens; ++j)
      if (!mask.allows(p, j, r.head) && r.probabilities[static_cast<std::size_t>(j)] != 0.0f)
        ++hidden_nonzero;
  }
#if defined(ATTNKIT_TEST_PRINT_RATIOS)
  std::printf("ratio probabilities %.4f | %s\n", worst_ratio, label.c_str());
#endif
  CHECK(bad_entries == 0);
  CHECK(hidden_nonzero == 0);
}

}  // namespace

TEST_CASE("observers: a custom observer gets every observed row exactly once",
          "[observers][contract]") {
  struct run {
    attention_case c;
    any_mask mask;
    index_t last_queries;
    const any_executor* executor;
  };
  const std::vector<sliding_window> table = {{0, 0}, {17, 0, 4}, {100, 0, 0, 2}, {4000, 0},
                                             {1, 0}, {64, 64},   {5, 0, 4, 3},   {2000, 0, 4}};
  std::uint64_t seed = 34000;
  for (run r : {run{shape(65, 65, 8, 2, 64), causal_mask, 7, nullptr},
                run{shape(10, 4, 4, 2, 32), causal_mask, 10, nullptr},
                run{shape(1, 3000, 8, 1, 128), causal_mask, 1, nullptr},
                run{shape(1, 3000, 8, 1, 128), full_mask, 1, wide_executor()},
                run{shape(1, 5000, 8, 2, 64), any_mask(sliding_window{100, 0, 4}, "window"), 1,
                    wide_executor()},
                run{shape(1, 3000, 8, 2, 64),
                    any_mask(attnkit::sliding_window_per_head{table}, "per-head windows"), 1,
                    wide_executor()},
                run{shape(3, 2000, 4, 1, 64), causal_mask, 2, wide_executor()}}) {
    r.c.seed = ++seed;
    const auto in = make_inputs<float, float>(r.c);
    const reference_rows ref = observe_reference(r.c, in, r.mask, r.last_queries);
    row_collector collector;
    auto out = make_tensor3<float>(r.c.q_tokens, r.c.q_heads, r.c.head_dim);
    attnkit::attention_options options;
    options.observer = attnkit::attention_observer(collector, r.last_queries);
    cpu_attention_masked(erase(in.q.cview()), erase(in.k.cview()), erase(in.v.cview()),
                         erase(out.view()), r.mask, options, r.executor);
    check_delivery(r.c, r.mask, collector.rows, ref, r.last_queries,
                   describe(r.c, r.mask, r.last_queries, r.executor));
  }
  // A type that says itself how many queries it observes (observed_queries()) and has check().
  attention_case c = shape(40, 100, 8, 2, 64);
  c.seed = ++seed;
  const auto in = make_inputs<float, float>(c);
  windowed_collector collector;
  auto out = make_tensor3<float>(c.q_tokens, c.q_heads, c.head_dim);
  attnkit::attention_options options;
  options.observer = collector;
  REQUIRE(options.observer.last_queries() == 3);
  cpu_attention_masked(erase(in.q.cview()), erase(in.k.cview()), erase(in.v.cview()),
                       erase(out.view()), causal_mask, options);
  check_delivery(c, causal_mask, collector.rows, observe_reference(c, in, causal_mask, 3), 3,
                 describe(c, causal_mask, 3, nullptr) + ", observed_queries() member");
}

TEST_CASE("observers: invalid observers throw attnkit::error before anything is written",
          "[observers][errors]") {
  // Both backends: output, log-sum-exp and the mass table must be exactly as before, and no row
  // may have been delivered.
  const attention_case c = shape(5, 50, 4, 2, 32);
  const auto in = make_inputs<float, float>(c);
  using Catch::Matchers::Contains;

  struct failing_check : row_collector {
    void check(const attnkit::attention_shape& shape) const {
      attnkit::detail::require(shape.q_tokens == 1, "failing_check: q_tokens is ", shape.q_tokens,
                               ", only decode is observed");
    }
  };

  for (const bool on_reference : {false, true}) {
    const std::string backend = on_reference ? "reference" : "cpu";
    auto run = [&](const attnkit::attention_options& options, const std::string& expected_text) {
      auto out = make_tensor3<float>(c.q_tokens, c.q_heads, c.head_dim);
      auto lse = make_lse(c.q_heads, c.q_tokens);
      attnkit::attention_options o = options;
      o.log_sum_exp = lse.view();
      const auto out_before = out.snapshot();
      const auto lse_before = lse.snapshot();
      INFO(backend << ": expecting an error containing '" << expected_text << "'");
      if (on_reference) {
        CHECK_THROWS_WITH(attnkit::attention(reference, in.q.cview(), in.k.cview(), in.v.cview(),
                                             out.view(), causal_mask, o),
                          Contains(expected_text));
        CHECK_THROWS_AS(attnkit::attention(reference, in.q.cview(), in.k.cview(), in.v.cview(),
                                           out.view(), causal_mask, o),
                        attnkit::error);
      } else {
        auto call = [&] {
          cpu_attention_masked(erase(in.q.cview()), erase(in.k.cview()), erase(in.v.cview()),
                               erase(out.view()), causal_mask, o);
        };
        CHECK_THROWS_WITH(call(), Contains(expected_text));
        CHECK_THROWS_AS(call(), attnkit::error);
      }
      CHECK(out.unchanged_since(out_before));
      CHECK(lse.unchanged_since(lse_before));
    };

    // Mass tables of the wrong extent.
    for (const auto& [heads, keys, text] :
         {std::tuple{c.kv_heads + 1, c.kv_tokens,
                     std::string("mass extent 0 is 3 but kv_heads is 2")},
          std::tuple{c.kv_heads, c.kv_tokens - 1,
                     std::string("mass extent 1 is 49 but the call has 50 keys")},
          std::tuple{index_t{1}, c.kv_tokens, std::string("mass extent 0 is 1")}}) {
      std::vector<float> mass(static_cast<std::size_t>(heads * keys), 0.5f);
      accumulate_key_mass key_mass({mass.data(), {heads, keys}}, 2);
      attnkit::attention_options options;
      options.observer = key_mass;
      run(options, text);
      CHECK(std::all_of(mass.begin(), mass.end(), [](float x) { return x == 0.5f; }));
    }
    // last_queries 0, given explicitly to attention_observer.
    {
      std::vector<float> mass(static_cast<std::size_t>(c.kv_heads * c.kv_tokens), 0.5f);
      accumulate_key_mass key_mass({mass.data(), {c.kv_heads, c.kv_tokens}}, 1);
      attnkit::attention_options options;
      options.observer = attnkit::attention_observer(key_mass, 0);
      run(options, "observer.last_queries is 0");
      CHECK(std::all_of(mass.begin(), mass.end(), [](float x) { return x == 0.5f; }));
      row_collector collector;
      options.observer = attnkit::attention_observer(collector, 0);
      run(options, "observer.last_queries is 0");
      CHECK(collector.rows.empty());
    }
    // An observer whose own check() refuses the call.
    {
      failing_check observer;
      attnkit::attention_options options;
      options.observer = observer;
      run(options, "failing_check: q_tokens is 5");
      CHECK(observer.rows.empty());
    }
  }
  // accumulate_key_mass itself refuses last_queries 0.
  std::vector<float> mass(static_cast<std::size_t>(c.kv_heads * c.kv_tokens), 0.0f);
  CHECK_THROWS_AS(accumulate_key_mass({mass.data(), {c.kv_heads, c.kv_tokens}}, 0), attnkit::error);
  CHECK_THROWS_WITH(accumulate_key_mass({mass.data(), {c.kv_heads, c.kv_tokens}}, 0),
                    Contains("attnkit::accumulate_key_mass: last_queries is 0"));
}
