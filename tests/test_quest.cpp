// Quest page selection (attention/quest.hpp): page bounds, the bound itself, and top-K selection,
// for every storage type of the bounds (page_bounds<float>, <half>, <bfloat16>).
//
//   * Directed rounding (core/directed_rounding.hpp): round_down / round_up / next_up / next_down
//     agree with a brute-force search of every finite and infinite half and bfloat16 value.
//   * page_bounds<B>::update (both backends) equals brute force bit for bit: the fp32 min rounded
//     toward -inf and the fp32 max toward +inf, for every key dtype x bounds dtype, odd page
//     sizes, a partial last page, strided keys and keys spanning subnormals to overflow. The
//     stored bounds are valid (min <= every key component of the page <= max, exactly) and tight
//     (the next representable B inward violates). Appending token by token (or in chunks), and
//     truncating, give exactly the bounds of a full rebuild.
//   * The bound bounds: every key's logit q·k (fp64) is <= U(its page) computed from the stored
//     bounds, with 16-bit bounds too, and the SIMD kernel's fp32 U is within its rounding model
//     of the fp64 U.
//   * Overflow: half bounds of keys past ±65504 are ±inf; a zero query component facing them
//     contributes 0 (no NaN), a non-zero one makes U = +inf; both backends agree.
//   * attnkit::cpu selects the same pages as backend::reference except where two pages' scores
//     are within the fp32 rounding model below (a near-tie at the cut may swap).
//   * Exact ties go to the lower page in both backends; the last page is always kept; GQA takes
//     the max over the group (and over query tokens), not the sum or the mean.
//   * top_pages >= pages keeps every page, and block_sparse attention over it equals full
//     attention; a sparse selection's block_sparse attention on the CPU matches the reference.
//   * Merged keys: a paged update records the view's marks; the page holding one competes with
//     its logit bound plus ln(count) under the options' scale and softcap, and both backends
//     select what a brute-force ranking of those logit bounds selects (uniform and per-head
//     lengths); merged_page::raise inverts the softcap to within 1e-9.
//   * Invalid arguments throw attnkit::error with the right message and change nothing.
#include <algorithm>
#include <attnkit/attention/quest.hpp>
#include <attnkit/attnkit.hpp>
#include <attnkit/core/directed_rounding.hpp>
#include <bit>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <limits>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "support/tensor.hpp"

using namespace attnkit_test;
using attnkit::block_layout;
using attnkit::page_bounds;
using attnkit::detail::next_down;
using attnkit::detail::next_up;
using attnkit::detail::round_down;
using attnkit::detail::round_up;

namespace {

const attnkit::backend::reference reference{};
constexpr float inf = std::numeric_limits<float>::infinity();

// CTAD with the defaulted storage type keeps `page_bounds b(...)` meaning fp32 bounds.
static_assert(std::is_same_v<decltype(page_bounds(4, 1, 8, 8)), page_bounds<float>>);

template <class B>
std::uint32_t bits_of(B x) {
  return attnkit::detail::storage_bits(x);
}

// The stored bounds of every (head, page), min rows then max rows, head_dim values each, as their
// bits, plus the token count: for bit-exact comparisons and "nothing changed" checks.
template <class B>
std::vector<std::uint64_t> snapshot(const page_bounds<B>& b) {
  std::vector<std::uint64_t> out;
  out.push_back(static_cast<std::uint64_t>(b.tokens()));
  for (index_t h = 0; h < b.kv_heads(); ++h)
    for (index_t p = 0; p < b.pages(); ++p) {
      for (index_t c = 0; c < b.head_dim(); ++c) out.push_back(bits_of(b.min(h, p)[c]));
      for (index_t c = 0; c < b.head_dim(); ++c) out.push_back(bits_of(b.max(h, p)[c]));
    }
  return out;
}

// Brute force: the fp32 min and max over the page's keys of every (head, page, column), rounded
// outward, compared bit for bit; then, independently of the rounding functions' own code, that
// the stored values are valid bounds of every key (exact comparisons in fp32, where every key
// and bound is exact) and tight (one step of B inward and some key escapes). The padding lanes
// of every row must be zero (the SIMD bound relies on it).
template <class B, class T>
void check_bounds_exact(const page_bounds<B>& b, const tensor3<T>& k) {
  const auto kv = k.cview();
  const index_t n = kv.extent(0);
  REQUIRE(b.tokens() == n);
  REQUIRE(b.pages() == (n + b.page_size() - 1) / b.page_size());
  index_t wrong = 0, invalid = 0, loose = 0, padding = 0;
  for (index_t h = 0; h < b.kv_heads(); ++h)
    for (index_t p = 0; p < b.pages(); ++p) {
      const index_t first = p * b.page_size(), last = std::min(n, (p + 1) * b.page_size());
      for (index_t c = 0; c < b.head_dim(); ++c) {
        float mn = inf;
        float mx = -inf;
        for (index_t t = first; t < last; ++t) {
          mn = std::min(mn, attnkit::to_float(kv(t, h, c)));
          mx = std::max(mx, attnkit::to_float(kv(t, h, c)));
        }
        const B lo = b.min(h, p)[c], hi = b.max(h, p)[c];
        // (A zero bound is stored as +0, whatever zeros the keys held.)
        if (bits_of(lo) != bits_of(round_down<B>(mn + 0.0f)) ||
            bits_of(hi) != bits_of(round_up<B>(mx + 0.0f)))
          ++wrong;
        for (index_t t = first; t < last; ++t) {
          const float x = attnkit::to_float(kv(t, h, c));
          if (!(attnkit::to_float(lo) <= x && x <= attnkit::to_float(hi))) ++invalid;
        }
        if (!(attnkit::to_float(next_up(lo)) > mn) || !(attnkit::to_float(next_down(hi)) < mx))
          ++loose;
      }
      for (index_t c = b.head_dim(); c < b.padded_head_dim(); ++c)
        if (bits_of(b.min(h, p)[c]) != 0 || bits_of(b.max(h, p)[c]) != 0) ++padding;
    }
  CHECK(wrong == 0);
  CHECK(invalid == 0);
  CHECK(loose == 0);
  CHECK(padding == 0);
}

// Contiguous view of the first n tokens of k (same strides).
template <class T>
tensor_view<const T, 3> prefix(const tensor3<T>& k, index_t n) {
  return {k.cview().data(), {n, k.extents[1], k.extents[2]}, k.strides};
}

// fp64 U(page) for query row (t, h) from the stored bounds, and Σ|terms| (its rounding scale).
// A zero query component contributes 0 (the selection's convention for infinite bounds).
template <class B, class TQ>
void bound64(const page_bounds<B>& b, tensor_view<const TQ, 3> q, index_t t, index_t h,
             index_t kv_h, index_t p, double& u, double& magnitude) {
  u = 0.0;
  magnitude = 0.0;
  for (index_t c = 0; c < b.head_dim(); ++c) {
    const double x = attnkit::to_float(q(t, h, c));
    if (x == 0.0) continue;
    const double lo = x * double(attnkit::to_float(b.min(kv_h, p)[c]));
    const double hi = x * double(attnkit::to_float(b.max(kv_h, p)[c]));
    u += std::max(lo, hi);
    magnitude += std::max(std::fabs(lo), std::fabs(hi));
  }
}

// Scores as the selection defines them (max over the group's heads and the query tokens), in
// fp64, and a bound on the SIMD kernel's fp32 error for each: the kernel sums 2·head_dim products
// (of exact fp32 values: 16-bit bounds widen exactly) with fused multiply-adds in two chains plus
// a horizontal add, so by the standard summation bound its error is at most about
// (2·head_dim)·2^-24·Σ|terms|; we allow 4·head_dim·2^-24·Σ|terms| (2x margin). The max over rows
// does not round.
template <class B, class TQ>
void scores64(const page_bounds<B>& b, tensor_view<const TQ, 3> q, index_t kv_h,
              std::vector<double>& score, std::vector<double>& tolerance) {
  const index_t group = q.extent(1) / b.kv_heads();
  score.assign(static_cast<std::size_t>(b.pages()), -std::numeric_limits<double>::infinity());
  tolerance.assign(static_cast<std::size_t>(b.pages()), 0.0);
  for (index_t p = 0; p < b.pages(); ++p)
    for (index_t t = 0; t < q.extent(0); ++t)
      for (index_t g = 0; g < group; ++g) {
        double u, magnitude;
        bound64(b, q, t, kv_h * group + g, kv_h, p, u, magnitude);
        auto i = static_cast<std::size_t>(p);
        score[i] = std::max(score[i], u);
        tolerance[i] = std::max(tolerance[i], 4.0 * double(b.head_dim()) * 0x1p-24 * magnitude);
      }
}

// The SIMD kernel's fp32 score of page p for the single query row (t, h), from the sign-split
// staging the selection uses (rows padded to padded_head_dim() floats, 64-byte aligned).
template <class B>
float simd_row_score(const page_bounds<B>& b, tensor_view<const float, 3> q, index_t t, index_t h,
                     index_t kv_h, index_t p) {
  const auto rows = attnkit::detail::page_bounds_access::rows(b);
  REQUIRE(rows.padded_dim <= 128);
  alignas(64) float staged[2 * 128] = {};
  for (index_t c = 0; c < b.head_dim(); ++c) {
    staged[c] = std::max(q(t, h, c), 0.0f);
    staged[rows.padded_dim + c] = std::min(q(t, h, c), 0.0f);
  }
  return attnkit::detail::simd::page_score<xsimd::default_arch>(rows.min_row(kv_h, p), staged, 1,
                                                                rows.padded_dim);
}

std::vector<index_t> row_of(const block_layout& layout, index_t h) {
  const auto r = layout.row(h, 0);
  return {r.begin(), r.end()};
}

// Every non-NaN value of a 16-bit type, widened, sorted ascending (-0 and +0 both present).
template <class B>
std::vector<float> all_values() {
  std::vector<float> values;
  for (std::uint32_t bits = 0; bits <= 0xFFFFu; ++bits) {
    const float x = attnkit::to_float(B::from_bits(static_cast<std::uint16_t>(bits)));
    if (!std::isnan(x)) values.push_back(x);
  }
  std::sort(values.begin(), values.end());
  return values;
}

}  // namespace

TEMPLATE_TEST_CASE("directed rounding: round_down / round_up are the nearest T on the right side",
                   "[quest][rounding]", half, bfloat16) {
  using B = TestType;
  const std::vector<float> values = all_values<B>();

  // next_up / next_down step to the neighbouring value, across zero and to the infinities.
  index_t wrong_steps = 0;
  for (std::uint32_t bits = 0; bits <= 0xFFFFu; ++bits) {
    const B x = B::from_bits(static_cast<std::uint16_t>(bits));
    const float v = attnkit::to_float(x);
    if (std::isnan(v)) continue;
    const auto above = std::upper_bound(values.begin(), values.end(), v);
    const auto below = std::lower_bound(values.begin(), values.end(), v);
    const float up = above == values.end() ? inf : *above;
    const float down = below == values.begin() ? -inf : *(below - 1);
    if (attnkit::to_float(next_up(x)) != up || attnkit::to_float(next_down(x)) != down)
      ++wrong_steps;
  }
  CHECK(wrong_steps == 0);

  // Inputs: every B value, its fp32 neighbours (the cases RNE rounds the wrong way), midpoints
  // between B values (RNE ties), fp32 edge cases and random fp32 bit patterns.
  std::vector<float> inputs = {0.0f,
                               -0.0f,
                               1e-30f,
                               -1e-30f,
                               1e-40f,
                               -1e-40f,
                               65504.f,
                               -65504.f,
                               65505.f,
                               -65505.f,
                               65519.f,
                               65520.f,
                               -65520.f,
                               1e5f,
                               -1e5f,
                               3.39e38f,
                               -3.39e38f,
                               std::numeric_limits<float>::max(),
                               -std::numeric_limits<float>::max(),
                               inf,
                               -inf};
  for (std::size_t i = 0; i < values.size(); ++i) {
    const float v = values[i];
    inputs.push_back(v);
    inputs.push_back(std::nextafter(v, inf));
    inputs.push_back(std::nextafter(v, -inf));
    if (i + 1 < values.size() && std::isfinite(values[i + 1]) && std::isfinite(v))
      inputs.push_back(v + (values[i + 1] - v) / 2.0f);
  }
  rng r(17);
  for (int i = 0; i < 20000; ++i) {
    const float x = std::bit_cast<float>(static_cast<std::uint32_t>(r.next_u64()));
    if (!std::isnan(x)) inputs.push_back(x);
  }

  index_t wrong = 0;
  for (const float x : inputs) {
    // Largest value <= x and smallest >= x, by search of the sorted table.
    const float down = *(std::upper_bound(values.begin(), values.end(), x) - 1);
    const float up = *std::lower_bound(values.begin(), values.end(), x);
    const float d = attnkit::to_float(round_down<B>(x)), u = attnkit::to_float(round_up<B>(x));
    if (d != down || u != up) {
      ++wrong;
      UNSCOPED_INFO("x " << x << ": down " << d << " (want " << down << "), up " << u << " (want "
                         << up << ")");
    }
    // The sign of a zero survives (round_down(-tiny) is the negative subnormal, not -0).
    if (x == 0.0f && (std::signbit(d) != std::signbit(x) || std::signbit(u) != std::signbit(x)))
      ++wrong;
  }
  CHECK(wrong == 0);

  // NaN stays NaN; fp32 rounding is the identity; the functions are constant-evaluable.
  CHECK(std::isnan(attnkit::to_float(round_down<B>(std::numeric_limits<float>::quiet_NaN()))));
  CHECK(std::isnan(attnkit::to_float(round_up<B>(-std::numeric_limits<float>::quiet_NaN()))));
  CHECK(round_down<float>(0.1f) == 0.1f);
  CHECK(round_up<float>(-0.1f) == -0.1f);
  CHECK(next_up(1.0f) == std::nextafter(1.0f, 2.0f));
  CHECK(next_down(-0.0f) == -std::numeric_limits<float>::denorm_min());
  static_assert(attnkit::to_float(round_down<half>(0.1f)) < 0.1f);
  static_assert(attnkit::to_float(round_up<half>(0.1f)) > 0.1f);
  static_assert(attnkit::to_float(round_up<half>(65505.0f)) == inf);
  static_assert(attnkit::to_float(round_down<half>(65505.0f)) == 65504.0f);
}

namespace {

template <class K, class B>
struct key_and_bounds {
  using key = K;
  using bounds = B;
};

using key_bounds_types = std::tuple<key_and_bounds<float, float>, key_and_bounds<float, half>,
                                    key_and_bounds<float, bfloat16>, key_and_bounds<half, float>,
                                    key_and_bounds<half, half>, key_and_bounds<half, bfloat16>,
                                    key_and_bounds<bfloat16, float>, key_and_bounds<bfloat16, half>,
                                    key_and_bounds<bfloat16, bfloat16>>;

}  // namespace

TEMPLATE_LIST_TEST_CASE("page_bounds: update equals brute-force min/max exactly, rounded outward",
                        "[quest]", key_bounds_types) {
  using T = typename TestType::key;
  using B = typename TestType::bounds;
  INFO("keys " << dtype_name<T> << ", bounds " << dtype_name<B>);
  struct config {
    index_t page, tokens, heads, dim;
    layout mem;
    bool wide;  // keys N(0,1)·2^e, e uniform in [-30, 20]: subnormals to half overflow
  };
  const config configs[] = {
      {16, 100, 2, 64, layout::contiguous, false},  // partial last page (100 = 6·16 + 4)
      {1, 9, 3, 5, layout::contiguous, false},      // one token per page, dim below a vector
      {3, 31, 2, 37, layout::padded, false},        // odd page size, dim tail after full vectors
      {17, 17, 1, 128, layout::bhsd, false},        // exactly one full page
      {5, 23, 2, 24, layout::dim_strided, false},   // head_dim stride 2: the scalar path
      {7, 50, 2, 16, layout::broadcast_heads, false},
      {4, 64, 2, 70, layout::contiguous, true},  // vector path + tail on extreme magnitudes
      {1, 40, 1, 48, layout::contiguous, true},  // single-key pages: min = max = the key
  };
  for (const config& cf : configs) {
    DYNAMIC_SECTION("page " << cf.page << " tokens " << cf.tokens << " heads " << cf.heads
                            << " dim " << cf.dim << " " << layout_name(cf.mem)
                            << (cf.wide ? " wide range" : "")) {
      auto k = make_tensor3<T>(cf.tokens, cf.heads, cf.dim, cf.mem);
      if (cf.wide) {
        rng r(13 + cf.page);
        // Finite keys (fp16 keys stop at ±65504), and exact zeros of both signs now and then.
        const double largest = std::is_same_v<T, half> ? 65504.0 : 1e30;
        fill_with(k, [&](const auto&) {
          const double x = r.normal() * std::ldexp(1.0, static_cast<int>(r.integer(-30, 20)));
          if (r.integer(0, 15) == 0) return x < 0 ? -0.0 : 0.0;
          return std::clamp(x, -largest, largest);
        });
      } else {
        fill_normal(k, 11 + cf.page);
      }
      page_bounds<B> fast(cf.page, cf.heads, cf.dim, cf.tokens + 9);
      page_bounds<B> oracle(cf.page, cf.heads, cf.dim, cf.tokens + 9);
      fast.update(attnkit::cpu, k.cview());
      oracle.update(reference, k.cview());
      check_bounds_exact(fast, k);
      check_bounds_exact(oracle, k);

      // One token per step, as a decode loop does: bit-identical to the full build.
      page_bounds<B> stepped(cf.page, cf.heads, cf.dim, cf.tokens);
      for (index_t n = 1; n <= cf.tokens; ++n) stepped.update(attnkit::cpu, prefix(k, n), n - 1);
      CHECK(snapshot(stepped) == snapshot(fast));

      // Uneven chunks (a prefill, then several tokens at once) on a serial executor.
      page_bounds<B> chunked(cf.page, cf.heads, cf.dim, cf.tokens);
      index_t done = 0;
      for (index_t step = 1; done < cf.tokens; step += 2) {
        const index_t next = std::min(cf.tokens, done + step);
        chunked.update(attnkit::cpu, prefix(k, next), done, attnkit::parallel::serial{});
        done = next;
      }
      CHECK(snapshot(chunked) == snapshot(fast));

      // Rollback: truncating to fewer tokens equals building the shorter cache from scratch.
      const index_t shorter = cf.tokens * 2 / 3;
      page_bounds<B> rolled(cf.page, cf.heads, cf.dim, cf.tokens);
      rolled.update(attnkit::cpu, k.cview());
      rolled.update(attnkit::cpu, prefix(k, shorter), shorter);
      page_bounds<B> direct(cf.page, cf.heads, cf.dim, cf.tokens);
      direct.update(reference, prefix(k, shorter));
      CHECK(snapshot(rolled) == snapshot(direct));
    }
  }
}

TEMPLATE_TEST_CASE("page_bounds: rows are padded to 64 bytes of T and 64-byte aligned", "[quest]",
                   float, half, bfloat16) {
  using B = TestType;
  constexpr index_t per_line = 64 / index_t{sizeof(B)};
  for (const index_t dim : {index_t{1}, index_t{16}, index_t{40}, index_t{128}, index_t{129}}) {
    page_bounds<B> b(16, 3, dim, 100);
    auto k = make_tensor3<float>(100, 3, dim);
    fill_normal(k, 3);
    b.update(attnkit::cpu, k.cview());
    CHECK(b.padded_head_dim() == (dim + per_line - 1) / per_line * per_line);
    index_t misaligned = 0;
    for (index_t h = 0; h < 3; ++h)
      for (index_t p = 0; p < b.pages(); ++p)
        if (reinterpret_cast<std::uintptr_t>(b.min(h, p)) % 64 != 0 ||
            reinterpret_cast<std::uintptr_t>(b.max(h, p)) % 64 != 0)
          ++misaligned;
    CHECK(misaligned == 0);
    CHECK(b.max(0, 0) == b.min(0, 0) + b.padded_head_dim());
  }
}

TEMPLATE_TEST_CASE("page_bounds: a large build runs on the pool and equals the reference",
                   "[quest]", float, half, bfloat16) {
  using B = TestType;
  // 4 heads × 4096 tokens × 64 = 1M elements: above the parallel threshold. fp32 keys, so that
  // 16-bit bounds round.
  auto k = make_tensor3<float>(4096, 4, 64);
  fill_normal(k, 5);
  page_bounds<B> fast(16, 4, 64, 4096), oracle(16, 4, 64, 4096);
  fast.update(attnkit::cpu, k.cview());
  oracle.update(reference, k.cview());
  CHECK(snapshot(fast) == snapshot(oracle));
  check_bounds_exact(fast, k);
}

namespace {

// Every key's fp64 logit against U(its page) from the stored bounds, and the SIMD kernel's fp32
// U of each single query row against the fp64 one.
template <class B, class TK>
void check_bound_property(std::uint64_t seed) {
  const index_t page = 16, n = 200, kv_heads = 2, group = 3, dim = 40, q_tokens = 2;
  auto k = make_tensor3<TK>(n, kv_heads, dim);
  auto q = make_tensor3<float>(q_tokens, kv_heads * group, dim);
  fill_normal(k, seed);
  fill_normal(q, seed + 1, 2.0);
  page_bounds<B> b(page, kv_heads, dim, n);
  b.update(attnkit::cpu, k.cview());
  const auto qv = q.cview();
  const auto kv = k.cview();
  index_t violations = 0, simd_off = 0;
  for (index_t h = 0; h < kv_heads * group; ++h) {
    const index_t kv_h = h / group;
    for (index_t t = 0; t < q_tokens; ++t)
      for (index_t p = 0; p < b.pages(); ++p) {
        double u, magnitude;
        bound64(b, qv, t, h, kv_h, p, u, magnitude);
        // fp64 sums of exact fp32·fp32 products: the slack covers fp64 rounding only.
        const double slack = 1e-12 * magnitude;
        for (index_t j = p * page; j < std::min(n, (p + 1) * page); ++j) {
          double logit = 0.0;
          for (index_t c = 0; c < dim; ++c)
            logit +=
                double(attnkit::to_float(qv(t, h, c))) * double(attnkit::to_float(kv(j, kv_h, c)));
          if (logit > u + slack) ++violations;
        }
        const float fast = simd_row_score(b, qv, t, h, kv_h, p);
        if (std::fabs(double(fast) - u) > 4.0 * dim * 0x1p-24 * magnitude) ++simd_off;
      }
  }
  CHECK(violations == 0);
  CHECK(simd_off == 0);
}

}  // namespace

TEMPLATE_TEST_CASE("quest bound: every key's logit is at most U(its page)", "[quest]", float, half,
                   bfloat16) {
  using B = TestType;
  SECTION("fp16 keys") { check_bound_property<B, half>(21); }
  SECTION("fp32 keys (16-bit bounds round outward)") { check_bound_property<B, float>(23); }
  SECTION("bf16 keys") { check_bound_property<B, bfloat16>(25); }
}

TEST_CASE("quest: half bounds overflow to ±inf and the score stays a number", "[quest]") {
  // One KV head, d 4, pages of 2 tokens, 6 pages. Column 0 of page 1 holds 70000 (max -> +inf),
  // column 1 of page 3 holds -70000 (min -> -inf); page 4 has both; every other key is in
  // [-1, 1]. A query that is zero in columns 0 and 1 must see finite scores (0·inf = 0): the
  // pages rank by columns 2 and 3 only. A query with q_0 > 0 makes pages 1 and 4 +inf; one with
  // q_1 < 0 makes pages 3 and 4 +inf; ties among +inf pages go to the lower page.
  const index_t page = 2, pages = 6, dim = 4, n = page * pages;
  auto k = make_tensor3<float>(n, 1, dim);
  fill_with(k, [&](const auto& at) {
    const index_t t = at[0], p = t / page, c = at[2];
    if ((p == 1 || p == 4) && c == 0 && t % page == 0) return 70000.0;
    if ((p == 3 || p == 4) && c == 1 && t % page == 1) return -70000.0;
    return 0.1 * double((t * 7 + c * 3) % 11) - 0.5;
  });
  page_bounds<half> b(page, 1, dim, n);
  b.update(attnkit::cpu, k.cview());
  page_bounds<half> oracle(page, 1, dim, n);
  oracle.update(reference, k.cview());
  CHECK(snapshot(b) == snapshot(oracle));
  check_bounds_exact(b, k);
  CHECK(attnkit::to_float(b.max(0, 1)[0]) == inf);
  CHECK(attnkit::to_float(b.min(0, 3)[1]) == -inf);
  CHECK(attnkit::to_float(b.max(0, 4)[0]) == inf);
  CHECK(attnkit::to_float(b.min(0, 4)[1]) == -inf);
  // Directed rounding never produces the wrong infinity: min stays finite on the + side.
  CHECK(attnkit::to_float(b.min(0, 1)[0]) < 1.0f);
  CHECK(attnkit::to_float(b.max(0, 3)[1]) > -1.0f);

  // An fp32 copy of the same keys: the finite columns' scores must match the half bounds'.
  page_bounds<float> exact(page, 1, dim, n);
  exact.update(attnkit::cpu, k.cview());

  auto query = [](double q0, double q1, double q2, double q3) {
    auto q = make_tensor3<float>(1, 1, 4);
    const double values[4] = {q0, q1, q2, q3};
    fill_with(q, [&](const auto& at) { return values[at[2]]; });
    return q;
  };
  SECTION("zero query components facing infinite bounds contribute 0") {
    for (const double zero : {0.0, -0.0}) {
      const auto q = query(zero, zero, 1.0, -0.5);
      const auto qv = q.cview();
      std::vector<double> score, tolerance, score32, tolerance32;
      scores64(b, qv, 0, score, tolerance);
      scores64(exact, qv, 0, score32, tolerance32);
      for (index_t p = 0; p < pages; ++p) {
        INFO("page " << p);
        const float fast = simd_row_score(b, qv, 0, 0, 0, p);
        CHECK(std::isfinite(fast));
        CHECK(std::isfinite(score[static_cast<std::size_t>(p)]));
        // Columns 2 and 3 hold keys in [-0.5, 0.5] on a 0.1 grid, whose half bounds are within
        // 2^-11 relative of the fp32 ones: the scores agree to 1e-3.
        CHECK(std::fabs(double(fast) - score32[static_cast<std::size_t>(p)]) <= 1e-3);
      }
      block_layout fast_layout, oracle_layout;
      attnkit::quest_select(attnkit::cpu, qv, b, 3, fast_layout);
      attnkit::quest_select(reference, qv, b, 3, oracle_layout);
      CHECK(row_of(fast_layout, 0) == row_of(oracle_layout, 0));
    }
  }
  SECTION("a non-zero component facing an infinite bound makes U = +inf") {
    struct expectation {
      double q0, q1;
      std::vector<index_t> infinite;  // pages whose U is +inf
      std::vector<index_t> top3;      // the two best of pages 0..4, plus page 5
    };
    const expectation cases[] = {
        {0.25, 0.0, {1, 4}, {1, 4, 5}},
        {0.0, -0.25, {3, 4}, {3, 4, 5}},
        {1.0, -1.0, {1, 3, 4}, {1, 3, 5}},  // three +inf pages: the lower two
    };
    for (const auto& e : cases) {
      INFO("q0 " << e.q0 << " q1 " << e.q1);
      const auto q = query(e.q0, e.q1, 1.0, -0.5);
      const auto qv = q.cview();
      std::vector<double> score, tolerance;
      scores64(b, qv, 0, score, tolerance);
      for (index_t p = 0; p < pages; ++p) {
        INFO("page " << p);
        const bool infinite = std::count(e.infinite.begin(), e.infinite.end(), p) != 0;
        const float fast = simd_row_score(b, qv, 0, 0, 0, p);
        CHECK((fast == inf) == infinite);
        CHECK((score[static_cast<std::size_t>(p)] == double(inf)) == infinite);
        CHECK(!std::isnan(fast));
      }
      block_layout fast_layout, oracle_layout;
      attnkit::quest_select(attnkit::cpu, qv, b, 3, fast_layout);
      attnkit::quest_select(reference, qv, b, 3, oracle_layout);
      CHECK(row_of(fast_layout, 0) == e.top3);
      CHECK(row_of(oracle_layout, 0) == e.top3);
    }
  }
}

TEST_CASE("quest: bfloat16 bounds overflow only past fp32's largest bfloat16", "[quest]") {
  // bfloat16's largest finite value is 0x7F7F = 3.3895e38; fp32 keys above it round up to +inf
  // (max) and below its negative to -inf (min), keys at it stay finite.
  const float largest = attnkit::to_float(bfloat16::from_bits(0x7F7Fu));
  auto k = make_tensor3<float>(4, 1, 3);
  const double values[4][3] = {{largest, -largest, 1.0},
                               {std::numeric_limits<float>::max(), 0.0, 2.0},
                               {0.0, -std::numeric_limits<float>::max(), 3.0},
                               {1.0, 1.0, 4.0}};
  fill_with(k, [&](const auto& at) { return values[at[0]][at[2]]; });
  page_bounds<bfloat16> b(1, 1, 3, 4);
  b.update(attnkit::cpu, k.cview());
  check_bounds_exact(b, k);
  CHECK(attnkit::to_float(b.max(0, 0)[0]) == largest);
  CHECK(attnkit::to_float(b.min(0, 0)[1]) == -largest);
  CHECK(attnkit::to_float(b.max(0, 1)[0]) == inf);
  CHECK(attnkit::to_float(b.min(0, 2)[1]) == -inf);
}

namespace {

// Selects with both backends and checks: rows sorted, the last page present, `kept` entries, the
// layout's shape, and the SIMD pages equal to the reference pages up to near-ties.
template <class B, class TQ, class TK>
void check_selection(index_t page, index_t n, index_t kv_heads, index_t group, index_t dim,
                     index_t q_tokens, index_t top, std::uint64_t seed) {
  auto k = make_tensor3<TK>(n, kv_heads, dim);
  auto q = make_tensor3<TQ>(q_tokens, kv_heads * group, dim);
  fill_normal(k, seed);
  fill_normal(q, seed + 1);
  page_bounds<B> b(page, kv_heads, dim, n);
  b.update(attnkit::cpu, k.cview());
  block_layout fast, oracle;
  attnkit::quest_select(attnkit::cpu, q.cview(), b, top, fast);
  attnkit::quest_select(reference, q.cview(), b, top, oracle);

  const index_t pages = b.pages();
  const index_t kept = std::min(top, pages);
  const auto& shape = fast.shape();
  CHECK(shape.key_block == page);
  CHECK(shape.key_blocks == pages);
  CHECK(shape.layouts == kv_heads);
  CHECK(shape.query_heads_per_layout == group);
  CHECK(shape.query_blocks == 1);
  CHECK(shape.query_block == std::max<index_t>(1, q_tokens));
  CHECK(shape.first_position == n - q_tokens);
  CHECK(fast.nonzero_blocks() == kv_heads * kept);

  index_t swaps = 0, bad_swaps = 0;
  for (index_t h = 0; h < kv_heads; ++h) {
    const auto f = row_of(fast, h), o = row_of(oracle, h);
    REQUIRE(static_cast<index_t>(f.size()) == kept);
    REQUIRE(static_cast<index_t>(o.size()) == kept);
    CHECK(f.back() == pages - 1);
    CHECK(o.back() == pages - 1);
    CHECK(std::is_sorted(f.begin(), f.end()));
    if (f == o) continue;
    std::vector<double> score, tolerance;
    scores64(b, q.cview(), h, score, tolerance);
    std::vector<index_t> only_fast, only_oracle;
    std::set_difference(f.begin(), f.end(), o.begin(), o.end(), std::back_inserter(only_fast));
    std::set_difference(o.begin(), o.end(), f.begin(), f.end(), std::back_inserter(only_oracle));
    for (index_t a : only_fast)
      for (index_t r : only_oracle) {
        ++swaps;
        const auto ia = static_cast<std::size_t>(a), ir = static_cast<std::size_t>(r);
        if (std::fabs(score[ia] - score[ir]) > tolerance[ia] + tolerance[ir]) ++bad_swaps;
      }
  }
  INFO("pages " << pages << " kept " << kept << " near-tie swaps " << swaps);
  CHECK(bad_swaps == 0);
}

}  // namespace

TEMPLATE_TEST_CASE("quest_select: SIMD selection equals the reference up to near-ties", "[quest]",
                   float, half, bfloat16) {
  using B = TestType;
  SECTION("decode, GQA 4, d 128, fp32 q over fp16 keys") {
    for (index_t top : {1, 2, 5, 64, 255, 256, 1000})
      check_selection<B, float, half>(16, 4000, 2, 4, 128, 1, top, 100 + top);
  }
  SECTION("MQA, odd page and dim, several query tokens, fp32 keys") {
    for (index_t top : {1, 3, 20}) check_selection<B, float, float>(7, 300, 1, 5, 37, 3, top, 7);
  }
  SECTION("16-bit queries, MHA, partial last page") {
    for (index_t top : {2, 9}) {
      check_selection<B, half, half>(16, 250, 3, 1, 64, 1, top, 31);
      check_selection<B, bfloat16, bfloat16>(16, 250, 3, 1, 64, 1, top, 37);
    }
  }
  SECTION("no query tokens: every score is -inf, ties keep the lowest pages") {
    check_selection<B, float, float>(4, 40, 2, 2, 16, 0, 3, 9);
  }
  SECTION("every query row of a page score: q_tokens x group above one row block") {
    check_selection<B, float, bfloat16>(8, 512, 2, 3, 96, 3, 10, 51);  // 9 rows: 4 + 4 + 1
  }
}

TEMPLATE_TEST_CASE("quest_select: exact ties go to the lower page in both backends", "[quest]",
                   float, half, bfloat16) {
  using B = TestType;
  // Pages repeat with period 3 (page p holds the keys of page p % 3), so every score appears on
  // many pages, bit-identical in fp32 as in fp64.
  const index_t page = 4, pages = 30, dim = 16, n = page * pages;
  auto base = make_tensor3<float>(3 * page, 1, dim);
  fill_normal(base, 3);
  auto k = make_tensor3<float>(n, 1, dim);
  fill_with(k, [&](const auto& at) { return base.cview()(at[0] % (3 * page), 0, at[2]); });
  auto q = make_tensor3<float>(1, 2, dim);
  fill_normal(q, 4);
  page_bounds<B> b(page, 1, dim, n);
  b.update(attnkit::cpu, k.cview());
  std::vector<double> score, tolerance;
  scores64(b, q.cview(), 0, score, tolerance);
  // Expected: stable order by score among pages 0..pages-2, first top-1, plus the last.
  std::vector<index_t> order(static_cast<std::size_t>(pages - 1));
  for (index_t i = 0; i < pages - 1; ++i) order[static_cast<std::size_t>(i)] = i;
  std::stable_sort(order.begin(), order.end(), [&](index_t a, index_t c) {
    return score[static_cast<std::size_t>(a)] > score[static_cast<std::size_t>(c)];
  });
  for (index_t top : {1, 4, 10, 11, 15, 29}) {
    std::vector<index_t> expected(order.begin(), order.begin() + (top - 1));
    expected.push_back(pages - 1);
    std::sort(expected.begin(), expected.end());
    block_layout fast, oracle;
    attnkit::quest_select(attnkit::cpu, q.cview(), b, top, fast);
    attnkit::quest_select(reference, q.cview(), b, top, oracle);
    INFO("top " << top);
    CHECK(row_of(fast, 0) == expected);
    CHECK(row_of(oracle, 0) == expected);
  }
}

TEMPLATE_TEST_CASE("quest_select: the last page is always kept", "[quest]", float, half, bfloat16) {
  using B = TestType;
  // q = all ones; every page's keys are +1 except the last page's, -10: the last page has by far
  // the lowest bound, and is kept anyway.
  const index_t page = 16, n = 16 * 9 + 3, dim = 32;
  auto k = make_tensor3<half>(n, 2, dim);
  fill_with(k, [&](const auto& at) { return at[0] >= 16 * 9 ? -10.0 : 1.0 + 0.01 * at[0]; });
  auto q = make_tensor3<float>(1, 2, dim);
  fill_with(q, [](const auto&) { return 1.0; });
  page_bounds<B> b(page, 2, dim, n);
  b.update(attnkit::cpu, k.cview());
  for (const bool simd : {true, false}) {
    block_layout layout;
    auto select = [&](index_t top) {
      if (simd)
        attnkit::quest_select(attnkit::cpu, q.cview(), b, top, layout);
      else
        attnkit::quest_select(reference, q.cview(), b, top, layout);
    };
    select(1);
    CHECK(row_of(layout, 0) == std::vector<index_t>{9});
    CHECK(row_of(layout, 1) == std::vector<index_t>{9});
    select(3);  // keys grow with the token index: pages 8 and 7 bound highest
    CHECK(row_of(layout, 0) == std::vector<index_t>{7, 8, 9});
  }
}

TEMPLATE_TEST_CASE("quest_select: GQA scores a page by the max over the group and the query tokens",
                   "[quest]", float, half, bfloat16) {
  using B = TestType;
  // Pages (4 tokens, d 4) are zero except: page 2 keys 5·e0, page 5 keys 10·e1, page 7 keys
  // 4·e0 + 4·e1. The queries are e0, e1 and e2 (as three heads of one group, or as three tokens
  // of one head), so U is  page 2: (5, 0, 0)  page 5: (0, 10, 0)  page 7: (4, 4, 0), else 0.
  // Max: page 5 (10) > page 2 (5) > page 7 (4); the sum (or mean) would rank page 7 (8) above
  // page 2 (5). top 3 = the two best of pages 0..8 plus the last page: {2, 5, 9} under max.
  // (Every value is exact in every storage type.)
  const index_t page = 4, pages = 10, dim = 4, n = page * pages;
  auto k = make_tensor3<float>(n, 1, dim);
  fill_with(k, [&](const auto& at) {
    const index_t p = at[0] / page, c = at[2];
    if (p == 2) return c == 0 ? 5.0 : 0.0;
    if (p == 5) return c == 1 ? 10.0 : 0.0;
    if (p == 7) return c <= 1 ? 4.0 : 0.0;
    return 0.0;
  });
  page_bounds<B> b(page, 1, dim, n);
  b.update(attnkit::cpu, k.cview());

  auto one_hot = [](index_t tokens, index_t heads, auto hot) {
    auto q = make_tensor3<float>(tokens, heads, 4);
    fill_with(q, [&](const auto& at) { return hot(at[0], at[1]) == at[2] ? 1.0 : 0.0; });
    return q;
  };
  // Group of three heads in one token; then the same queries as three tokens of one head.
  auto heads = one_hot(1, 3, [](index_t, index_t h) { return h; });   // e0, e1, e2
  auto tokens = one_hot(3, 1, [](index_t t, index_t) { return t; });  // e0, e1, e2
  for (const bool simd : {true, false})
    for (auto* q : {&heads, &tokens}) {
      block_layout layout;
      if (simd)
        attnkit::quest_select(attnkit::cpu, q->cview(), b, 3, layout);
      else
        attnkit::quest_select(reference, q->cview(), b, 3, layout);
      INFO((simd ? "cpu" : "reference") << (q == &heads ? ", group of 3" : ", 3 tokens"));
      CHECK(row_of(layout, 0) == std::vector<index_t>{2, 5, 9});
    }
}

TEMPLATE_TEST_CASE(
    "quest_select: top_pages >= pages keeps every page; block_sparse then equals full", "[quest]",
    float, half, bfloat16) {
  using B = TestType;
  const index_t page = 16, n = 16 * 20 + 5, kv_heads = 2, group = 4, dim = 64;
  auto q = make_tensor3<float>(1, kv_heads * group, dim);
  auto k = make_tensor3<half>(n, kv_heads, dim);
  auto v = make_tensor3<half>(n, kv_heads, dim);
  fill_normal(q, 61);
  fill_normal(k, 62);
  fill_normal(v, 63);
  page_bounds<B> b(page, kv_heads, dim, n);
  b.update(attnkit::cpu, k.cview());
  std::vector<index_t> all(static_cast<std::size_t>(b.pages()));
  for (index_t p = 0; p < b.pages(); ++p) all[static_cast<std::size_t>(p)] = p;
  block_layout layout;
  for (index_t top : {b.pages(), b.pages() + 1, index_t{1} << 40}) {
    attnkit::quest_select(attnkit::cpu, q.cview(), b, top, layout);
    for (index_t h = 0; h < kv_heads; ++h) CHECK(row_of(layout, h) == all);
    CHECK(layout.density() == 1.0);
  }

  auto run = [&](const auto& backend, const auto& mask) {
    auto out = make_tensor3<float>(1, kv_heads * group, dim);
    attnkit::attention(backend, q.cview(), k.cview(), v.cview(), out.view(), mask);
    return out.storage;
  };
  const attnkit::block_sparse sparse{layout};
  // The reference visits the same keys in the same order either way: bit-identical.
  CHECK(run(reference, sparse) == run(reference, attnkit::full{}));
  // The CPU kernel may order its work differently when the mask varies by head (one KV head per
  // work item): equal within fp32 accumulation, outputs are O(1), 1e-5 is ~100 ulp.
  const auto a = run(attnkit::cpu, sparse), c = run(attnkit::cpu, attnkit::full{});
  double worst = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i)
    worst = std::max(worst, double(std::fabs(a[i] - c[i])));
  CHECK(worst <= 1e-5);
}

TEMPLATE_TEST_CASE(
    "quest_select: sparse decode on the CPU matches the reference over the same pages", "[quest]",
    float, half, bfloat16) {
  using B = TestType;
  const index_t page = 16, n = 2000, kv_heads = 2, group = 4, dim = 128;
  auto q = make_tensor3<float>(1, kv_heads * group, dim);
  auto k = make_tensor3<half>(n, kv_heads, dim);
  auto v = make_tensor3<half>(n, kv_heads, dim);
  fill_normal(q, 71);
  fill_normal(k, 72);
  fill_normal(v, 73);
  page_bounds<B> b(page, kv_heads, dim, n);
  b.update(attnkit::cpu, k.cview());
  block_layout layout;
  attnkit::quest_select(attnkit::cpu, q.cview(), b, 12, layout);
  CHECK(layout.nonzero_blocks() == kv_heads * 12);
  const attnkit::block_sparse sparse{layout};
  auto fast = make_tensor3<float>(1, kv_heads * group, dim);
  auto oracle = make_tensor3<float>(1, kv_heads * group, dim);
  attnkit::attention(attnkit::cpu, q.cview(), k.cview(), v.cview(), fast.view(), sparse);
  attnkit::attention(reference, q.cview(), k.cview(), v.cview(), oracle.view(), sparse);
  // fp32 accumulation over 192 keys against fp64: 1e-5 absolute on O(1) outputs.
  double worst = 0.0;
  for (std::size_t i = 0; i < fast.storage.size(); ++i)
    worst = std::max(worst, double(std::fabs(fast.storage[i] - oracle.storage[i])));
  CHECK(worst <= 1e-5);
}

TEMPLATE_TEST_CASE("quest_select: executors and scratch reuse give identical layouts", "[quest]",
                   float, half, bfloat16) {
  using B = TestType;
  auto k = make_tensor3<half>(3000, 2, 64);
  fill_normal(k, 81);
  page_bounds<B> b(8, 2, 64, 3000);
  b.update(attnkit::cpu, k.cview());
  auto big = make_tensor3<float>(2, 8, 64), small = make_tensor3<float>(1, 2, 64);
  fill_normal(big, 82);
  fill_normal(small, 83);
  block_layout pooled, serial, again;
  attnkit::quest_select(attnkit::cpu, big.cview(), b, 40, pooled);
  attnkit::quest_select(attnkit::cpu, small.cview(), b, 3, again);  // smaller problem in between
  attnkit::quest_select(attnkit::cpu, big.cview(), b, 40, again);
  attnkit::quest_select(attnkit::cpu, big.cview(), b, 40, serial, attnkit::parallel::serial{});
  for (index_t h = 0; h < 2; ++h) {
    CHECK(row_of(pooled, h) == row_of(serial, h));
    CHECK(row_of(pooled, h) == row_of(again, h));
  }
}

namespace {

template <class Call>
void expect_error(Call&& call, const std::vector<std::string>& fragments) {
  std::string message;
  try {
    call();
  } catch (const attnkit::error& e) {
    message = e.what();
  }
  INFO("message: " << message);
  REQUIRE(!message.empty());
  for (const auto& f : fragments) CHECK(message.find(f) != std::string::npos);
}

}  // namespace

TEMPLATE_TEST_CASE("quest: invalid arguments throw and change nothing", "[quest][errors]", float,
                   half, bfloat16) {
  using B = TestType;
  expect_error([] { page_bounds<B>(0, 2, 16, 64); }, {"attnkit::page_bounds", "page_size is 0"});
  expect_error([] { page_bounds<B>(4, 0, 16, 64); }, {"kv_heads is 0"});
  expect_error([] { page_bounds<B>(4, 2, 0, 64); }, {"head_dim is 0"});
  expect_error([] { page_bounds<B>(4, 2, 16, -1); }, {"capacity_tokens is -1"});

  auto k = make_tensor3<float>(40, 2, 16);
  fill_normal(k, 91);
  page_bounds<B> b(4, 2, 16, 40);
  b.update(attnkit::cpu, prefix(k, 30));
  const auto before = snapshot(b);

  SECTION("update") {
    auto wrong_dim = make_tensor3<float>(30, 2, 8);
    auto wrong_heads = make_tensor3<float>(30, 3, 16);
    auto too_long = make_tensor3<float>(41, 2, 16);
    fill_normal(wrong_dim, 1);
    fill_normal(wrong_heads, 1);
    fill_normal(too_long, 1);
    for (const bool simd : {true, false}) {
      auto update = [&](auto view, index_t first) {
        if (simd)
          b.update(attnkit::cpu, view, first);
        else
          b.update(reference, view, first);
      };
      expect_error([&] { update(wrong_dim.cview(), 30); },
                   {"attnkit::page_bounds::update", "head_dim (extent 2) is 8", "head_dim 16"});
      expect_error([&] { update(wrong_heads.cview(), 30); },
                   {"kv_heads (extent 1) is 3", "kv_heads 2"});
      expect_error([&] { update(too_long.cview(), 30); }, {"41 tokens", "capacity of 40"});
      expect_error([&] { update(k.cview(), 31); }, {"first_token is 31", "hold 30 tokens"});
      expect_error([&] { update(k.cview(), -1); }, {"first_token is -1"});
      expect_error([&] { update(prefix(k, 20), 25); }, {"first_token is 25", "k has only 20"});
      CHECK(snapshot(b) == before);
    }
  }

  SECTION("quest_select") {
    auto q = make_tensor3<float>(1, 4, 16);
    fill_normal(q, 92);
    block_layout layout;
    attnkit::quest_select(attnkit::cpu, q.cview(), b, 3, layout);
    const auto offsets =
        std::vector<index_t>(layout.row_offsets().begin(), layout.row_offsets().end());
    const auto columns = std::vector<index_t>(layout.columns().begin(), layout.columns().end());
    const auto shape = layout.shape();
    auto q_dim = make_tensor3<float>(1, 4, 8);
    auto q_heads = make_tensor3<float>(1, 3, 16);
    auto q_long = make_tensor3<float>(31, 4, 16);
    fill_normal(q_dim, 1);
    fill_normal(q_heads, 1);
    fill_normal(q_long, 1);
    page_bounds<B> empty(4, 2, 16, 40);
    for (const bool simd : {true, false}) {
      auto select = [&](auto view, const page_bounds<B>& bounds, index_t top) {
        if (simd)
          attnkit::quest_select(attnkit::cpu, view, bounds, top, layout);
        else
          attnkit::quest_select(reference, view, bounds, top, layout);
      };
      expect_error([&] { select(q_dim.cview(), b, 3); },
                   {"attnkit::quest_select", "head_dim (extent 2) is 8", "head_dim 16"});
      expect_error([&] { select(q_heads.cview(), b, 3); },
                   {"q_heads (q extent 1) is 3", "multiple", "kv_heads (2)"});
      expect_error([&] { select(q.cview(), b, 0); }, {"top_pages is 0"});
      expect_error([&] { select(q.cview(), empty, 3); }, {"hold 0 tokens"});
      expect_error([&] { select(q_long.cview(), b, 3); }, {"q has 31 tokens", "hold only 30"});
      CHECK(std::vector<index_t>(layout.row_offsets().begin(), layout.row_offsets().end()) ==
            offsets);
      CHECK(std::vector<index_t>(layout.columns().begin(), layout.columns().end()) == columns);
      CHECK(layout.shape().key_blocks == shape.key_blocks);
      CHECK(layout.shape().layouts == shape.layouts);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Merged keys (core/paged_kv_view.hpp): a page holding a head's merged key competes with its
// logit bound plus ln(count), under the attention call's scale and softcap.

TEST_CASE("quest: merged_page::raise gives the U whose logit is the page's bound plus ln(count)",
          "[quest][merged]") {
  using attnkit::detail::merged_page;
  const double infinity = std::numeric_limits<double>::infinity();
  auto logit = [](const merged_page& m, double u) {
    const double s = m.scale * u;
    return m.softcap > 0.0 ? m.softcap * std::tanh(s / m.softcap) : s;
  };
  for (const merged_page base : {merged_page{2, 1.0, 0.125, 0.0}, merged_page{2, 1.0, 0.7, 0.0},
                                 merged_page{2, 1.0, 0.5, 30.0}, merged_page{2, 1.0, 1.0, 8.0}})
    for (const double count : {1.5, 7.0, 1000.0})
      for (const double u : {-40.0, -3.0, 0.0, 0.5, 6.0}) {
        merged_page m = base;
        m.count = count;
        const double raised = m.raise(u);
        INFO("scale " << m.scale << " softcap " << m.softcap << " count " << count << " U " << u);
        CHECK(raised > u);
        if (std::isfinite(raised))  // fp64 round trip through tanh/atanh: 1e-9 of the logit
          CHECK(std::fabs(logit(m, raised) - (logit(m, u) + std::log(count))) <= 1e-9);
        else  // only when the weighted bound reaches the cap
          CHECK(logit(m, u) + std::log(count) >= m.softcap);
      }
  merged_page m{3, 1.0, 0.5, 0.0};
  CHECK(m.raise(2.0) == 2.0);  // count 1: nothing to add
  m.count = 0.25;              // a fractional count lowers its own key only, not the page
  CHECK(m.raise(2.0) == 2.0);
  m.count = std::exp(1.0);
  CHECK(m.raise(2.0) == Approx(4.0).epsilon(1e-15));
  CHECK(m.raise(infinity) == infinity);
  CHECK(m.raise(-infinity) == -infinity);  // no query rows: every page is -inf
  CHECK(std::isnan(m.raise(std::numeric_limits<double>::quiet_NaN())));
  m.softcap = 1.0;  // 1·tanh(1) + 1 >= 1: no finite U has that logit
  CHECK(m.raise(2.0) == infinity);
  m.softcap = 0.0;
  m.scale = 0.0;  // every logit is 0 but the merged key's, ln(count) > 0
  CHECK(m.raise(-5.0) == infinity);
}

namespace {

struct logit_config {
  std::optional<float> scale;
  float softcap = 0.0f;
  std::vector<float> slopes = {};  // ALiBi, one per query head; empty: none

  attnkit::attention_options options() const {
    attnkit::attention_options o;
    o.scale = scale;
    o.softcap = softcap;
    if (!slopes.empty())
      o.alibi_slopes = tensor_view<const float, 1>(slopes.data(), {index_t(slopes.size())});
    return o;
  }
};

// The largest ALiBi bias -slope·|q_pos - j| over the slots j of page p of KV head kv_h, slot by
// slot (the library computes it in closed form).
template <class B>
double largest_bias(const page_bounds<B>& b, index_t kv_h, index_t p, double slope, index_t q_pos) {
  double best = -std::numeric_limits<double>::infinity();
  const index_t end = std::min((p + 1) * b.page_size(), b.tokens(kv_h));
  for (index_t j = p * b.page_size(); j < end; ++j)
    best = std::max(best, -slope * std::fabs(double(q_pos - j)));
  return best;
}

double scale_of(const logit_config& config, index_t head_dim) {
  return config.scale ? *config.scale : 1.0 / std::sqrt(double(head_dim));
}

// The logit bound of query row (token t, head g of the group) on page p of KV head kv_h, in fp64:
// softcap(scale·U), plus under ALiBi the row's largest bias over the page's slots (the queries are
// the head's last q_tokens slots).
template <class B>
double row_logit_bound(const page_bounds<B>& b, tensor_view<const float, 3> q, index_t kv_h,
                       index_t p, index_t t, index_t g, const logit_config& config) {
  const index_t group = q.extent(1) / b.kv_heads();
  double u, magnitude;
  bound64(b, q, t, kv_h * group + g, kv_h, p, u, magnitude);
  double s = scale_of(config, b.head_dim()) * u;
  if (config.softcap > 0.0f) s = config.softcap * std::tanh(s / config.softcap);
  if (!config.slopes.empty())
    s += largest_bias(b, kv_h, p, config.slopes[static_cast<std::size_t>(kv_h * group + g)],
                      b.tokens(kv_h) - q.extent(0) + t);
  return s;
}

// The pages the definition keeps for KV head kv_h, in fp64 from the stored bounds: pages ranked by
// their logit bound, the max over the query rows of softcap(scale·U) (plus, under ALiBi, the
// row's largest bias over the page's slots, its queries at the head's last slots), plus ln(count)
// for the page of a merged key with count > 1 (unless ignore_marks); ties to the lower page; the
// last page always; min(top, pages(kv_h)) in all.
template <class B>
std::vector<index_t> expected_pages(const page_bounds<B>& b, tensor_view<const float, 3> q,
                                    index_t kv_h, index_t top, const logit_config& config,
                                    bool ignore_marks = false) {
  const index_t pages = b.pages(kv_h);
  const index_t group = q.extent(1) / b.kv_heads();
  const attnkit::merged_key mark = b.merged(kv_h);
  std::vector<double> logit(static_cast<std::size_t>(pages),
                            -std::numeric_limits<double>::infinity());
  for (index_t p = 0; p < pages; ++p)
    for (index_t t = 0; t < q.extent(0); ++t)
      for (index_t g = 0; g < group; ++g) {
        double s = row_logit_bound(b, q, kv_h, p, t, g, config);
        if (!ignore_marks && mark.slot >= 0 && mark.slot / b.page_size() == p && mark.count > 1.0f)
          s += std::log(double(mark.count));
        logit[static_cast<std::size_t>(p)] = std::max(logit[static_cast<std::size_t>(p)], s);
      }
  std::vector<index_t> order(static_cast<std::size_t>(pages - 1));
  for (index_t i = 0; i < pages - 1; ++i) order[static_cast<std::size_t>(i)] = i;
  std::stable_sort(order.begin(), order.end(), [&](index_t a, index_t c) {
    return logit[static_cast<std::size_t>(a)] > logit[static_cast<std::size_t>(c)];
  });
  const index_t kept = std::min(top, pages);
  std::vector<index_t> expected(order.begin(), order.begin() + (kept - 1));
  expected.push_back(pages - 1);
  std::sort(expected.begin(), expected.end());
  return expected;
}

// What a selection test counts as "changed": the same expected pages without the merged keys'
// marks, or without the ALiBi slopes.
enum class without { marks, slopes };

// Selects with both backends under each logit configuration and checks each head's pages against
// expected_pages. Returns how many (configuration, top, head) cases the marks or the slopes
// (`baseline`) changed.
template <class B>
index_t check_selection(const page_bounds<B>& b, tensor_view<const float, 3> q,
                        const std::vector<logit_config>& configs, without baseline) {
  index_t changed = 0;
  for (const logit_config& config : configs) {
    logit_config plain = config;
    plain.slopes.clear();
    const attnkit::attention_options options = config.options();
    for (const index_t top : {1, 2, 3, 5, 8, 15, 16}) {
      block_layout fast, oracle;
      attnkit::quest_select(attnkit::cpu, q, b, top, fast, options);
      attnkit::quest_select(reference, q, b, top, oracle, options, attnkit::parallel::serial{});
      for (index_t h = 0; h < b.kv_heads(); ++h) {
        INFO("head " << h << " top " << top << " q tokens " << q.extent(0) << " scale "
                     << config.scale.value_or(-1.0f) << " softcap " << config.softcap
                     << (config.slopes.empty() ? "" : " with ALiBi"));
        const std::vector<index_t> expected = expected_pages(b, q, h, top, config);
        CHECK(row_of(fast, h) == expected);
        CHECK(row_of(oracle, h) == expected);
        const std::vector<index_t> unchanged = baseline == without::marks
                                                   ? expected_pages(b, q, h, top, config, true)
                                                   : expected_pages(b, q, h, top, plain);
        if (expected != unchanged) ++changed;
      }
    }
  }
  return changed;
}

// The three logit settings the selection tests run: attention's defaults, a scale, a softcap.
std::vector<logit_config> logit_configs(const std::vector<float>& slopes = {}) {
  return {{std::nullopt, 0.0f, slopes}, {0.6f, 0.0f, slopes}, {0.5f, 2.0f, slopes}};
}

// The cache of the merged-key and ALiBi selection tests: 2 KV heads x 16 pages of 4 tokens, d 16,
// in a half cache (one layer), the keys as a tensor, and page bounds of type B for them.
constexpr index_t small_page = 4, small_tokens = 64, small_kv_heads = 2, small_dim = 16;

template <class B>
struct small_cache {
  attnkit::kv_cache<half> cache{{.layers = 1,
                                 .kv_heads = small_kv_heads,
                                 .head_dim = small_dim,
                                 .page_size = small_page,
                                 .capacity_pages = 2 * small_kv_heads * small_tokens / small_page}};
  owned_tensor<half, 3> k = make_tensor3<half>(small_tokens, small_kv_heads, small_dim);
  page_bounds<B> bounds{small_page, small_kv_heads, small_dim, small_tokens};

  explicit small_cache(std::uint64_t seed) {
    fill_normal(k, seed);
    cache.append(0, k.cview(), k.cview());
  }
};

}  // namespace

TEMPLATE_TEST_CASE("quest_select: a page holding a merged key competes with its weighted bound",
                   "[quest][merged]", float, half, bfloat16) {
  using B = TestType;
  // One query token of a group of 2. The marks sit in page 2 of head 0 and page 14 of head 1 (the
  // last page, 15, is kept anyway).
  small_cache<B> fixture(201);
  auto& [cache, k, b] = fixture;
  auto q = make_tensor3<float>(1, 2 * small_kv_heads, small_dim);
  fill_normal(q, 203);

  SECTION("uniform heads") {
    b.update(attnkit::cpu, cache.view(0));
    CHECK_FALSE(b.has_merged_keys());
    const index_t unmarked = check_selection(b, q.cview(), logit_configs(), without::marks);
    CHECK(unmarked == 0);
    index_t changed = 0;
    for (const float count : {0.5f, 1.0f, 2.0f, 20.0f, 1e4f}) {
      cache.set_merged(0, 0, {9, count});
      cache.set_merged(0, 1, {58, count});
      // first_slots = the lengths: no page is rebuilt, the marks are read again.
      const std::vector<index_t> lengths(2, small_tokens);
      b.update(attnkit::cpu, cache.view(0), lengths);
      REQUIRE(b.has_merged_keys());
      CHECK(b.merged(0).slot == 9);
      CHECK(b.merged(1).slot == 58);
      CHECK(b.merged(1).count == count);
      const index_t c = check_selection(b, q.cview(), logit_configs(), without::marks);
      if (count <= 1.0f) CHECK(c == 0);
      changed += c;
    }
    // The weights must have moved some selections, or this test would not test them.
    CHECK(changed >= 10);

    // A contiguous update forgets the marks.
    b.update(attnkit::cpu, tensor_view<const half, 3>(k.cview()));
    CHECK_FALSE(b.has_merged_keys());
    CHECK(b.merged(0).slot == -1);
  }

  SECTION("heads of different lengths (one selection per head)") {
    std::vector<index_t> evicted;
    for (index_t s = 0; s < 40; s += 2) evicted.push_back(s);  // head 1 keeps 44 slots, 11 pages
    cache.evict(0, 1, evicted);
    cache.set_merged(0, 0, {30, 50.0f});
    cache.set_merged(0, 1, {5, 50.0f});
    b.update(attnkit::cpu, cache.view(0));
    REQUIRE_FALSE(b.uniform());
    CHECK(b.pages(1) == 11);
    CHECK(check_selection(b, q.cview(), logit_configs(), without::marks) >= 4);
  }
}

TEMPLATE_TEST_CASE("quest: merged keys that the view gets wrong throw and change nothing",
                   "[quest][merged][errors]", float, half, bfloat16) {
  using B = TestType;
  attnkit::kv_cache<float> cache(
      {.layers = 1, .kv_heads = 2, .head_dim = 16, .page_size = 4, .capacity_pages = 16});
  auto k = make_tensor3<float>(20, 2, 16);
  fill_normal(k, 211);
  cache.append(0, k.cview(), k.cview());
  page_bounds<B> b(4, 2, 16, 20);
  cache.set_merged(0, 1, {3, 4.0f});
  b.update(attnkit::cpu, cache.view(0));
  const auto before = snapshot(b);
  for (const attnkit::merged_key wrong : {attnkit::merged_key{20, 2.0f}, {-3, 2.0f}, {4, 0.0f}}) {
    const attnkit::merged_key marks[2] = {{}, wrong};
    auto view = cache.view(0);
    view.merged_keys = marks;
    expect_error([&] { b.update(attnkit::cpu, view); },
                 {"attnkit::page_bounds::update", "kv.merged_keys[1]"});
    CHECK(snapshot(b) == before);
    CHECK(b.merged(1).slot == 3);
  }
  // The CUDA backend (attention and device_page_bounds) refuses marks instead of ignoring them;
  // its argument check is host code, so it is tested here.
  expect_error([&] { attnkit::detail::check_device_paged_kv_view("device call", cache.view(0)); },
               {"device call", "kv.merged_keys is set", "does not weigh merged keys yet"});
  auto q = make_tensor3<float>(1, 2, 16);
  fill_normal(q, 212);
  block_layout layout;
  attnkit::quest_select(attnkit::cpu, q.cview(), b, 2, layout);
  const std::vector<index_t> row = row_of(layout, 1);
  attnkit::attention_options options;
  options.scale = -1.0f;
  expect_error([&] { attnkit::quest_select(attnkit::cpu, q.cview(), b, 2, layout, options); },
               {"attnkit::quest_select", "scale is -1"});
  options.scale = 0.5f;
  options.softcap = std::numeric_limits<float>::quiet_NaN();
  expect_error([&] { attnkit::quest_select(reference, q.cview(), b, 2, layout, options); },
               {"attnkit::quest_select", "softcap is nan"});
  CHECK(row_of(layout, 1) == row);
}

TEMPLATE_TEST_CASE("quest_select: under ALiBi pages rank by their logit bound, bias included",
                   "[quest][alibi]", float, half, bfloat16) {
  using B = TestType;
  // Groups of 2 query heads.
  small_cache<B> fixture(301);
  auto& [cache, k, b] = fixture;
  // Mild, steep, zero and negative slopes, so that rankings mix U and position.
  const std::vector<float> slopes = {0.02f, 0.3f, 0.0f, -0.05f};
  const std::vector<logit_config> configs = logit_configs(slopes);

  SECTION("uniform heads: decode and a chunk of 3 queries") {
    b.update(attnkit::cpu, cache.view(0));
    for (const index_t q_tokens : {1, 3}) {
      auto q = make_tensor3<float>(q_tokens, 2 * small_kv_heads, small_dim);
      fill_normal(q, 302 + static_cast<std::uint64_t>(q_tokens));
      // The ALiBi must move selections, or this would not test it.
      CHECK(check_selection(b, q.cview(), configs, without::slopes) >= 10);
      // What the ranking relies on: every key's logit, as attention computes it, is at most its
      // row's bound on the key's page.
      for (const logit_config& config : configs)
        for (index_t h = 0; h < small_kv_heads; ++h)
          for (index_t t = 0; t < q_tokens; ++t)
            for (index_t g = 0; g < 2; ++g)
              for (index_t j = 0; j < small_tokens; ++j) {
                double dot = 0.0;
                for (index_t c = 0; c < small_dim; ++c)
                  dot += double(q.cview()(t, 2 * h + g, c)) *
                         double(attnkit::to_float(k.cview()(j, h, c)));
                double s = scale_of(config, small_dim) * dot;
                if (config.softcap > 0.0f) s = config.softcap * std::tanh(s / config.softcap);
                s -= double(slopes[static_cast<std::size_t>(2 * h + g)]) *
                     std::fabs(double(small_tokens - q_tokens + t - j));
                CHECK(s <= row_logit_bound(b, q.cview(), h, j / small_page, t, g, config) + 1e-9);
              }
    }
  }

  SECTION("heads of different lengths, with a merged key") {
    std::vector<index_t> evicted;
    for (index_t s = 0; s < 40; s += 2) evicted.push_back(s);  // head 1 keeps 44 slots, 11 pages
    cache.evict(0, 1, evicted);
    cache.set_merged(0, 0, {30, 50.0f});
    b.update(attnkit::cpu, cache.view(0));
    REQUIRE_FALSE(b.uniform());
    REQUIRE(b.has_merged_keys());
    auto q = make_tensor3<float>(1, 2 * small_kv_heads, small_dim);
    fill_normal(q, 305);
    CHECK(check_selection(b, q.cview(), configs, without::slopes) >= 4);
  }

  SECTION("a steep slope keeps the pages nearest the query") {
    b.update(attnkit::cpu, cache.view(0));
    auto q = make_tensor3<float>(1, 2 * small_kv_heads, small_dim);
    fill_normal(q, 306);
    // 10 per slot of distance outweighs any difference of U here (|scale·q·k| < 10).
    const std::vector<float> steep(4, 10.0f);
    const logit_config config{std::nullopt, 0.0f, steep};
    block_layout fast, oracle;
    attnkit::quest_select(attnkit::cpu, q.cview(), b, 3, fast, config.options());
    attnkit::quest_select(reference, q.cview(), b, 3, oracle, config.options(),
                          attnkit::parallel::serial{});
    for (index_t h = 0; h < small_kv_heads; ++h) {
      CHECK(row_of(fast, h) == std::vector<index_t>{13, 14, 15});
      CHECK(row_of(oracle, h) == std::vector<index_t>{13, 14, 15});
    }
  }

  SECTION("invalid slopes throw and change nothing") {
    b.update(attnkit::cpu, cache.view(0));
    auto q = make_tensor3<float>(1, 2 * small_kv_heads, small_dim);
    fill_normal(q, 307);
    block_layout layout;
    attnkit::quest_select(attnkit::cpu, q.cview(), b, 2, layout);
    const std::vector<index_t> row = row_of(layout, 1);
    const std::vector<float> three = {0.1f, 0.2f, 0.3f};
    expect_error(
        [&] {
          attnkit::quest_select(attnkit::cpu, q.cview(), b, 2, layout,
                                logit_config{std::nullopt, 0.0f, three}.options());
        },
        {"attnkit::quest_select", "alibi_slopes extent 0", "3", "q_heads", "4"});
    const std::vector<float> not_finite = {0.1f, std::numeric_limits<float>::infinity(), 0.3f,
                                           0.4f};
    expect_error(
        [&] {
          attnkit::quest_select(reference, q.cview(), b, 2, layout,
                                logit_config{std::nullopt, 0.0f, not_finite}.options());
        },
        {"attnkit::quest_select", "alibi_slopes[1] is inf", "finite"});
    CHECK(row_of(layout, 1) == row);
  }
}
