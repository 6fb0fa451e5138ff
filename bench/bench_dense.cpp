// attnkit benchmarks — dense softmax attention: prefill and decode, attnkit::cpu against a naive
// Eigen baseline, each reported against this machine's peaks measured in the same process.
//
// Before any benchmark runs, main() measures the fp32 FMA peak and the streaming read bandwidth
// (bench/peak.hpp) for the thread count of attnkit::parallel::default_thread_pool() and for one
// thread; they are printed in the context header and every peak_fraction divides by them.
//
// Benchmarks, named <phase>/<dtypes>/<mask>/d:<dim>/heads:<q>x<kv>/n:<tokens>/<impl>[/serial]
//   prefill  n = 512, 2048, 8192 (q_tokens = kv_tokens = n), d = 64 and 128, 32 query heads over
//            8 or 32 KV heads, causal and full, fp32 and bf16 (q, k, v and out of one dtype).
//   decode   1 query token over n_kv = 4096, 32768, 131072 cached tokens, 32/8 heads, d = 128,
//            causal (bottom-right: the query sees the whole cache); fp32 q/out over fp16 and
//            bf16 KV (the usual engine case), and fp16 q/out over fp16 KV.
//   /serial  the main targets (prefill causal fp32 d=128 n=2048 32/32, decode fp16 KV n=32768)
//            once more on attnkit::parallel::serial, normalized by the 1-thread peaks.
// Every shape runs as <impl> = attnkit (attnkit::cpu) and naive (below), on the same executor.
//
// Counters
//   GFLOP/s        useful flops: 4·d per allowed (query, key) pair per query head; a causal
//                  mask counts only its unmasked pairs, exactly (bench/workload.hpp).
//   KV_GB/s        bytes of K and V, each read once: n_kv · kv_heads · d · 2 · sizeof(kv).
//   peak_fraction  plain ratio: prefill GFLOP/s / measured FMA peak; decode KV_GB/s / measured
//                  read bandwidth. Both rates use wall-clock time (UseRealTime).
//   cpu_util       process CPU time / (wall time × threads): ~1 when every thread had a core;
//                  lower means idle threads (imbalance) or a contended machine (other processes).
//   kv_copies      (decode) copies of K/V rotated through, see below.
//   read_GB/s_near (decode) the read ceiling measured right before and right after the
//                  benchmark's timed loop (best of 3 passes each, the higher of the two), and
//   near_fraction  KV_GB/s over it. A VM's memory can move between states minutes apart (the
//                  2-thread probe of one machine read ~35 and ~60 GB/s in the same hour,
//                  bench/RESULTS.md): the start-of-run ceiling may not be the one the row ran
//                  under. Taking the higher probe keeps the ratio conservative.
//
// Decode reads a cold cache: the benchmark keeps enough copies of K and V to cover the
// bandwidth probe's buffer (>= 1 GiB) and rotates through them, so each call streams its KV
// from memory as in an engine running many layers, not from a warm last-level cache.
//
// The naive baseline is the textbook eager implementation, per query head (one work item per
// head on the same executor, each item's Eigen calls single-threaded):
//   S = Q Kᵀ (Eigen fp32 GEMM, the full n_q × n_kv matrix even when causal), scale, mask and
//   softmax each row (Eigen's vectorized exp), O = P V (GEMM; GEMV for decode).
// 16-bit q/k/v are converted to fp32 first and 16-bit outputs converted back: that conversion is
// part of the naive path and is timed (parallelized over the same executor). It is skipped where
// its fp32 copies and per-thread score matrices would need more than 4 GiB.
//
// Inputs are allocated and filled before the timed loop. Large shapes (n = 8192) run one
// iteration; everything else runs for at least 0.5 s.

// attnkit before Eigen: attnkit's core/intrinsics.hpp silences GCC 12's false
// -Wmaybe-uninitialized in <immintrin.h> only if it is the first to include it.
// clang-format off
#include <attnkit/attnkit.hpp>
#include <Eigen/Core>
// clang-format on
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <ctime>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

#include "peak.hpp"
#include "workload.hpp"

namespace {

using attnkit::index_t;
using attnkit_bench::buffer;
using attnkit_bench::steady;

// ------------------------------------------------------------------------------------------------
// Measured ceilings (filled by main before any benchmark runs).
// ------------------------------------------------------------------------------------------------

using attnkit_bench::machine_peak;

machine_peak peak_pool;    // default_thread_pool().concurrency() threads
machine_peak peak_serial;  // 1 thread

enum class threading { pool, serial };
enum class impl { attnkit, naive };

const machine_peak& peak_for(threading t) { return t == threading::pool ? peak_pool : peak_serial; }

template <class Fn>
void with_executor(threading t, Fn&& fn) {
  if (t == threading::pool) {
    fn(attnkit::parallel::default_thread_pool());
  } else {
    attnkit::parallel::serial serial;
    fn(serial);
  }
}

constexpr double gib = double(std::size_t{1} << 30);
constexpr double naive_memory_limit = 4.0 * gib;

// ------------------------------------------------------------------------------------------------
// Timing and counters.
// ------------------------------------------------------------------------------------------------

std::size_t threads_of(threading t) {
  return t == threading::pool ? attnkit::parallel::default_thread_pool().concurrency() : 1;
}

// CPU seconds used so far by every thread of this process (std::clock on POSIX systems).
double process_cpu_seconds() { return double(std::clock()) / double(CLOCKS_PER_SEC); }

struct loop_time {
  double wall = 0.0;  // seconds, the span the framework times with UseRealTime (within µs)
  double cpu = 0.0;   // CPU seconds of all threads of the process over that span
};

// Runs call(iteration) for every benchmark iteration.
template <class Call>
loop_time timed_loop(benchmark::State& state, Call&& call) {
  std::size_t iteration = 0;
  const double cpu_start = process_cpu_seconds();
  const steady::time_point start = steady::now();
  for (auto _ : state) call(iteration++);
  const double wall = std::chrono::duration<double>(steady::now() - start).count();
  return {wall, process_cpu_seconds() - cpu_start};
}

// Giga-units per second of `per_call` units over the loop's calls (wall-clock time).
double giga_per_second(const benchmark::State& state, double per_call, loop_time time) {
  const double calls = double(std::max<benchmark::IterationCount>(state.iterations(), 1));
  return per_call * 1e-9 * calls / time.wall;
}

// GFLOP/s and KV_GB/s are rates over the framework's (wall-clock) time. peak_fraction is a plain
// ratio to the measured ceiling. cpu_util = process CPU time / (wall time × threads): near 1 when
// every thread had a core to itself for the whole call; lower when the kernel left threads idle
// (load imbalance) or when other processes took the cores (a shared machine: distrust the row).
void set_counters(benchmark::State& state, double flops, double bytes, loop_time time,
                  std::size_t threads, double peak_value, bool bandwidth_bound) {
  using benchmark::Counter;
  state.counters["GFLOP/s"] = Counter(flops * 1e-9, Counter::kIsIterationInvariantRate);
  state.counters["KV_GB/s"] = Counter(bytes * 1e-9, Counter::kIsIterationInvariantRate);
  const double achieved = giga_per_second(state, bandwidth_bound ? bytes : flops, time);
  state.counters["peak_fraction"] = Counter(peak_value > 0.0 ? achieved / peak_value : 0.0);
  state.counters["cpu_util"] = Counter(time.cpu / (time.wall * double(threads)));
}

// ------------------------------------------------------------------------------------------------
// The naive baseline.
// ------------------------------------------------------------------------------------------------

using row_matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using const_head_map = Eigen::Map<const row_matrix, Eigen::Unaligned, Eigen::OuterStride<>>;
using head_map = Eigen::Map<row_matrix, Eigen::Unaligned, Eigen::OuterStride<>>;

template <class Executor>
std::size_t slices_of(const Executor& executor) {
  return attnkit::parallel::concurrency_of(executor);
}

// dst[i] = float(src[i]), split over the executor.
template <class T, class Executor>
void widen(const T* src, float* dst, std::size_t n, Executor& executor) {
  const std::size_t slices = slices_of(executor);
  executor(slices, [=](std::size_t s) {
    const std::size_t begin = n * s / slices, end = n * (s + 1) / slices;
    for (std::size_t i = begin; i < end; ++i) dst[i] = attnkit::to_float(src[i]);
  });
}

template <class T, class Executor>
void narrow(const float* src, T* dst, std::size_t n, Executor& executor) {
  const std::size_t slices = slices_of(executor);
  executor(slices, [=](std::size_t s) {
    const std::size_t begin = n * s / slices, end = n * (s + 1) / slices;
    for (std::size_t i = begin; i < end; ++i) dst[i] = attnkit::from_float<T>(src[i]);
  });
}

// Scales, masks and normalizes one row of logits in place: the first `visible` entries are the
// allowed keys, the rest become 0 (what masked_fill(-inf) + softmax gives).
void softmax_row(float* row, index_t visible, index_t n_kv, float scale) {
  if (visible > 0) {
    Eigen::Map<Eigen::ArrayXf> r(row, visible);
    const float max = r.maxCoeff();
    r = ((r - max) * scale).exp();
    r *= 1.0f / r.sum();
  }
  std::fill(row + visible, row + n_kv, 0.0f);
}

// Buffers of the naive path, sized and touched before timing.
template <class TQ, class KV, class TO>
class naive_attention {
 public:
  naive_attention(index_t n_q, index_t n_kv, index_t q_heads, index_t kv_heads, index_t d,
                  std::size_t concurrency)
      : n_q_(n_q), n_kv_(n_kv), q_heads_(q_heads), kv_heads_(kv_heads), d_(d) {
    if constexpr (!std::is_same_v<TQ, float>) q32_ = buffer<float>(std::size_t(n_q * q_heads * d));
    if constexpr (!std::is_same_v<KV, float>) {
      k32_ = buffer<float>(std::size_t(n_kv * kv_heads * d));
      v32_ = buffer<float>(std::size_t(n_kv * kv_heads * d));
    }
    if constexpr (!std::is_same_v<TO, float>) o32_ = buffer<float>(std::size_t(n_q * q_heads * d));
    for (auto* b : {&q32_, &k32_, &v32_, &o32_}) attnkit_bench::fill_zero(*b);
    scores_.resize(concurrency);
    for (auto& s : scores_) {
      s = row_matrix::Zero(n_q, n_kv);
      free_scores_.push_back(&s);
    }
  }

  // Memory the buffers above take.
  static double memory_bytes(index_t n_q, index_t n_kv, index_t q_heads, index_t kv_heads,
                             index_t d, std::size_t concurrency) {
    double bytes = double(n_q) * double(n_kv) * 4.0 * double(concurrency);
    if (!std::is_same_v<TQ, float>) bytes += double(n_q * q_heads * d) * 4.0;
    if (!std::is_same_v<KV, float>) bytes += double(n_kv * kv_heads * d) * 8.0;
    if (!std::is_same_v<TO, float>) bytes += double(n_q * q_heads * d) * 4.0;
    return bytes;
  }

  template <class Mask, class Executor>
  void operator()(const TQ* q, const KV* k, const KV* v, TO* out, const Mask& mask,
                  Executor& executor) {
    const float* qf = fp32_input(q, q32_, n_q_ * q_heads_ * d_, executor);
    const float* kf = fp32_input(k, k32_, n_kv_ * kv_heads_ * d_, executor);
    const float* vf = fp32_input(v, v32_, n_kv_ * kv_heads_ * d_, executor);
    float* of;
    if constexpr (std::is_same_v<TO, float>) {
      of = out;
    } else {
      of = o32_.data();
    }
    const float scale = 1.0f / std::sqrt(float(d_));
    const index_t group = q_heads_ / kv_heads_;
    // One item per query head, scheduled like attnkit's items; each borrows a score matrix (at
    // most `concurrency` items run at once, so there is always one free).
    executor(std::size_t(q_heads_), [&](std::size_t item) {
      const index_t h = index_t(item);
      row_matrix& scores = borrow_scores();
      const index_t kv_h = h / group;
      const_head_map kh(kf + kv_h * d_, n_kv_, d_, Eigen::OuterStride<>(kv_heads_ * d_));
      const_head_map vh(vf + kv_h * d_, n_kv_, d_, Eigen::OuterStride<>(kv_heads_ * d_));
      if (n_q_ == 1) {  // decode: vector × matrix products (GEMV)
        Eigen::Map<const Eigen::RowVectorXf> qh(qf + h * d_, d_);
        Eigen::Map<Eigen::RowVectorXf> s(scores.data(), n_kv_);
        s.noalias() = qh * kh.transpose();
        softmax_row(scores.data(), attnkit_bench::visible_keys(mask, 0, 1, n_kv_), n_kv_, scale);
        Eigen::Map<Eigen::RowVectorXf> oh(of + h * d_, d_);
        oh.noalias() = s * vh;
      } else {
        const_head_map qh(qf + h * d_, n_q_, d_, Eigen::OuterStride<>(q_heads_ * d_));
        scores.noalias() = qh * kh.transpose();
        for (index_t i = 0; i < n_q_; ++i)
          softmax_row(scores.data() + i * n_kv_, attnkit_bench::visible_keys(mask, i, n_q_, n_kv_),
                      n_kv_, scale);
        head_map oh(of + h * d_, n_q_, d_, Eigen::OuterStride<>(q_heads_ * d_));
        oh.noalias() = scores * vh;
      }
      return_scores(scores);
    });
    if constexpr (!std::is_same_v<TO, float>)
      narrow(of, out, std::size_t(n_q_ * q_heads_ * d_), executor);
  }

 private:
  template <class T, class Executor>
  static const float* fp32_input(const T* src, const buffer<float>& copy, index_t n,
                                 Executor& executor) {
    if constexpr (std::is_same_v<T, float>) {
      return src;
    } else {
      widen(src, copy.data(), std::size_t(n), executor);
      return copy.data();
    }
  }

  row_matrix& borrow_scores() {
    std::lock_guard lock(free_mutex_);
    row_matrix* m = free_scores_.back();
    free_scores_.pop_back();
    return *m;
  }
  void return_scores(row_matrix& m) {
    std::lock_guard lock(free_mutex_);
    free_scores_.push_back(&m);
  }

  index_t n_q_, n_kv_, q_heads_, kv_heads_, d_;
  buffer<float> q32_, k32_, v32_, o32_;
  std::vector<row_matrix> scores_;  // one per concurrently running item
  std::vector<row_matrix*> free_scores_;
  std::mutex free_mutex_;
};

// ------------------------------------------------------------------------------------------------
// Prefill.
// ------------------------------------------------------------------------------------------------

struct prefill_shape {
  index_t n;
  index_t head_dim;
  index_t q_heads;
  index_t kv_heads;
};

template <class T, class Mask>
void bm_prefill(benchmark::State& state, prefill_shape s, impl which, threading t) {
  const index_t n = s.n, d = s.head_dim;
  buffer<T> q(std::size_t(n * s.q_heads * d)), out(std::size_t(n * s.q_heads * d));
  buffer<T> k(std::size_t(n * s.kv_heads * d)), v(std::size_t(n * s.kv_heads * d));
  attnkit_bench::fill_uniform(q, 1);
  attnkit_bench::fill_uniform(k, 2);
  attnkit_bench::fill_uniform(v, 3);
  attnkit_bench::fill_zero(out);
  const Mask mask{};

  loop_time time;
  with_executor(t, [&](auto& executor) {
    if (which == impl::attnkit) {
      const auto qv = q.cview(n, s.q_heads, d), kv = k.cview(n, s.kv_heads, d);
      const auto vv = v.cview(n, s.kv_heads, d);
      const auto ov = out.view(n, s.q_heads, d);
      time = timed_loop(state, [&](std::size_t) {
        attnkit::attention(attnkit::cpu, qv, kv, vv, ov, mask, {}, executor);
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
      });
    } else {
      naive_attention<T, T, T> naive(n, n, s.q_heads, s.kv_heads, d, slices_of(executor));
      time = timed_loop(state, [&](std::size_t) {
        naive(q.data(), k.data(), v.data(), out.data(), mask, executor);
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
      });
    }
  });
  set_counters(state, attnkit_bench::attention_flops(mask, n, n, s.q_heads, d),
               attnkit_bench::kv_bytes<T>(n, s.kv_heads, d), time, threads_of(t),
               peak_for(t).fma_gflops, /*bandwidth_bound=*/false);
}

// ------------------------------------------------------------------------------------------------
// Decode.
// ------------------------------------------------------------------------------------------------

struct decode_shape {
  index_t n_kv;
  index_t head_dim;
  index_t q_heads;
  index_t kv_heads;
};

template <class TQ, class KV>
void bm_decode(benchmark::State& state, decode_shape s, impl which, threading t) {
  using TO = TQ;
  const index_t n_kv = s.n_kv, d = s.head_dim;
  const double bytes = attnkit_bench::kv_bytes<KV>(n_kv, s.kv_heads, d);
  const std::size_t copies = attnkit_bench::cold_copies(bytes);
  const std::size_t elems = std::size_t(n_kv * s.kv_heads * d);
  buffer<TQ> q(std::size_t(s.q_heads * d));
  buffer<TO> out(std::size_t(s.q_heads * d));
  buffer<KV> k(elems * copies), v(elems * copies);
  attnkit_bench::fill_uniform(q, 1);
  attnkit_bench::fill_kv_copies(k, v, elems, copies);
  attnkit_bench::fill_zero(out);
  const attnkit::causal mask{};
  state.counters["kv_copies"] = benchmark::Counter(double(copies));

  const std::size_t threads = threads_of(t);
  const double read_before = attnkit_bench::measure_read_bandwidth_gbs(threads, 0, 3);
  loop_time time;
  with_executor(t, [&](auto& executor) {
    const auto qv = q.cview(1, s.q_heads, d);
    const auto ov = out.view(1, s.q_heads, d);
    if (which == impl::attnkit) {
      time = timed_loop(state, [&](std::size_t i) {
        const std::size_t c = i % copies;
        attnkit::tensor_view<const KV, 3> kv(k.data() + c * elems, {n_kv, s.kv_heads, d});
        attnkit::tensor_view<const KV, 3> vv(v.data() + c * elems, {n_kv, s.kv_heads, d});
        attnkit::attention(attnkit::cpu, qv, kv, vv, ov, mask, {}, executor);
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
      });
    } else {
      naive_attention<TQ, KV, TO> naive(1, n_kv, s.q_heads, s.kv_heads, d, slices_of(executor));
      time = timed_loop(state, [&](std::size_t i) {
        const std::size_t c = i % copies;
        naive(q.data(), k.data() + c * elems, v.data() + c * elems, out.data(), mask, executor);
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
      });
    }
  });
  const double read_near =
      std::max(read_before, attnkit_bench::measure_read_bandwidth_gbs(threads, 0, 3));
  set_counters(state, attnkit_bench::attention_flops(mask, 1, n_kv, s.q_heads, d), bytes, time,
               threads, peak_for(t).read_gbs, /*bandwidth_bound=*/true);
  state.counters["read_GB/s_near"] = benchmark::Counter(read_near);
  state.counters["near_fraction"] =
      benchmark::Counter(giga_per_second(state, bytes, time) / read_near);
}

// ------------------------------------------------------------------------------------------------
// Registration.
// ------------------------------------------------------------------------------------------------

const char* impl_name(impl which) { return which == impl::attnkit ? "attnkit" : "naive"; }

template <class Mask>
constexpr const char* mask_name() {
  return std::is_same_v<Mask, attnkit::causal> ? "causal" : "full";
}

template <class T, class Mask>
void register_prefill(prefill_shape s, threading t) {
  const std::size_t slices = threads_of(t);
  for (impl which : {impl::attnkit, impl::naive}) {
    if (which == impl::naive &&
        naive_attention<T, T, T>::memory_bytes(s.n, s.n, s.q_heads, s.kv_heads, s.head_dim,
                                               slices) > naive_memory_limit)
      continue;
    const std::string name = std::string("prefill/") + attnkit_bench::dtype_name<T>() + "/" +
                             mask_name<Mask>() + "/d:" + std::to_string(s.head_dim) +
                             "/heads:" + std::to_string(s.q_heads) + "x" +
                             std::to_string(s.kv_heads) + "/n:" + std::to_string(s.n) + "/" +
                             impl_name(which) + (t == threading::serial ? "/serial" : "");
    auto* b = benchmark::RegisterBenchmark(
        name.c_str(), [=](benchmark::State& state) { bm_prefill<T, Mask>(state, s, which, t); });
    b->Unit(benchmark::kMillisecond)->UseRealTime();
    if (s.n >= 8192) {
      b->Iterations(1);
    } else {
      b->MinTime(0.5);
    }
  }
}

template <class TQ, class KV>
void register_decode(decode_shape s, threading t) {
  const std::size_t slices = threads_of(t);
  for (impl which : {impl::attnkit, impl::naive}) {
    if (which == impl::naive &&
        naive_attention<TQ, KV, TQ>::memory_bytes(1, s.n_kv, s.q_heads, s.kv_heads, s.head_dim,
                                                  slices) > naive_memory_limit)
      continue;
    const std::string name = std::string("decode/q:") + attnkit_bench::dtype_name<TQ>() +
                             "/kv:" + attnkit_bench::dtype_name<KV>() +
                             "/d:" + std::to_string(s.head_dim) +
                             "/heads:" + std::to_string(s.q_heads) + "x" +
                             std::to_string(s.kv_heads) + "/n_kv:" + std::to_string(s.n_kv) + "/" +
                             impl_name(which) + (t == threading::serial ? "/serial" : "");
    benchmark::RegisterBenchmark(
        name.c_str(), [=](benchmark::State& state) { bm_decode<TQ, KV>(state, s, which, t); })
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime()
        ->MinTime(0.5);
  }
}

template <class T>
void register_prefill_dtype() {
  for (bool causal : {true, false})
    for (index_t d : {64, 128})
      for (index_t kv_heads : {8, 32})
        for (index_t n : {512, 2048, 8192}) {
          const prefill_shape s{n, d, 32, kv_heads};
          if (causal) {
            register_prefill<T, attnkit::causal>(s, threading::pool);
          } else {
            register_prefill<T, attnkit::full>(s, threading::pool);
          }
        }
}

void register_all() {
  using attnkit::bfloat16;
  using attnkit::half;
  register_prefill_dtype<float>();
  register_prefill_dtype<bfloat16>();

  for (index_t n_kv : {4096, 32768, 131072}) {
    const decode_shape s{n_kv, 128, 32, 8};
    register_decode<float, half>(s, threading::pool);
    register_decode<float, bfloat16>(s, threading::pool);
    register_decode<half, half>(s, threading::pool);
  }

  // One thread: the main targets without the pool.
  register_prefill<float, attnkit::causal>(prefill_shape{2048, 128, 32, 32}, threading::serial);
  register_decode<float, half>(decode_shape{32768, 128, 32, 8}, threading::serial);
}

}  // namespace

int main(int argc, char** argv) {
  const bool list_only = attnkit_bench::lists_benchmarks_only(argc, argv);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;

  // Start the pool before anything is timed, then measure the ceilings every ratio uses.
  const std::size_t threads = attnkit::parallel::default_thread_pool().concurrency();
  register_all();
  if (!list_only) {
    const attnkit_bench::machine_peaks peaks = attnkit_bench::measure_peaks(threads);
    peak_pool = peaks.pool;
    peak_serial = peaks.serial;
    benchmark::AddCustomContext("attnkit_arch", xsimd::default_arch::name());
    benchmark::AddCustomContext("attnkit_threads", std::to_string(threads));
    attnkit_bench::add_peak_context(benchmark::AddCustomContext, threads, peak_pool);
    attnkit_bench::add_peak_context(benchmark::AddCustomContext, 1, peak_serial);
  }
  benchmark::RunSpecifiedBenchmarks();
  if (!list_only) attnkit_bench::warn_if_peak_moved("bench_dense", threads, peak_pool);
  benchmark::Shutdown();
  return 0;
}
