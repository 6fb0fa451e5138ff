// attnkit benchmarks — Quest page selection (attention/quest.hpp) on the decode shape of issue 3:
// n_kv = 131072 cached tokens, 32 query heads over 8 KV heads, head_dim 128, fp16 keys, pages of
// 16 tokens (8192 pages per KV head), top 256 pages = 4096 tokens.
//
// Benchmarks (bounds:<type> in the name: the page bounds' storage, page_bounds<float> or <half>)
//   quest_bounds/build    page_bounds::update over the whole cache (a prefill's worth of keys).
//   quest_bounds/append   one decode step's update: one token appended, the last page rebuilt.
//   quest_select          quest_select for one fp32 query token: score 8 × 8192 pages, keep 256.
//                         /alibi: the same under ALiBi (the model's geometric slopes), where each
//                         query row's bound becomes a logit bound with the page's largest bias.
//   quest_decode          one Quest decode step as an engine runs it: quest_select, then
//                         attention over the selected pages (block_sparse mask), fp32 q / out.
//   dense_decode          the same query over the whole cache (full mask): the baseline the
//                         issue's "at least 10x faster than full decode" target divides by. It
//                         runs first, so quest_decode can report speedup = t_dense / t_quest.
// Every benchmark runs on attnkit's default thread pool and reports wall-clock time.
//
// Counters
//   keys_GB/s     (build) bytes of keys read: n · kv_heads · d · 2.
//   bounds_GB/s   bounds bytes streamed: written by the build (min and max, 2 · sizeof(T) · d per
//                 page and KV head), read by the selection (all pages' bounds).
//   KV_GB/s       (decode) bytes of K and V of the keys the step reads (selected pages only for
//                 quest_decode), plus the bounds for quest_decode.
//
// The bounds (64 MiB as fp32, 32 MiB as fp16) and the dense KV (512 MiB) exceed any last-level
// cache, so those streams come from memory as in an engine. With fp16 keys, fp16 bounds are exact
// (no rounding), so both bounds types select the same pages here. The 4096 selected tokens' K/V
// (16 MiB) may stay partly cached between iterations here; in an engine running many layers they
// would be cold.

// clang-format off
#include <attnkit/attnkit.hpp>
#include <attnkit/attention/quest.hpp>
// clang-format on
#include <benchmark/benchmark.h>

#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <vector>

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

// One cache shared by every benchmark, filled once: K, V (fp16), the query (fp32) and the bounds
// in both storage types.
struct decode_state {
  buffer<half> k{std::size_t(n_kv * kv_heads * head_dim)};
  buffer<half> v{std::size_t(n_kv * kv_heads * head_dim)};
  buffer<float> q{std::size_t(q_heads * head_dim)};
  buffer<float> out{std::size_t(q_heads * head_dim)};
  attnkit::page_bounds<float> bounds_fp32{page_size, kv_heads, head_dim, n_kv};
  attnkit::page_bounds<half> bounds_fp16{page_size, kv_heads, head_dim, n_kv};
  attnkit::block_layout layout;
  double dense_seconds = 0.0;  // per dense_decode iteration, once it has run

  decode_state() {
    attnkit_bench::fill_uniform(k, 1);
    attnkit_bench::fill_uniform(v, 2);
    attnkit_bench::fill_uniform(q, 3);
    bounds_fp32.update(attnkit::cpu, k.cview(n_kv, kv_heads, head_dim));
    bounds_fp16.update(attnkit::cpu, k.cview(n_kv, kv_heads, head_dim));
  }

  template <class B>
  attnkit::page_bounds<B>& bounds() {
    if constexpr (std::is_same_v<B, float>) {
      return bounds_fp32;
    } else {
      return bounds_fp16;
    }
  }
};

decode_state& state_once() {
  static decode_state s;
  return s;
}

template <class B>
double bounds_bytes(index_t tokens) {
  const double pages = double((tokens + page_size - 1) / page_size);
  return pages * double(kv_heads) * 2.0 * double(head_dim) * double(sizeof(B));
}

void rate(benchmark::State& state, const char* name, double bytes) {
  state.counters[name] =
      benchmark::Counter(bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

template <class B>
void bm_bounds_build(benchmark::State& state) {
  decode_state& s = state_once();
  attnkit::page_bounds<B> bounds(page_size, kv_heads, head_dim, n_kv);
  const auto k = s.k.cview(n_kv, kv_heads, head_dim);
  for (auto _ : state) {
    bounds.update(attnkit::cpu, k, 0);
    benchmark::DoNotOptimize(bounds.min(0, 0));
    benchmark::ClobberMemory();
  }
  rate(state, "keys_GB/s", attnkit_bench::kv_bytes<half>(n_kv, kv_heads, head_dim) / 2.0);
  rate(state, "bounds_GB/s", bounds_bytes<B>(n_kv));
}

template <class B>
void bm_bounds_append(benchmark::State& state) {
  decode_state& s = state_once();
  attnkit::page_bounds<B>& bounds = s.bounds<B>();
  const auto k = s.k.cview(n_kv, kv_heads, head_dim);
  for (auto _ : state) {
    bounds.update(attnkit::cpu, k, n_kv - 1);
    benchmark::DoNotOptimize(bounds.min(0, 0));
    benchmark::ClobberMemory();
  }
}

template <class B, bool Alibi = false>
void bm_select(benchmark::State& state) {
  decode_state& s = state_once();
  const attnkit::page_bounds<B>& bounds = s.bounds<B>();
  const auto q = s.q.cview(1, q_heads, head_dim);
  // ALiBi's slopes for 32 heads: 2^(-8(h+1)/32) (Press et al. 2022).
  std::vector<float> slopes(static_cast<std::size_t>(q_heads));
  for (index_t h = 0; h < q_heads; ++h)
    slopes[static_cast<std::size_t>(h)] = std::exp2(-8.0f * float(h + 1) / float(q_heads));
  attnkit::attention_options options;
  if (Alibi) options.alibi_slopes = attnkit::tensor_view<const float, 1>(slopes.data(), {q_heads});
  for (auto _ : state) {
    attnkit::quest_select(attnkit::cpu, q, bounds, top_pages, s.layout, options);
    benchmark::DoNotOptimize(s.layout.columns().data());
    benchmark::ClobberMemory();
  }
  rate(state, "bounds_GB/s", bounds_bytes<B>(n_kv));
  state.counters["density"] = benchmark::Counter(s.layout.density());
}

template <class B>
void bm_quest_decode(benchmark::State& state) {
  decode_state& s = state_once();
  const attnkit::page_bounds<B>& bounds = s.bounds<B>();
  const auto q = s.q.cview(1, q_heads, head_dim);
  const auto k = s.k.cview(n_kv, kv_heads, head_dim);
  const auto v = s.v.cview(n_kv, kv_heads, head_dim);
  const auto out = s.out.view(1, q_heads, head_dim);
  const auto start = std::chrono::steady_clock::now();
  for (auto _ : state) {
    attnkit::quest_select(attnkit::cpu, q, bounds, top_pages, s.layout);
    attnkit::attention(attnkit::cpu, q, k, v, out, attnkit::block_sparse{s.layout});
    benchmark::ClobberMemory();
  }
  const double seconds = seconds_since(start) / double(state.iterations());
  rate(state, "KV_GB/s",
       attnkit_bench::kv_bytes<half>(top_pages * page_size, kv_heads, head_dim) +
           bounds_bytes<B>(n_kv));
  if (s.dense_seconds > 0.0) state.counters["speedup"] = s.dense_seconds / seconds;
}

void bm_dense_decode(benchmark::State& state) {
  decode_state& s = state_once();
  const auto q = s.q.cview(1, q_heads, head_dim);
  const auto k = s.k.cview(n_kv, kv_heads, head_dim);
  const auto v = s.v.cview(n_kv, kv_heads, head_dim);
  const auto out = s.out.view(1, q_heads, head_dim);
  const auto start = std::chrono::steady_clock::now();
  for (auto _ : state) {
    attnkit::attention(attnkit::cpu, q, k, v, out, attnkit::full{});
    benchmark::ClobberMemory();
  }
  s.dense_seconds = seconds_since(start) / double(state.iterations());
  rate(state, "KV_GB/s", attnkit_bench::kv_bytes<half>(n_kv, kv_heads, head_dim));
}

#define ATTNKIT_QUEST_SHAPE "kv:fp16/page:16/heads:32x8/d:128/n:131072"
#define ATTNKIT_QUEST_BOUNDS(B, TYPE)                                        \
  BENCHMARK_TEMPLATE(bm_bounds_build, B)                                     \
      ->Name("quest_bounds/build/bounds:" TYPE "/" ATTNKIT_QUEST_SHAPE)      \
      ->UseRealTime()                                                        \
      ->Unit(benchmark::kMillisecond);                                       \
  BENCHMARK_TEMPLATE(bm_bounds_append, B)                                    \
      ->Name("quest_bounds/append/bounds:" TYPE "/" ATTNKIT_QUEST_SHAPE)     \
      ->UseRealTime()                                                        \
      ->Unit(benchmark::kMicrosecond);                                       \
  BENCHMARK_TEMPLATE(bm_select, B)                                           \
      ->Name("quest_select/bounds:" TYPE "/" ATTNKIT_QUEST_SHAPE "/top:256") \
      ->UseRealTime()                                                        \
      ->Unit(benchmark::kMicrosecond);                                       \
  BENCHMARK_TEMPLATE(bm_quest_decode, B)                                     \
      ->Name("quest_decode/bounds:" TYPE "/" ATTNKIT_QUEST_SHAPE "/top:256") \
      ->UseRealTime()                                                        \
      ->Unit(benchmark::kMicrosecond)

// Registration order is run order: the dense baseline first (for the speedup counter).
BENCHMARK(bm_dense_decode)
    ->Name("dense_decode/kv:fp16/heads:32x8/d:128/n:131072")
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
ATTNKIT_QUEST_BOUNDS(float, "fp32");
ATTNKIT_QUEST_BOUNDS(half, "fp16");
BENCHMARK_TEMPLATE(bm_select, half, true)
    ->Name("quest_select/alibi/bounds:fp16/" ATTNKIT_QUEST_SHAPE "/top:256")
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
