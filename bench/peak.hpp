// attnkit benchmarks — the machine's measured ceilings, so kernel numbers can be read as ratios.
//
//   measure_fma_peak_gflops(threads)   fp32 FMA throughput: `threads` std::threads each run
//                                      fma_chains independent xsimd::batch<float> FMA chains
//                                      (a·b + c counts 2 flops per lane) with nothing but
//                                      registers involved; best of a few short trials.
//   measure_read_bandwidth_gbs(threads) streaming read bandwidth: `threads` std::threads each sum
//                                      their contiguous share of one buffer far larger than the
//                                      last-level cache (plain vector loads, no stores, no
//                                      non-temporal hints); best of a few full passes.
//
// Both are measured rather than taken from a spec sheet so that "fraction of peak" stays honest
// on whatever machine (and whatever frequency, turbo state or noisy neighbour) the numbers come
// from: measure them in the same process, right before the kernels they normalize.
//
// GFLOP/s and GB/s are decimal (1e9). The clock starts when all threads are released together
// and stops when the last one finishes, so thread creation is not timed.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <new>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "attnkit/core/aligned_memory.hpp"
#include "attnkit/core/simd_include.hpp"  // xsimd, via attnkit's one include point (GCC 12 fix)

#if defined(__linux__)
#include <unistd.h>
#endif

namespace attnkit_bench {

using steady = std::chrono::steady_clock;

// Makes the optimizer assume `value` is read, so the work producing it cannot be removed.
template <class T>
inline void keep(const T& value) {
#if defined(__GNUC__) || defined(__clang__)
  asm volatile("" : : "r,m"(value) : "memory");
#else
  static volatile T sink;
  sink = value;
#endif
}

// ------------------------------------------------------------------------------------------------
// Large aligned allocations: the library's own (core/aligned_memory.hpp: 64-byte aligned, from
// 2 MiB on 2 MiB-aligned with transparent huge pages requested on Linux, so that streaming
// kernels are not limited by 4 KiB page walks). The benchmarks allocate their tensors through
// the same path as the bandwidth probe and the library's page pool, so all see the same pages.
// ------------------------------------------------------------------------------------------------

inline void* allocate_bytes(std::size_t bytes) {
  return attnkit::detail::allocate_aligned<std::byte>(std::max<std::size_t>(bytes, 1)).release();
}

using attnkit::detail::free_deleter;

// ------------------------------------------------------------------------------------------------
// Running a function on N threads released at the same instant.
// ------------------------------------------------------------------------------------------------

// Calls work(t) on threads t = 0..threads-1, all started together; returns the seconds from the
// common start until the last one returned.
template <class Work>
double run_concurrently(std::size_t threads, Work&& work) {
  threads = std::max<std::size_t>(threads, 1);
  std::atomic<std::size_t> ready{0};
  std::atomic<bool> go{false};
  std::vector<steady::time_point> finished(threads);
  std::vector<std::thread> pool;
  pool.reserve(threads);
  for (std::size_t t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      ready.fetch_add(1, std::memory_order_acq_rel);
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      work(t);
      finished[t] = steady::now();
    });
  }
  while (ready.load(std::memory_order_acquire) != threads) std::this_thread::yield();
  const steady::time_point start = steady::now();
  go.store(true, std::memory_order_release);
  for (auto& th : pool) th.join();
  const steady::time_point end = *std::max_element(finished.begin(), finished.end());
  return std::chrono::duration<double>(end - start).count();
}

// ------------------------------------------------------------------------------------------------
// FMA peak.
// ------------------------------------------------------------------------------------------------

// Independent accumulator chains per thread. Two FMA ports × 4-cycle latency need >= 8 chains in
// flight. The chains and the two operands must all stay in registers: 16 chains fit AVX-512's 32,
// but with AVX2's 16 they spilled, and the chains then ran through memory at ~58 % of the FMA
// rate (Zen 4 without AVX-512: 50 GFLOP/s per core against 86-88 with 8-14 chains), which made
// every fraction of peak measured on such a machine too high. 12 leave room for the operands.
inline constexpr std::size_t fma_chains = xsimd::batch<float>::size >= 16 ? 16 : 12;

// Runs `iterations` rounds of fma_chains dependent-per-chain FMAs; returns a value depending on
// all of them. acc = acc·a + b converges to b / (1 - a), so nothing overflows or goes denormal.
inline float fma_kernel(std::size_t iterations, float seed) {
  using batch = xsimd::batch<float>;
  batch acc[fma_chains];
  for (std::size_t j = 0; j < fma_chains; ++j) acc[j] = batch(seed + 0.001f * float(j));
  const batch a(0.999f + seed * 1e-9f);
  const batch b(0.001f);
  for (std::size_t i = 0; i < iterations; ++i) {
    for (std::size_t j = 0; j < fma_chains; ++j) acc[j] = xsimd::fma(acc[j], a, b);
  }
  batch total = acc[0];
  for (std::size_t j = 1; j < fma_chains; ++j) total += acc[j];
  return xsimd::hadd(total);
}

inline constexpr double fma_flops_per_iteration =
    double(fma_chains) * double(xsimd::batch<float>::size) * 2.0;

// Peak fp32 FMA GFLOP/s of `threads` threads running concurrently: best of `trials` trials of
// about `trial_seconds` each (the default totals ~0.2 s).
inline double measure_fma_peak_gflops(std::size_t threads, int trials = 5,
                                      double trial_seconds = 0.03) {
  threads = std::max<std::size_t>(threads, 1);
  // Calibrate on one thread: iterations that take about trial_seconds.
  std::size_t iterations = std::size_t{1} << 16;
  for (;;) {
    const steady::time_point t0 = steady::now();
    keep(fma_kernel(iterations, 1.0f));
    const double s = std::chrono::duration<double>(steady::now() - t0).count();
    if (s >= trial_seconds / 8 || iterations >= (std::size_t{1} << 34)) {
      iterations = static_cast<std::size_t>(double(iterations) * trial_seconds / std::max(s, 1e-9));
      break;
    }
    iterations *= 4;
  }
  iterations = std::max<std::size_t>(iterations, 1024);
  double best = 0.0;
  for (int trial = 0; trial < trials; ++trial) {
    const double seconds = run_concurrently(threads, [&](std::size_t t) {
      keep(fma_kernel(iterations, 1.0f + float(t) * 1e-3f + float(trial) * 1e-4f));
    });
    const double flops = fma_flops_per_iteration * double(iterations) * double(threads);
    best = std::max(best, flops / seconds * 1e-9);
  }
  return best;
}

// ------------------------------------------------------------------------------------------------
// Streaming read bandwidth.
// ------------------------------------------------------------------------------------------------

inline std::size_t last_level_cache_bytes() {
#if defined(__linux__) && defined(_SC_LEVEL3_CACHE_SIZE)
  const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
  if (l3 > 0) return static_cast<std::size_t>(l3);
#endif
  return std::size_t{64} << 20;
}

// Default probe size: 1 GiB, or twice the reported last-level cache when that is larger, so a
// pass cannot be served from cache. (VMs often report the whole host's L3; the share a guest
// really gets is smaller, which only makes the probe more conservative.)
inline std::size_t default_bandwidth_bytes() {
  return std::max<std::size_t>(std::size_t{1} << 30, 2 * last_level_cache_bytes());
}

// Sum of floats in [begin, end); `end - begin` is a multiple of 8 batches. Eight accumulators
// keep the loads, not the add latency, the limit.
inline float sum_floats(const float* begin, const float* end) {
  using batch = xsimd::batch<float>;
  constexpr std::size_t w = batch::size;
  batch acc[8];
  for (auto& a : acc) a = batch(0.0f);
  for (const float* p = begin; p < end; p += 8 * w) {
    for (std::size_t j = 0; j < 8; ++j) acc[j] += batch::load_aligned(p + j * w);
  }
  batch total = acc[0];
  for (std::size_t j = 1; j < 8; ++j) total += acc[j];
  return xsimd::hadd(total);
}

// Read GB/s of `threads` threads each streaming through its own contiguous 1/threads share of a
// `total_bytes` buffer (first touched by the thread that reads it): best of `trials` passes.
inline double measure_read_bandwidth_gbs(std::size_t threads, std::size_t total_bytes = 0,
                                         int trials = 8) {
  threads = std::max<std::size_t>(threads, 1);
  if (total_bytes == 0) total_bytes = default_bandwidth_bytes();
  // Each thread's share is a whole number of 64 KiB blocks (so also of 8 batches).
  constexpr std::size_t block = std::size_t{64} << 10;
  const std::size_t share = std::max<std::size_t>(total_bytes / threads / block, 1) * block;
  const std::size_t share_floats = share / sizeof(float);
  std::unique_ptr<void, free_deleter> memory(allocate_bytes(share * threads));
  float* data = static_cast<float*>(memory.get());

  run_concurrently(threads, [data, share_floats](std::size_t t) {
    float* p = data + t * share_floats;
    for (std::size_t i = 0; i < share_floats; ++i) p[i] = float(i & 1023) * (1.0f / 1024.0f);
  });
  double best = 0.0;
  for (int trial = 0; trial < trials; ++trial) {
    const double seconds = run_concurrently(threads, [&](std::size_t t) {
      const float* p = data + t * share_floats;
      keep(sum_floats(p, p + share_floats));
    });
    best = std::max(best, double(share) * double(threads) / seconds * 1e-9);
  }
  return best;
}

// ------------------------------------------------------------------------------------------------
// What the benchmark mains share: measuring the ceilings once, naming them in the run's context,
// and saying when they moved during the run. Free of Google Benchmark (examples/demo.cpp includes
// this header too): the context goes through the caller's add_context(name, value), e.g.
// benchmark::AddCustomContext.
// ------------------------------------------------------------------------------------------------

// The ceilings of one thread count; a ceiling left at 0 was not measured.
struct machine_peak {
  double fma_gflops = 0.0;
  double read_gbs = 0.0;
};

// The ceilings of `threads` threads and of one thread. N threads can always do what one thread
// does (the others idle), so an N-thread probe that reads below the one-thread probe ran during a
// slow moment of a shared machine (seen on the project's VM: 22.0 GB/s for two threads against
// 29.1 for one, in the same process); the N-thread ceiling is then raised to the one-thread
// figure, since a ceiling the kernels beat normalizes nothing.
struct machine_peaks {
  machine_peak pool;    // `threads` threads
  machine_peak serial;  // one thread
};

inline machine_peaks measure_peaks(std::size_t threads) {
  machine_peaks peaks;
  peaks.pool = {measure_fma_peak_gflops(threads), measure_read_bandwidth_gbs(threads)};
  peaks.serial = threads <= 1
                     ? peaks.pool
                     : machine_peak{measure_fma_peak_gflops(1), measure_read_bandwidth_gbs(1)};
  peaks.pool.fma_gflops = std::max(peaks.pool.fma_gflops, peaks.serial.fma_gflops);
  peaks.pool.read_gbs = std::max(peaks.pool.read_gbs, peaks.serial.read_gbs);
  return peaks;
}

inline machine_peak measure_peak(std::size_t threads) { return measure_peaks(threads).pool; }

// True when the command line only asks Google Benchmark to list the benchmarks: the mains then
// skip the peak probes (seconds of work nobody reads).
inline bool lists_benchmarks_only(int argc, char** argv) {
  bool list_only = false;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--benchmark_list_tests" || arg == "--benchmark_list_tests=true" ||
        arg == "--benchmark_list_tests=1")
      list_only = true;
  }
  return list_only;
}

// A ceiling as the context prints it: one decimal.
inline std::string one_decimal(double value) {
  char text[32];
  std::snprintf(text, sizeof text, "%.1f", value);
  return text;
}

// Calls add_context(name, value) for the measured ceilings of `threads` threads:
// peak_fma_gflops_<threads>t, then peak_read_gbs_<threads>t (one not measured is left out).
template <class AddContext>
void add_peak_context(AddContext&& add_context, std::size_t threads, const machine_peak& peak) {
  const std::string t = std::to_string(threads);
  if (peak.fma_gflops > 0.0)
    add_context("peak_fma_gflops_" + t + "t", one_decimal(peak.fma_gflops));
  if (peak.read_gbs > 0.0) add_context("peak_read_gbs_" + t + "t", one_decimal(peak.read_gbs));
}

// On a shared or virtualized machine the ceilings can move during a long run (vCPUs that share a
// physical core some of the time, other tenants' memory traffic): re-measures both ceilings after
// the run and warns on stderr about each that moved by more than 15%, rather than let misleading
// ratios pass.
inline void warn_if_peak_moved(const char* program, std::size_t threads,
                               const machine_peak& before) {
  const auto warn = [&](const char* ceiling, const char* unit, double start, double end) {
    if (start > 0.0 && std::abs(end / start - 1.0) > 0.15)
      std::fprintf(stderr,
                   "%s: warning: the %zu-thread %s moved during the run (%.1f %s at the start, "
                   "%.1f at the end): peak_fraction values are only as good as that\n",
                   program, threads, ceiling, start, unit, end);
  };
  warn("FMA peak", "GFLOP/s", before.fma_gflops, measure_fma_peak_gflops(threads));
  warn("read bandwidth", "GB/s", before.read_gbs, measure_read_bandwidth_gbs(threads));
}

}  // namespace attnkit_bench
