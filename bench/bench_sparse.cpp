// attnkit benchmarks — masks whose cost follows what they keep: sliding window, block-sparse,
// Quest decode, and the price of an observer. Each sparse case runs next to the dense case it
// replaces, in the same process, and reports the ratio the targets are stated in.
//
// Benchmarks (fp32 prefill, fp32 queries over fp16 KV for decode, head dim 128, all threads):
//   window/prefill   n = 32768, 8 query / 2 KV heads: causal, then sliding_window{1024, 0}.
//                    band_ratio = t_window / ((2·window / n) · t_causal): the band holds n·window
//                    (query, key) pairs, causal n²/2, so 1 means "cost follows the band
//                    exactly" (target <= 1.5).
//   window/decode    n_kv = 131072, 32 / 8 heads: full cache, then sliding_window{1024, 0, 4}
//                    (StreamingLLM: 4 sinks + 1024 recent). KV_GB/s counts the bytes the window
//                    reads; speedup = t_full / t_window.
//   block_sparse     n = 16384, 8 / 2 heads, 64-token blocks: causal, then a random causal block
//                    layout that keeps 10% of the blocks causal attention computes (diagonal
//                    always kept), composed with causal{}. speedup = t_causal / t_sparse
//                    (target >= 6; the flops alone allow 10).
//   quest/decode     n_kv = 131072, 32 / 8 heads, pages of 16 tokens: full decode, then per
//                    call page_bounds::update for the newest token + quest_select of the top
//                    256 pages (4096 tokens) + block-sparse decode. speedup = t_full / t_quest
//                    (target >= 10, page scoring included). Bounds stored in fp32 or fp16
//                    (rounded outward, so still bounds); K/V in NHD, or head-major as a paged
//                    cache with per-head pages stores them (a page is then one contiguous run).
//                    Also 128 pages of 32 tokens (same 4096 tokens): half the bounds to stream,
//                    runs twice as long, a coarser selection.
//   observer/decode  n_kv = 32768, 32 / 8 heads: plain decode, then with accumulate_key_mass;
//                    overhead = t_observed / t_plain - 1 (target < 10%).
//   observer/prefill n = 4096, 32 / 8 heads, causal: plain, then with accumulate_key_mass over
//                    the last 32 queries (SnapKV's window).
//
// Decode calls start from cold caches: before each timed call the benchmark streams a buffer
// larger than the last-level cache (untimed), as an engine's other layers would. Prefill is
// compute-bound and runs back to back. Large cases run one iteration.
//
// GFLOP/s counts 4·d flops per allowed (query, key) pair per query head, counted exactly from
// the mask; KV_GB/s counts the K and V bytes of the keys the mask keeps, each read once.

// clang-format off
#include <attnkit/attnkit.hpp>
// clang-format on
#include <benchmark/benchmark.h>

#include <algorithm>
#include <attnkit/attention/key_mass.hpp>
#include <attnkit/attention/quest.hpp>
#include <attnkit/mask/block_sparse.hpp>
#include <attnkit/mask/intersection.hpp>
#include <attnkit/mask/sliding_window.hpp>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "peak.hpp"
#include "workload.hpp"

namespace {

using attnkit::index_t;
using attnkit_bench::buffer;

constexpr index_t head_dim = 128;

double fma_peak = 0.0;
double read_peak = 0.0;

// Wall seconds per call of the reference cases, by name, for the ratios.
std::map<std::string, double> seconds_per_call;

// Streams a buffer larger than the last-level cache so the next call starts cold.
void evict_caches() {
  attnkit_bench::cache_sweep_buffer();  // allocated here, not inside a worker
  auto& pool = attnkit::parallel::default_thread_pool();
  const std::size_t slices = pool.concurrency();
  pool(slices, [&](std::size_t s) { attnkit_bench::sweep_caches(s, slices); });
}

// Times `call` per iteration, optionally evicting the caches (untimed) before each.
template <class Call>
double timed(benchmark::State& state, bool cold, Call&& call) {
  double total = 0.0;
  for (auto _ : state) {
    if (cold) {
      state.PauseTiming();
      evict_caches();
      state.ResumeTiming();
    }
    const auto start = attnkit_bench::steady::now();
    call();
    benchmark::ClobberMemory();
    const double seconds =
        std::chrono::duration<double>(attnkit_bench::steady::now() - start).count();
    state.SetIterationTime(seconds);
    total += seconds;
  }
  return total / double(std::max<benchmark::IterationCount>(1, state.iterations()));
}

void rate_counters(benchmark::State& state, double flops, double bytes, double seconds) {
  state.counters["GFLOP/s"] = flops * 1e-9 / seconds;
  state.counters["KV_GB/s"] = bytes * 1e-9 / seconds;
  state.counters["flop_peak_fraction"] = flops * 1e-9 / seconds / fma_peak;
  state.counters["read_peak_fraction"] = bytes * 1e-9 / seconds / read_peak;
}

struct tensors {
  buffer<float> q, out;
  buffer<attnkit::half> k16, v16;
  buffer<float> k32, v32;
};

// ------------------------------------------------------------------------------------------------
// Prefill cases (fp32, compute-bound).
// ------------------------------------------------------------------------------------------------

template <class Mask>
void run_prefill(benchmark::State& state, const std::string& name, index_t n, index_t q_heads,
                 index_t kv_heads, const Mask& mask, const attnkit::attention_options& options) {
  buffer<float> q(std::size_t(n * q_heads * head_dim)), out(q.size());
  buffer<float> k(std::size_t(n * kv_heads * head_dim)), v(k.size());
  attnkit_bench::fill_uniform(q, 1);
  attnkit_bench::fill_uniform(k, 2);
  attnkit_bench::fill_uniform(v, 3);
  attnkit_bench::fill_zero(out);
  const double seconds = timed(state, false, [&] {
    attnkit::attention(attnkit::cpu, q.cview(n, q_heads, head_dim), k.cview(n, kv_heads, head_dim),
                       v.cview(n, kv_heads, head_dim), out.view(n, q_heads, head_dim), mask,
                       options);
  });
  seconds_per_call[name] = seconds;
  const double pairs = attnkit_bench::allowed_pairs_all_heads(mask, n, n, q_heads);
  const double kept_keys = pairs / double(q_heads) / double(n);  // mean keys per query
  rate_counters(state, pairs * 4.0 * double(head_dim),
                kept_keys * double(kv_heads * head_dim) * 2.0 * sizeof(float), seconds);
}

constexpr index_t window_n = 32768, window = 1024;

void bm_window_prefill_causal(benchmark::State& state) {
  run_prefill(state, "window/causal", window_n, 8, 2, attnkit::causal{}, {});
}

void bm_window_prefill(benchmark::State& state) {
  run_prefill(state, "window/band", window_n, 8, 2, attnkit::sliding_window{window, 0}, {});
  const auto causal = seconds_per_call.find("window/causal");
  if (causal != seconds_per_call.end())
    state.counters["band_ratio"] = seconds_per_call["window/band"] /
                                   (2.0 * double(window) / double(window_n) * causal->second);
}

// A random causal block layout over n tokens in `block`-token blocks keeping `fraction` of the
// blocks causal attention computes: row i keeps its diagonal block and round(fraction·(i+1)) - 1
// others drawn from blocks 0..i-1.
attnkit::block_layout random_causal_layout(index_t n, index_t block, double fraction,
                                           std::uint64_t seed) {
  const index_t blocks = (n + block - 1) / block;
  std::mt19937_64 rng(seed);
  std::vector<index_t> offsets{0}, columns, candidates;
  for (index_t i = 0; i < blocks; ++i) {
    const index_t keep = std::max<index_t>(1, index_t(fraction * double(i + 1) + 0.5));
    candidates.resize(std::size_t(i));
    for (index_t j = 0; j < i; ++j) candidates[std::size_t(j)] = j;
    std::shuffle(candidates.begin(), candidates.end(), rng);
    candidates.resize(std::size_t(keep - 1));
    candidates.push_back(i);
    std::sort(candidates.begin(), candidates.end());
    columns.insert(columns.end(), candidates.begin(), candidates.end());
    offsets.push_back(index_t(columns.size()));
  }
  attnkit::block_layout_shape shape;
  shape.query_block = shape.key_block = block;
  shape.query_blocks = shape.key_blocks = blocks;
  return attnkit::block_layout(shape, std::move(offsets), std::move(columns));
}

constexpr index_t sparse_n = 16384;

void bm_block_sparse_causal(benchmark::State& state) {
  run_prefill(state, "block_sparse/causal", sparse_n, 8, 2, attnkit::causal{}, {});
}

void bm_block_sparse(benchmark::State& state) {
  static const attnkit::block_layout layout = random_causal_layout(sparse_n, 64, 0.10, 7);
  run_prefill(state, "block_sparse/10%", sparse_n, 8, 2,
              attnkit::block_sparse(layout) & attnkit::causal{}, {});
  state.counters["block_density"] = layout.density();
  const auto causal = seconds_per_call.find("block_sparse/causal");
  if (causal != seconds_per_call.end())
    state.counters["speedup"] = causal->second / seconds_per_call["block_sparse/10%"];
}

// ------------------------------------------------------------------------------------------------
// Decode cases (fp32 queries over an fp16 cache, memory-bound, cold caches).
// ------------------------------------------------------------------------------------------------

// head_major: K and V stored [kv_heads][n_kv][head_dim] (as a paged cache with pages per KV
// head keeps them) and viewed through strides; otherwise NHD, [n_kv][kv_heads][head_dim].
struct decode_inputs {
  index_t n_kv, q_heads, kv_heads;
  bool head_major = false;
  buffer<float> q, out;
  buffer<attnkit::half> k, v;

  decode_inputs(index_t n, index_t qh, index_t kvh, bool by_head = false)
      : n_kv(n),
        q_heads(qh),
        kv_heads(kvh),
        head_major(by_head),
        q(std::size_t(qh * head_dim)),
        out(std::size_t(qh * head_dim)),
        k(std::size_t(n * kvh * head_dim)),
        v(std::size_t(n * kvh * head_dim)) {
    attnkit_bench::fill_uniform(q, 1);
    attnkit_bench::fill_uniform(k, 2);
    attnkit_bench::fill_uniform(v, 3);
    attnkit_bench::fill_zero(out);
  }
  attnkit::tensor_view<const attnkit::half, 3> view(const buffer<attnkit::half>& b) const {
    if (head_major) return {b.data(), {n_kv, kv_heads, head_dim}, {head_dim, n_kv * head_dim, 1}};
    return b.cview(n_kv, kv_heads, head_dim);
  }
  template <class Mask>
  void attend(const Mask& mask, const attnkit::attention_options& options = {}) const {
    attnkit::attention(attnkit::cpu, q.cview(1, q_heads, head_dim), view(k), view(v),
                       out.view(1, q_heads, head_dim), mask, options);
  }
  // Bytes of K and V for `keys` keys of every KV head.
  double bytes(double keys) const {
    return keys * double(kv_heads * head_dim) * 2.0 * sizeof(attnkit::half);
  }
  double flops(double keys) const { return keys * double(q_heads) * 4.0 * double(head_dim); }
};

constexpr index_t long_n = 131072;

const decode_inputs& long_cache() {
  static const decode_inputs inputs(long_n, 32, 8);
  return inputs;
}

void bm_decode_full(benchmark::State& state) {
  const decode_inputs& in = long_cache();
  const double seconds = timed(state, true, [&] { in.attend(attnkit::full{}); });
  seconds_per_call["decode/full"] = seconds;
  rate_counters(state, in.flops(double(long_n)), in.bytes(double(long_n)), seconds);
}

void bm_decode_window(benchmark::State& state) {
  const decode_inputs& in = long_cache();
  const attnkit::sliding_window mask{window, 0, 4};
  const double seconds = timed(state, true, [&] { in.attend(mask); });
  const double keys = attnkit_bench::allowed_pairs(mask, 1, long_n);
  rate_counters(state, in.flops(keys), in.bytes(keys), seconds);
  const auto full = seconds_per_call.find("decode/full");
  if (full != seconds_per_call.end()) state.counters["speedup"] = full->second / seconds;
}

const decode_inputs& long_cache_head_major() {
  static const decode_inputs inputs(long_n, 32, 8, true);
  return inputs;
}

// Quest keeping `top_pages` pages of `page` tokens (4096 tokens per KV head in every case).
template <class Bounds>
void bm_decode_quest(benchmark::State& state, const decode_inputs& in, index_t page = 16) {
  const index_t top_pages = 4096 / page;
  attnkit::page_bounds<Bounds> bounds(page, in.kv_heads, head_dim, long_n);
  const auto k = in.view(in.k);
  bounds.update(attnkit::cpu, k);
  attnkit::block_layout layout;
  const auto q = in.q.cview(1, in.q_heads, head_dim);
  const double seconds = timed(state, true, [&] {
    bounds.update(attnkit::cpu, k, long_n - 1);  // the newest token's page
    attnkit::quest_select(attnkit::cpu, q, bounds, top_pages, layout);
    in.attend(attnkit::block_sparse(layout));
  });
  const double keys = double(layout.nonzero_blocks() * page) / double(in.kv_heads);
  rate_counters(state, in.flops(keys), in.bytes(keys), seconds);
  state.counters["kept_tokens_per_head"] = keys;
  const auto full = seconds_per_call.find("decode/full");
  if (full != seconds_per_call.end()) state.counters["speedup"] = full->second / seconds;
}

// ------------------------------------------------------------------------------------------------
// Observers.
// ------------------------------------------------------------------------------------------------

constexpr index_t observer_n = 32768;

const decode_inputs& observer_cache() {
  static const decode_inputs inputs(observer_n, 32, 8);
  return inputs;
}

void bm_observer_decode(benchmark::State& state, bool observe) {
  const decode_inputs& in = observer_cache();
  std::vector<float> mass(std::size_t(in.kv_heads * observer_n), 0.0f);
  attnkit::accumulate_key_mass key_mass({mass.data(), {in.kv_heads, observer_n}});
  attnkit::attention_options options;
  if (observe) options.observer = key_mass;
  const double seconds = timed(state, true, [&] { in.attend(attnkit::full{}, options); });
  const std::string name = observe ? "observer/on" : "observer/off";
  seconds_per_call[name] = seconds;
  rate_counters(state, in.flops(double(observer_n)), in.bytes(double(observer_n)), seconds);
  const auto off = seconds_per_call.find("observer/off");
  if (observe && off != seconds_per_call.end())
    state.counters["overhead"] = seconds / off->second - 1.0;
}

void bm_observer_prefill(benchmark::State& state, bool observe) {
  constexpr index_t n = 4096;
  std::vector<float> mass(std::size_t(8 * n), 0.0f);
  attnkit::accumulate_key_mass key_mass({mass.data(), {8, n}}, 32);
  attnkit::attention_options options;
  if (observe) options.observer = key_mass;
  const std::string name = observe ? "observer/prefill/on" : "observer/prefill/off";
  run_prefill(state, name, n, 32, 8, attnkit::causal{}, options);
  const auto off = seconds_per_call.find("observer/prefill/off");
  if (observe && off != seconds_per_call.end())
    state.counters["overhead"] = seconds_per_call[name] / off->second - 1.0;
}

void register_all() {
  auto reg = [](const char* name, auto fn) {
    return benchmark::RegisterBenchmark(name, fn)->UseManualTime()->Unit(benchmark::kMillisecond);
  };
  reg("window/prefill/n:32768/causal", bm_window_prefill_causal)->Iterations(1);
  reg("window/prefill/n:32768/window:1024", bm_window_prefill)->Iterations(1);
  reg("block_sparse/prefill/n:16384/causal", bm_block_sparse_causal)->Iterations(1);
  reg("block_sparse/prefill/n:16384/density:10%_of_causal", bm_block_sparse)->Iterations(1);
  reg("decode/n_kv:131072/full", bm_decode_full)->MinTime(0.5);
  reg("decode/n_kv:131072/window:1024+4_sinks", bm_decode_window)->MinTime(0.5);
  reg("decode/n_kv:131072/quest:256_pages_of_16/bounds:fp32", [](benchmark::State& s) {
    bm_decode_quest<float>(s, long_cache());
  })->MinTime(0.5);
  reg("decode/n_kv:131072/quest:256_pages_of_16/bounds:fp16", [](benchmark::State& s) {
    bm_decode_quest<attnkit::half>(s, long_cache());
  })->MinTime(0.5);
  reg("decode/n_kv:131072/quest:256_pages_of_16/bounds:fp16/kv:head_major",
      [](benchmark::State& s) { bm_decode_quest<attnkit::half>(s, long_cache_head_major()); })
      ->MinTime(0.5);
  reg("decode/n_kv:131072/quest:128_pages_of_32/bounds:fp16/kv:head_major",
      [](benchmark::State& s) { bm_decode_quest<attnkit::half>(s, long_cache_head_major(), 32); })
      ->MinTime(0.5);
  reg("observer/decode/n_kv:32768/off", [](benchmark::State& s) {
    bm_observer_decode(s, false);
  })->MinTime(0.5);
  reg("observer/decode/n_kv:32768/key_mass", [](benchmark::State& s) {
    bm_observer_decode(s, true);
  })->MinTime(0.5);
  reg("observer/prefill/n:4096/off", [](benchmark::State& s) {
    bm_observer_prefill(s, false);
  })->MinTime(0.5);
  reg("observer/prefill/n:4096/key_mass_last_32", [](benchmark::State& s) {
    bm_observer_prefill(s, true);
  })->MinTime(0.5);
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  const std::size_t threads = attnkit::parallel::default_thread_pool().concurrency();
  const attnkit_bench::machine_peak peak = attnkit_bench::measure_peak(threads);
  fma_peak = peak.fma_gflops;
  read_peak = peak.read_gbs;
  benchmark::AddCustomContext("threads", std::to_string(threads));
  benchmark::AddCustomContext("peak_fma_gflops", std::to_string(fma_peak));
  benchmark::AddCustomContext("peak_read_gbs", std::to_string(read_peak));
  register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
