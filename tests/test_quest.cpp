// Quest page selection (attention/quest.hpp): page bounds, the bound itself, and top-K selection.
//
//   * page_bounds::update (both backends) equals a brute-force min/max bit for bit, for every
//     dtype, odd page sizes, a partial last page and strided keys; appending token by token (or
//     in chunks), and truncating, give exactly the bounds of a full rebuild.
//   * The bound bounds: every key's logit q·k (fp64) is <= U(its page) computed from the stored
//     bounds, and the SIMD kernel's fp32 U is within its rounding model of the fp64 U.
//   * attnkit::cpu selects the same pages as backend::reference except where two pages' scores
//     are within the fp32 rounding model below (a near-tie at the cut may swap).
//   * Exact ties go to the lower page in both backends; the last page is always kept; GQA takes
//     the max over the group (and over query tokens), not the sum or the mean.
//   * top_pages >= pages keeps every page, and block_sparse attention over it equals full
//     attention; a sparse selection's block_sparse attention on the CPU matches the reference.
//   * Invalid arguments throw attnkit::error with the right message and change nothing.
#include <algorithm>
#include <attnkit/attention/quest.hpp>
#include <attnkit/attnkit.hpp>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <iterator>
#include <limits>
#include <string>
#include <vector>

#include "support/tensor.hpp"

using namespace attnkit_test;
using attnkit::block_layout;
using attnkit::page_bounds;

namespace {

const attnkit::backend::reference reference{};

// The stored bounds of every (head, page), min rows then max rows, head_dim floats each, plus the
// token count: for bit-exact comparisons and "nothing changed" checks.
std::vector<float> snapshot(const page_bounds& b) {
  std::vector<float> out;
  out.push_back(static_cast<float>(b.tokens()));
  for (index_t h = 0; h < b.kv_heads(); ++h)
    for (index_t p = 0; p < b.pages(); ++p) {
      out.insert(out.end(), b.min(h, p), b.min(h, p) + b.head_dim());
      out.insert(out.end(), b.max(h, p), b.max(h, p) + b.head_dim());
    }
  return out;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Brute force: min and max over the page's keys of every (head, page, column), compared exactly;
// the padding lanes of every row must be zero (the SIMD bound relies on it).
template <class T>
void check_bounds_exact(const page_bounds& b, const tensor3<T>& k) {
  const auto kv = k.cview();
  const index_t n = kv.extent(0);
  REQUIRE(b.tokens() == n);
  REQUIRE(b.pages() == (n + b.page_size() - 1) / b.page_size());
  index_t wrong = 0;
  for (index_t h = 0; h < b.kv_heads(); ++h)
    for (index_t p = 0; p < b.pages(); ++p) {
      for (index_t c = 0; c < b.head_dim(); ++c) {
        float mn = std::numeric_limits<float>::infinity();
        float mx = -mn;
        for (index_t t = p * b.page_size(); t < std::min(n, (p + 1) * b.page_size()); ++t) {
          mn = std::min(mn, attnkit::to_float(kv(t, h, c)));
          mx = std::max(mx, attnkit::to_float(kv(t, h, c)));
        }
        if (b.min(h, p)[c] != mn || b.max(h, p)[c] != mx) ++wrong;
      }
      for (index_t c = b.head_dim(); c < b.padded_head_dim(); ++c)
        if (b.min(h, p)[c] != 0.0f || b.max(h, p)[c] != 0.0f) ++wrong;
    }
  CHECK(wrong == 0);
}

// Contiguous view of the first n tokens of k (same strides).
template <class T>
tensor_view<const T, 3> prefix(const tensor3<T>& k, index_t n) {
  return {k.cview().data(), {n, k.extents[1], k.extents[2]}, k.strides};
}

// fp64 U(page) for query row (t, h) from the stored bounds, and Σ|terms| (its rounding scale).
template <class TQ>
void bound64(const page_bounds& b, tensor_view<const TQ, 3> q, index_t t, index_t h, index_t kv_h,
             index_t p, double& u, double& magnitude) {
  u = 0.0;
  magnitude = 0.0;
  for (index_t c = 0; c < b.head_dim(); ++c) {
    const double x = attnkit::to_float(q(t, h, c));
    const double lo = x * b.min(kv_h, p)[c], hi = x * b.max(kv_h, p)[c];
    u += std::max(lo, hi);
    magnitude += std::max(std::fabs(lo), std::fabs(hi));
  }
}

// Scores as the selection defines them (max over the group's heads and the query tokens), in
// fp64, and a bound on the SIMD kernel's fp32 error for each: the kernel sums 2·head_dim products
// with fused multiply-adds in two chains plus a horizontal add, so by the standard summation
// bound its error is at most about (2·head_dim)·2^-24·Σ|terms|; we allow 4·head_dim·2^-24·Σ|terms|
// (2x margin). The max over rows does not round.
template <class TQ>
void scores64(const page_bounds& b, tensor_view<const TQ, 3> q, index_t kv_h,
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

std::vector<index_t> row_of(const block_layout& layout, index_t h) {
  const auto r = layout.row(h, 0);
  return {r.begin(), r.end()};
}

}  // namespace

TEMPLATE_TEST_CASE("page_bounds: update equals brute-force min/max exactly", "[quest]", float, half,
                   bfloat16) {
  using T = TestType;
  struct config {
    index_t page, tokens, heads, dim;
    layout mem;
  };
  const config configs[] = {
      {16, 100, 2, 64, layout::contiguous},  // partial last page (100 = 6·16 + 4)
      {1, 9, 3, 5, layout::contiguous},      // one token per page, dim below a vector
      {3, 31, 2, 37, layout::padded},        // odd page size, dim tail after full vectors
      {17, 17, 1, 128, layout::bhsd},        // exactly one full page
      {5, 23, 2, 24, layout::dim_strided},   // head_dim stride 2: the scalar path
      {7, 50, 2, 16, layout::broadcast_heads},
  };
  for (const config& cf : configs) {
    DYNAMIC_SECTION("page " << cf.page << " tokens " << cf.tokens << " heads " << cf.heads
                            << " dim " << cf.dim << " " << layout_name(cf.mem)) {
      auto k = make_tensor3<T>(cf.tokens, cf.heads, cf.dim, cf.mem);
      fill_normal(k, 11 + cf.page);
      page_bounds fast(cf.page, cf.heads, cf.dim, cf.tokens + 9);
      page_bounds oracle(cf.page, cf.heads, cf.dim, cf.tokens + 9);
      fast.update(attnkit::cpu, k.cview());
      oracle.update(reference, k.cview());
      check_bounds_exact(fast, k);
      check_bounds_exact(oracle, k);

      // One token per step, as a decode loop does: bit-identical to the full build.
      page_bounds stepped(cf.page, cf.heads, cf.dim, cf.tokens);
      for (index_t n = 1; n <= cf.tokens; ++n) stepped.update(attnkit::cpu, prefix(k, n), n - 1);
      CHECK(same_bits(snapshot(stepped), snapshot(fast)));

      // Uneven chunks (a prefill, then several tokens at once) on a serial executor.
      page_bounds chunked(cf.page, cf.heads, cf.dim, cf.tokens);
      index_t done = 0;
      for (index_t step = 1; done < cf.tokens; step += 2) {
        const index_t next = std::min(cf.tokens, done + step);
        chunked.update(attnkit::cpu, prefix(k, next), done, attnkit::parallel::serial{});
        done = next;
      }
      CHECK(same_bits(snapshot(chunked), snapshot(fast)));

      // Rollback: truncating to fewer tokens equals building the shorter cache from scratch.
      const index_t shorter = cf.tokens * 2 / 3;
      page_bounds rolled(cf.page, cf.heads, cf.dim, cf.tokens);
      rolled.update(attnkit::cpu, k.cview());
      rolled.update(attnkit::cpu, prefix(k, shorter), shorter);
      page_bounds direct(cf.page, cf.heads, cf.dim, cf.tokens);
      direct.update(reference, prefix(k, shorter));
      CHECK(same_bits(snapshot(rolled), snapshot(direct)));
    }
  }
}

TEST_CASE("page_bounds: a large build runs on the pool and equals the reference", "[quest]") {
  // 4 heads × 4096 tokens × 64 = 1M elements: above the parallel threshold.
  auto k = make_tensor3<half>(4096, 4, 64);
  fill_normal(k, 5);
  page_bounds fast(16, 4, 64, 4096), oracle(16, 4, 64, 4096);
  fast.update(attnkit::cpu, k.cview());
  oracle.update(reference, k.cview());
  CHECK(same_bits(snapshot(fast), snapshot(oracle)));
  check_bounds_exact(fast, k);
}

TEST_CASE("quest bound: every key's logit is at most U(its page)", "[quest]") {
  const index_t page = 16, n = 200, kv_heads = 2, group = 3, dim = 40, q_tokens = 2;
  auto k = make_tensor3<half>(n, kv_heads, dim);
  auto q = make_tensor3<float>(q_tokens, kv_heads * group, dim);
  fill_normal(k, 21);
  fill_normal(q, 22, 2.0);
  page_bounds b(page, kv_heads, dim, n);
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
        // The SIMD kernel's fp32 bound for this single row, within the model of scores64().
        const auto rows = attnkit::detail::page_bounds_access::rows(b);
        alignas(64) float staged[2 * 48] = {};
        for (index_t c = 0; c < dim; ++c) {
          staged[c] = std::max(qv(t, h, c), 0.0f);
          staged[rows.padded_dim + c] = std::min(qv(t, h, c), 0.0f);
        }
        const float fast = attnkit::detail::simd::page_score<xsimd::default_arch>(
            rows.min_row(kv_h, p), staged, 1, rows.padded_dim);
        if (std::fabs(double(fast) - u) > 4.0 * dim * 0x1p-24 * magnitude) ++simd_off;
      }
  }
  CHECK(violations == 0);
  CHECK(simd_off == 0);
}

namespace {

// Selects with both backends and checks: rows sorted, the last page present, `kept` entries, the
// layout's shape, and the SIMD pages equal to the reference pages up to near-ties.
template <class TQ, class TK>
void check_selection(index_t page, index_t n, index_t kv_heads, index_t group, index_t dim,
                     index_t q_tokens, index_t top, std::uint64_t seed) {
  auto k = make_tensor3<TK>(n, kv_heads, dim);
  auto q = make_tensor3<TQ>(q_tokens, kv_heads * group, dim);
  fill_normal(k, seed);
  fill_normal(q, seed + 1);
  page_bounds b(page, kv_heads, dim, n);
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

TEST_CASE("quest_select: SIMD selection equals the reference up to near-ties", "[quest]") {
  SECTION("decode, GQA 4, d 128, fp32 q over fp16 keys") {
    for (index_t top : {1, 2, 5, 64, 255, 256, 1000})
      check_selection<float, half>(16, 4000, 2, 4, 128, 1, top, 100 + top);
  }
  SECTION("MQA, odd page and dim, several query tokens") {
    for (index_t top : {1, 3, 20}) check_selection<float, float>(7, 300, 1, 5, 37, 3, top, 7);
  }
  SECTION("16-bit queries, MHA, partial last page") {
    for (index_t top : {2, 9}) {
      check_selection<half, half>(16, 250, 3, 1, 64, 1, top, 31);
      check_selection<bfloat16, bfloat16>(16, 250, 3, 1, 64, 1, top, 37);
    }
  }
  SECTION("no query tokens: every score is -inf, ties keep the lowest pages") {
    check_selection<float, float>(4, 40, 2, 2, 16, 0, 3, 9);
  }
  SECTION("every query row of a page score: q_tokens x group above one row block") {
    check_selection<float, bfloat16>(8, 512, 2, 3, 96, 3, 10, 51);  // 9 rows: 4 + 4 + 1
  }
}

TEST_CASE("quest_select: exact ties go to the lower page in both backends", "[quest]") {
  // Pages repeat with period 3 (page p holds the keys of page p % 3), so every score appears on
  // many pages, bit-identical in fp32 as in fp64.
  const index_t page = 4, pages = 30, dim = 16, n = page * pages;
  auto base = make_tensor3<float>(3 * page, 1, dim);
  fill_normal(base, 3);
  auto k = make_tensor3<float>(n, 1, dim);
  fill_with(k, [&](const auto& at) { return base.cview()(at[0] % (3 * page), 0, at[2]); });
  auto q = make_tensor3<float>(1, 2, dim);
  fill_normal(q, 4);
  page_bounds b(page, 1, dim, n);
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

TEST_CASE("quest_select: the last page is always kept", "[quest]") {
  // q = all ones; every page's keys are +1 except the last page's, -10: the last page has by far
  // the lowest bound, and is kept anyway.
  const index_t page = 16, n = 16 * 9 + 3, dim = 32;
  auto k = make_tensor3<half>(n, 2, dim);
  fill_with(k, [&](const auto& at) { return at[0] >= 16 * 9 ? -10.0 : 1.0 + 0.01 * at[0]; });
  auto q = make_tensor3<float>(1, 2, dim);
  fill_with(q, [](const auto&) { return 1.0; });
  page_bounds b(page, 2, dim, n);
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

TEST_CASE("quest_select: GQA scores a page by the max over the group and the query tokens",
          "[quest]") {
  // Pages (4 tokens, d 4) are zero except: page 2 keys 5·e0, page 5 keys 10·e1, page 7 keys
  // 4·e0 + 4·e1. The queries are e0, e1 and e2 (as three heads of one group, or as three tokens
  // of one head), so U is  page 2: (5, 0, 0)  page 5: (0, 10, 0)  page 7: (4, 4, 0), else 0.
  // Max: page 5 (10) > page 2 (5) > page 7 (4); the sum (or mean) would rank page 7 (8) above
  // page 2 (5). top 3 = the two best of pages 0..8 plus the last page: {2, 5, 9} under max.
  const index_t page = 4, pages = 10, dim = 4, n = page * pages;
  auto k = make_tensor3<float>(n, 1, dim);
  fill_with(k, [&](const auto& at) {
    const index_t p = at[0] / page, c = at[2];
    if (p == 2) return c == 0 ? 5.0 : 0.0;
    if (p == 5) return c == 1 ? 10.0 : 0.0;
    if (p == 7) return c <= 1 ? 4.0 : 0.0;
    return 0.0;
  });
  page_bounds b(page, 1, dim, n);
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

TEST_CASE("quest_select: top_pages >= pages keeps every page; block_sparse then equals full",
          "[quest]") {
  const index_t page = 16, n = 16 * 20 + 5, kv_heads = 2, group = 4, dim = 64;
  auto q = make_tensor3<float>(1, kv_heads * group, dim);
  auto k = make_tensor3<half>(n, kv_heads, dim);
  auto v = make_tensor3<half>(n, kv_heads, dim);
  fill_normal(q, 61);
  fill_normal(k, 62);
  fill_normal(v, 63);
  page_bounds b(page, kv_heads, dim, n);
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

TEST_CASE("quest_select: sparse decode on the CPU matches the reference over the same pages",
          "[quest]") {
  const index_t page = 16, n = 2000, kv_heads = 2, group = 4, dim = 128;
  auto q = make_tensor3<float>(1, kv_heads * group, dim);
  auto k = make_tensor3<half>(n, kv_heads, dim);
  auto v = make_tensor3<half>(n, kv_heads, dim);
  fill_normal(q, 71);
  fill_normal(k, 72);
  fill_normal(v, 73);
  page_bounds b(page, kv_heads, dim, n);
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

TEST_CASE("quest_select: executors and scratch reuse give identical layouts", "[quest]") {
  auto k = make_tensor3<half>(3000, 2, 64);
  fill_normal(k, 81);
  page_bounds b(8, 2, 64, 3000);
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

TEST_CASE("quest: invalid arguments throw and change nothing", "[quest][errors]") {
  expect_error([] { page_bounds(0, 2, 16, 64); }, {"attnkit::page_bounds", "page_size is 0"});
  expect_error([] { page_bounds(4, 0, 16, 64); }, {"kv_heads is 0"});
  expect_error([] { page_bounds(4, 2, 0, 64); }, {"head_dim is 0"});
  expect_error([] { page_bounds(4, 2, 16, -1); }, {"capacity_tokens is -1"});

  auto k = make_tensor3<float>(40, 2, 16);
  fill_normal(k, 91);
  page_bounds b(4, 2, 16, 40);
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
      CHECK(same_bits(snapshot(b), before));
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
    page_bounds empty(4, 2, 16, 40);
    for (const bool simd : {true, false}) {
      auto select = [&](auto view, const page_bounds& bounds, index_t top) {
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
