// attnkit demo — what the CPU kernels do on LLM-like shapes, measured against this machine.
//
// At start the demo measures the machine's fp32 FMA peak and streaming read bandwidth
// (bench/peak.hpp) with the thread count of attnkit's default pool, then prints one table per
// section: time (best of a few runs), throughput, the fraction of the relevant measured peak
// (compute for prefill, memory bandwidth for decode), and the largest absolute difference from
// attnkit::backend::reference, checked on a subset of heads so the demo stays quick.
//
// Sections are independent functions called from main(); add new ones there.
//
//   build/release/examples/demo          (or scripts/demo, which builds it first)
#include <algorithm>
#include <attnkit/attnkit.hpp>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <ctime>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "eviction/harness.hpp"
#include "peak.hpp"
#include "workload.hpp"

namespace {

using attnkit::index_t;
using attnkit_bench::buffer;

// ------------------------------------------------------------------------------------------------
// The machine.
// ------------------------------------------------------------------------------------------------

struct machine {
  std::size_t threads = 1;
  double fma_gflops = 0.0;  // measured fp32 FMA peak, all threads
  double read_gbs = 0.0;    // measured streaming read bandwidth, all threads
};

machine measure_machine() {
  machine m;
  m.threads = attnkit::parallel::default_thread_pool().concurrency();
  const attnkit_bench::machine_peak peak = attnkit_bench::measure_peak(m.threads);
  m.fma_gflops = peak.fma_gflops;
  m.read_gbs = peak.read_gbs;
  return m;
}

void print_header(const machine& m) {
  std::printf(
      "attnkit %d.%d.%d demo | %zu threads | xsimd arch %s | measured peak: %.1f GFLOP/s "
      "fp32 FMA, %.1f GB/s streaming read\n",
      ATTNKIT_VERSION_MAJOR, ATTNKIT_VERSION_MINOR, ATTNKIT_VERSION_PATCH, m.threads,
      xsimd::default_arch::name(), m.fma_gflops, m.read_gbs);
}

// ------------------------------------------------------------------------------------------------
// Tables: every section prints rows of the same shape.
// ------------------------------------------------------------------------------------------------

struct result_row {
  std::string name;            // what runs, e.g. "prefill causal, bf16"
  std::string shape;           // e.g. "n=2048 heads=32/8 d=128"
  double seconds = 0.0;        // best time of one call
  double rate = 0.0;           // in `unit`
  const char* unit = "";       // "GFLOP/s" or "GB/s"
  double peak_fraction = 0.0;  // rate / the measured peak it is bound by
  const char* peak_kind = "";  // "FMA" or "read"
  double max_error = 0.0;      // max |out - reference| on the checked heads
  double tolerance = 0.0;      // what max_error is allowed for the output type
  double cpu_share = 1.0;      // CPU time / (wall time × threads) of the best run
};

// Rows whose best run got less than this share of the cores are marked: another process was
// running, or the kernel left threads idle. Their throughput is a lower bound.
constexpr double contended_share = 0.8;
bool any_contended = false;

void print_section(const char* title, const char* note) {
  std::printf("\n== %s ==\n%s\n\n", title, note);
  std::printf("%-30s %-28s %11s %17s %12s %12s\n", "case", "shape", "time", "throughput",
              "% of peak", "max |error|");
}

// Returns whether the row's error is within tolerance.
bool print_row(const result_row& r) {
  const bool ok = r.max_error <= r.tolerance;
  char time[32], rate[32], peak[32];
  if (r.seconds < 1e-3) {
    std::snprintf(time, sizeof time, "%.1f us", r.seconds * 1e6);
  } else {
    std::snprintf(time, sizeof time, "%.2f ms", r.seconds * 1e3);
  }
  std::snprintf(rate, sizeof rate, "%.1f %s", r.rate, r.unit);
  std::snprintf(peak, sizeof peak, "%.1f%% %s", 100.0 * r.peak_fraction, r.peak_kind);
  const bool contended = r.cpu_share < contended_share;
  any_contended |= contended;
  std::printf("%-30s %-28s %11s%s %17s %12s %12.2e %s\n", r.name.c_str(), r.shape.c_str(), time,
              contended ? "*" : " ", rate, peak, r.max_error, ok ? "ok" : "FAIL");
  return ok;
}

struct timing {
  double seconds = 1e300;  // best wall-clock time of one run
  double cpu_share = 1.0;  // of that run: process CPU time / (wall time × threads)
};

// Times call(run): at least one run, then more while the total stays under about a second (at
// most ten); keeps the fastest.
template <class Call>
timing best_of_runs(std::size_t threads, Call&& call) {
  timing best;
  double total = 0.0;
  for (int run = 0; run < 10 && (run == 0 || total < 1.0); ++run) {
    const std::clock_t cpu_start = std::clock();
    const auto start = attnkit_bench::steady::now();
    call(run);
    const double s = std::chrono::duration<double>(attnkit_bench::steady::now() - start).count();
    const double cpu = double(std::clock() - cpu_start) / double(CLOCKS_PER_SEC);
    if (s < best.seconds) best = {s, cpu / (s * double(threads))};
    total += s;
  }
  return best;
}

// The error allowed for an output of type T (values are within [-1, 1]): one unit in the last
// place at 1.0 for 16-bit outputs, a few fp32 roundings of accumulated error for float.
template <class T>
constexpr double tolerance_for() {
  if constexpr (std::is_same_v<T, float>) {
    return 1e-4;
  } else if constexpr (std::is_same_v<T, attnkit::half>) {
    return 1.0 / 1024.0;
  } else {
    return 1.0 / 128.0;
  }
}

// ------------------------------------------------------------------------------------------------
// Dense softmax attention.
// ------------------------------------------------------------------------------------------------

// A dense case. Bandwidth-bound cases (decode) are reported against the read bandwidth and rotate
// through enough copies of K/V to read a cold cache on every run, as an engine running many
// layers does; compute-bound ones (prefill) against the FMA peak, with one copy.
struct dense_case {
  index_t q_tokens, kv_tokens, q_heads, kv_heads, head_dim;
  bool bandwidth_bound;
};

// max |out - reference| over the query heads of KV heads `kv_heads_checked`: the reference runs
// on views of just those heads (q heads [g·G, (g+1)·G) with KV head g).
template <class TQ, class KV, class TO, class Mask>
double max_error_vs_reference(attnkit::tensor_view<const TQ, 3> q,
                              attnkit::tensor_view<const KV, 3> k,
                              attnkit::tensor_view<const KV, 3> v,
                              attnkit::tensor_view<const TO, 3> out, const Mask& mask,
                              const std::vector<index_t>& kv_heads_checked) {
  const index_t n_q = q.extent(0), d = q.extent(2);
  const index_t group = q.extent(1) / k.extent(1);
  std::vector<float> expected(std::size_t(n_q * group * d));
  double max_error = 0.0;
  for (const index_t g : kv_heads_checked) {
    const attnkit::tensor_view<const TQ, 3> q_group(q.row(0, g * group), {n_q, group, d},
                                                    q.strides());
    const attnkit::tensor_view<const KV, 3> k_head(k.row(0, g), {k.extent(0), 1, d}, k.strides());
    const attnkit::tensor_view<const KV, 3> v_head(v.row(0, g), {v.extent(0), 1, d}, v.strides());
    const attnkit::tensor_view<float, 3> ref(expected.data(), {n_q, group, d});
    attnkit::attention(attnkit::backend::reference{}, q_group, k_head, v_head, ref, mask);
    for (index_t i = 0; i < n_q; ++i)
      for (index_t h = 0; h < group; ++h)
        for (index_t c = 0; c < d; ++c)
          max_error = std::max(
              max_error,
              double(std::fabs(attnkit::to_float(out(i, g * group + h, c)) - ref(i, h, c))));
  }
  return max_error;
}

template <class TQ, class KV, class Mask>
result_row run_dense(const machine& m, std::string name, const dense_case& c, const Mask& mask) {
  using TO = TQ;
  const index_t d = c.head_dim;
  const std::size_t kv_elems = std::size_t(c.kv_tokens * c.kv_heads * d);
  const double kv_bytes = attnkit_bench::kv_bytes<KV>(c.kv_tokens, c.kv_heads, d);
  const std::size_t copies = c.bandwidth_bound ? attnkit_bench::cold_copies(kv_bytes) : 1;

  buffer<TQ> q(std::size_t(c.q_tokens * c.q_heads * d));
  buffer<TO> out(q.size());
  buffer<KV> k(kv_elems * copies), v(kv_elems * copies);
  attnkit_bench::fill_uniform(q, 1);
  attnkit_bench::fill_zero(out);
  attnkit_bench::fill_kv_copies(k, v, kv_elems, copies);
  const auto k_view = [&](std::size_t copy) {
    return attnkit::tensor_view<const KV, 3>(k.data() + copy * kv_elems,
                                             {c.kv_tokens, c.kv_heads, d});
  };
  const auto v_view = [&](std::size_t copy) {
    return attnkit::tensor_view<const KV, 3>(v.data() + copy * kv_elems,
                                             {c.kv_tokens, c.kv_heads, d});
  };

  const timing t = best_of_runs(m.threads, [&](int run) {
    const std::size_t copy = std::size_t(run) % copies;
    attnkit::attention(attnkit::cpu, q.cview(c.q_tokens, c.q_heads, d), k_view(copy), v_view(copy),
                       out.view(c.q_tokens, c.q_heads, d), mask);
  });

  result_row r;
  r.name = std::move(name);
  char shape[64];
  if (c.bandwidth_bound) {
    std::snprintf(shape, sizeof shape, "n_kv=%ld heads=%ld/%ld d=%ld", long(c.kv_tokens),
                  long(c.q_heads), long(c.kv_heads), long(d));
  } else {
    std::snprintf(shape, sizeof shape, "n=%ld heads=%ld/%ld d=%ld", long(c.q_tokens),
                  long(c.q_heads), long(c.kv_heads), long(d));
  }
  r.shape = shape;
  r.seconds = t.seconds;
  r.cpu_share = t.cpu_share;
  if (c.bandwidth_bound) {
    r.rate = kv_bytes / r.seconds * 1e-9;
    r.unit = "GB/s";
    r.peak_fraction = r.rate / m.read_gbs;
    r.peak_kind = "read";
  } else {
    r.rate = attnkit_bench::attention_flops(mask, c.q_tokens, c.kv_tokens, c.q_heads, d) /
             r.seconds * 1e-9;
    r.unit = "GFLOP/s";
    r.peak_fraction = r.rate / m.fma_gflops;
    r.peak_kind = "FMA";
  }
  // `out` holds the last run's result; every copy of K/V holds the same values.
  r.max_error = max_error_vs_reference<TQ, KV, TO>(
      q.cview(c.q_tokens, c.q_heads, d), k_view(0), v_view(0),
      attnkit::tensor_view<const TO, 3>(out.data(), {c.q_tokens, c.q_heads, d}), mask,
      c.kv_heads > 1 ? std::vector<index_t>{0, c.kv_heads - 1} : std::vector<index_t>{0});
  r.tolerance = tolerance_for<TO>();
  return r;
}

bool section_dense(const machine& m) {
  using attnkit::bfloat16;
  using attnkit::half;
  print_section("Dense softmax attention: attnkit::attention(attnkit::cpu, q, k, v, out, mask)",
                "prefill: % of the FMA peak over the unmasked (q,k) pairs (4*d flops each);\n"
                "decode: % of the read bandwidth for K+V, cold cache (K/V rotated through copies "
                ">= 1 GiB).\n"
                "error: max |out - backend::reference| over the query heads of KV heads 0 and "
                "last.");
  bool ok = true;
  const dense_case prefill{2048, 2048, 32, 8, 128, false};
  ok &= print_row(run_dense<float, float>(m, "prefill causal  fp32", prefill, attnkit::causal{}));
  ok &= print_row(
      run_dense<bfloat16, bfloat16>(m, "prefill causal  bf16", prefill, attnkit::causal{}));
  for (const index_t n_kv : {8192, 32768}) {
    const dense_case decode{1, n_kv, 32, 8, 128, true};
    ok &= print_row(
        run_dense<float, half>(m, "decode  fp16 KV, fp32 q/out", decode, attnkit::causal{}));
  }
  return ok;
}

// ------------------------------------------------------------------------------------------------
// Continuous batching: one call for many sequences.
// ------------------------------------------------------------------------------------------------

// 32 decoding sequences of 64..2048 tokens (fp16 K/V packed one after another, rotated through
// copies so every run reads from memory), one attention_batch call against a loop of
// attention() calls; the rows of sequences 0 and 31 are checked against the reference.
bool section_batch(const machine& m) {
  using attnkit::half;
  print_section(
      "Continuous batching: attnkit::attention_batch(attnkit::cpu, q, k, v, out, batch, mask)",
      "32 decoding sequences of 64..2048 tokens, 32/8 heads, d=128, fp16 K/V packed one after\n"
      "another (cold), in one call or in a loop of attention() calls, one per sequence.\n"
      "error: max |out - backend::reference| for sequences 0 and 31.");
  constexpr index_t sequences = 32, q_heads = 32, kv_heads = 8, d = 128;
  std::vector<index_t> q_indptr(sequences + 1), kv_indptr(sequences + 1, 0);
  for (index_t i = 0; i < sequences; ++i) {
    q_indptr[std::size_t(i + 1)] = i + 1;
    kv_indptr[std::size_t(i + 1)] =
        kv_indptr[std::size_t(i)] + 64 + (2048 - 64) * ((i * 7) % sequences) / (sequences - 1);
  }
  const index_t tokens = kv_indptr.back();
  const std::size_t kv_elems = std::size_t(tokens * kv_heads * d);
  const double kv_bytes = attnkit_bench::kv_bytes<half>(tokens, kv_heads, d);
  const std::size_t copies = attnkit_bench::cold_copies(kv_bytes);
  buffer<float> q(std::size_t(sequences * q_heads * d)), out(q.size());
  buffer<half> k(kv_elems * copies), v(kv_elems * copies);
  attnkit_bench::fill_uniform(q, 1);
  attnkit_bench::fill_zero(out);
  attnkit_bench::fill_kv_copies(k, v, kv_elems, copies);
  const auto kv_view = [&](const buffer<half>& b, std::size_t copy, index_t begin, index_t end) {
    return attnkit::tensor_view<const half, 3>(b.data() + copy * kv_elems, {tokens, kv_heads, d})
        .slice(begin, end);
  };
  const auto q_rows = [&](index_t i) { return q.cview(sequences, q_heads, d).slice(i, i + 1); };
  const auto out_rows = [&](index_t i) { return out.view(sequences, q_heads, d).slice(i, i + 1); };
  const attnkit::batch_layout layout{.q_indptr = q_indptr, .kv_indptr = kv_indptr};

  bool ok = true;
  for (const bool batched : {true, false}) {
    auto run = [&](std::size_t copy) {
      if (batched) {
        attnkit::attention_batch(attnkit::cpu, q.cview(sequences, q_heads, d),
                                 kv_view(k, copy, 0, tokens), kv_view(v, copy, 0, tokens),
                                 out.view(sequences, q_heads, d), layout, attnkit::causal{});
        return;
      }
      for (index_t i = 0; i < sequences; ++i) {
        const index_t begin = kv_indptr[std::size_t(i)], end = kv_indptr[std::size_t(i + 1)];
        attnkit::attention(attnkit::cpu, q_rows(i), kv_view(k, copy, begin, end),
                           kv_view(v, copy, begin, end), out_rows(i), attnkit::causal{});
      }
    };
    const timing t = best_of_runs(m.threads, [&](int r) { run(std::size_t(r) % copies); });
    result_row row;
    row.name = batched ? "decode batch: attention_batch" : "decode batch: attention() loop";
    row.shape = "32 seqs, 64..2048 tokens";
    row.seconds = t.seconds;
    row.cpu_share = t.cpu_share;
    row.rate = kv_bytes / t.seconds * 1e-9;
    row.unit = "GB/s";
    row.peak_fraction = row.rate / m.read_gbs;
    row.peak_kind = "read";
    // Every copy of K/V holds the same values, so the last run's rows check against copy 0.
    for (const index_t i : {index_t{0}, sequences - 1}) {
      const index_t begin = kv_indptr[std::size_t(i)], end = kv_indptr[std::size_t(i + 1)];
      row.max_error = std::max(
          row.max_error, max_error_vs_reference<float, half, float>(
                             q_rows(i), kv_view(k, 0, begin, end), kv_view(v, 0, begin, end),
                             out.cview(sequences, q_heads, d).slice(i, i + 1), attnkit::causal{},
                             {0, kv_heads - 1}));
    }
    row.tolerance = tolerance_for<float>();
    ok &= print_row(row);
  }
  return ok;
}

// ------------------------------------------------------------------------------------------------
// Sparse masks: cost follows what the mask keeps.
// ------------------------------------------------------------------------------------------------

// One problem (fp32 q/out, fp16 K/V) that every sparse row reuses.
struct sparse_problem {
  index_t q_tokens, kv_tokens, q_heads, kv_heads, head_dim;
  buffer<float> q, out;
  buffer<attnkit::half> k, v;

  sparse_problem(index_t nq, index_t nkv, index_t qh, index_t kvh, index_t d)
      : q_tokens(nq),
        kv_tokens(nkv),
        q_heads(qh),
        kv_heads(kvh),
        head_dim(d),
        q(std::size_t(nq * qh * d)),
        out(std::size_t(nq * qh * d)),
        k(std::size_t(nkv * kvh * d)),
        v(std::size_t(nkv * kvh * d)) {
    attnkit_bench::fill_uniform(q, 1);
    attnkit_bench::fill_uniform(k, 2);
    attnkit_bench::fill_uniform(v, 3);
    attnkit_bench::fill_zero(out);
  }
  auto qv() const { return q.cview(q_tokens, q_heads, head_dim); }
  auto kv() const { return k.cview(kv_tokens, kv_heads, head_dim); }
  auto vv() const { return v.cview(kv_tokens, kv_heads, head_dim); }
};

// Times `prepare(); attention(cpu, ..., mask)` (prepare: a selection step such as MoBA gating or
// Quest, included in the time), and checks the last `checked` query rows against the reference
// run on just those rows (bottom-right alignment keeps their positions). Throughput counts the
// (query, key) pairs the mask keeps (prefill) or the K/V bytes of the keys it keeps (decode).
template <class Mask, class Prepare>
result_row run_sparse(const machine& m, std::string name, const sparse_problem& p, const Mask& mask,
                      Prepare&& prepare, double baseline_seconds, double* seconds_out = nullptr) {
  const index_t d = p.head_dim;
  const timing t = best_of_runs(m.threads, [&](int) {
    prepare();
    attnkit::attention(attnkit::cpu, p.qv(), p.kv(), p.vv(), p.out.view(p.q_tokens, p.q_heads, d),
                       mask);
  });
  const double kept_pairs =
      attnkit_bench::allowed_pairs_all_heads(mask, p.q_tokens, p.kv_tokens, p.q_heads);

  const index_t checked = std::min<index_t>(p.q_tokens, 32);
  const index_t first = p.q_tokens - checked;
  std::vector<float> expected(std::size_t(checked * p.q_heads * d));
  attnkit::attention(attnkit::backend::reference{},
                     attnkit::tensor_view<const float, 3>(p.q.data() + first * p.q_heads * d,
                                                          {checked, p.q_heads, d}),
                     p.kv(), p.vv(),
                     attnkit::tensor_view<float, 3>(expected.data(), {checked, p.q_heads, d}),
                     mask);
  double max_error = 0.0;
  for (std::size_t i = 0; i < expected.size(); ++i)
    max_error = std::max(
        max_error,
        double(std::fabs(p.out.data()[std::size_t(first * p.q_heads * d) + i] - expected[i])));

  result_row r;
  char shape[128];
  const bool decode = p.q_tokens == 1;
  std::snprintf(shape, sizeof shape, "%s=%ld heads=%ld/%ld d=%ld", decode ? "n_kv" : "n",
                long(p.kv_tokens), long(p.q_heads), long(p.kv_heads), long(d));
  char speedup[32] = "";
  if (baseline_seconds > 0.0)
    std::snprintf(speedup, sizeof speedup, " (%.1fx)", baseline_seconds / t.seconds);
  r.name = name + speedup;
  r.shape = shape;
  r.seconds = t.seconds;
  r.cpu_share = t.cpu_share;
  if (decode) {
    const double keys = kept_pairs / double(p.q_heads) * double(p.kv_heads);
    r.rate = keys * double(d) * 2.0 * sizeof(attnkit::half) / r.seconds * 1e-9;
    r.unit = "GB/s";
    r.peak_fraction = r.rate / m.read_gbs;
    r.peak_kind = "read";
  } else {
    r.rate = kept_pairs * 4.0 * double(d) / r.seconds * 1e-9;
    r.unit = "GFLOP/s";
    r.peak_fraction = r.rate / m.fma_gflops;
    r.peak_kind = "FMA";
  }
  r.max_error = max_error;
  r.tolerance = tolerance_for<float>();
  if (seconds_out != nullptr) *seconds_out = t.seconds;
  return r;
}

bool section_sparse(const machine& m) {
  print_section(
      "Sparse masks: sliding_window, block_sparse (patterns, MoBA, Quest), observers",
      "fp32 q/out over fp16 K/V; (Nx) = speedup over the dense row above it. Throughput over\n"
      "what the mask keeps: (q,k) pairs for prefill, K+V bytes for decode (warm caches here;\n"
      "bench/bench_sparse measures cold ones). Selection time (MoBA gating, Quest) included.\n"
      "error: max |out - backend::reference| over the last 32 query rows, all heads.");
  bool ok = true;
  auto nothing = [] {};
  {
    const sparse_problem p(4096, 4096, 32, 8, 128);
    double dense = 0.0;
    ok &= print_row(run_sparse(m, "prefill causal", p, attnkit::causal{}, nothing, 0.0, &dense));
    ok &= print_row(
        run_sparse(m, "sliding_window{512,0}", p, attnkit::sliding_window{512, 0}, nothing, dense));
    ok &= print_row(run_sparse(m, "window{512,0,4 sinks}", p, attnkit::sliding_window{512, 0, 4},
                               nothing, dense));
    const attnkit::block_layout strided = attnkit::strided_layout(4096, 64, 4, 8);
    ok &= print_row(run_sparse(m, "strided(64,4,8) & causal", p,
                               attnkit::block_sparse(strided) & attnkit::causal{}, nothing, dense));
    attnkit::block_layout moba;
    const attnkit::moba_options gate{512, 2, true};
    attnkit::moba_gate(attnkit::cpu, p.qv(), p.kv(), gate, moba);
    ok &= print_row(run_sparse(
        m, "MoBA(512, top 2) & causal", p, attnkit::block_sparse(moba) & attnkit::causal{},
        [&] { attnkit::moba_gate(attnkit::cpu, p.qv(), p.kv(), gate, moba); }, dense));
  }
  {
    const sparse_problem p(1, 65536, 32, 8, 128);
    double dense = 0.0;
    ok &= print_row(run_sparse(m, "decode full", p, attnkit::full{}, nothing, 0.0, &dense));
    ok &= print_row(run_sparse(m, "window{1024,0,4 sinks}", p, attnkit::sliding_window{1024, 0, 4},
                               nothing, dense));
    attnkit::page_bounds<attnkit::half> bounds(16, p.kv_heads, p.head_dim, p.kv_tokens);
    bounds.update(attnkit::cpu, p.kv());
    attnkit::block_layout pages;
    attnkit::quest_select(attnkit::cpu, p.qv(), bounds, 128, pages);
    ok &= print_row(run_sparse(
        m, "Quest 128 pages of 16", p, attnkit::block_sparse(pages),
        [&] { attnkit::quest_select(attnkit::cpu, p.qv(), bounds, 128, pages); }, dense));
  }
  return ok;
}

// ------------------------------------------------------------------------------------------------
// Linear attention and the hybrids.
// ------------------------------------------------------------------------------------------------

// max |a - b| over rows [0, tokens) of two [*, heads, d] float buffers.
double max_difference(const float* a, const float* b, std::size_t elements) {
  double worst = 0.0;
  for (std::size_t i = 0; i < elements; ++i)
    worst = std::max(worst, double(std::fabs(a[i] - b[i])));
  return worst;
}

bool section_linear(const machine& m) {
  print_section(
      "Linear attention: linear_attention(cpu, q, k, v, out, feature_map, state) and BASED",
      "fp32, d=128, 32/8 heads. Prefill runs the chunked form, decode the recurrent one (O(1) per\n"
      "token). error: prefill and BASED against backend::reference on the first 256 tokens "
      "(causal:\n"
      "they depend on nothing later); decode against the last row of a chunked prefill of n+1.");
  using view3 = attnkit::tensor_view<const float, 3>;
  using out3 = attnkit::tensor_view<float, 3>;
  constexpr index_t n = 4096, check = 256, q_heads = 32, kv_heads = 8, d = 128, dl = 16;
  buffer<float> q(std::size_t((n + 1) * q_heads * d)), k(std::size_t((n + 1) * kv_heads * d)),
      v(k.size()), out(q.size()), expected(std::size_t(check * q_heads * d));
  attnkit_bench::fill_uniform(q, 21);
  attnkit_bench::fill_uniform(k, 22);
  attnkit_bench::fill_uniform(v, 23);
  const attnkit::feature::elu_plus_one map;
  bool ok = true;

  // Prefill: n tokens in one call.
  attnkit::linear_state state;
  const timing prefill = best_of_runs(m.threads, [&](int) {
    state.reset();
    attnkit::linear_attention(attnkit::cpu, view3(q.data(), {n, q_heads, d}),
                              view3(k.data(), {n, kv_heads, d}), view3(v.data(), {n, kv_heads, d}),
                              out3(out.data(), {n, q_heads, d}), map, state);
  });
  {
    attnkit::linear_state reference_state;
    attnkit::linear_attention(attnkit::backend::reference{}, view3(q.data(), {check, q_heads, d}),
                              view3(k.data(), {check, kv_heads, d}),
                              view3(v.data(), {check, kv_heads, d}),
                              out3(expected.data(), {check, q_heads, d}), map, reference_state);
    result_row r{"prefill, ELU+1 (chunked)", "n=4096 heads=32/8 d=128", prefill.seconds};
    // Useful products of the chunked form per token and query head: φq·S and the state update
    // (2·d·d each), plus the causal half of the 64-token chunk's φQφKᵀ and (·)V.
    r.rate = double(n) * q_heads * (4.0 * d * d + 2.0 * 64 * d) / r.seconds * 1e-9;
    r.unit = "GFLOP/s";
    r.peak_fraction = r.rate / m.fma_gflops;
    r.peak_kind = "FMA";
    r.max_error = max_difference(out.data(), expected.data(), expected.size());
    r.tolerance = tolerance_for<float>();
    r.cpu_share = prefill.cpu_share;
    ok &= print_row(r);
  }

  // Decode: one token after the prompt, against a chunked prefill of n + 1 tokens.
  {
    std::vector<float> step(std::size_t(q_heads * d));
    auto decode_step = [&](attnkit::linear_state& s) {
      attnkit::linear_attention(attnkit::cpu, view3(q.data() + n * q_heads * d, {1, q_heads, d}),
                                view3(k.data() + n * kv_heads * d, {1, kv_heads, d}),
                                view3(v.data() + n * kv_heads * d, {1, kv_heads, d}),
                                out3(step.data(), {1, q_heads, d}), map, s);
    };
    // Timed on a copy (each run advances it one token: the cost does not depend on position),
    // checked from the prompt's state.
    attnkit::linear_state advancing = state;
    const timing decode = best_of_runs(m.threads, [&](int) { decode_step(advancing); });
    decode_step(state);
    attnkit::linear_state whole;
    attnkit::linear_attention(
        attnkit::cpu, view3(q.data(), {n + 1, q_heads, d}), view3(k.data(), {n + 1, kv_heads, d}),
        view3(v.data(), {n + 1, kv_heads, d}), out3(out.data(), {n + 1, q_heads, d}), map, whole);
    result_row r{"decode step, ELU+1 (recurrent)", "pos=4096 heads=32/8 d=128", decode.seconds};
    // The state (2 MiB here) stays in cache: the step is compute, reported as tokens per second.
    r.rate = 1.0 / r.seconds * 1e-3;
    r.unit = "ktok/s";
    r.peak_kind = "-";
    r.max_error = max_difference(step.data(), out.data() + n * q_heads * d, step.size());
    r.tolerance = tolerance_for<float>();
    r.cpu_share = decode.cpu_share;
    ok &= print_row(r);
  }

  // BASED: taylor2 on 16-dim projections + softmax over the last 64 tokens.
  {
    buffer<float> ql(std::size_t(n * q_heads * dl)), kl(std::size_t(n * kv_heads * dl));
    attnkit_bench::fill_uniform(ql, 24);
    attnkit_bench::fill_uniform(kl, 25);
    attnkit::based_options based;
    based.feature_map = attnkit::feature::taylor2::approximating(1.0f / std::sqrt(float(dl)));
    attnkit::hybrid_workspace workspace;
    attnkit::linear_state based_state;
    auto run_based = [&](const auto& backend, index_t tokens, float* into) {
      based_state.reset();
      attnkit::based_attention(
          backend, view3(ql.data(), {tokens, q_heads, dl}),
          view3(kl.data(), {tokens, kv_heads, dl}), view3(q.data(), {tokens, q_heads, d}),
          view3(k.data(), {tokens, kv_heads, d}), view3(v.data(), {tokens, kv_heads, d}),
          out3(into, {tokens, q_heads, d}), based_state, workspace, based);
    };
    const timing t = best_of_runs(m.threads, [&](int) { run_based(attnkit::cpu, n, out.data()); });
    run_based(attnkit::backend::reference{}, check, expected.data());
    result_row r{"BASED (taylor2 16 + window 64)", "n=4096 heads=32/8 d=128", t.seconds};
    r.rate = double(n) / r.seconds * 1e-3;
    r.unit = "ktok/s";
    r.peak_kind = "-";
    r.max_error = max_difference(out.data(), expected.data(), expected.size());
    r.tolerance = tolerance_for<float>();
    r.cpu_share = t.cpu_share;
    ok &= print_row(r);
  }
  return ok;
}

// ------------------------------------------------------------------------------------------------
// KV-cache eviction: the quality harness's table on a small synthetic workload.
// ------------------------------------------------------------------------------------------------

bool section_eviction() {
  std::printf(
      "\n== KV-cache eviction policies: attnkit::compress(cache, layer, policy, budget, keep) ==\n"
      "attnkit-eviction-harness on a small synthetic workload (2 layers, 8 heads, d=64, 2048\n"
      "tokens, 4 needles); the full run is in bench/RESULTS.md. rel_error: output vs full\n"
      "attention; mass_kept: full-attention mass on the kept tokens; recall: needles "
      "retrieved.\n\n");
  attnkit::harness::workload_config config;
  config.layers = 2;
  config.prompt_tokens = 2048;
  attnkit::harness::harness_options options;
  options.compressions = {0.5, 0.875};
  const auto report = attnkit::harness::run_eviction_harness(
      attnkit::harness::from_workload(attnkit::harness::make_synthetic_workload(config)), options);
  std::fputs(attnkit::harness::format_table(report).c_str(), stdout);
  return true;
}

}  // namespace

int main() {
  const machine m = measure_machine();
  print_header(m);
  bool ok = true;
  ok &= section_dense(m);
  ok &= section_batch(m);
  ok &= section_sparse(m);
  ok &= section_linear(m);
  ok &= section_eviction();
  if (any_contended)
    std::printf(
        "\n* the threads got less than %.0f%% of the cores during the best run (another "
        "process, or idle threads): read the throughput as a lower bound.\n",
        100.0 * contended_share);
  std::printf("\n%s\n", ok ? "all checks passed" : "SOME CHECKS FAILED");
  return ok ? 0 : 1;
}
