// attnkit benchmarks — linear attention (attnkit::linear_attention on attnkit::cpu): chunked
// prefill at growing lengths, linear against dense causal softmax attention, and decode steps at
// two positions, each reported against this machine's peaks measured in the same process.
//
// Before any benchmark runs, main() measures the fp32 FMA peak and the streaming read bandwidth
// (bench/peak.hpp) for the default pool's thread count; peak_fraction divides by them.
//
// Benchmarks (fp32 q, k, v and out; identity feature map, no normalisation — the Lightning
// Attention / RetNet configuration; MHA)
//   linear_prefill/d:128/heads:32/n:{1024,8192,65536}   one call over n tokens from an empty
//       state: the chunked form. Targets: ns_per_token flat within 1.3x across the three
//       lengths; peak_fraction >= 0.40.
//   versus_dense/{linear,dense}/d:128/heads:4/n:16384   the same tokens through linear attention
//       and through attnkit::attention(causal): target linear >= 10x faster. (4 heads: the
//       quadratic dense run is ~0.3 TFLOP at 4 heads; the ratio does not depend on the count.)
//   linear_decode/d:128/heads:32/pos:{1024,65536}       one token per call, continuing a state
//       built by a prefill of `pos` tokens: the recurrent form. Target: equal times (O(1) per
//       token). Runs a fixed 256 steps, so the position moves by < 0.4% (1k) during the run.
//
// Counters
//   GFLOP/s        useful flops of the chunked algorithm: per query head and chunk of c tokens,
//                  c(c+1)/2 causal pairs · (2F + 2dv) (scores and P·V) + 2c·F·dv (the carried
//                  state's product); per KV head and chunk 2c·F·dv (the state update). Masked
//                  pairs the kernel computes anyway count nothing. Dense rows count
//                  4·d per allowed (query, key) pair (bench/workload.hpp).
//                  Decode: per token 2F·dv (update) + 2F·dv per query head (φq·S).
//   ns_per_token   wall time per token (all heads).
//   peak_fraction  prefill: GFLOP/s / measured FMA peak. Decode: state_GB/s / read bandwidth.
//   state_GB/s     decode: bytes of S read and written per step / time.
//   cpu_util       process CPU time / (wall time × threads): ~1 when every thread had a core.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <attnkit/attnkit.hpp>
#include <attnkit/feature/identity.hpp>
#include <attnkit/linear/linear_attention.hpp>
#include <chrono>
#include <ctime>
#include <string>

#include "peak.hpp"
#include "workload.hpp"

namespace {

using attnkit::index_t;
using attnkit_bench::buffer;
using attnkit_bench::steady;

attnkit_bench::machine_peak peak_pool;

std::size_t pool_threads() { return attnkit::parallel::default_thread_pool().concurrency(); }

double process_cpu_seconds() { return double(std::clock()) / double(CLOCKS_PER_SEC); }

struct loop_time {
  double wall = 0.0;
  double cpu = 0.0;
};

template <class Call>
loop_time timed_loop(benchmark::State& state, Call&& call) {
  const double cpu_start = process_cpu_seconds();
  const steady::time_point start = steady::now();
  for (auto _ : state) call();
  const double wall = std::chrono::duration<double>(steady::now() - start).count();
  return {wall, process_cpu_seconds() - cpu_start};
}

// flops per call, bytes per call (0: none), tokens per call; the fraction is of the FMA peak
// (prefill) or of the read bandwidth (decode, over `bytes`).
void set_counters(benchmark::State& state, double flops, double bytes, double tokens,
                  loop_time time, bool bandwidth_bound) {
  using benchmark::Counter;
  const double calls = double(std::max<benchmark::IterationCount>(state.iterations(), 1));
  const double per_call = time.wall / calls;
  state.counters["GFLOP/s"] = Counter(flops * 1e-9, Counter::kIsIterationInvariantRate);
  state.counters["ns_per_token"] = Counter(per_call / tokens * 1e9);
  if (bytes > 0.0) state.counters["state_GB/s"] = Counter(bytes * 1e-9 / per_call);
  const double achieved = bandwidth_bound ? bytes * 1e-9 / per_call : flops * 1e-9 / per_call;
  const double peak = bandwidth_bound ? peak_pool.read_gbs : peak_pool.fma_gflops;
  state.counters["peak_fraction"] = Counter(peak > 0.0 ? achieved / peak : 0.0);
  state.counters["cpu_util"] = Counter(time.cpu / (time.wall * double(pool_threads())));
}

// Useful flops of one chunked call (see the header); F = dk for the identity map.
double linear_prefill_flops(index_t n, index_t q_heads, index_t kv_heads, index_t F, index_t dv) {
  constexpr index_t chunk = attnkit::detail::simd::linear_chunk_tokens;
  double per_q_head = 0.0, per_kv_head = 0.0;
  for (index_t t0 = 0; t0 < n; t0 += chunk) {
    const double c = double(std::min(chunk, n - t0));
    per_q_head += c * (c + 1.0) / 2.0 * (2.0 * double(F) + 2.0 * double(dv)) +
                  2.0 * c * double(F) * double(dv);
    per_kv_head += 2.0 * c * double(F) * double(dv);
  }
  return per_q_head * double(q_heads) + per_kv_head * double(kv_heads);
}

struct inputs {
  buffer<float> q, k, v, out;
  inputs(index_t n, index_t heads, index_t d)
      : q(std::size_t(n * heads * d)),
        k(std::size_t(n * heads * d)),
        v(std::size_t(n * heads * d)),
        out(std::size_t(n * heads * d)) {
    // Small positive-ish values keep the unnormalised sums far from overflow at any length.
    attnkit_bench::fill_uniform(q, 1, -0.1f, 0.1f);
    attnkit_bench::fill_uniform(k, 2, -0.1f, 0.1f);
    attnkit_bench::fill_uniform(v, 3);
    attnkit_bench::fill_zero(out);
  }
};

const attnkit::linear_options lightning{/*normalize=*/false, {}};

void bm_linear_prefill(benchmark::State& state, index_t n, index_t heads, index_t d) {
  inputs in(n, heads, d);
  attnkit::linear_state linear;
  const auto qv = in.q.cview(n, heads, d), kv = in.k.cview(n, heads, d);
  const auto vv = in.v.cview(n, heads, d);
  const auto ov = in.out.view(n, heads, d);
  const loop_time time = timed_loop(state, [&] {
    linear.reset();  // every call is a fresh prefill (keeps its storage)
    attnkit::linear_attention(attnkit::cpu, qv, kv, vv, ov, attnkit::feature::identity{}, linear,
                              lightning);
    benchmark::DoNotOptimize(in.out.data());
    benchmark::ClobberMemory();
  });
  set_counters(state, linear_prefill_flops(n, heads, heads, d, d), 0.0, double(n), time, false);
}

void bm_dense_prefill(benchmark::State& state, index_t n, index_t heads, index_t d) {
  inputs in(n, heads, d);
  const auto qv = in.q.cview(n, heads, d), kv = in.k.cview(n, heads, d);
  const auto vv = in.v.cview(n, heads, d);
  const auto ov = in.out.view(n, heads, d);
  const attnkit::causal mask{};
  const loop_time time = timed_loop(state, [&] {
    attnkit::attention(attnkit::cpu, qv, kv, vv, ov, mask);
    benchmark::DoNotOptimize(in.out.data());
    benchmark::ClobberMemory();
  });
  set_counters(state, attnkit_bench::attention_flops(mask, n, n, heads, d), 0.0, double(n), time,
               false);
}

void bm_linear_decode(benchmark::State& state, index_t position, index_t heads, index_t d) {
  // Reach `position` with prefill calls of at most 4096 tokens through one set of buffers.
  attnkit::linear_state linear;
  {
    const index_t piece = std::min<index_t>(position, 4096);
    inputs in(piece, heads, d);
    for (index_t done = 0; done < position; done += piece) {
      const index_t m = std::min(piece, position - done);
      attnkit::linear_attention(attnkit::cpu, in.q.cview(m, heads, d), in.k.cview(m, heads, d),
                                in.v.cview(m, heads, d), in.out.view(m, heads, d),
                                attnkit::feature::identity{}, linear, lightning);
    }
  }
  inputs step(1, heads, d);
  const auto qv = step.q.cview(1, heads, d), kv = step.k.cview(1, heads, d);
  const auto vv = step.v.cview(1, heads, d);
  const auto ov = step.out.view(1, heads, d);
  const loop_time time = timed_loop(state, [&] {
    attnkit::linear_attention(attnkit::cpu, qv, kv, vv, ov, attnkit::feature::identity{}, linear,
                              lightning);
    benchmark::DoNotOptimize(step.out.data());
    benchmark::ClobberMemory();
  });
  const double state_bytes = 2.0 * double(heads * d * d) * sizeof(float);  // S read + written
  const double flops = double(heads) * 4.0 * double(d * d);
  set_counters(state, flops, state_bytes, 1.0, time, true);
  state.counters["position"] = benchmark::Counter(double(linear.tokens()));
}

void register_all() {
  const index_t d = 128;
  for (index_t n : {1024, 8192, 65536}) {
    const std::string name = "linear_prefill/d:128/heads:32/n:" + std::to_string(n);
    auto* b = benchmark::RegisterBenchmark(
        name.c_str(), [=](benchmark::State& s) { bm_linear_prefill(s, n, 32, d); });
    b->Unit(benchmark::kMillisecond)->UseRealTime();
    if (n >= 8192) {
      b->Iterations(1);
    } else {
      b->MinTime(0.5);
    }
  }
  const index_t n = 16384, heads = 4;
  benchmark::RegisterBenchmark("versus_dense/linear/d:128/heads:4/n:16384",
                               [=](benchmark::State& s) { bm_linear_prefill(s, n, heads, d); })
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime()
      ->Iterations(3);
  benchmark::RegisterBenchmark("versus_dense/dense/d:128/heads:4/n:16384",
                               [=](benchmark::State& s) { bm_dense_prefill(s, n, heads, d); })
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime()
      ->Iterations(1);
  for (index_t position : {1024, 65536}) {
    const std::string name = "linear_decode/d:128/heads:32/pos:" + std::to_string(position);
    benchmark::RegisterBenchmark(name.c_str(),
                                 [=](benchmark::State& s) { bm_linear_decode(s, position, 32, d); })
        ->Unit(benchmark::kMicrosecond)
        ->UseRealTime()
        ->Iterations(256);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const bool list_only = attnkit_bench::lists_benchmarks_only(argc, argv);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  const std::size_t threads = pool_threads();
  register_all();
  if (!list_only) {
    peak_pool = attnkit_bench::measure_peak(threads);
    benchmark::AddCustomContext("attnkit_arch", xsimd::default_arch::name());
    benchmark::AddCustomContext("attnkit_threads", std::to_string(threads));
    attnkit_bench::add_peak_context(benchmark::AddCustomContext, threads, peak_pool);
  }
  benchmark::RunSpecifiedBenchmarks();
  if (!list_only) attnkit_bench::warn_if_peak_moved("bench_linear", threads, peak_pool);
  benchmark::Shutdown();
  return 0;
}
