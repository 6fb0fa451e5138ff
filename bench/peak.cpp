// attnkit benchmarks — the machine's ceilings on their own: fp32 FMA peak and streaming read
// bandwidth (bench/peak.hpp), for one thread and for every hardware thread.
//
//   fma_peak/threads:N        GFLOP/s  fp32 FMA throughput of N concurrent threads
//   read_bandwidth/threads:N  GB/s     streaming read bandwidth of N concurrent threads
//
// Each iteration is one full measurement (itself the best of a few trials); the counter reports
// the best iteration. The Time column is the cost of a measurement, not a result.
#include "peak.hpp"

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <thread>

namespace {

void bm_fma_peak(benchmark::State& state) {
  const auto threads = static_cast<std::size_t>(state.range(0));
  double best = 0.0;
  for (auto _ : state) best = std::max(best, attnkit_bench::measure_fma_peak_gflops(threads));
  state.counters["GFLOP/s"] = benchmark::Counter(best);
}

void bm_read_bandwidth(benchmark::State& state) {
  const auto threads = static_cast<std::size_t>(state.range(0));
  double best = 0.0;
  for (auto _ : state) best = std::max(best, attnkit_bench::measure_read_bandwidth_gbs(threads));
  state.counters["GB/s"] = benchmark::Counter(best);
}

void thread_counts(benchmark::internal::Benchmark* b) {
  const auto all = static_cast<std::int64_t>(std::max(1u, std::thread::hardware_concurrency()));
  b->Arg(1);
  if (all > 1) b->Arg(all);
}

BENCHMARK(bm_fma_peak)
    ->Name("fma_peak")
    ->ArgName("threads")
    ->Apply(thread_counts)
    ->Iterations(3)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(bm_read_bandwidth)
    ->Name("read_bandwidth")
    ->ArgName("threads")
    ->Apply(thread_counts)
    ->Iterations(3)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
