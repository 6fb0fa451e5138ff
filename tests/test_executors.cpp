// Executors: parallel::serial, parallel::thread_pool and user-supplied engines (any callable
// executor(n, item)). The pool must run every index exactly once, propagate an item's exception,
// run nested calls serially instead of deadlocking, and serialise concurrent submissions; the
// attention kernels must give the same results whichever executor runs their items.
//
// "Same results": executors that report the same concurrency() (the only thing a kernel may base
// its work split on) must give bit-identical outputs; executors with different concurrency may
// split the KV range differently (flash-decoding) and are held to the fp64 reference instead.
#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstring>
#include <memory>
#include <mutex>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

#include "support/harness.hpp"

using namespace attnkit_test;
using attnkit::parallel::serial;
using attnkit::parallel::thread_pool;

namespace {

// An engine's own executor: runs items on its own std::threads (started per call), reports a
// concurrency of 3 and counts what it ran.
struct engine_pool {
  std::size_t calls = 0;
  std::size_t items = 0;
  std::size_t concurrency() const { return 3; }
  template <class Item>
  void operator()(std::size_t n, Item&& item) {
    ++calls;
    items += n;
    std::atomic<std::size_t> next{0};
    auto work = [&] {
      for (std::size_t i; (i = next.fetch_add(1)) < n;) item(n - 1 - i);  // reverse order
    };
    std::thread a(work), b(work);
    work();
    a.join();
    b.join();
  }
};

static_assert(attnkit::parallel::executor<serial>);
static_assert(attnkit::parallel::executor<thread_pool>);
static_assert(attnkit::parallel::executor<thread_pool&>);
static_assert(attnkit::parallel::executor<engine_pool>);

struct outputs {
  std::vector<float> out;
  std::vector<float> lse;
  bool operator==(const outputs& o) const {
    return out.size() == o.out.size() && lse.size() == o.lse.size() && !out.empty() &&
           !lse.empty() && std::memcmp(out.data(), o.out.data(), out.size() * sizeof(float)) == 0 &&
           std::memcmp(lse.data(), o.lse.data(), lse.size() * sizeof(float)) == 0;
  }
};

// Runs attnkit::attention(attnkit::cpu, ..., executor) directly (so the kernel is instantiated
// with this very executor type; causal only, to keep this file to one kernel instantiation) and
// returns the raw output and lse bits.
template <class Executor>
outputs run_with(const attention_case& c, const attention_inputs<float, float>& in,
                 Executor& executor) {
  auto out = make_tensor3<float>(c.q_tokens, c.q_heads, c.head_dim);
  auto lse = make_lse(c.q_heads, c.q_tokens);
  attnkit::attention(attnkit::cpu, in.q.cview(), in.k.cview(), in.v.cview(), out.view(),
                     attnkit::causal{}, lse_options(lse.view(), c.scale), executor);
  return {out.storage, lse.storage};
}

// Checks raw results against the reference run of evaluation `ref` with the case's error model.
void check_against(const evaluation& ref, const attention_case& c,
                   const attention_inputs<float, float>& in, const outputs& got, const char* who) {
  const error_model model = model_for(c, in);
  const comparison co = compare_output<float>(
      tensor_view<const float, 3>(got.out.data(), {c.q_tokens, c.q_heads, c.head_dim}),
      tensor_view<const float, 3>(ref.ref_out.data(), {c.q_tokens, c.q_heads, c.head_dim}),
      model.output_tolerance<float>());
  const comparison cl =
      compare_lse(tensor_view<const float, 2>(got.lse.data(), {c.q_heads, c.q_tokens}),
                  tensor_view<const float, 2>(ref.ref_lse.data(), {c.q_heads, c.q_tokens}),
                  model.lse_tolerance());
  INFO(who);
  INFO(co.describe());
  INFO(cl.describe());
  CHECK(co.ok());
  CHECK(cl.ok());
}

}  // namespace

TEST_CASE("executors: attention gives the same results on every executor", "[executors][cpu]") {
  std::uint64_t seed = 6000;
  for (attention_case c :
       {shape(130, 130, 8, 2, 64, mask_kind::causal), shape(1, 3000, 8, 1, 128, mask_kind::causal),
        shape(1, 2048, 2, 2, 64, mask_kind::causal),
        shape(40, 1100, 4, 1, 80, mask_kind::causal)}) {
    c.seed = ++seed;
    const auto in = make_inputs<float, float>(c);
    INFO((describe_case<float, float, float>(c)));

    serial s;
    thread_pool pool1(1), pool3(3);
    engine_pool engine;
    std::atomic<std::size_t> lambda_items{0};
    std::size_t lambda_calls = 0;
    auto recording = [&](std::size_t n, auto&& item) {
      ++lambda_calls;
      std::vector<int> seen(n, 0);
      for (std::size_t i = 0; i < n; ++i) {
        item(i);
        ++seen[i];
        ++lambda_items;
      }
      CHECK(std::all_of(seen.begin(), seen.end(), [](int x) { return x == 1; }));
    };
    auto& default_pool = attnkit::parallel::default_thread_pool();

    const outputs r_serial = run_with(c, in, s);
    const outputs r_pool1 = run_with(c, in, pool1);
    const outputs r_pool3 = run_with(c, in, pool3);
    const outputs r_pool3_again = run_with(c, in, pool3);
    const outputs r_engine = run_with(c, in, engine);
    const outputs r_lambda = run_with(c, in, recording);
    const outputs r_default = run_with(c, in, default_pool);

    // One reference run (through the harness, which also checks the sentinels) and every
    // executor's result against it.
    const evaluation ref = evaluate<float>(c, in, cpu_with<serial>{&s});
    require_ok(ref);
    check_against(ref, c, in, r_serial, "serial");
    check_against(ref, c, in, r_pool3, "thread_pool(3)");
    check_against(ref, c, in, r_lambda, "lambda");

    // concurrency 1: serial and a one-thread pool.
    CHECK(r_serial == r_pool1);
    // concurrency 3: the pool, again (determinism), and the engine running items in reverse on
    // its own threads.
    CHECK(r_pool3 == r_pool3_again);
    CHECK(r_pool3 == r_engine);
    // hardware_concurrency(): a lambda without concurrency() and the default pool.
    CHECK(r_lambda == r_default);
    // The kernel really used the executors it was given.
    CHECK(engine.calls >= 1);
    CHECK(engine.items >= 1);
    CHECK(lambda_calls >= 1);
    CHECK(lambda_items.load() >= 1);
  }
}

TEST_CASE("executors: the reference gives bit-identical results on every executor",
          "[executors][reference]") {
  attention_case c = shape(40, 90, 6, 2, 32, mask_kind::causal);
  c.seed = 6100;
  const auto in = make_inputs<float, float>(c);
  auto run = [&](auto& executor) {
    auto out = make_tensor3<float>(40, 6, 32);
    auto lse = make_lse(6, 40);
    attnkit::attention(attnkit::backend::reference{}, in.q.cview(), in.k.cview(), in.v.cview(),
                       out.view(), attnkit::causal{}, lse_options(lse.view()), executor);
    return outputs{out.storage, lse.storage};
  };
  serial s;
  thread_pool p3(3);
  engine_pool e;
  const outputs a = run(s);
  CHECK(a == run(p3));
  CHECK(a == run(e));
}

TEST_CASE("thread_pool: runs every index exactly once", "[executors][thread_pool]") {
  for (std::size_t threads : {1u, 2u, 3u, 8u}) {
    thread_pool pool(threads);
    CHECK(pool.concurrency() == threads);
    for (std::size_t n : {0u, 1u, 2u, 3u, 7u, 100u, 10007u}) {
      for (int repeat = 0; repeat < 3; ++repeat) {
        std::unique_ptr<std::atomic<int>[]> hits(new std::atomic<int>[n + 1]);
        for (std::size_t i = 0; i <= n; ++i) hits[i] = 0;
        pool(n, [&](std::size_t i) { hits[std::min(i, n)].fetch_add(1); });
        std::size_t wrong = 0;
        for (std::size_t i = 0; i < n; ++i) wrong += hits[i].load() != 1;
        CAPTURE(threads, n, repeat);
        CHECK(wrong == 0);
        CHECK(hits[n].load() == 0);  // no index >= n
      }
    }
  }
}

TEST_CASE("thread_pool: jobs back to back, while workers spin and after they sleep",
          "[executors][thread_pool]") {
  // A worker spins for the pool's `spin` after each job, then sleeps: a job published while it
  // spins, one after it slept, and pools that never spin must all run every item once.
  for (const auto spin : {std::chrono::microseconds(0), thread_pool::default_spin,
                          std::chrono::microseconds(20000)}) {
    thread_pool pool(3, spin);
    for (int job = 0; job < 60; ++job) {
      if (job % 20 == 19) std::this_thread::sleep_for(std::chrono::milliseconds(30));
      const std::size_t n = 1 + static_cast<std::size_t>(job % 7) * 5;
      std::atomic<std::size_t> sum{0};
      pool(n, [&](std::size_t i) { sum.fetch_add(i + 1); });
      CAPTURE(spin.count(), job);
      CHECK(sum.load() == n * (n + 1) / 2);
    }
  }
}

TEST_CASE("thread_pool: uses its worker threads", "[executors][thread_pool]") {
  // Every item waits (up to 10 s, so a loaded machine cannot make this flaky) until a second
  // thread has joined: with 3 threads the job cannot finish on the calling thread alone.
  thread_pool pool(3);
  std::mutex m;
  std::set<std::thread::id> ids;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  pool(12, [&](std::size_t) {
    {
      std::lock_guard lock(m);
      ids.insert(std::this_thread::get_id());
    }
    for (;;) {
      {
        std::lock_guard lock(m);
        if (ids.size() >= 2) break;
      }
      if (std::chrono::steady_clock::now() > deadline) break;
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  });
  CHECK(ids.size() >= 2);
  CHECK(ids.size() <= 3);
}

TEST_CASE("thread_pool: propagates an exception from an item", "[executors][thread_pool]") {
  for (std::size_t threads : {1u, 3u}) {
    thread_pool pool(threads);
    std::atomic<int> ran{0};
    CHECK_THROWS_WITH(pool(100,
                           [&](std::size_t i) {
                             ran.fetch_add(1);
                             if (i == 37) throw std::runtime_error("item 37 failed");
                           }),
                      "item 37 failed");
    CHECK(ran.load() >= 1);
    // Several items throwing: one of their exceptions comes out.
    CHECK_THROWS_AS(pool(50,
                         [](std::size_t i) {
                           if (i % 7 == 3) throw std::logic_error("x");
                         }),
                    std::logic_error);
    // The pool still works afterwards.
    std::atomic<int> count{0};
    pool(1000, [&](std::size_t) { count.fetch_add(1); });
    CHECK(count.load() == 1000);
  }
}

TEST_CASE("thread_pool: nested calls run serially on the calling thread",
          "[executors][thread_pool]") {
  thread_pool pool(3);
  std::atomic<int> inner_total{0};
  std::atomic<int> inner_on_other_thread{0};
  pool(20, [&](std::size_t) {
    const auto outer = std::this_thread::get_id();
    pool(30, [&](std::size_t) {
      inner_total.fetch_add(1);
      if (std::this_thread::get_id() != outer) inner_on_other_thread.fetch_add(1);
    });
  });
  CHECK(inner_total.load() == 600);
  CHECK(inner_on_other_thread.load() == 0);

  // Attention inside an item of the pool it is given (an engine that parallelises over
  // sequences with the same pool): runs serially inside, and is still right.
  attention_case c = shape(33, 70, 4, 2, 64, mask_kind::causal);
  c.seed = 6200;
  const auto in = make_inputs<float, float>(c);
  std::vector<tensor3<float>> outs;
  for (int s = 0; s < 4; ++s) outs.push_back(make_tensor3<float>(33, 4, 64));
  pool(4, [&](std::size_t s) {
    attnkit::attention(attnkit::cpu, in.q.cview(), in.k.cview(), in.v.cview(), outs[s].view(),
                       attnkit::causal{}, attnkit::attention_options{}, pool);
  });
  auto ref = make_tensor3<float>(33, 4, 64);
  attnkit::attention(attnkit::backend::reference{}, in.q.cview(), in.k.cview(), in.v.cview(),
                     ref.view(), attnkit::causal{});
  const error_model model = model_for(c, in);
  for (int s = 0; s < 4; ++s) {
    const comparison cmp = compare_output<float>(outs[static_cast<std::size_t>(s)].cview(),
                                                 ref.cview(), model.output_tolerance<float>());
    INFO(cmp.describe());
    CHECK(cmp.ok());
  }
}

TEST_CASE("thread_pool: concurrent submissions from two threads", "[executors][thread_pool]") {
  thread_pool pool(3);
  std::atomic<long> total{0};
  std::atomic<int> bad_jobs{0};
  auto submitter = [&](int id) {
    for (int job = 0; job < 200; ++job) {
      const std::size_t n = 10 + static_cast<std::size_t>((job * 7 + id) % 50);
      std::vector<std::atomic<int>> hits(n);
      pool(n, [&](std::size_t i) { hits[i].fetch_add(1); });
      for (auto& h : hits)
        if (h.load() != 1) bad_jobs.fetch_add(1);
      total.fetch_add(static_cast<long>(n));
    }
  };
  std::thread a(submitter, 1), b(submitter, 2);
  a.join();
  b.join();
  CHECK(bad_jobs.load() == 0);
  long expected = 0;
  for (int id : {1, 2})
    for (int job = 0; job < 200; ++job) expected += 10 + (job * 7 + id) % 50;
  CHECK(total.load() == expected);

  // And two engine threads running attention on the same pool at once.
  attention_case c = shape(65, 65, 4, 2, 64, mask_kind::causal);
  c.seed = 6300;
  const auto in = make_inputs<float, float>(c);
  auto o1 = make_tensor3<float>(65, 4, 64), o2 = make_tensor3<float>(65, 4, 64),
       o_ref = make_tensor3<float>(65, 4, 64);
  std::thread t1([&] {
    for (int r = 0; r < 5; ++r)
      attnkit::attention(attnkit::cpu, in.q.cview(), in.k.cview(), in.v.cview(), o1.view(),
                         attnkit::causal{}, attnkit::attention_options{}, pool);
  });
  std::thread t2([&] {
    for (int r = 0; r < 5; ++r)
      attnkit::attention(attnkit::cpu, in.q.cview(), in.k.cview(), in.v.cview(), o2.view(),
                         attnkit::causal{}, attnkit::attention_options{}, pool);
  });
  t1.join();
  t2.join();
  thread_pool other(3);
  attnkit::attention(attnkit::cpu, in.q.cview(), in.k.cview(), in.v.cview(), o_ref.view(),
                     attnkit::causal{}, attnkit::attention_options{}, other);
  CHECK(o1.unchanged_since(o_ref.storage));
  CHECK(o2.unchanged_since(o_ref.storage));
}

TEST_CASE("executors: concurrency reporting", "[executors]") {
  using attnkit::parallel::concurrency_of;
  const std::size_t hw = std::max(1u, std::thread::hardware_concurrency());
  CHECK(concurrency_of(serial{}) == 1);
  thread_pool p3(3);
  CHECK(concurrency_of(p3) == 3);
  thread_pool p0(0);
  CHECK(p0.concurrency() == hw);
  auto lambda = [](std::size_t n, auto&& item) {
    for (std::size_t i = 0; i < n; ++i) item(i);
  };
  CHECK(concurrency_of(lambda) == hw);
  struct zero {
    std::size_t concurrency() const { return 0; }
  };
  CHECK(concurrency_of(zero{}) == 1);
  CHECK(&attnkit::parallel::default_thread_pool() == &attnkit::parallel::default_thread_pool());
  CHECK(attnkit::parallel::default_thread_pool().concurrency() == hw);
}

TEST_CASE("front door: the overload without an executor and const or mutable views",
          "[executors][cpu]") {
  // attention(backend, q, k, v, out, mask[, options]) runs on default_thread_pool(), and takes
  // tensor_view<T> and tensor_view<const T> alike (k and v may differ in constness): the result
  // must not depend on either.
  attention_case c = shape(20, 30, 2, 1, 64, mask_kind::causal);
  c.seed = 6400;
  auto in = make_inputs<float, float>(c);
  auto out_const = make_tensor3<float>(20, 2, 64);
  auto out_mut = make_tensor3<float>(20, 2, 64);
  auto out_pool = make_tensor3<float>(20, 2, 64);
  attnkit::attention(attnkit::cpu, in.q.cview(), in.k.cview(), in.v.cview(), out_const.view(),
                     attnkit::causal{});
  attnkit::attention(attnkit::cpu, in.q.view(), in.k.view(), in.v.cview(), out_mut.view(),
                     attnkit::causal{});
  attnkit::attention(attnkit::cpu, in.q.cview(), in.k.cview(), in.v.cview(), out_pool.view(),
                     attnkit::causal{}, {}, attnkit::parallel::default_thread_pool());
  CHECK(out_const.unchanged_since(out_mut.storage));
  CHECK(out_const.unchanged_since(out_pool.storage));
  const evaluation e = evaluate<float>(c, in, cpu_default{});
  require_ok(e);
  const comparison cmp = compare_output<float>(
      out_const.cview(), tensor_view<const float, 3>(e.ref_out.data(), {20, 2, 64}),
      model_for(c, in).output_tolerance<float>());
  INFO(cmp.describe());
  CHECK(cmp.ok());
}
