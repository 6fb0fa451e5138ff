// attnkit benchmarks — decode on a paged KV cache (core/paged_kv_view.hpp) against decode on a
// contiguous one, and per-head lengths whose time follows their bytes.
//
// Before any benchmark runs, main() measures the streaming read bandwidth (bench/peak.hpp) for
// the thread count of attnkit::parallel::default_thread_pool(); peak_fraction divides by it.
//
// Benchmarks, named decode/<layout>/kv:<dtype>[/page:<tokens>]/n_kv:<tokens>
//   contiguous   one query token over an NHD [n_kv, 8, 128] cache, 32 query heads (GQA 4), fp32
//                queries and output, causal (the query sees the whole cache): bench_dense's
//                decode, the reference point
//   paged        the same cache in pages of 16 or 256 tokens per KV head, page ids shuffled
//                over the pool (consecutive pages of a head are scattered), every head n_kv long
//   ragged       paged, with half the KV heads (every other one) holding n_kv / 4 tokens: 5/8 of
//                the bytes, so its time should be about 5/8 of `paged`'s
// n_kv = 32768, K/V fp16 and fp32.
//
// And a batch of decoding sequences, named decode/batch/<how>/seqs:<B>/kv:fp16/page:16/
// tokens:<from>-<to>: B sequences of ragged lengths spread evenly over [from, to], each a
// kv_cache<half> of its own over one shared page pool (the engine's layout), one query token each
// (32 query / 8 KV heads, d 128). Every iteration reads another layer of every cache (as a model's
// layers follow each other), so K/V stream from memory.
//   batched  one attention_batch() call per layer
//   looped   one attention() call per sequence, as without attention_batch
//
// Counters
//   KV_GB/s        bytes of K and V actually held (each read once) per wall-clock second
//   peak_fraction  KV_GB/s / measured read bandwidth
//   cpu_util       process CPU time / (wall time × threads): lower means idle threads or other
//                  processes on the cores (a shared machine: distrust the row)
//   kv_copies      copies of the cache rotated through so every call streams from memory (as
//                  bench_dense's decode: together they cover the bandwidth probe's >= 1 GiB)
#include <benchmark/benchmark.h>

#include <algorithm>
#include <attnkit/attnkit.hpp>
#include <chrono>
#include <cstddef>
#include <ctime>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "peak.hpp"
#include "workload.hpp"

namespace {

using attnkit::index_t;
using attnkit::page_id;
using attnkit_bench::buffer;
using attnkit_bench::steady;

double peak_read_gbs = 0.0;

constexpr index_t q_heads = 32;
constexpr index_t kv_heads = 8;
constexpr index_t head_dim = 128;

enum class layout { contiguous, paged, ragged };

const char* layout_name(layout l) {
  return l == layout::contiguous ? "contiguous" : l == layout::paged ? "paged" : "ragged";
}

double process_cpu_seconds() { return double(std::clock()) / double(CLOCKS_PER_SEC); }

// Times call(iteration) over the benchmark's iterations, each reading `bytes` of K/V, and sets
// the counters of the header comment.
template <class Call>
void time_calls(benchmark::State& state, double bytes, Call&& call) {
  const std::size_t threads = attnkit::parallel::default_thread_pool().concurrency();
  std::size_t iteration = 0;
  const double cpu_start = process_cpu_seconds();
  const steady::time_point start = steady::now();
  for (auto _ : state) {
    call(iteration++);
    benchmark::ClobberMemory();
  }
  const double wall = std::chrono::duration<double>(steady::now() - start).count();
  const double cpu = process_cpu_seconds() - cpu_start;

  using benchmark::Counter;
  state.counters["KV_GB/s"] = Counter(bytes * 1e-9, Counter::kIsIterationInvariantRate);
  const double calls = double(std::max<benchmark::IterationCount>(state.iterations(), 1));
  state.counters["peak_fraction"] =
      Counter(peak_read_gbs > 0.0 ? bytes * 1e-9 * calls / wall / peak_read_gbs : 0.0);
  state.counters["cpu_util"] = Counter(cpu / (wall * double(threads)));
}

template <class KV>
void bm_decode(benchmark::State& state, layout which, index_t n_kv, index_t page_size) {
  std::vector<index_t> lengths(kv_heads, n_kv);
  if (which == layout::ragged)
    for (index_t h = 1; h < kv_heads; h += 2) lengths[static_cast<std::size_t>(h)] = n_kv / 4;
  const index_t held = std::accumulate(lengths.begin(), lengths.end(), index_t{0});
  const double bytes = double(held) * double(head_dim) * 2.0 * double(sizeof(KV));

  // The pool: contiguous NHD, or per-head pages [page_size, head_dim] with shuffled ids.
  const index_t ps = which == layout::contiguous ? n_kv : page_size;
  const index_t table_stride = (n_kv + ps - 1) / ps;
  index_t pages = 0;
  for (index_t length : lengths) pages += (length + ps - 1) / ps;
  const std::size_t elements = which == layout::contiguous ? std::size_t(n_kv * kv_heads * head_dim)
                                                           : std::size_t(pages * ps * head_dim);
  const std::size_t copies = attnkit_bench::cold_copies(bytes);
  buffer<KV> k(elements * copies), v(elements * copies);
  attnkit_bench::fill_uniform(k, 2);
  attnkit_bench::fill_uniform(v, 3);
  std::vector<page_id> ids(static_cast<std::size_t>(pages));
  std::iota(ids.begin(), ids.end(), page_id{0});
  for (std::size_t i = ids.size(); i > 1; --i)  // deterministic shuffle
    std::swap(ids[i - 1], ids[std::size_t(attnkit_bench::uniform_at(9, i, 0.0f, float(i)))]);
  std::vector<page_id> table(static_cast<std::size_t>(kv_heads * table_stride), 0);
  std::size_t next = 0;
  for (index_t h = 0; h < kv_heads; ++h)
    for (index_t p = 0; p < (lengths[std::size_t(h)] + ps - 1) / ps; ++p)
      table[std::size_t(h * table_stride + p)] = ids[next++];

  buffer<float> q(std::size_t(q_heads * head_dim)), out(std::size_t(q_heads * head_dim));
  attnkit_bench::fill_uniform(q, 1);
  attnkit_bench::fill_zero(out);
  const auto qv = q.cview(1, q_heads, head_dim);
  const auto ov = out.view(1, q_heads, head_dim);
  auto& pool = attnkit::parallel::default_thread_pool();
  state.counters["kv_copies"] = benchmark::Counter(double(copies));

  time_calls(state, bytes, [&](std::size_t iteration) {
    const std::size_t c = iteration % copies;
    if (which == layout::contiguous) {
      attnkit::tensor_view<const KV, 3> kc(k.data() + c * elements, {n_kv, kv_heads, head_dim});
      attnkit::tensor_view<const KV, 3> vc(v.data() + c * elements, {n_kv, kv_heads, head_dim});
      attnkit::attention(attnkit::cpu, qv, kc, vc, ov, attnkit::causal{}, {}, pool);
    } else {
      const attnkit::paged_kv_view<const KV> cache{k.data() + c * elements,
                                                   v.data() + c * elements,
                                                   nullptr,
                                                   table.data(),
                                                   lengths.data(),
                                                   kv_heads,
                                                   head_dim,
                                                   ps,
                                                   table_stride,
                                                   head_dim,
                                                   ps * head_dim,
                                                   0};
      attnkit::attention(attnkit::cpu, qv, cache, ov, attnkit::causal{}, {}, pool);
    }
    benchmark::DoNotOptimize(out.data());
  });
}

template <class KV>
void register_decode(layout which, index_t n_kv, index_t page_size) {
  std::string name =
      std::string("decode/") + layout_name(which) + "/kv:" + attnkit_bench::dtype_name<KV>();
  if (which != layout::contiguous) name += "/page:" + std::to_string(page_size);
  name += "/n_kv:" + std::to_string(n_kv);
  benchmark::RegisterBenchmark(
      name.c_str(), [=](benchmark::State& state) { bm_decode<KV>(state, which, n_kv, page_size); })
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime()
      ->MinTime(0.5);
}

// A batch of `sequences` decoding sequences; see the header comment.
void bm_batch(benchmark::State& state, bool batched, index_t sequences, index_t from, index_t to) {
  using KV = attnkit::half;
  constexpr index_t page_size = 16;
  std::vector<index_t> lengths(static_cast<std::size_t>(sequences));
  index_t tokens = 0;
  for (index_t i = 0; i < sequences; ++i) {
    // Lengths spread evenly over [from, to], in a shuffled order (i · 7 mod B visits every i
    // when B is not a multiple of 7).
    const index_t rank = (i * 7) % sequences;
    lengths[std::size_t(i)] = from + (to - from) * rank / std::max<index_t>(1, sequences - 1);
    tokens += lengths[std::size_t(i)];
  }
  const double bytes = double(tokens) * double(kv_heads * head_dim) * 2.0 * double(sizeof(KV));
  const index_t layers = index_t(attnkit_bench::cold_copies(bytes));
  index_t pages = 0;
  for (index_t length : lengths)
    pages += layers * kv_heads * ((length + page_size - 1) / page_size);
  auto pool = std::make_shared<attnkit::kv_page_pool<KV>>(
      attnkit::kv_page_pool_config{pages, page_size, head_dim});
  std::vector<attnkit::kv_cache<KV>> caches;
  caches.reserve(std::size_t(sequences));
  buffer<float> k(std::size_t(to * kv_heads * head_dim)), v(k.size());
  for (index_t i = 0; i < sequences; ++i) {
    caches.emplace_back(attnkit::kv_cache_config{layers, kv_heads, head_dim, page_size, 0}, pool);
    const index_t n = lengths[std::size_t(i)];
    for (index_t layer = 0; layer < layers; ++layer) {
      attnkit_bench::fill_uniform(k, std::uint64_t(10 + 2 * (i * layers + layer)));
      attnkit_bench::fill_uniform(v, std::uint64_t(11 + 2 * (i * layers + layer)));
      caches.back().append(layer, k.cview(n, kv_heads, head_dim), v.cview(n, kv_heads, head_dim));
    }
  }
  buffer<float> q(std::size_t(sequences * q_heads * head_dim)), out(q.size());
  attnkit_bench::fill_uniform(q, 1);
  attnkit_bench::fill_zero(out);
  std::vector<index_t> q_indptr(std::size_t(sequences + 1));
  std::iota(q_indptr.begin(), q_indptr.end(), index_t{0});
  std::vector<attnkit::paged_kv_view<const KV>> views(static_cast<std::size_t>(sequences));
  auto& thread_pool = attnkit::parallel::default_thread_pool();
  state.counters["kv_copies"] = benchmark::Counter(double(layers));

  time_calls(state, bytes, [&](std::size_t iteration) {
    const index_t layer = index_t(iteration % std::size_t(layers));
    for (index_t i = 0; i < sequences; ++i)
      views[std::size_t(i)] = caches[std::size_t(i)].view(layer);
    if (batched) {
      attnkit::attention_batch(attnkit::cpu, q.cview(sequences, q_heads, head_dim), views,
                               out.view(sequences, q_heads, head_dim),
                               attnkit::batch_layout{.q_indptr = q_indptr}, attnkit::causal{}, {},
                               thread_pool);
    } else {
      for (index_t i = 0; i < sequences; ++i)
        attnkit::attention(attnkit::cpu, q.cview(sequences, q_heads, head_dim).slice(i, i + 1),
                           views[std::size_t(i)],
                           out.view(sequences, q_heads, head_dim).slice(i, i + 1),
                           attnkit::causal{}, {}, thread_pool);
    }
    benchmark::DoNotOptimize(out.data());
  });
}

void register_batch(index_t sequences, index_t from, index_t to) {
  for (bool batched : {true, false}) {
    const std::string name = std::string("decode/batch/") + (batched ? "batched" : "looped") +
                             "/seqs:" + std::to_string(sequences) +
                             "/kv:fp16/page:16/tokens:" + std::to_string(from) + "-" +
                             std::to_string(to);
    benchmark::RegisterBenchmark(
        name.c_str(),
        [=](benchmark::State& state) { bm_batch(state, batched, sequences, from, to); })
        ->Unit(benchmark::kMicrosecond)
        ->UseRealTime()
        ->MinTime(0.5);
  }
}

template <class KV>
void register_all_for() {
  constexpr index_t n_kv = 32768;
  register_decode<KV>(layout::contiguous, n_kv, 0);
  for (index_t page : {16, 256}) register_decode<KV>(layout::paged, n_kv, page);
  for (index_t page : {16, 256}) register_decode<KV>(layout::ragged, n_kv, page);
}

}  // namespace

int main(int argc, char** argv) {
  const bool list_only = attnkit_bench::lists_benchmarks_only(argc, argv);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  const std::size_t threads = attnkit::parallel::default_thread_pool().concurrency();
  register_all_for<attnkit::half>();
  register_all_for<float>();
  register_batch(16, 256, 4096);
  register_batch(64, 64, 1024);
  register_batch(4, 4096, 16384);
  if (!list_only) {
    peak_read_gbs = attnkit_bench::measure_peak(threads).read_gbs;
    benchmark::AddCustomContext("attnkit_threads", std::to_string(threads));
    attnkit_bench::add_peak_context(benchmark::AddCustomContext, threads, {0.0, peak_read_gbs});
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
