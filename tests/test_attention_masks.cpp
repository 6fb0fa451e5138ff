// attnkit::cpu under sliding windows, per-head windows, custom bits and intersections, against
// the fp64 reference with the same mask applied densely (through allows() only), over the shape
// grid of test_attention_shapes.cpp: lengths {1, 2, 7, 63, 64, 65, 257, 1000}, head dims, GQA
// ratios 1..16, prefill, decode and chunked prefill (n_q < n_kv), n_q > n_kv (negative query
// positions), and the four instantiated dtype combinations. Block-sparse, MoBA and Quest masks are
// in test_attention_masks_sparse.cpp.
//
// Every check compares output and log-sum-exp within the error model of support/harness.hpp and
// requires rows that see no key to be exact zeros with log-sum-exp -inf. The equivalences the
// issue requires are run through attnkit::cpu twice, once per mask, and are either bit-identical
// (the two masks classify every tile the same way, so the kernel does the same operations) or
// within the fp32 error model of the same reference (when the kernel may visit the keys
// differently); each case says which and why.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdint>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "attnkit/mask/custom.hpp"
#include "attnkit/mask/intersection.hpp"
#include "attnkit/mask/sliding_window.hpp"
#include "support/masked_harness.hpp"

using namespace attnkit_test;
using attnkit::custom_bits;
using attnkit::sliding_window;
using attnkit::sliding_window_per_head;

namespace {

const index_t lengths[] = {1, 2, 7, 63, 64, 65, 257, 1000};

std::string window_name(const sliding_window& w) {
  std::ostringstream s;
  auto bound = [&](index_t x) -> std::ostream& { return x == unbounded ? s << "inf" : s << x; };
  s << "window{left ";
  bound(w.left) << ", right ";
  bound(w.right) << ", sinks " << w.sinks << ", dilation " << w.dilation << "}";
  return s.str();
}

any_mask window_mask(const sliding_window& w) { return any_mask(w, window_name(w)); }

// The sliding-window semantics of the issue, written out independently of the header: key j
// (j >= 0) is visible from position p when j <= p + right and (j < sinks, or p - left <= j and
// p - j is a multiple of dilation). Differences only, so unbounded windows do not overflow.
bool literal_window_allows(const sliding_window& w, index_t p, index_t j) {
  if (j < 0 || j - p > w.right) return false;
  if (j < w.sinks) return true;
  return p - j <= w.left && (p - j) % w.dilation == 0;
}

// Every window of the grid: lefts 0, 1, 17, 64, 100 and one larger than any sequence here;
// sinks 0 and 4; right 0 (causal band), 5 and == left (symmetric band); dilation 1, 2, 3.
std::vector<sliding_window> window_grid() {
  std::vector<sliding_window> grid;
  for (index_t left : {0, 1, 17, 64, 100, 5000})
    for (index_t sinks : {0, 4})
      for (index_t right : {index_t{0}, index_t{5}, left})
        for (index_t dilation : {1, 2, 3})
          if (right != left || left > 5 || left == 1)  // right = left = 0 is right = 0 again
            grid.push_back(sliding_window{left, right, sinks, dilation});
  return grid;
}

// A custom mask with the bits of `allows(p, j, layout)` for every query position of the case
// (including negative ones when n_q > n_kv) and every key.
template <class F>
custom_bits bits_for(const attention_case& c, index_t layouts, index_t heads_per_layout,
                     F&& allows) {
  return custom_bits::from_predicate(c.q_tokens, c.kv_tokens, layouts, heads_per_layout,
                                     c.kv_tokens - c.q_tokens, allows);
}

// How many (token, head) rows of the case see no key under `allows(p, j, h)`, by brute force.
template <class F>
index_t empty_rows(const attention_case& c, F&& allows) {
  index_t count = 0;
  for (index_t h = 0; h < c.q_heads; ++h)
    for (index_t i = 0; i < c.q_tokens; ++i) {
      const index_t p = c.kv_tokens - c.q_tokens + i;
      bool any = false;
      for (index_t j = 0; j < c.kv_tokens && !any; ++j) any = allows(p, j, h);
      if (!any) ++count;
    }
  return count;
}

}  // namespace

// ---- sliding_window ----------------------------------------------------------------------------

TEST_CASE("masked cpu: every window of the grid on prefill, chunked prefill, n_q > n_kv, decode",
          "[cpu][masks][window]") {
  // 102 windows x 4 shapes. The square prefill has partial tiles on both edges of the band; 7
  // queries over 63 keys is chunked prefill (query positions 56..62); 70 over 63 puts 7 query rows
  // at negative positions (only right > 0 lets them see keys); decode is one row per head.
  std::uint64_t seed = 1000;
  for (const sliding_window& w : window_grid()) {
    for (attention_case c : {shape(65, 65, 4, 2, 32), shape(7, 63, 4, 2, 32),
                             shape(70, 63, 2, 1, 32), shape(1, 257, 8, 2, 64)}) {
      c.seed = ++seed;
      const evaluation e = check_masked<float, float, float>(c, window_mask(w));
      INFO(e.label);
      CHECK(e.masked_rows == empty_rows(c, [&](index_t p, index_t j, index_t) {
              return literal_window_allows(w, p, j);
            }));
    }
  }
}

TEST_CASE("masked cpu: windows on every q and kv length pair", "[cpu][masks][window]") {
  // Three windows per length pair, taken in turn from the grid (a stride coprime to its size), so
  // that the pairs together see every kind of window.
  const std::vector<sliding_window> grid = window_grid();
  std::size_t next = 0;
  std::uint64_t seed = 2000;
  for (index_t nq : lengths)
    for (index_t nkv : lengths) {
      if (nq == 1000 && nkv == 1000) continue;  // below, with bigger heads
      for (int repeat = 0; repeat < 3; ++repeat) {
        const sliding_window& w = grid[next % grid.size()];
        next += 37;
        attention_case c = shape(nq, nkv, 2, 1, 32);
        c.seed = ++seed;
        check_masked<float, float, float>(c, window_mask(w));
      }
    }
}

TEST_CASE("masked cpu: windows at 1000 x 1000", "[cpu][masks][window][large]") {
  std::uint64_t seed = 2500;
  for (const sliding_window& w :
       {sliding_window{100, 0, 4}, sliding_window{17, 17, 0, 2}, sliding_window{300, 20, 0, 3}}) {
    attention_case c = shape(1000, 1000, 2, 1, w.dilation == 1 ? 128 : 64);
    c.seed = ++seed;
    check_masked<float, float, float>(c, window_mask(w));
  }
}

TEST_CASE("masked cpu: windows across head dims", "[cpu][masks][window]") {
  // The fast-path dims 64, 80, 96, 128, 256 and 32, 112 without one.
  std::uint64_t seed = 3000;
  for (index_t d : {32, 64, 80, 96, 112, 128, 256}) {
    struct run {
      attention_case c;
      sliding_window w;
    };
    for (run r :
         {run{shape(65, 65, 4, 2, d), {17, 0, 4}}, run{shape(63, 130, 2, 2, d), {64, 5, 0, 2}},
          run{shape(1, 257, 4, 1, d), {100, 0, 4}}}) {
      r.c.seed = ++seed;
      check_masked<float, float, float>(r.c, window_mask(r.w));
    }
  }
}

TEST_CASE("masked cpu: windows with GQA ratios 1 2 4 8 16", "[cpu][masks][window][gqa]") {
  struct heads {
    index_t q, kv;
  };
  const heads grid[] = {{4, 4}, {4, 2}, {8, 2}, {16, 2}, {32, 2}, {16, 1}, {6, 3}};
  std::uint64_t seed = 3500;
  for (const heads& h : grid) {
    attention_case prefill = shape(65, 65, h.q, h.kv, 64);
    prefill.seed = ++seed;
    check_masked<float, float, float>(prefill, window_mask({17, 0, 4}));
    attention_case band = shape(33, 100, h.q, h.kv, 32);
    band.seed = ++seed;
    check_masked<float, float, float>(band, window_mask({64, 64}));
    attention_case decode = shape(1, 1000, h.q, h.kv, 128);
    decode.seed = ++seed;
    check_masked<float, float, float>(decode, window_mask({100, 0, 4}), wide_executor());
  }
}

TEST_CASE("masked cpu: windowed decode over caches of every length, split or not",
          "[cpu][masks][window][decode][split]") {
  // Few KV heads: decode splits its visited keys across threads (always on the wide executor,
  // on the default pool when the machine has more than one thread). The windows go from far
  // smaller than a split (0, 17 with sinks: one split holds them all, most of the cache is never
  // visited) to several splits (1000 and 3000 keys), and dilation 3 leaves one key in three, so
  // each split is a string of one-key runs.
  const sliding_window windows[] = {
      {0, 0}, {17, 0, 4}, {100, 0, 0, 2}, {1000, 0, 4}, {3000, 0, 4, 3}};
  // (The harness's input statistics cost more than the kernels here: the longest caches run
  // with a smaller head dim, and with the two windows at the extremes only.)
  std::uint64_t seed = 4000;
  for (index_t nkv : {1, 2, 7, 63, 64, 65, 257, 1000, 4099, 20000}) {
    attention_case few = shape(1, nkv, 8, 1, nkv <= 4099 ? 128 : 64);
    few.seed = ++seed;
    const auto few_in = make_inputs<float, float>(few);
    attention_case many = shape(1, nkv, 32, 8, 64);
    many.seed = ++seed;
    const auto many_in = make_inputs<float, float>(nkv <= 1000 ? many : shape(0, 0, 8, 8, 64));
    for (const sliding_window& w : windows) {
      if (nkv > 4099 && w.left != 17 && w.left != 3000) continue;
      for (const any_executor* executor :
           {static_cast<const any_executor*>(nullptr), wide_executor()}) {
        check_masked_on<float>(few, few_in, window_mask(w), executor);
        if (nkv <= 1000) check_masked_on<float>(many, many_in, window_mask(w), executor);
      }
    }
  }
  // Speculative decode (a few query tokens, still the decode kernel) over a long cache.
  for (const sliding_window& w : windows) {
    attention_case c = shape(3, 5000, 4, 1, 64);
    c.seed = ++seed;
    check_masked<float, float, float>(c, window_mask(w), wide_executor());
  }
}

TEST_CASE("masked cpu: windows over every instantiated dtype combination",
          "[cpu][masks][window][dtypes]") {
  std::uint64_t seed = 5000;
  for_each_masked_dtype([&]<class TQ, class TKV, class TO>() {
    attention_case prefill = shape(65, 65, 4, 2, 80);
    prefill.seed = ++seed;
    check_masked<TQ, TKV, TO>(prefill, window_mask({17, 0, 4}));
    attention_case chunk = shape(63, 130, 4, 1, 64);
    chunk.seed = ++seed;
    check_masked<TQ, TKV, TO>(chunk, window_mask({64, 0, 0, 3}));
    attention_case decode = shape(1, 1000, 8, 2, 128);
    decode.seed = ++seed;
    check_masked<TQ, TKV, TO>(decode, window_mask({100, 3, 4, 2}), wide_executor());
  });
}

TEST_CASE("masked cpu: windows with the options (softcap, ALiBi, scale)", "[cpu][masks][window]") {
  // ALiBi is applied at absolute positions: a window must not shift it, in prefill or in the
  // splits of a decode.
  std::uint64_t seed = 5500;
  for (attention_case c : {shape(65, 130, 4, 2, 64), shape(1, 3000, 4, 1, 64)}) {
    c.alibi = alibi_slopes(4);
    c.softcap = 30.0f;
    c.scale = 0.2f;
    c.q_sd = c.k_sd = 3.0;
    c.seed = ++seed;
    check_masked<float, float, float>(c, window_mask({200, 0, 4, 2}), wide_executor());
  }
}

// ---- sliding_window_per_head -------------------------------------------------------------------

TEST_CASE("masked cpu: a different window per head, heads of one group differing",
          "[cpu][masks][window][per_head]") {
  // The table gives the four query heads of each KV group four different windows (one of them
  // unbounded, one of them empty but for the diagonal), so the mask varies by head inside a
  // group: decode then runs one KV head per work item and visits the union of its group's spans,
  // and splits those between threads; a head whose own keys all fall in other splits sees nothing
  // in them (log-sum-exp -inf there, weight 0 in the merge).
  const std::vector<sliding_window> table = {
      {0, 0}, {17, 0, 4}, {100, 0, 0, 2}, {unbounded, 0},  // KV head 0
      {1, 0}, {64, 64},   {5, 0, 4, 3},   {2000, 0, 4}};   // KV head 1
  const sliding_window_per_head per_head{table};
  const any_mask mask(per_head, "per-head windows (8 heads, 2 groups)");
  std::uint64_t seed = 6000;
  for (attention_case c :
       {shape(1, 257, 8, 2, 64), shape(1, 1000, 8, 2, 128), shape(1, 5000, 8, 2, 64),
        shape(2, 3000, 8, 2, 64), shape(65, 65, 8, 2, 64), shape(63, 1000, 8, 2, 32),
        shape(70, 63, 8, 2, 32)}) {
    c.seed = ++seed;
    const auto in = make_inputs<float, float>(c);
    for (const any_executor* executor :
         {static_cast<const any_executor*>(nullptr), wide_executor()})
      check_masked_on<float>(c, in, mask, executor);
  }
  // Every dtype combination, decode with 16-bit caches.
  for_each_masked_dtype([&]<class TQ, class TKV, class TO>() {
    attention_case c = shape(1, 3000, 8, 2, 128);
    c.seed = ++seed;
    check_masked<TQ, TKV, TO>(c, mask, wide_executor());
  });
}

TEST_CASE("masked cpu: per-head windows with MQA 16:1 and with MHA",
          "[cpu][masks][window][per_head]") {
  std::vector<sliding_window> sixteen;
  for (index_t h = 0; h < 16; ++h)
    sixteen.push_back(sliding_window{h * h * 13, h % 3, h % 2 == 0 ? 4 : 0, 1 + h % 3});
  const std::vector<sliding_window> four = {{0, 0}, {31, 0}, {unbounded, unbounded}, {7, 7, 2, 2}};
  const sliding_window_per_head mqa{sixteen}, mha{four};
  std::uint64_t seed = 6500;
  for (attention_case c : {shape(1, 3000, 16, 1, 64), shape(40, 300, 16, 1, 64)}) {
    c.seed = ++seed;
    check_masked<float, float, float>(c, any_mask(mqa, "16 per-head windows, one KV head"),
                                      wide_executor());
  }
  for (attention_case c : {shape(1, 2000, 4, 4, 80), shape(65, 65, 4, 4, 80)}) {
    c.seed = ++seed;
    check_masked<float, float, float>(c, any_mask(mha, "4 per-head windows, MHA"), wide_executor());
  }
}

// ---- exact equivalences of windows -------------------------------------------------------------

namespace {

// Shapes for the equivalences: square prefill (partial diagonal tiles), a longer square, chunked
// prefill, n_q > n_kv (rows at negative positions), decode split or not, GQA.
std::vector<attention_case> equivalence_shapes() {
  return {shape(65, 65, 4, 2, 64), shape(257, 257, 2, 1, 32), shape(7, 257, 8, 2, 64),
          shape(70, 63, 2, 1, 32), shape(1, 1000, 8, 1, 128), shape(1, 4099, 8, 2, 64),
          shape(3, 2000, 4, 1, 64)};
}

}  // namespace

TEST_CASE("masked cpu: a window covering everything equals causal and full, bit for bit",
          "[cpu][masks][window][equivalence]") {
  // Bit-identical. With left >= every distance of the call, sliding_window::classify answers
  // `empty` iff the tile's first key is more than `right` after its last query and `full` iff its
  // last key is at most `right` after its first query (sinks included: they obey the same upper
  // edge); for right = 0 those are causal's two tests, for right unbounded the tile is always full,
  // as under full. So the kernel visits the same spans of the same kinds, masks partial ones with
  // the same runs and decomposes the work the same way (neither mask varies by head).
  std::uint64_t seed = 7000;
  for (const any_executor* executor : {static_cast<const any_executor*>(nullptr), wide_executor()})
    for (attention_case c : equivalence_shapes()) {
      c.seed = ++seed;
      const auto in = make_inputs<float, float>(c);
      const index_t beyond = c.kv_tokens + c.q_tokens;  // larger than any distance of the call
      check_equivalent<float>(
          c, in, any_mask(attnkit::causal{}, "causal"),
          {window_mask({unbounded, 0}), window_mask({beyond, 0}), window_mask({unbounded, 0, 4})},
          equivalence::bit_identical, executor);
      check_equivalent<float>(c, in, any_mask(attnkit::full{}, "full"),
                              {window_mask({unbounded, unbounded}), window_mask({beyond, beyond})},
                              equivalence::bit_identical, executor);
    }
  // And with 16-bit K/V and the all-bf16 combination.
  attention_case c = shape(65, 130, 8, 2, 128);
  c.seed = ++seed;
  const auto half_kv = make_inputs<float, attnkit::half>(c);
  check_equivalent<float>(c, half_kv, any_mask(attnkit::causal{}, "causal"),
                          window_mask({unbounded, 0}), equivalence::bit_identical);
  const auto bf16 = make_inputs<attnkit::bfloat16, attnkit::bfloat16>(c);
  check_equivalent<attnkit::bfloat16>(c, bf16, any_mask(attnkit::full{}, "full"),
                                      window_mask({unbounded, unbounded}),
                                      equivalence::bit_identical);
}

TEST_CASE("masked cpu: windows equal custom bits of the literal window predicate, bit for bit",
          "[cpu][masks][window][equivalence]") {
  // Dilation 1 is the plain window p - left <= j <= p + right (plus sinks); dilation 2 and 3 keep
  // every 2nd / 3rd key of it. Each window is compared with a custom mask holding the bits of the
  // issue's predicate, written out in this file. Bit-identical: both masks classify exactly
  // (`empty` iff no pair of the tile is visible, `full` iff all are; promised by both headers) and
  // enumerate maximal runs, so the kernel sees the same spans, kinds and runs from either.
  std::uint64_t seed = 7500;
  for (attention_case c : {shape(65, 65, 4, 2, 64), shape(63, 257, 4, 1, 32),
                           shape(70, 63, 2, 1, 32), shape(1, 3000, 8, 1, 64)})
    for (const sliding_window& w :
         {sliding_window{17, 0}, sliding_window{17, 5, 0, 1}, sliding_window{64, 5, 4, 1},
          sliding_window{100, 0, 4, 2}, sliding_window{33, 33, 0, 3}, sliding_window{0, 0, 4},
          sliding_window{1000, 0, 0, 2}}) {
      c.seed = ++seed;
      const auto in = make_inputs<float, float>(c);
      const custom_bits bits = bits_for(
          c, 1, 1, [&](index_t p, index_t j, index_t) { return literal_window_allows(w, p, j); });
      check_equivalent<float>(c, in, window_mask(w),
                              any_mask(bits.mask(), "custom bits of the window"),
                              equivalence::bit_identical, wide_executor());
    }
}

TEST_CASE("masked cpu: causal & a two-sided window equals the one-sided window",
          "[cpu][masks][window][intersection][equivalence]") {
  // {w, 0} and causal & {w, unbounded} allow the same pairs. Within fp32 only: the intersection
  // classifies conservatively (two partial operands give partial even where the result is full or
  // empty), so its spans may be cut differently.
  std::uint64_t seed = 8000;
  for (attention_case c :
       {shape(65, 65, 4, 2, 64), shape(257, 257, 2, 1, 32), shape(1, 3000, 8, 1, 64)})
    for (index_t left : {0, 17, 100}) {
      c.seed = ++seed;
      const auto in = make_inputs<float, float>(c);
      const sliding_window one_sided{left, 0, 4};
      const auto both = attnkit::causal{} & sliding_window{left, unbounded, 4};
      check_equivalent<float>(c, in, window_mask(one_sided),
                              any_mask(both, "causal & " + window_name({left, unbounded, 4})),
                              equivalence::within_fp32, wide_executor());
    }
}

TEST_CASE("masked cpu: per-head windows that are all equal equal the single window",
          "[cpu][masks][window][per_head][equivalence]") {
  // A table of equal windows varies_by_head() all the same, so decode runs one KV head per work
  // item. Against the single window with the kernel forced onto the same per-head jobs
  // (any_mask::with_per_head_jobs) the work and the spans are identical: bit-identical. Against
  // the single window on its usual decomposition (all KV heads in one job): within fp32.
  std::uint64_t seed = 8500;
  const sliding_window w{64, 0, 4, 2};
  const std::vector<sliding_window> table(8, w);
  const any_mask per_head(sliding_window_per_head{table}, "8 equal per-head windows");
  for (attention_case c :
       {shape(1, 3000, 8, 2, 128), shape(2, 500, 8, 4, 64), shape(65, 65, 8, 2, 64)}) {
    c.seed = ++seed;
    const auto in = make_inputs<float, float>(c);
    check_equivalent<float>(c, in, window_mask(w).with_per_head_jobs(), per_head,
                            equivalence::bit_identical, wide_executor());
    check_equivalent<float>(c, in, window_mask(w), per_head, equivalence::within_fp32,
                            wide_executor());
  }
}

// ---- custom bits -------------------------------------------------------------------------------

namespace {

// Bits drawn two ways: independent per pair (almost every tile partial), or as runs of random
// length along each row (whole 16- and 64-key blocks come out empty or full, so the kernel's
// span list mixes all three kinds).
enum class bit_pattern { independent, runs };

custom_bits random_bits(const attention_case& c, index_t layouts, index_t heads_per_layout,
                        double density, bit_pattern pattern, std::uint64_t seed) {
  custom_bits bits(c.q_tokens, c.kv_tokens, layouts, heads_per_layout, c.kv_tokens - c.q_tokens);
  rng r(seed);
  for (index_t l = 0; l < layouts; ++l)
    for (index_t i = 0; i < c.q_tokens; ++i) {
      const index_t p = c.kv_tokens - c.q_tokens + i;
      if (pattern == bit_pattern::independent) {
        for (index_t j = 0; j < c.kv_tokens; ++j)
          if (r.uniform() < density) bits.set(l, p, j);
      } else {
        bool visible = r.uniform() < density;
        for (index_t j = 0; j < c.kv_tokens;) {
          const index_t run = r.integer(1, 150);
          for (index_t e = std::min(c.kv_tokens, j + run); j < e; ++j)
            if (visible) bits.set(l, p, j);
          visible = r.uniform() < density;
        }
      }
    }
  return bits;
}

}  // namespace

TEST_CASE("masked cpu: custom random bits, shared and per layout", "[cpu][masks][custom]") {
  // One layout for every head; one per KV head (heads of a group share it: the mask varies by
  // head, a group does not); one per query head (heads of a group differ).
  struct layouts {
    index_t count, heads_per_layout;
    const char* what;
  };
  std::uint64_t seed = 9000;
  for (attention_case c :
       {shape(65, 65, 8, 2, 64), shape(63, 130, 8, 2, 32), shape(130, 63, 8, 2, 32),
        shape(257, 257, 4, 2, 32), shape(1, 257, 8, 2, 64), shape(1, 3000, 8, 2, 128)}) {
    c.seed = ++seed;
    const auto in = make_inputs<float, float>(c);
    for (const layouts& l :
         {layouts{1, 1, "shared"}, layouts{c.kv_heads, c.q_heads / c.kv_heads, "per KV head"},
          layouts{c.q_heads, 1, "per query head"}})
      // Independent bits make nearly every tile partial whatever the density; runs give
      // empty, partial and full tiles in proportions that follow the density.
      for (auto [pattern, density] :
           {std::pair{bit_pattern::independent, 0.3}, std::pair{bit_pattern::runs, 0.05},
            std::pair{bit_pattern::runs, 0.5}, std::pair{bit_pattern::runs, 0.95}}) {
        const custom_bits bits =
            random_bits(c, l.count, l.heads_per_layout, density, pattern, ++seed);
        std::ostringstream name;
        name << "custom " << l.what << (pattern == bit_pattern::runs ? " runs" : " bits")
             << " density " << density;
        check_masked_on<float>(c, in, any_mask(bits.mask(), name.str()),
                               c.q_tokens == 1 ? wide_executor() : nullptr);
      }
  }
}

TEST_CASE("masked cpu: custom bits on every q and kv length pair", "[cpu][masks][custom]") {
  std::uint64_t seed = 10000;
  for (index_t nq : lengths)
    for (index_t nkv : lengths) {
      if (nq == 1000 && nkv == 1000) continue;
      attention_case c = shape(nq, nkv, 2, 1, 32);
      c.seed = ++seed;
      const custom_bits bits = random_bits(c, 2, 1, 0.5, bit_pattern::runs, seed);
      check_masked<float, float, float>(c, any_mask(bits.mask(), "custom runs per query head"));
    }
}

TEST_CASE("masked cpu: custom bits over every instantiated dtype combination",
          "[cpu][masks][custom][dtypes]") {
  std::uint64_t seed = 10500;
  for_each_masked_dtype([&]<class TQ, class TKV, class TO>() {
    for (attention_case c : {shape(65, 100, 4, 2, 96), shape(1, 2000, 8, 2, 128)}) {
      c.seed = ++seed;
      const custom_bits bits = random_bits(c, c.q_heads / 2, 2, 0.4, bit_pattern::runs, seed);
      check_masked<TQ, TKV, TO>(c, any_mask(bits.mask(), "custom runs, a layout per 2 heads"),
                                wide_executor());
    }
  });
}

TEST_CASE("masked cpu: rows and whole calls a mask empties are zeros with lse -inf",
          "[cpu][masks][custom][masked]") {
  std::uint64_t seed = 11000;
  // Every third row (of every layout) sees nothing, the others random runs: with GQA the empty
  // rows of one head sit in tiles with the non-empty rows of the others.
  for (attention_case c :
       {shape(65, 65, 8, 2, 64), shape(7, 300, 4, 1, 32), shape(3, 2000, 4, 1, 64)}) {
    c.seed = ++seed;
    custom_bits bits = random_bits(c, 4, c.q_heads / 4, 0.6, bit_pattern::runs, seed);
    for (index_t l = 0; l < 4; ++l)
      for (index_t i = l % 3; i < c.q_tokens; i += 3)
        for (index_t j = 0; j < c.kv_tokens; ++j)
          bits.set(l, c.kv_tokens - c.q_tokens + i, j, false);
    const any_mask mask(bits.mask(), "custom with every third row empty");
    const evaluation e = check_masked<float, float, float>(c, mask, wide_executor());
    INFO(e.label);
    CHECK(e.masked_rows ==
          empty_rows(c, [&](index_t p, index_t j, index_t h) { return mask.allows(p, j, h); }));
    CHECK(e.masked_rows > 0);
  }
  // Whole calls: all-zero bits (prefill, chunked, decode split or not), and a window & custom
  // bits that hide exactly what the window shows.
  for (attention_case c :
       {shape(65, 65, 4, 2, 64), shape(7, 300, 4, 1, 32), shape(1, 5000, 8, 1, 128)})
    for (const any_executor* executor :
         {static_cast<const any_executor*>(nullptr), wide_executor()}) {
      c.seed = ++seed;
      const custom_bits none(c.q_tokens, c.kv_tokens, 1, 1, c.kv_tokens - c.q_tokens);
      const evaluation e = check_masked<float, float, float>(
          c, any_mask(none.mask(), "custom, no bit set"), executor);
      INFO(e.label);
      CHECK(e.masked_rows == c.q_tokens * c.q_heads);
      const sliding_window w{10, 0, 4};
      const custom_bits complement = bits_for(
          c, 1, 1, [&](index_t p, index_t j, index_t) { return !literal_window_allows(w, p, j); });
      const evaluation disjoint = check_masked<float, float, float>(
          c, any_mask(w & complement.mask(), "window & custom complement of it"), executor);
      INFO(disjoint.label);
      CHECK(disjoint.masked_rows == c.q_tokens * c.q_heads);
    }
}

// ---- intersections -----------------------------------------------------------------------------

TEST_CASE("masked cpu: causal & sliding window, custom & causal, custom & per-head window",
          "[cpu][masks][intersection]") {
  std::uint64_t seed = 12000;
  const std::vector<sliding_window> table = {{0, 0}, {17, 0, 4}, {100, 0, 0, 2}, {unbounded, 0},
                                             {1, 0}, {64, 64},   {5, 0, 4, 3},   {2000, 0, 4}};
  for (attention_case c :
       {shape(65, 65, 8, 2, 64), shape(63, 1000, 8, 2, 32), shape(70, 63, 8, 2, 32),
        shape(1, 3000, 8, 2, 128), shape(1, 257, 8, 2, 64)}) {
    const any_executor* executor = c.q_tokens == 1 ? wide_executor() : nullptr;
    c.seed = ++seed;
    check_masked<float, float, float>(
        c,
        any_mask(attnkit::causal{} & sliding_window{33, 40, 4, 2}, "causal & window{33, 40, 4, 2}"),
        executor);
    c.seed = ++seed;
    const custom_bits bits = random_bits(c, 2, 4, 0.6, bit_pattern::runs, seed);
    check_masked<float, float, float>(
        c, any_mask(bits.mask() & attnkit::causal{}, "custom & causal"), executor);
    c.seed = ++seed;
    check_masked<float, float, float>(
        c,
        any_mask(bits.mask() & sliding_window_per_head{table} & attnkit::causal{},
                 "custom & per-head windows & causal"),
        executor);
  }
}

// ---- the checks can fail -----------------------------------------------------------------------

namespace {

// A mask with one classic bug: its predicate (what the reference applies) is right, but the
// kernel is told something else — a partial tile claimed full (its hidden keys leak in) or empty
// (its visible keys are lost), or a run enumeration that loses or adds one key per run.
enum class mask_bug { partial_as_full, partial_as_empty, run_loses_last_key, run_adds_a_key };

const char* bug_name(mask_bug bug) {
  switch (bug) {
    case mask_bug::partial_as_full:
      return "partial tiles classified full";
    case mask_bug::partial_as_empty:
      return "partial tiles classified empty";
    case mask_bug::run_loses_last_key:
      return "runs lose their last key";
    case mask_bug::run_adds_a_key:
      return "runs take one key too many";
  }
  return "?";
}

template <class M>
struct buggy_mask {
  M mask;
  mask_bug bug;

  attnkit::tile_kind classify(attnkit::position_range q, attnkit::position_range kv,
                              index_t h) const {
    const attnkit::tile_kind kind = mask.classify(q, kv, h);
    if (kind != attnkit::tile_kind::partial) return kind;
    if (bug == mask_bug::partial_as_full) return attnkit::tile_kind::full;
    if (bug == mask_bug::partial_as_empty) return attnkit::tile_kind::empty;
    return kind;
  }
  bool allows(index_t p, index_t j, index_t h) const { return mask.allows(p, j, h); }
  template <class F>
  void for_each_visible_run(index_t p, index_t h, attnkit::position_range kv, F&& visit) const {
    attnkit::detail::for_each_visible_run(mask, p, h, kv, [&](index_t begin, index_t end) {
      if (bug == mask_bug::run_loses_last_key) {
        if (end - 1 > begin) visit(begin, end - 1);
      } else if (bug == mask_bug::run_adds_a_key) {
        visit(begin, std::min(kv.end, end + 1));
      } else {
        visit(begin, end);
      }
    });
  }
};

}  // namespace

TEST_CASE("masked cpu: the masked checks catch a mask that misleads the kernel",
          "[cpu][masks][checker]") {
  // Each bug must make the verdict fail on prefill and on decode, for a window and for custom
  // bits: the harness compares with the reference, which applies allows() only.
  std::uint64_t seed = 13000;
  for (attention_case c : {shape(65, 65, 4, 2, 64), shape(1, 3000, 8, 2, 64)}) {
    c.seed = ++seed;
    const auto in = make_inputs<float, float>(c);
    const custom_bits bits = random_bits(c, 1, 1, 0.5, bit_pattern::runs, seed);
    for (mask_bug bug : {mask_bug::partial_as_full, mask_bug::partial_as_empty,
                         mask_bug::run_loses_last_key, mask_bug::run_adds_a_key}) {
      const std::string what = std::string(" with ") + bug_name(bug);
      const evaluation window = evaluate_with_mask<float>(
          c, in, cpu_masked{wide_executor()},
          any_mask(buggy_mask<sliding_window>{{100, 0, 4, 2}, bug}, "window" + what));
      const evaluation custom = evaluate_with_mask<float>(
          c, in, cpu_masked{wide_executor()},
          any_mask(buggy_mask<attnkit::custom>{bits.mask(), bug}, "custom bits" + what));
      INFO(window.label << what);
      CHECK_FALSE(window.ok());
      INFO(custom.label << what);
      CHECK_FALSE(custom.ok());
    }
  }
}
