// attnkit benchmark — ring attention across MPI processes against one process using the same
// number of cores, and how much of the ring's communication the computation hides.
//
//   mpirun -np 1 bench_ring --threads 2     # one process, attention() on a 2-thread pool
//   mpirun -np 2 bench_ring                 # two processes, one thread each (same cores)
//
// Cases: attention() (one process only), ring causal on contiguous shards redistributed to
// zig-zag, ring causal with the caller already in zig-zag ("zz input"), ring causal on the
// contiguous shards as they are (unbalanced), ring full.
//
// Options: --tokens N (8192) --heads H (8) --kv-heads H (8) --dim D (128) --runs R (3)
//          --threads T (threads per process: default 2 with one process, 1 with several)
//
// Timing: each case runs R times; before each run an MPI_Barrier lines the ranks up, the run's
// time is the slowest rank's (MPI_Allreduce MAX), and the table shows the median run. The
// per-rank columns come from ring_statistics of that median run: compute (kernel calls and
// merges), wait (in MPI_Waitall after the step's compute: communication NOT hidden by compute),
// redistribute (to the zig-zag layout and back) and the (query, key) pairs the rank computed,
// the balance measure (FLOPs = 4 · pairs · q_heads · head_dim). The whole input is generated on
// every rank (simple, and it keeps the benchmark free of I/O); only the rank's shard is used.
// Not a Google Benchmark: its runner does not know about ranks.
#include <mpi.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "attnkit/attnkit.hpp"
#include "attnkit/distributed/mpi.hpp"

namespace {

using attnkit::index_t;
using attnkit::tensor_view;

struct config {
  index_t tokens = 8192, heads = 8, kv_heads = 8, dim = 128;
  int runs = 3;
  int threads = 0;  // 0: 2 with one process, 1 with several
};

config parse(int argc, char** argv) {
  config c;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    const long long value = std::atoll(argv[i + 1]);
    if (flag == "--tokens")
      c.tokens = value;
    else if (flag == "--heads")
      c.heads = value;
    else if (flag == "--kv-heads")
      c.kv_heads = value;
    else if (flag == "--dim")
      c.dim = value;
    else if (flag == "--runs")
      c.runs = static_cast<int>(value);
    else if (flag == "--threads")
      c.threads = static_cast<int>(value);
    else
      std::fprintf(stderr, "bench_ring: unknown option %s (ignored)\n", flag.c_str());
  }
  return c;
}

std::vector<float> random_values(std::uint64_t seed, std::size_t count) {
  std::vector<float> values(count);
  std::uint64_t state = seed * 0x9E3779B97F4A7C15ull + 1;
  for (float& x : values) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    x = static_cast<float>(static_cast<double>(state >> 11) * 0x1.0p-53 * 2.0 - 1.0);
  }
  return values;
}

struct rank_numbers {
  double compute_ms, wait_ms, redistribute_ms, pairs;
};

struct measurement {
  double median_ms = 0.0;
  std::vector<rank_numbers> ranks;  // rank 0 only
};

// Runs `call(stats)` `runs` times and reports the median (slowest-rank) time, with the per-rank
// statistics of the median run gathered on rank 0.
template <class Call>
measurement measure(const config& c, MPI_Comm comm, Call&& call) {
  int rank = 0, ranks = 1;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &ranks);
  std::vector<std::pair<double, attnkit::mpi::ring_statistics>> runs;
  for (int r = 0; r < c.runs; ++r) {
    attnkit::mpi::ring_statistics stats;
    MPI_Barrier(comm);
    const double start = MPI_Wtime();
    call(stats);
    double elapsed = MPI_Wtime() - start, slowest = 0.0;
    MPI_Allreduce(&elapsed, &slowest, 1, MPI_DOUBLE, MPI_MAX, comm);
    runs.push_back({slowest, stats});
  }
  std::vector<std::size_t> order(runs.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](std::size_t a, std::size_t b) { return runs[a].first < runs[b].first; });
  const auto& median = runs[order[order.size() / 2]];
  measurement m;
  m.median_ms = median.first * 1e3;
  const rank_numbers mine{median.second.compute_seconds * 1e3, median.second.wait_seconds * 1e3,
                          median.second.redistribute_seconds * 1e3,
                          static_cast<double>(median.second.visible_pairs)};
  if (rank == 0) m.ranks.resize(static_cast<std::size_t>(ranks));
  MPI_Gather(&mine, 4, MPI_DOUBLE, rank == 0 ? m.ranks.data() : nullptr, 4, MPI_DOUBLE, 0, comm);
  return m;
}

void print_row(const char* name, const measurement& m, double flops, bool per_rank) {
  std::printf("%-22s %10.1f %9.1f", name, m.median_ms, flops / (m.median_ms * 1e-3) * 1e-9);
  if (!per_rank) {
    std::printf("\n");
    return;
  }
  double most = 0.0, least = 1e300;
  for (const rank_numbers& r : m.ranks) {
    most = std::max(most, r.pairs);
    least = std::min(least, r.pairs);
  }
  std::printf("   pairs max/min %.3f\n", least > 0 ? most / least : 0.0);
  for (std::size_t r = 0; r < m.ranks.size(); ++r) {
    const rank_numbers& x = m.ranks[r];
    const double hidden = x.compute_ms > 0 ? 100.0 * x.compute_ms / (x.compute_ms + x.wait_ms) : 0;
    std::printf(
        "%24s rank %zu: compute %9.1f ms  wait %7.1f ms  redistribute %6.1f ms  "
        "pairs %8.2f M  compute share of ring %5.1f %%\n",
        "", r, x.compute_ms, x.wait_ms, x.redistribute_ms, x.pairs * 1e-6, hidden);
  }
}

}  // namespace

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  const MPI_Comm comm = MPI_COMM_WORLD;
  int rank = 0, ranks = 1;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &ranks);
  config c = parse(argc, argv);
  if (c.threads <= 0) c.threads = ranks == 1 ? 2 : 1;

  const index_t n = c.tokens, begin = rank * n / ranks, shard = (rank + 1) * n / ranks - begin;
  const std::vector<float> q = random_values(1, static_cast<std::size_t>(n * c.heads * c.dim));
  const std::vector<float> k = random_values(2, static_cast<std::size_t>(n * c.kv_heads * c.dim));
  const std::vector<float> v = random_values(3, static_cast<std::size_t>(n * c.kv_heads * c.dim));
  std::vector<float> out(static_cast<std::size_t>(shard * c.heads * c.dim));
  auto rows = [&](const std::vector<float>& t, index_t heads) {
    return tensor_view<const float, 3>(t.data() + begin * heads * c.dim, {shard, heads, c.dim});
  };
  const tensor_view<float, 3> out_view(out.data(), {shard, c.heads, c.dim});
  attnkit::parallel::thread_pool pool(static_cast<std::size_t>(c.threads));

  const double pair_flops = 4.0 * static_cast<double>(c.heads * c.dim);
  const double causal_flops = pair_flops * static_cast<double>(n) * static_cast<double>(n + 1) / 2;
  const double full_flops = pair_flops * static_cast<double>(n) * static_cast<double>(n);
  if (rank == 0) {
    std::printf(
        "bench_ring: %d process(es) x %d thread(s), n = %lld, heads %lld/%lld, head_dim "
        "%lld, fp32; median of %d runs (MPI_Barrier before each; a run's time is the "
        "slowest rank's)\n",
        ranks, c.threads, static_cast<long long>(n), static_cast<long long>(c.heads),
        static_cast<long long>(c.kv_heads), static_cast<long long>(c.dim), c.runs);
    std::printf("%-22s %10s %9s\n", "case", "time_ms", "GFLOP/s");
  }

  if (ranks == 1) {
    // The single-process baseline: attention() on the whole sequence with the same cores.
    for (bool causal : {true, false}) {
      const measurement m = measure(c, comm, [&](attnkit::mpi::ring_statistics&) {
        if (causal)
          attnkit::attention(attnkit::cpu, rows(q, c.heads), rows(k, c.kv_heads),
                             rows(v, c.kv_heads), out_view, attnkit::causal{}, {}, pool);
        else
          attnkit::attention(attnkit::cpu, rows(q, c.heads), rows(k, c.kv_heads),
                             rows(v, c.kv_heads), out_view, attnkit::full{}, {}, pool);
      });
      if (rank == 0)
        print_row(causal ? "attention causal" : "attention full", m,
                  causal ? causal_flops : full_flops, false);
    }
  }
  // "zz input": the caller already holds chunks r and 2P-1-r (ring_layout::zigzag), so
  // nothing is redistributed.
  const index_t chunks = 2 * static_cast<index_t>(ranks);
  auto chunk_begin = [&](index_t ch) { return ch * n / chunks; };
  const index_t zz = chunk_begin(rank + 1) - chunk_begin(rank) + chunk_begin(chunks - rank) -
                     chunk_begin(chunks - 1 - rank);
  auto zigzag_copy = [&](const std::vector<float>& t, index_t heads) {
    std::vector<float> copy;
    for (index_t ch : {static_cast<index_t>(rank), chunks - 1 - rank})
      copy.insert(copy.end(), t.begin() + chunk_begin(ch) * heads * c.dim,
                  t.begin() + chunk_begin(ch + 1) * heads * c.dim);
    return copy;
  };
  const std::vector<float> q_zz = zigzag_copy(q, c.heads), k_zz = zigzag_copy(k, c.kv_heads),
                           v_zz = zigzag_copy(v, c.kv_heads);
  std::vector<float> out_zz(static_cast<std::size_t>(zz * c.heads * c.dim));

  using attnkit::mpi::ring_layout;
  struct ring_case {
    const char* name;
    bool causal, balance;
    ring_layout layout;
  };
  for (const ring_case rc :
       {ring_case{"ring causal zig-zag", true, true, ring_layout::contiguous},
        ring_case{"ring causal zz input", true, true, ring_layout::zigzag},
        ring_case{"ring causal contiguous", true, false, ring_layout::contiguous},
        ring_case{"ring full", false, true, ring_layout::contiguous}}) {
    if (rc.layout == ring_layout::zigzag && ranks == 1) continue;  // the same as contiguous
    const measurement m = measure(c, comm, [&](attnkit::mpi::ring_statistics& stats) {
      attnkit::mpi::ring_options ring;
      ring.layout = rc.layout;
      ring.balance_causal = rc.balance;
      ring.statistics = &stats;
      if (rc.layout == ring_layout::zigzag)
        attnkit::mpi::ring_attention(
            comm, attnkit::cpu, tensor_view<const float, 3>(q_zz.data(), {zz, c.heads, c.dim}),
            tensor_view<const float, 3>(k_zz.data(), {zz, c.kv_heads, c.dim}),
            tensor_view<const float, 3>(v_zz.data(), {zz, c.kv_heads, c.dim}),
            tensor_view<float, 3>(out_zz.data(), {zz, c.heads, c.dim}), attnkit::causal{}, {}, ring,
            pool);
      else if (rc.causal)
        attnkit::mpi::ring_attention(comm, attnkit::cpu, rows(q, c.heads), rows(k, c.kv_heads),
                                     rows(v, c.kv_heads), out_view, attnkit::causal{}, {}, ring,
                                     pool);
      else
        attnkit::mpi::ring_attention(comm, attnkit::cpu, rows(q, c.heads), rows(k, c.kv_heads),
                                     rows(v, c.kv_heads), out_view, attnkit::full{}, {}, ring,
                                     pool);
    });
    if (rank == 0) print_row(rc.name, m, rc.causal ? causal_flops : full_flops, true);
  }
  MPI_Finalize();
  return 0;
}
