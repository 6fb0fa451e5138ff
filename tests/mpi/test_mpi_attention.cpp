// attnkit MPI tests — ring attention, sharded decode and Star Attention against single-process
// attention, and the all-ranks error contract. Runs under mpirun with any number of ranks
// (ctest runs it at 1, 2, 3 and 4); not a Catch2 executable: a plain main() that initialises
// MPI, runs every check on every rank, and exits non-zero (on every rank) if any rank failed.
//
// Every rank builds the same global problem from the same seed, computes the single-process
// answer with attnkit::attention on the whole sequence (backend::reference: fp64 inside), and
// compares its own shard of the distributed result with the matching rows.
//
// Tolerances (outputs are softmax averages of N(0,1) values, so |out| <= ~3; lse ~ log n):
//   - the distributed result is P merges of partials; every merge is exact math done in fp32:
//     a few fp32 roundings of |out| per merge. With backend::reference partials (fp64 inside,
//     rounded once to fp32) the total stays below 1e-5 absolute; 2e-5 abs + 2e-5 rel is the
//     bound. With attnkit::cpu (fp32 accumulation over up to 200 keys of head_dim 64) the kernel
//     itself differs from the fp64 oracle by ~1e-6..1e-5: 1e-4 abs + 1e-4 rel.
//   - 16-bit outputs add one rounding of the stored value: u·|out| with u = 2^-11 (half) or
//     2^-8 (bfloat16), on top of the above.
//   - log-sum-exp is fp32 everywhere: 5e-5 abs + 1e-5 rel; -inf must match exactly.
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <functional>
#include <limits>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "attnkit/attnkit.hpp"
#include "attnkit/distributed/mpi.hpp"
#include "support/compare.hpp"
#include "support/random.hpp"

namespace {

using attnkit::bfloat16;
using attnkit::half;
using attnkit::index_t;
using attnkit::tensor_view;
using attnkit_test::comparison;
using attnkit_test::tolerance;

// ---- A minimal harness: failures are counted per rank and summed at the end. ----

struct world {
  MPI_Comm comm = MPI_COMM_WORLD;
  int rank = 0;
  int ranks = 1;
  int failures = 0;
  int checks = 0;
};

world& the_world() {
  static world w;
  return w;
}

void fail(const std::string& what) {
  world& w = the_world();
  ++w.failures;
  std::fprintf(stderr, "[rank %d of %d] FAILED: %s\n", w.rank, w.ranks, what.c_str());
}

void check(bool ok, const std::string& what) {
  ++the_world().checks;
  if (!ok) fail(what);
}

void check(const comparison& c, const std::string& where) {
  check(c.ok(), where + ": " + c.describe());
}

// Runs one named test on every rank; an unexpected exception aborts the whole job (a rank that
// returned early would leave the others waiting in the next collective).
void run(const char* name, const std::function<void()>& test) {
  world& w = the_world();
  const int before = w.failures;
  try {
    test();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "[rank %d of %d] %s: unexpected exception: %s\n", w.rank, w.ranks, name,
                 e.what());
    MPI_Abort(w.comm, 2);
  }
  int failed = w.failures > before ? 1 : 0, any = 0;
  MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, w.comm);
  if (w.rank == 0) std::printf("%-58s %s\n", name, any ? "FAILED" : "ok");
}

// ---- The global problem, identical on every rank. ----

template <class T>
std::vector<T> random_values(std::uint64_t seed, std::size_t count) {
  attnkit_test::rng g(seed);
  std::vector<T> values(count);
  for (T& x : values) x = attnkit_test::round_to<T>(g.normal());
  return values;
}

// [tokens, heads, head_dim] with `pad` unused elements after every head row and head_dim
// elements `step` apart, so shard views are strided (packing must honour strides).
template <class T>
struct global_tensor {
  index_t tokens = 0, heads = 0, dim = 0, pad = 0, step = 1;
  std::vector<T> data;

  global_tensor(std::uint64_t seed, index_t tokens_, index_t heads_, index_t dim_, index_t pad_,
                index_t step_ = 1)
      : tokens(tokens_), heads(heads_), dim(dim_), pad(pad_), step(step_) {
    data = random_values<T>(seed, static_cast<std::size_t>(tokens * heads * head_stride()));
  }
  index_t head_stride() const { return dim * step + pad; }
  tensor_view<const T, 3> rows(index_t begin, index_t count) const {
    return {data.data() + begin * heads * head_stride(),
            {count, heads, dim},
            {heads * head_stride(), head_stride(), step}};
  }
  tensor_view<const T, 3> all() const { return rows(0, tokens); }
};

struct reference_result {
  std::vector<float> out;  // [n_q, q_heads, dim]
  std::vector<float> lse;  // [q_heads, n_q]
  index_t q_tokens = 0, heads = 0, dim = 0;

  tensor_view<const float, 3> out_rows(index_t begin, index_t count) const {
    return {out.data() + begin * heads * dim, {count, heads, dim}};
  }
  tensor_view<const float, 2> lse_rows(index_t begin, index_t count) const {
    return {lse.data() + begin, {heads, count}, {q_tokens, 1}};
  }
};

template <class TQ, class TK, class Mask>
reference_result reference_attention(tensor_view<const TQ, 3> q, tensor_view<const TK, 3> k,
                                     tensor_view<const TK, 3> v, const Mask& mask,
                                     const attnkit::attention_options& base = {}) {
  reference_result r;
  r.q_tokens = q.extent(0);
  r.heads = q.extent(1);
  r.dim = q.extent(2);
  r.out.assign(static_cast<std::size_t>(r.q_tokens * r.heads * r.dim), 0.0f);
  r.lse.assign(static_cast<std::size_t>(r.heads * r.q_tokens), 0.0f);
  attnkit::attention_options options = base;
  options.log_sum_exp = tensor_view<float, 2>(r.lse.data(), {r.heads, r.q_tokens});
  attnkit::attention(attnkit::backend::reference{}, q, k, v,
                     tensor_view<float, 3>(r.out.data(), {r.q_tokens, r.heads, r.dim}), mask,
                     options, attnkit::parallel::serial{});
  return r;
}

// ---- Shard lengths. ----

enum class split { even, uneven, empty_ranks, one_rank_holds_all };

const char* split_name(split s) {
  switch (s) {
    case split::even:
      return "even";
    case split::uneven:
      return "uneven";
    case split::empty_ranks:
      return "empty ranks";
    default:
      return "all on the last rank";
  }
}

std::vector<index_t> shard_lengths(split s, index_t total, int ranks, std::uint64_t seed) {
  std::vector<index_t> lengths(static_cast<std::size_t>(ranks), 0);
  switch (s) {
    case split::even:
      for (int r = 0; r < ranks; ++r) lengths[r] = (r + 1) * total / ranks - r * total / ranks;
      break;
    case split::uneven: {
      // Random cut points (same seed on every rank, so the same split).
      attnkit_test::rng g(seed);
      std::vector<index_t> cuts{0, total};
      for (int r = 1; r < ranks; ++r) cuts.push_back(g.integer(0, total));
      std::sort(cuts.begin(), cuts.end());
      for (int r = 0; r < ranks; ++r) lengths[r] = cuts[r + 1] - cuts[r];
      break;
    }
    case split::empty_ranks: {
      // Ranks 0 and 2 (when they exist, and not the only rank) hold nothing.
      int holders = 0;
      for (int r = 0; r < ranks; ++r) holders += (ranks == 1 || (r != 0 && r != 2)) ? 1 : 0;
      int seen = 0;
      for (int r = 0; r < ranks; ++r) {
        if (!(ranks == 1 || (r != 0 && r != 2))) continue;
        lengths[r] = (seen + 1) * total / holders - seen * total / holders;
        ++seen;
      }
      break;
    }
    case split::one_rank_holds_all:
      lengths[ranks - 1] = total;
      break;
  }
  return lengths;
}

index_t shard_begin(const std::vector<index_t>& lengths, int rank) {
  index_t begin = 0;
  for (int r = 0; r < rank; ++r) begin += lengths[r];
  return begin;
}

template <class TO>
tolerance output_tolerance(bool simd_backend) {
  tolerance t = simd_backend ? tolerance{1e-4, 1e-4} : tolerance{2e-5, 2e-5};
  t.rel += attnkit_test::unit_roundoff<TO>();
  if (!std::is_same_v<TO, float>) t.abs += attnkit_test::unit_roundoff<TO>();
  return t;
}
constexpr tolerance lse_tolerance{5e-5, 1e-5};

template <class Backend>
constexpr bool is_simd_backend = !std::is_same_v<Backend, attnkit::backend::reference>;

void expect_error_everywhere(const std::string& name, const std::function<void()>& call,
                             const std::string& text);

// ---- Ring attention. ----

struct ring_case {
  index_t tokens = 64, q_heads = 4, kv_heads = 2, dim = 16, pad = 0, step = 1;
  split shards = split::even;
  bool balance = true;
  bool lse = true;
};

template <class Backend, class TQ, class TK, class TO, class Mask>
void check_ring(const Backend& backend, const Mask& mask, const ring_case& c) {
  const world& w = the_world();
  const global_tensor<TQ> q(11, c.tokens, c.q_heads, c.dim, c.pad, c.step);
  const global_tensor<TK> k(12, c.tokens, c.kv_heads, c.dim, c.pad, c.step);
  const global_tensor<TK> v(13, c.tokens, c.kv_heads, c.dim, c.pad, c.step);
  const reference_result ref = reference_attention(q.all(), k.all(), v.all(), mask);

  const std::vector<index_t> lengths = shard_lengths(c.shards, c.tokens, w.ranks, 99);
  const index_t begin = shard_begin(lengths, w.rank), n = lengths[w.rank];
  // The output is strided like the inputs (every step-th element).
  std::vector<TO> out(static_cast<std::size_t>(n * c.q_heads * c.dim * c.step),
                      attnkit::from_float<TO>(std::numeric_limits<float>::quiet_NaN()));
  const tensor_view<TO, 3> out_view(out.data(), {n, c.q_heads, c.dim},
                                    {c.q_heads * c.dim * c.step, c.dim * c.step, c.step});
  std::vector<float> lse(static_cast<std::size_t>(c.q_heads * n),
                         std::numeric_limits<float>::quiet_NaN());
  attnkit::attention_options options;
  if (c.lse) options.log_sum_exp = tensor_view<float, 2>(lse.data(), {c.q_heads, n});
  attnkit::mpi::ring_options ring;
  ring.balance_causal = c.balance;
  attnkit::mpi::ring_attention(w.comm, backend, q.rows(begin, n), k.rows(begin, n),
                               v.rows(begin, n), out_view, mask, options, ring,
                               attnkit::parallel::serial{});

  std::ostringstream where;
  where << "ring_attention " << (std::is_same_v<Mask, attnkit::causal> ? "causal" : "full")
        << (is_simd_backend<Backend> ? " cpu" : " reference") << " n=" << c.tokens << " heads "
        << c.q_heads << "/" << c.kv_heads << " dim " << c.dim << " pad " << c.pad << " step "
        << c.step << ", " << split_name(c.shards) << (c.balance ? ", balanced" : ", unbalanced")
        << ", rows [" << begin << ", " << begin + n << ")";
  check(attnkit_test::compare_output(tensor_view<const TO, 3>(out_view), ref.out_rows(begin, n),
                                     output_tolerance<TO>(is_simd_backend<Backend>), "output"),
        where.str());
  if (c.lse)
    check(attnkit_test::compare_lse(tensor_view<const float, 2>(lse.data(), {c.q_heads, n}),
                                    ref.lse_rows(begin, n), lse_tolerance),
          where.str());
}

void ring_correctness() {
  const attnkit::backend::reference reference;
  for (split s : {split::even, split::uneven, split::empty_ranks, split::one_rank_holds_all}) {
    for (index_t tokens : {1, 7, 61}) {
      ring_case c;
      c.tokens = tokens;
      c.shards = s;
      check_ring<attnkit::backend::reference, float, float, float>(reference, attnkit::full{}, c);
      check_ring<attnkit::backend::reference, float, float, float>(reference, attnkit::causal{}, c);
      c.balance = false;
      check_ring<attnkit::backend::reference, float, float, float>(reference, attnkit::causal{}, c);
    }
  }
  // GQA / MQA / MHA, strided views, no LSE requested.
  for (auto [hq, hkv] : {std::pair<index_t, index_t>{6, 2}, {3, 3}, {4, 1}}) {
    ring_case c;
    c.tokens = 45;
    c.q_heads = hq;
    c.kv_heads = hkv;
    c.dim = 8;
    c.pad = 3;
    c.step = hkv == 1 ? 2 : 1;  // head_dim elements not adjacent: element-wise packing
    c.shards = split::uneven;
    c.lse = hq != 3;
    check_ring<attnkit::backend::reference, float, float, float>(reference, attnkit::causal{}, c);
    check_ring<attnkit::backend::reference, float, float, float>(reference, attnkit::full{}, c);
  }
}

void ring_dtypes_and_cpu_backend() {
  const attnkit::backend::reference reference;
  ring_case c;
  c.tokens = 50;
  c.shards = split::uneven;
  // 16-bit keys/values travel as 16-bit; outputs in every type.
  check_ring<attnkit::backend::reference, float, half, half>(reference, attnkit::causal{}, c);
  check_ring<attnkit::backend::reference, bfloat16, bfloat16, bfloat16>(reference,
                                                                        attnkit::causal{}, c);
  check_ring<attnkit::backend::reference, half, half, float>(reference, attnkit::full{}, c);
  // The SIMD backend, at a head_dim with a compiled fast path and a long enough sequence that
  // blocks span several kernel tiles.
  c.tokens = 200;
  c.dim = 64;
  c.q_heads = 4;
  c.kv_heads = 2;
  check_ring<decltype(attnkit::cpu), float, float, float>(attnkit::cpu, attnkit::causal{}, c);
  check_ring<decltype(attnkit::cpu), float, float, float>(attnkit::cpu, attnkit::full{}, c);
  check_ring<decltype(attnkit::cpu), float, half, half>(attnkit::cpu, attnkit::causal{}, c);
}

// With 2P | n every rank computes exactly the same (query, key) pairs under zig-zag; the pairs
// of all ranks always add up to the mask's count.
void ring_balance() {
  const world& w = the_world();
  const index_t chunk = 5, tokens = 2 * w.ranks * chunk, heads = 2, dim = 8;
  const global_tensor<float> q(21, tokens, heads, dim, 0), k(22, tokens, heads, dim, 0),
      v(23, tokens, heads, dim, 0);
  const index_t n = tokens / w.ranks, begin = n * w.rank;
  std::vector<float> out(static_cast<std::size_t>(n * heads * dim));
  for (bool balance : {true, false}) {
    attnkit::mpi::ring_statistics stats;
    attnkit::mpi::ring_options ring;
    ring.balance_causal = balance;
    ring.statistics = &stats;
    attnkit::mpi::ring_attention(w.comm, attnkit::backend::reference{}, q.rows(begin, n),
                                 k.rows(begin, n), v.rows(begin, n),
                                 tensor_view<float, 3>(out.data(), {n, heads, dim}),
                                 attnkit::causal{}, {}, ring, attnkit::parallel::serial{});
    std::vector<index_t> pairs(static_cast<std::size_t>(w.ranks));
    MPI_Allgather(&stats.visible_pairs, 1, MPI_INT64_T, pairs.data(), 1, MPI_INT64_T, w.comm);
    index_t sum = 0, most = 0, least = tokens * tokens;
    for (index_t p : pairs) {
      sum += p;
      most = std::max(most, p);
      least = std::min(least, p);
    }
    std::ostringstream s;
    s << "ring balance (" << (balance ? "zig-zag" : "contiguous") << "): pairs per rank";
    for (index_t p : pairs) s << " " << p;
    check(sum == tokens * (tokens + 1) / 2, s.str() + ": the sum is not n(n+1)/2");
    if (balance) check(most == least, s.str() + ": zig-zag must give every rank the same work");
    if (!balance && w.ranks > 1)
      check(most == least + (w.ranks - 1) * n * n,
            s.str() + ": contiguous shards: the last rank has (P-1)·(n/P)² more pairs");
    if (w.rank == 0) std::printf("  %s\n", s.str().c_str());
  }
}

// The caller may already hold the zig-zag layout: rank r passes chunks r and 2P-1-r.
void ring_zigzag_input() {
  const world& w = the_world();
  for (index_t tokens : {3, 37, 64}) {
    for (bool causal : {true, false}) {
      const index_t heads = 4, kv_heads = 2, dim = 16, chunks = 2 * w.ranks;
      const global_tensor<float> q(61, tokens, heads, dim, 0), k(62, tokens, kv_heads, dim, 0),
          v(63, tokens, kv_heads, dim, 0);
      const reference_result ref =
          causal ? reference_attention(q.all(), k.all(), v.all(), attnkit::causal{})
                 : reference_attention(q.all(), k.all(), v.all(), attnkit::full{});
      // This rank's tokens: chunk r then chunk 2P-1-r, gathered into contiguous buffers.
      auto chunk_begin = [&](index_t c) { return c * tokens / chunks; };
      std::vector<index_t> positions;
      for (index_t c : {static_cast<index_t>(w.rank), chunks - 1 - w.rank})
        for (index_t p = chunk_begin(c); p < chunk_begin(c + 1); ++p) positions.push_back(p);
      const index_t n = static_cast<index_t>(positions.size());
      std::vector<float> qs, ks, vs, expected, expected_lse;
      for (index_t p : positions) {
        for (index_t h = 0; h < heads; ++h)
          for (index_t d = 0; d < dim; ++d) {
            qs.push_back(q.all()(p, h, d));
            expected.push_back(ref.out_rows(0, tokens)(p, h, d));
          }
        for (index_t h = 0; h < kv_heads; ++h)
          for (index_t d = 0; d < dim; ++d) {
            ks.push_back(k.all()(p, h, d));
            vs.push_back(v.all()(p, h, d));
          }
      }
      for (index_t h = 0; h < heads; ++h)
        for (index_t p : positions) expected_lse.push_back(ref.lse_rows(0, tokens)(h, p));
      std::vector<float> out(static_cast<std::size_t>(n * heads * dim));
      std::vector<float> lse(static_cast<std::size_t>(heads * n));
      attnkit::attention_options options;
      options.log_sum_exp = tensor_view<float, 2>(lse.data(), {heads, n});
      attnkit::mpi::ring_options ring;
      ring.layout = attnkit::mpi::ring_layout::zigzag;
      attnkit::mpi::ring_statistics stats;
      ring.statistics = &stats;
      const tensor_view<const float, 3> qv(qs.data(), {n, heads, dim}),
          kv(ks.data(), {n, kv_heads, dim}), vv(vs.data(), {n, kv_heads, dim});
      const tensor_view<float, 3> ov(out.data(), {n, heads, dim});
      if (causal)
        attnkit::mpi::ring_attention(w.comm, attnkit::backend::reference{}, qv, kv, vv, ov,
                                     attnkit::causal{}, options, ring, attnkit::parallel::serial{});
      else
        attnkit::mpi::ring_attention(w.comm, attnkit::backend::reference{}, qv, kv, vv, ov,
                                     attnkit::full{}, options, ring, attnkit::parallel::serial{});
      const std::string where = std::string("ring_attention, zig-zag input, ") +
                                (causal ? "causal" : "full") + ", n=" + std::to_string(tokens);
      check(attnkit_test::compare_output(
                tensor_view<const float, 3>(out.data(), {n, heads, dim}),
                tensor_view<const float, 3>(expected.data(), {n, heads, dim}),
                output_tolerance<float>(false), "output"),
            where);
      check(attnkit_test::compare_lse(tensor_view<const float, 2>(lse.data(), {heads, n}),
                                      tensor_view<const float, 2>(expected_lse.data(), {heads, n}),
                                      lse_tolerance),
            where);
      check(stats.redistribute_seconds == 0.0, where + ": the zig-zag input was redistributed");
    }
  }
  // A rank whose length does not match its zig-zag chunks: every rank throws.
  if (w.ranks > 1) {
    const index_t n = the_world().rank == 0 ? 1 : 5, heads = 2, dim = 8;  // zig-zag: ~N/P each
    std::vector<float> data(static_cast<std::size_t>(n * heads * dim), 1.0f), out(data.size());
    const tensor_view<const float, 3> x(data.data(), {n, heads, dim});
    attnkit::mpi::ring_options ring;
    ring.layout = attnkit::mpi::ring_layout::zigzag;
    expect_error_everywhere(
        "ring_attention, zig-zag input with wrong lengths",
        [&] {
          attnkit::mpi::ring_attention(w.comm, attnkit::backend::reference{}, x, x, x,
                                       tensor_view<float, 3>(out.data(), {n, heads, dim}),
                                       attnkit::causal{}, {}, ring, attnkit::parallel::serial{});
        },
        "in the zig-zag layout");
  }
}

// ---- Sharded decode and Star Attention. ----

template <class Backend, class TQ, class TK, class TO, class Mask>
void check_sharded_decode(const Backend& backend, const Mask& mask, index_t q_tokens,
                          index_t cache_tokens, split shards, index_t q_heads, index_t kv_heads) {
  const world& w = the_world();
  const index_t dim = 16;
  const global_tensor<TQ> q(31, q_tokens, q_heads, dim, 0);
  const global_tensor<TK> k(32, cache_tokens, kv_heads, dim, 1);
  const global_tensor<TK> v(33, cache_tokens, kv_heads, dim, 1);
  const reference_result ref = reference_attention(q.all(), k.all(), v.all(), mask);

  const std::vector<index_t> lengths = shard_lengths(shards, cache_tokens, w.ranks, 7);
  const index_t begin = shard_begin(lengths, w.rank), n = lengths[w.rank];
  std::vector<TO> out(static_cast<std::size_t>(q_tokens * q_heads * dim));
  std::vector<float> lse(static_cast<std::size_t>(q_heads * q_tokens));
  attnkit::attention_options options;
  options.log_sum_exp = tensor_view<float, 2>(lse.data(), {q_heads, q_tokens});
  attnkit::mpi::sharded_decode(w.comm, backend, q.all(), k.rows(begin, n), v.rows(begin, n),
                               tensor_view<TO, 3>(out.data(), {q_tokens, q_heads, dim}), mask,
                               options, attnkit::parallel::serial{});
  std::ostringstream where;
  where << "sharded_decode " << (std::is_same_v<Mask, attnkit::causal> ? "causal" : "full")
        << " n_q=" << q_tokens << " cache " << cache_tokens << " heads " << q_heads << "/"
        << kv_heads << ", " << split_name(shards);
  check(attnkit_test::compare_output(tensor_view<const TO, 3>(out.data(), {q_tokens, q_heads, dim}),
                                     ref.out_rows(0, q_tokens),
                                     output_tolerance<TO>(is_simd_backend<Backend>), "output"),
        where.str());
  check(attnkit_test::compare_lse(tensor_view<const float, 2>(lse.data(), {q_heads, q_tokens}),
                                  ref.lse_rows(0, q_tokens), lse_tolerance),
        where.str());
  // The result is the same on every rank, bit for bit (the merge runs in rank order).
  std::vector<TO> root = out;
  MPI_Bcast(root.data(), static_cast<int>(root.size() * sizeof(TO)), MPI_BYTE, 0, w.comm);
  check(std::memcmp(root.data(), out.data(), out.size() * sizeof(TO)) == 0,
        where.str() + ": the output differs from rank 0's");
}

void sharded_decode_correctness() {
  const attnkit::backend::reference reference;
  for (split s : {split::even, split::uneven, split::empty_ranks, split::one_rank_holds_all}) {
    check_sharded_decode<attnkit::backend::reference, float, float, float>(
        reference, attnkit::causal{}, 1, 53, s, 4, 2);
    check_sharded_decode<attnkit::backend::reference, float, float, float>(
        reference, attnkit::full{}, 1, 53, s, 4, 4);
    // Several queries (chunked prefill / speculative decode) under global causal positions.
    check_sharded_decode<attnkit::backend::reference, float, float, float>(
        reference, attnkit::causal{}, 9, 30, s, 6, 2);
  }
  // More queries than keys: the first rows see nothing (zeros, lse -inf) on every rank.
  check_sharded_decode<attnkit::backend::reference, float, float, float>(
      reference, attnkit::causal{}, 6, 3, split::uneven, 2, 1);
  check_sharded_decode<decltype(attnkit::cpu), float, half, float>(attnkit::cpu, attnkit::causal{},
                                                                   1, 300, split::uneven, 8, 2);
  check_sharded_decode<decltype(attnkit::cpu), float, float, float>(attnkit::cpu, attnkit::full{},
                                                                    4, 300, split::even, 8, 8);
}

// Phase 1 against attention over [anchor ; block]; phase 2 against attention over the whole
// cache (every block, then the query tokens' own keys on the last rank).
void star_attention_both_phases() {
  const world& w = the_world();
  const index_t block = 12, q_tokens = 5, q_heads = 4, kv_heads = 2, dim = 16;
  const index_t context = block * w.ranks, total = context + q_tokens;
  // The context and the query tokens as one sequence: rows [0, context) are the blocks, rows
  // [context, total) the query tokens.
  const global_tensor<float> q(41, total, q_heads, dim, 0);
  const global_tensor<float> k(42, total, kv_heads, dim, 0);
  const global_tensor<float> v(43, total, kv_heads, dim, 0);
  const index_t begin = block * w.rank;

  // Phase 1.
  {
    std::vector<float> out(static_cast<std::size_t>(block * q_heads * dim));
    std::vector<float> lse(static_cast<std::size_t>(q_heads * block));
    attnkit::attention_options options;
    options.log_sum_exp = tensor_view<float, 2>(lse.data(), {q_heads, block});
    attnkit::mpi::star_encode_context(w.comm, attnkit::cpu, q.rows(begin, block),
                                      k.rows(begin, block), v.rows(begin, block),
                                      tensor_view<float, 3>(out.data(), {block, q_heads, dim}),
                                      attnkit::causal{}, options, attnkit::parallel::serial{});
    // Reference: [anchor ; block] gathered by hand (rank 0: the block alone).
    const index_t keys = w.rank == 0 ? block : 2 * block;
    std::vector<float> kk, vv;
    for (index_t src : w.rank == 0 ? std::vector<index_t>{0} : std::vector<index_t>{0, begin}) {
      const auto kr = k.rows(src, block), vr = v.rows(src, block);
      for (index_t t = 0; t < block; ++t)
        for (index_t h = 0; h < kv_heads; ++h)
          for (index_t d = 0; d < dim; ++d) {
            kk.push_back(kr(t, h, d));
            vv.push_back(vr(t, h, d));
          }
    }
    const reference_result ref = reference_attention(
        q.rows(begin, block), tensor_view<const float, 3>(kk.data(), {keys, kv_heads, dim}),
        tensor_view<const float, 3>(vv.data(), {keys, kv_heads, dim}), attnkit::causal{});
    check(attnkit_test::compare_output(
              tensor_view<const float, 3>(out.data(), {block, q_heads, dim}),
              ref.out_rows(0, block), output_tolerance<float>(true), "output"),
          "star_encode_context (against attention over [anchor ; block])");
    check(attnkit_test::compare_lse(tensor_view<const float, 2>(lse.data(), {q_heads, block}),
                                    ref.lse_rows(0, block), lse_tolerance),
          "star_encode_context log_sum_exp");
  }
  // Phase 2: the last rank's slice is its block followed by the query tokens.
  {
    const bool query_host = w.rank == w.ranks - 1;
    const index_t n = block + (query_host ? q_tokens : 0);
    std::vector<float> out(static_cast<std::size_t>(q_tokens * q_heads * dim));
    std::vector<float> lse(static_cast<std::size_t>(q_heads * q_tokens));
    attnkit::attention_options options;
    options.log_sum_exp = tensor_view<float, 2>(lse.data(), {q_heads, q_tokens});
    attnkit::mpi::star_attend_query(w.comm, attnkit::cpu, q.rows(context, q_tokens),
                                    k.rows(begin, n), v.rows(begin, n),
                                    tensor_view<float, 3>(out.data(), {q_tokens, q_heads, dim}),
                                    options, attnkit::parallel::serial{});
    const reference_result ref =
        reference_attention(q.rows(context, q_tokens), k.all(), v.all(), attnkit::causal{});
    check(attnkit_test::compare_output(
              tensor_view<const float, 3>(out.data(), {q_tokens, q_heads, dim}),
              ref.out_rows(0, q_tokens), output_tolerance<float>(true), "output"),
          "star_attend_query (exact: against attention over the whole cache)");
    check(attnkit_test::compare_lse(tensor_view<const float, 2>(lse.data(), {q_heads, q_tokens}),
                                    ref.lse_rows(0, q_tokens), lse_tolerance),
          "star_attend_query log_sum_exp");
  }
}

// ---- Errors: every rank throws, nothing is written, and the ranks stay usable. ----

// Runs `call` on every rank and checks that every rank threw attnkit::error containing `text`.
void expect_error_everywhere(const std::string& name, const std::function<void()>& call,
                             const std::string& text) {
  const world& w = the_world();
  std::string message;
  bool threw = false;
  try {
    call();
  } catch (const attnkit::error& e) {
    threw = true;
    message = e.what();
  }
  check(threw, name + ": no attnkit::error on this rank");
  if (threw && w.rank == 0) std::printf("  %s -> %s\n", name.c_str(), message.c_str());
  if (threw)
    check(message.find(text) != std::string::npos,
          name + ": the message '" + message + "' does not mention '" + text + "'");
  int mine = threw ? 1 : 0, all = 0;
  MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_MIN, w.comm);
  check(all == 1, name + ": some rank did not throw");
}

void errors_on_every_rank() {
  const world& w = the_world();
  const int last = w.ranks - 1;
  const index_t heads = 2, dim = 8, n = 6;
  const global_tensor<float> q(51, n + 2, heads, dim + 8, 0);
  const global_tensor<float> k(52, n + 2, heads, dim + 8, 0);
  const float sentinel = 12345.0f;
  std::vector<float> out(static_cast<std::size_t>((n + 2) * heads * (dim + 8)), sentinel);
  std::vector<float> lse(static_cast<std::size_t>(heads * (n + 2)), sentinel);
  auto view = [](const global_tensor<float>& t, index_t tokens, index_t h, index_t d) {
    return tensor_view<const float, 3>(t.data.data(), {tokens, h, d});
  };
  const tensor_view<float, 3> out_ok(out.data(), {n, heads, dim});
  auto serial = attnkit::parallel::serial{};
  const attnkit::backend::reference ref;

  // A different head_dim on the last rank (only a disagreement when there are peers).
  if (w.ranks > 1) {
    const index_t d = w.rank == last ? dim + 8 : dim;
    const tensor_view<float, 3> o(out.data(), {n, heads, d});
    expect_error_everywhere(
        "ring_attention, head_dim differs on one rank",
        [&] {
          attnkit::mpi::ring_attention(w.comm, ref, view(q, n, heads, d), view(k, n, heads, d),
                                       view(k, n, heads, d), o, attnkit::causal{}, {}, {}, serial);
        },
        "disagree on head_dim");
    expect_error_everywhere(
        "sharded_decode, head_dim differs on one rank",
        [&] {
          attnkit::mpi::sharded_decode(
              w.comm, ref, view(q, 1, heads, d), view(k, n, heads, d), view(k, n, heads, d),
              tensor_view<float, 3>(out.data(), {1, heads, d}), attnkit::causal{}, {}, serial);
        },
        "disagree on head_dim");
    expect_error_everywhere(
        "star_encode_context, kv_heads differs on one rank",
        [&] {
          const index_t kvh = w.rank == last ? 1 : 2;
          attnkit::mpi::star_encode_context(w.comm, ref, view(q, n, heads, dim),
                                            view(k, n, kvh, dim), view(k, n, kvh, dim), out_ok,
                                            attnkit::causal{}, {}, serial);
        },
        "disagree on kv_heads");
    expect_error_everywhere(
        "ring_attention, scale differs on one rank",
        [&] {
          attnkit::attention_options options;
          if (w.rank == last) options.scale = 0.5f;
          attnkit::mpi::ring_attention(w.comm, ref, view(q, n, heads, dim), view(k, n, heads, dim),
                                       view(k, n, heads, dim), out_ok, attnkit::full{}, options, {},
                                       serial);
        },
        "disagree on scale");
    expect_error_everywhere(
        "sharded_decode, query token count differs on one rank",
        [&] {
          const index_t nq = w.rank == last ? 2 : 1;
          attnkit::mpi::sharded_decode(
              w.comm, ref, view(q, nq, heads, dim), view(k, n, heads, dim), view(k, n, heads, dim),
              tensor_view<float, 3>(out.data(), {nq, heads, dim}), attnkit::full{}, {}, serial);
        },
        "disagree on q tokens");
  }
  // Invalid on one rank alone: query and key shards of different lengths (ring attention), a
  // wrong output shape, ALiBi. Every rank throws the failing rank's message.
  expect_error_everywhere(
      "ring_attention, q and kv shard lengths differ on one rank",
      [&] {
        const index_t nk = w.rank == last ? n + 1 : n;
        attnkit::mpi::ring_attention(w.comm, ref, view(q, n, heads, dim), view(k, nk, heads, dim),
                                     view(k, nk, heads, dim), out_ok, attnkit::causal{}, {}, {},
                                     serial);
      },
      "must cover the same tokens (on rank " + std::to_string(last));
  expect_error_everywhere(
      "ring_attention, wrong output shape on one rank",
      [&] {
        const index_t no = w.rank == last ? n - 1 : n;
        attnkit::mpi::ring_attention(
            w.comm, ref, view(q, n, heads, dim), view(k, n, heads, dim), view(k, n, heads, dim),
            tensor_view<float, 3>(out.data(), {no, heads, dim}), attnkit::full{}, {}, {}, serial);
      },
      "out tokens");
  expect_error_everywhere(
      "star_attend_query, wrong log_sum_exp shape on rank 0",
      [&] {
        attnkit::attention_options options;
        options.log_sum_exp = tensor_view<float, 2>(lse.data(), {heads, w.rank == 0 ? 2 : 1});
        attnkit::mpi::star_attend_query(
            w.comm, ref, view(q, 1, heads, dim), view(k, n, heads, dim), view(k, n, heads, dim),
            tensor_view<float, 3>(out.data(), {1, heads, dim}), options, serial);
      },
      "log_sum_exp extent 1");
  expect_error_everywhere(
      "ring_attention, ALiBi slopes",
      [&] {
        const float slopes[2] = {0.5f, 0.25f};
        attnkit::attention_options options;
        options.alibi_slopes = tensor_view<const float, 1>(slopes, {2});
        attnkit::mpi::ring_attention(w.comm, ref, view(q, n, heads, dim), view(k, n, heads, dim),
                                     view(k, n, heads, dim), out_ok, attnkit::causal{}, options, {},
                                     serial);
      },
      "alibi_slopes are not supported");
  // Nothing was written by any failed call.
  bool untouched = true;
  for (float x : out) untouched = untouched && x == sentinel;
  for (float x : lse) untouched = untouched && x == sentinel;
  check(untouched, "a failed call wrote to an output");
}

// After the failed calls, a valid one still works (no stray messages, no leftover requests).
void valid_call_after_errors() {
  ring_case c;
  c.tokens = 23;
  c.shards = split::uneven;
  check_ring<attnkit::backend::reference, float, float, float>(attnkit::backend::reference{},
                                                               attnkit::causal{}, c);
}

}  // namespace

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  world& w = the_world();
  MPI_Comm_rank(w.comm, &w.rank);
  MPI_Comm_size(w.comm, &w.ranks);
  if (w.rank == 0) std::printf("attnkit MPI tests on %d rank(s)\n", w.ranks);

  run("ring_attention: full/causal, shard splits, GQA, strides, LSE", ring_correctness);
  run("ring_attention: fp16/bf16 inputs and outputs, attnkit::cpu", ring_dtypes_and_cpu_backend);
  run("ring_attention: zig-zag work balance", ring_balance);
  run("ring_attention: caller already in the zig-zag layout", ring_zigzag_input);
  run("sharded_decode: full/causal, shard splits, GQA, LSE", sharded_decode_correctness);
  run("star attention: phase 1 and phase 2", star_attention_both_phases);
  run("errors: every rank throws the same attnkit::error", errors_on_every_rank);
  run("a valid call after the errors", valid_call_after_errors);

  int failures = 0, checks = 0;
  MPI_Allreduce(&w.failures, &failures, 1, MPI_INT, MPI_SUM, w.comm);
  MPI_Allreduce(&w.checks, &checks, 1, MPI_INT, MPI_SUM, w.comm);
  if (w.rank == 0) std::printf("%d check(s) on %d rank(s), %d failed\n", checks, w.ranks, failures);
  MPI_Finalize();
  return failures == 0 ? 0 : 1;
}
