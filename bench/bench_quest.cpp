// attnkit benchmarks — Quest page selection (attention/quest.hpp) on the decode shape of issue 3:
// n_kv = 131072 cached tokens, 32 query heads over 8 KV heads, head_dim 128, fp16 keys, pages of
// 16 tokens (8192 pages per KV head), top 256 pages = 4096 tokens.
//
// Benchmarks
//   quest_bounds/build    page_bounds::update over the whole cache (a prefill's worth of keys).
//   quest_bounds/append   one decode step's update: one token appended, the last page rebuilt.
//   quest_select          quest_select for one fp32 query token: score 8 × 8192 pages, keep 256.
//   quest_decode          one Quest decode step as an engine runs it: quest_select, then
//                         attention over the selected pages (block_sparse mask), fp32 q / out.
//   dense_decode          the same query over the whole cache (full mask): the baseline the
//                         issue's "at least 10x faster than full decode" target divides by.
// Every benchmark runs on attnkit's default thread pool and reports wall-clock time.
//
// Counters
//   keys_GB/s     (build) bytes of keys read: n · kv_heads · d · 2.
//   bounds_GB/s   bounds bytes streamed: written by the build (min and max, fp32, 2 · 4 · d per
//                 page and KV head), read by the selection (all pages' bounds).
//   KV_GB/s       (decode) bytes of K and V of the keys the step reads (selected pages only for
//                 quest_decode), plus the bounds for quest_decode.
//
// The bounds (64 MiB) and the dense KV (512 MiB) exceed any last-level cache, so those streams
// come from memory as in an engine. The 4096 selected tokens' K/V (16 MiB) may stay partly cached
// between iterations here; in an engine running many layers they would be cold.

// clang-format off
#include <attnkit/attnkit.hpp>
#include <attnkit/attention/quest.hpp>
// clang-format on
#include <benchmark/benchmark.h>

#include <cstddef>
#include <cstdint>

#include "workload.hpp"

namespace {

using attnkit::half;
using attnkit::index_t;
using attnkit_bench::buffer;

constexpr index_t n_kv = 131072;
constexpr index_t kv_heads = 8;
constexpr index_t q_heads = 32;
constexpr index_t head_dim = 128;
constexpr index_t page_size = 16;
constexpr index_t top_pages = 256;

// One cache shared by every benchmark, filled once: K, V (fp16), the query (fp32) and the bounds.
struct decode_state {
  buffer<half> k{std::size_t(n_kv * kv_heads * head_dim)};
  buffer<half> v{std::size_t(n_kv * kv_heads * head_dim)};
  buffer<float> q{std::size_t(q_heads * head_dim)};
  buffer<float> out{std::size_t(q_heads * head_dim)};
  attnkit::page_bounds bounds{page_size, kv_heads, head_dim, n_kv};
  attnkit::block_layout layout;

  decode_state() {
    attnkit_bench::fill_uniform(k, 1);
    attnkit_bench::fill_uniform(v, 2);
    attnkit_bench::fill_uniform(q, 3);
    bounds.update(attnkit::cpu, k.cview(n_kv, kv_heads, head_dim));
  }
};

decode_state& state_once() {
  static decode_state s;
  return s;
}

double bounds_bytes(index_t tokens) {
  const double pages = double((tokens + page_size - 1) / page_size);
  return pages * double(kv_heads) * 2.0 * double(head_dim) * sizeof(float);
}

void rate(benchmark::State& state, const char* name, double bytes) {
  state.counters[name] =
      benchmark::Counter(bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

void bm_bounds_build(benchmark::State& state) {
  decode_state& s = state_once();
  attnkit::page_bounds bounds(page_size, kv_heads, head_dim, n_kv);
  const auto k = s.k.cview(n_kv, kv_heads, head_dim);
  for (auto _ : state) {
    bounds.update(attnkit::cpu, k, 0);
    benchmark::DoNotOptimize(bounds.min(0, 0));
    benchmark::ClobberMemory();
  }
  rate(state, "keys_GB/s", attnkit_bench::kv_bytes<half>(n_kv, kv_heads, head_dim) / 2.0);
  rate(state, "bounds_GB/s", bounds_bytes(n_kv));
}

void bm_bounds_append(benchmark::State& state) {
  decode_state& s = state_once();
  const auto k = s.k.cview(n_kv, kv_heads, head_dim);
  for (auto _ : state) {
    s.bounds.update(attnkit::cpu, k, n_kv - 1);
    benchmark::DoNotOptimize(s.bounds.min(0, 0));
    benchmark::ClobberMemory();
  }
}

void bm_select(benchmark::State& state) {
  decode_state& s = state_once();
  const auto q = s.q.cview(1, q_heads, head_dim);
  for (auto _ : state) {
    attnkit::quest_select(attnkit::cpu, q, s.bounds, top_pages, s.layout);
    benchmark::DoNotOptimize(s.layout.columns().data());
    benchmark::ClobberMemory();
  }
  rate(state, "bounds_GB/s", bounds_bytes(n_kv));
  state.counters["density"] = benchmark::Counter(s.layout.density());
}

void bm_quest_decode(benchmark::State& state) {
  decode_state& s = state_once();
  const auto q = s.q.cview(1, q_heads, head_dim);
  const auto k = s.k.cview(n_kv, kv_heads, head_dim);
  const auto v = s.v.cview(n_kv, kv_heads, head_dim);
  const auto out = s.out.view(1, q_heads, head_dim);
  for (auto _ : state) {
    attnkit::quest_select(attnkit::cpu, q, s.bounds, top_pages, s.layout);
    attnkit::attention(attnkit::cpu, q, k, v, out, attnkit::block_sparse{s.layout});
    benchmark::ClobberMemory();
  }
  rate(state, "KV_GB/s",
       attnkit_bench::kv_bytes<half>(top_pages * page_size, kv_heads, head_dim) +
           bounds_bytes(n_kv));
}

void bm_dense_decode(benchmark::State& state) {
  decode_state& s = state_once();
  const auto q = s.q.cview(1, q_heads, head_dim);
  const auto k = s.k.cview(n_kv, kv_heads, head_dim);
  const auto v = s.v.cview(n_kv, kv_heads, head_dim);
  const auto out = s.out.view(1, q_heads, head_dim);
  for (auto _ : state) {
    attnkit::attention(attnkit::cpu, q, k, v, out, attnkit::full{});
    benchmark::ClobberMemory();
  }
  rate(state, "KV_GB/s", attnkit_bench::kv_bytes<half>(n_kv, kv_heads, head_dim));
}

#define ATTNKIT_QUEST_SHAPE "fp16/page:16/heads:32x8/d:128/n:131072"
BENCHMARK(bm_bounds_build)
    ->Name("quest_bounds/build/" ATTNKIT_QUEST_SHAPE)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(bm_bounds_append)
    ->Name("quest_bounds/append/" ATTNKIT_QUEST_SHAPE)
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(bm_select)
    ->Name("quest_select/" ATTNKIT_QUEST_SHAPE "/top:256")
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(bm_quest_decode)
    ->Name("quest_decode/" ATTNKIT_QUEST_SHAPE "/top:256")
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(bm_dense_decode)
    ->Name("dense_decode/fp16/heads:32x8/d:128/n:131072")
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
