// attnkit benchmarks — the MoBA gating kernel alone: block means, gate scores, top-k selection.
//
//   bench_selection [--benchmark_filter=...] [--benchmark_min_time=...]
//
// Shapes: causal prefill over n = 16384 and 32768 tokens (q_tokens = kv_tokens = n) and one
// decode step over n_kv = 32768, 32 query heads over 8 KV heads, head dim 128, blocks of 512
// keys, top 3 (the MoBA paper's setting at 32k context), fp32 queries, fp32 or fp16 keys, on the
// default thread pool.
//
// GFLOP/s counts useful work only: 2·d per (query row, candidate block) score — under causality
// the candidates of query position p are the p / block_size blocks before its own — plus d adds
// per key row for the block means (one pass over K per KV head). KV_GB/s is the bytes of K read
// once over the same time.
#include <benchmark/benchmark.h>

#include <attnkit/attention/moba.hpp>
#include <attnkit/attnkit.hpp>
#include <string>

#include "workload.hpp"

namespace {

using attnkit::index_t;
using attnkit_bench::buffer;

struct gate_shape {
  index_t q_tokens;
  index_t kv_tokens;
  index_t q_heads = 32;
  index_t kv_heads = 8;
  index_t head_dim = 128;
  index_t block_size = 512;
  index_t top_k = 3;
};

// Useful flops of one causal gating call (see the header comment).
double gate_flops(const gate_shape& s) {
  double scores = 0.0;
  for (index_t i = 0; i < s.q_tokens; ++i) {
    const index_t p = s.kv_tokens - s.q_tokens + i;
    if (p >= 0) scores += double(p / s.block_size);
  }
  const double d = double(s.head_dim);
  return scores * 2.0 * d * double(s.q_heads) + double(s.kv_tokens) * double(s.kv_heads) * d;
}

template <class TK>
void bm_moba_gate(benchmark::State& state, gate_shape s) {
  const index_t d = s.head_dim;
  buffer<float> q(std::size_t(s.q_tokens * s.q_heads * d));
  buffer<TK> k(std::size_t(s.kv_tokens * s.kv_heads * d));
  attnkit_bench::fill_uniform(q, 1);
  attnkit_bench::fill_uniform(k, 2);
  const auto qv = q.cview(s.q_tokens, s.q_heads, d);
  const auto kv = k.cview(s.kv_tokens, s.kv_heads, d);
  const attnkit::moba_options options{s.block_size, s.top_k, true};
  auto& pool = attnkit::parallel::default_thread_pool();

  attnkit::block_layout layout;
  attnkit::moba_gate(attnkit::cpu, qv, kv, options, layout, pool);  // warm: storage, scratch
  for (auto _ : state) {
    attnkit::moba_gate(attnkit::cpu, qv, kv, options, layout, pool);
    benchmark::DoNotOptimize(layout.columns().data());
    benchmark::ClobberMemory();
  }
  using benchmark::Counter;
  state.counters["GFLOP/s"] = Counter(gate_flops(s) * 1e-9, Counter::kIsIterationInvariantRate);
  state.counters["KV_GB/s"] = Counter(double(k.bytes()) * 1e-9, Counter::kIsIterationInvariantRate);
  state.counters["density"] = Counter(layout.nonzero_blocks() > 0 ? layout.density() : 0.0);
}

void register_all() {
  for (index_t n : {16384, 32768}) {
    const std::string suffix = "/n:" + std::to_string(n) + "/h:32/kv:8/d:128/block:512/top:3";
    benchmark::RegisterBenchmark(("moba_gate/prefill/fp32" + suffix).c_str(), bm_moba_gate<float>,
                                 gate_shape{n, n})
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
    benchmark::RegisterBenchmark(("moba_gate/prefill/fp16kv" + suffix).c_str(),
                                 bm_moba_gate<attnkit::half>, gate_shape{n, n})
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
  }
  benchmark::RegisterBenchmark("moba_gate/decode/fp16kv/n_kv:32768/h:32/kv:8/d:128/block:512/top:3",
                               bm_moba_gate<attnkit::half>, gate_shape{1, 32768})
      ->Unit(benchmark::kMicrosecond)
      ->UseRealTime();
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  const std::size_t threads = attnkit::parallel::default_thread_pool().concurrency();
  benchmark::AddCustomContext("attnkit_arch", xsimd::default_arch::name());
  benchmark::AddCustomContext("attnkit_threads", std::to_string(threads));
  register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
