// Block-sparse layouts and masks, the Sparse-Transformer pattern builders, and MoBA gating.
//
// * block_layout validation: every malformed layout raises attnkit::error naming the problem and
//   the values, and a failed assign() leaves the old layout exactly as it was.
// * block_sparse against brute force over random layouts (shared and per-head, odd block sizes,
//   first_position != 0, ranges reaching outside the layout): allows() equals membership read
//   straight off the layout's rows, classify() is exact (never wrong, never needlessly partial),
//   and for_each_visible_run() yields exactly the maximal runs of an allows() scan.
// * dense / strided / fixed builders against a brute-force statement of their definitions.
// * moba_gate: the SIMD selection equals the fp64 reference except for swaps between candidates
//   whose exact scores lie within the fp32 error bound of each other (near-ties); exact ties go
//   to the lower block index in both; k >= candidates keeps every past block (so with
//   element-level causality it is exactly causal); GQA/MQA, q_tokens < kv_tokens and >
//   kv_tokens, short last block, strided and 16-bit keys; errors leave the layout unchanged.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <iterator>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "attnkit/attention/moba.hpp"
#include "attnkit/mask/block_patterns.hpp"
#include "attnkit/mask/block_sparse.hpp"
#include "attnkit/mask/causal.hpp"
#include "attnkit/parallel/executor.hpp"
#include "attnkit/parallel/thread_pool.hpp"
#include "support/random.hpp"
#include "support/tensor.hpp"

using namespace attnkit_test;
using attnkit::block_layout;
using attnkit::block_layout_shape;
using attnkit::block_sparse;
using attnkit::position;
using attnkit::position_range;
using attnkit::tile_kind;

namespace {

// ---------------------------------------------------------------------------------------------
// Brute force: membership read straight off the layout's rows, no binary search.

index_t floor_div(index_t a, index_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

bool brute_allows(const block_layout& layout, position p, position j, index_t h) {
  const block_layout_shape& s = layout.shape();
  const index_t l = s.layouts == 1 ? 0 : h / s.query_heads_per_layout;
  if (l >= s.layouts) return false;
  const index_t r = floor_div(p - s.first_position, s.query_block);
  if (r < 0 || r >= s.query_blocks || j < 0 || j / s.key_block >= s.key_blocks) return false;
  const auto row = layout.row(l, r);
  return std::find(row.begin(), row.end(), j / s.key_block) != row.end();
}

tile_kind brute_classify(const block_layout& layout, position_range q, position_range kv,
                         index_t h) {
  bool any = false, all = true;
  for (position p = q.begin; p < q.end; ++p)
    for (position j = kv.begin; j < kv.end; ++j) {
      const bool a = brute_allows(layout, p, j, h);
      any = any || a;
      all = all && a;
    }
  if (!any) return tile_kind::empty;
  return all ? tile_kind::full : tile_kind::partial;
}

std::vector<std::pair<position, position>> scan_runs(const block_layout& layout, position p,
                                                     index_t h, position_range kv) {
  std::vector<std::pair<position, position>> runs;
  for (position j = kv.begin; j < kv.end; ++j) {
    if (!brute_allows(layout, p, j, h)) continue;
    if (!runs.empty() && runs.back().second == j)
      runs.back().second = j + 1;
    else
      runs.emplace_back(j, j + 1);
  }
  return runs;
}

// A random valid layout: each (layout, row, block) is listed with probability `density`.
block_layout random_layout(rng& r, const block_layout_shape& shape, double density) {
  std::vector<index_t> offsets{0};
  std::vector<index_t> columns;
  for (index_t i = 0; i < shape.layouts * shape.query_blocks; ++i) {
    for (index_t b = 0; b < shape.key_blocks; ++b)
      if (r.uniform() < density) columns.push_back(b);
    offsets.push_back(static_cast<index_t>(columns.size()));
  }
  return block_layout(shape, offsets, columns);
}

block_layout_shape make_shape(index_t qb, index_t kb, index_t rows, index_t blocks,
                              index_t layouts = 1, index_t heads_per_layout = 1,
                              position first = 0) {
  block_layout_shape s;
  s.query_block = qb;
  s.key_block = kb;
  s.query_blocks = rows;
  s.key_blocks = blocks;
  s.layouts = layouts;
  s.query_heads_per_layout = heads_per_layout;
  s.first_position = first;
  return s;
}

bool same_layout(const block_layout& a, const block_layout& b) {
  const auto &x = a.shape(), &y = b.shape();
  return x.query_block == y.query_block && x.key_block == y.key_block &&
         x.query_blocks == y.query_blocks && x.key_blocks == y.key_blocks &&
         x.layouts == y.layouts && x.query_heads_per_layout == y.query_heads_per_layout &&
         x.first_position == y.first_position &&
         std::equal(a.row_offsets().begin(), a.row_offsets().end(), b.row_offsets().begin(),
                    b.row_offsets().end()) &&
         std::equal(a.columns().begin(), a.columns().end(), b.columns().begin(), b.columns().end());
}

// A copy through the validating constructor: throws if `layout` is malformed.
block_layout revalidated(const block_layout& layout) {
  return block_layout(
      layout.shape(),
      std::vector<index_t>(layout.row_offsets().begin(), layout.row_offsets().end()),
      std::vector<index_t>(layout.columns().begin(), layout.columns().end()));
}

}  // namespace

// =============================================================================================
// block_layout validation

TEST_CASE("block_layout: accessors of a valid layout", "[block_sparse]") {
  // 2 layouts x 2 rows over 4 KV blocks.
  const block_layout layout(make_shape(3, 5, 2, 4, 2, 2, -1), {0, 1, 3, 3, 7},
                            {2, 0, 3, 0, 1, 2, 3});
  CHECK(layout.nonzero_blocks() == 7);
  CHECK(layout.density() == Approx(7.0 / 16.0));
  CHECK(layout.row_offsets().size() == 5);
  REQUIRE(layout.row(0, 1).size() == 2);
  CHECK(layout.row(0, 1)[0] == 0);
  CHECK(layout.row(0, 1)[1] == 3);
  CHECK(layout.row(1, 0).empty());
  CHECK(layout.row(1, 1).size() == 4);
  CHECK_THROWS_WITH(layout.row(2, 0), Catch::Contains("(layout 2, block row 0) is outside"));
  CHECK_THROWS_WITH(layout.row(0, -1), Catch::Contains("block row -1"));
  const block_layout empty;
  CHECK(empty.nonzero_blocks() == 0);
  CHECK(empty.density() == 0.0);
}

TEST_CASE("block_layout: invalid layouts name the problem; assign leaves the old one",
          "[block_sparse]") {
  struct bad_case {
    block_layout_shape shape;
    std::vector<index_t> offsets, columns;
    const char* fragment;
  };
  const auto s = make_shape(2, 4, 4, 16);  // 4 rows, 16 KV blocks
  const std::vector<bad_case> cases = {
      {make_shape(0, 4, 1, 2), {0, 0}, {}, "query_block is 0, it must be >= 1"},
      {make_shape(2, -3, 1, 2), {0, 0}, {}, "key_block is -3, it must be >= 1"},
      {make_shape(2, 0, 1, 2), {0, 0}, {}, "key_block is 0"},
      {make_shape(2, 4, -1, 2), {0}, {}, "query_blocks is -1"},
      {make_shape(2, 4, 1, -2), {0, 0}, {}, "key_blocks is -2"},
      {make_shape(2, 4, 1, 2, 0), {0}, {}, "layouts is 0"},
      {make_shape(2, 4, 1, 2, 2, 0), {0, 0, 0}, {}, "query_heads_per_layout is 0 with 2 layouts"},
      {s,
       {0, 0, 0},
       {},
       "row_offsets has 3 entries, expected layouts (1) x query_blocks (4) + 1 = 5"},
      {make_shape(2, 4, 2, 16, 3, 1),
       {0, 0, 0},
       {},
       "row_offsets has 3 entries, expected layouts (3) x query_blocks (2) + 1 = 7"},
      {s, {1, 1, 1, 1, 1}, {0}, "row_offsets[0] is 1, it must be 0"},
      {s, {0, 3, 1, 3, 3}, {0, 1, 2}, "row_offsets decrease at entry 2 (3 then 1)"},
      {s, {0, 1, 2, 3, 3}, {0, 1, 2, 4}, "the last row offset is 3 but columns has 4 entries"},
      {s, {0, 0, 0, 0, 1}, {17}, "block row 3 of layout 0 lists KV block 17, but there are 16"},
      {s, {0, 0, 0, 0, 1}, {16}, "block row 3 of layout 0 lists KV block 16, but there are 16"},
      {make_shape(2, 4, 2, 16, 2, 1),
       {0, 0, 0, 1, 1},
       {-1},
       "block row 0 of layout 1 lists KV block -1, but there are 16"},
      {s, {0, 0, 3, 3, 3}, {1, 2, 2}, "block row 1 of layout 0 lists KV block 2 twice"},
      {s,
       {0, 0, 0, 3, 3},
       {1, 5, 3},
       "block row 2 of layout 0 is not sorted: KV block 5 comes before 3"},
  };
  const block_layout original(make_shape(1, 2, 2, 3, 1, 1, 5), {0, 2, 3}, {0, 2, 1});
  for (const auto& c : cases) {
    INFO(c.fragment);
    CHECK_THROWS_WITH(block_layout(c.shape, c.offsets, c.columns),
                      Catch::Contains(c.fragment) && Catch::Contains("attnkit::block_layout: "));
    block_layout target = original;
    CHECK_THROWS_WITH(
        target.assign(c.shape, c.offsets, c.columns),
        Catch::Contains(c.fragment) && Catch::Contains("attnkit::block_layout::assign: "));
    CHECK(same_layout(target, original));
  }
  // A valid assign replaces everything, and reuses the storage.
  block_layout target = original;
  const std::vector<index_t> offsets{0, 1, 1, 3, 4}, columns{15, 0, 9, 3};
  target.assign(s, offsets, columns);
  CHECK(same_layout(target, block_layout(s, offsets, columns)));
}

TEST_CASE("block_sparse: construction and check() against the call's shape", "[block_sparse]") {
  const block_layout default_constructed;
  CHECK_THROWS_WITH(block_sparse(default_constructed), Catch::Contains("the layout is empty"));

  // 2 layouts x 3 query heads; rows cover positions [4, 4 + 3*5) = [4, 19); keys 4 x 6 = 24.
  const block_layout layout(make_shape(5, 6, 3, 4, 2, 3, 4), {0, 0, 0, 0, 0, 0, 0}, {});
  const block_sparse mask(layout);
  CHECK(mask.varies_by_head());
  // q_tokens 15 over 19 keys: positions [4, 19).
  CHECK_NOTHROW(mask.check({15, 19, 6, 2}));
  CHECK_NOTHROW(mask.check({15, 19, 6, 6}));
  CHECK_THROWS_WITH(mask.check({15, 19, 4, 2}),
                    Catch::Contains("2 layouts x 3 query heads per layout = 6 heads") &&
                        Catch::Contains("q_heads 4"));
  CHECK_THROWS_WITH(
      mask.check({15, 25, 6, 2}),
      Catch::Contains("covers 4 KV blocks x 6 = 24 keys") && Catch::Contains("kv_tokens 25"));
  // Positions [3, 19): one before the rows.
  CHECK_THROWS_WITH(mask.check({16, 19, 6, 2}),
                    Catch::Contains("query positions [4, 19) (3 rows of 5 from 4)") &&
                        Catch::Contains("the call has query positions [3, 19)"));
  // Positions [5, 20) end past the rows... with 20 keys, which the 24 KV positions still cover.
  CHECK_THROWS_WITH(mask.check({15, 20, 6, 2}), Catch::Contains("query positions [5, 20)"));
  // Queries at negative positions are not required to be covered; none at all (no keys) neither.
  const block_layout from_zero(make_shape(4, 4, 2, 2), {0, 0, 0}, {});
  CHECK_NOTHROW(block_sparse(from_zero).check({12, 8, 3, 1}));
  CHECK_NOTHROW(block_sparse(from_zero).check({5, 0, 3, 1}));
  CHECK_FALSE(block_sparse(from_zero).varies_by_head());
  static_assert(std::is_trivially_copyable_v<block_sparse>);
  static_assert(attnkit::attention_mask<block_sparse>);
  static_assert(!std::is_constructible_v<block_sparse, block_layout&&>);
}

// =============================================================================================
// block_sparse against brute force

TEST_CASE("block_sparse: allows, classify and runs equal brute force on random layouts",
          "[block_sparse]") {
  rng r(20250301);
  index_t checked_tiles = 0, full_tiles = 0, empty_tiles = 0, partial_tiles = 0;
  for (int trial = 0; trial < 300; ++trial) {
    const index_t layouts = r.uniform() < 0.5 ? 1 : r.integer(2, 3);
    const auto shape = make_shape(r.integer(1, 5), r.integer(1, 7), r.integer(0, 6),
                                  r.integer(0, 8), layouts, r.integer(1, 3), r.integer(-9, 9));
    const double densities[] = {0.0, 0.25, 0.6, 0.9, 1.0};
    const block_layout layout = random_layout(r, shape, densities[r.integer(0, 4)]);
    const block_sparse mask(layout);
    CHECK(mask.varies_by_head() == (layouts > 1));
    const index_t heads = layouts * shape.query_heads_per_layout + 1;  // one past the last too
    const position q_lo = shape.first_position - 4;
    const position q_hi = shape.first_position + shape.query_blocks * shape.query_block + 4;
    const position kv_hi = shape.key_blocks * shape.key_block + 4;
    INFO("trial " << trial << ": qb " << shape.query_block << " kb " << shape.key_block << " rows "
                  << shape.query_blocks << " blocks " << shape.key_blocks << " layouts " << layouts
                  << " heads/layout " << shape.query_heads_per_layout << " first "
                  << shape.first_position);
    for (index_t h = 0; h < heads; ++h) {
      // Element predicate and runs over the whole plane (and beyond it).
      for (position p = q_lo; p < q_hi; ++p) {
        for (position j = -3; j < kv_hi; ++j)
          REQUIRE(mask.allows(p, j, h) == brute_allows(layout, p, j, h));
        for (int t = 0; t < 3; ++t) {
          const position a = r.integer(-3, kv_hi), b = r.integer(-3, kv_hi);
          const position_range kv{std::min(a, b), std::max(a, b) + r.integer(0, 1)};
          std::vector<std::pair<position, position>> runs;
          mask.for_each_visible_run(
              p, h, kv, [&](position begin, position end) { runs.emplace_back(begin, end); });
          REQUIRE(runs == scan_runs(layout, p, h, kv));
        }
      }
      // Tiles: random rectangles, some aligned to the blocks (where full tiles occur).
      for (int t = 0; t < 40; ++t) {
        position_range q, kv;
        if (t % 2 == 0) {
          const index_t r0 = r.integer(-1, shape.query_blocks);
          q = {shape.first_position + r0 * shape.query_block,
               shape.first_position + (r0 + r.integer(1, 2)) * shape.query_block};
          const index_t b0 = r.integer(-1, shape.key_blocks);
          kv = {b0 * shape.key_block, (b0 + r.integer(1, 2)) * shape.key_block};
        } else {
          const position a = r.integer(q_lo, q_hi), b = r.integer(q_lo, q_hi);
          q = {std::min(a, b), std::max(a, b) + 1};
          const position c = r.integer(-3, kv_hi), d = r.integer(-3, kv_hi);
          kv = {std::min(c, d), std::max(c, d) + 1};
        }
        const tile_kind expected = brute_classify(layout, q, kv, h);
        INFO("q [" << q.begin << ", " << q.end << ") kv [" << kv.begin << ", " << kv.end
                   << ") head " << h);
        REQUIRE(mask.classify(q, kv, h) == expected);  // exact, so in particular never wrong
        ++checked_tiles;
        full_tiles += expected == tile_kind::full;
        empty_tiles += expected == tile_kind::empty;
        partial_tiles += expected == tile_kind::partial;
      }
    }
    // Empty ranges see nothing.
    CHECK(mask.classify({3, 3}, {0, 5}, 0) == tile_kind::empty);
    CHECK(mask.classify({0, 5}, {2, 2}, 0) == tile_kind::empty);
  }
  // The random tiles exercised all three answers.
  CHECK(full_tiles > checked_tiles / 20);
  CHECK(empty_tiles > checked_tiles / 20);
  CHECK(partial_tiles > checked_tiles / 20);
}

// =============================================================================================
// Pattern builders

namespace {

// Checks that `layout` is square over ceil(tokens/block) blocks and lists exactly the pairs
// (i, j) for which defined(i, j) holds.
template <class Definition>
void check_pattern(const block_layout& layout, index_t tokens, index_t block,
                   Definition&& defined) {
  const index_t blocks = (tokens + block - 1) / block;
  const auto& s = layout.shape();
  REQUIRE(s.query_block == block);
  REQUIRE(s.key_block == block);
  REQUIRE(s.query_blocks == blocks);
  REQUIRE(s.key_blocks == blocks);
  REQUIRE(s.layouts == 1);
  REQUIRE(s.first_position == 0);
  index_t listed = 0;
  for (index_t i = 0; i < blocks; ++i) {
    std::vector<index_t> expected;
    for (index_t j = 0; j < blocks; ++j)
      if (defined(i, j)) expected.push_back(j);
    const auto row = layout.row(0, i);
    INFO("block row " << i);
    REQUIRE(std::vector<index_t>(row.begin(), row.end()) == expected);
    listed += static_cast<index_t>(expected.size());
  }
  CHECK(layout.nonzero_blocks() == listed);
  CHECK_NOTHROW(revalidated(layout));
}

}  // namespace

TEST_CASE("dense_layout: every block, density 1", "[block_sparse][patterns]") {
  for (index_t tokens : {1, 7, 64, 65, 200}) {
    for (index_t block : {1, 3, 16, 64}) {
      const block_layout layout = attnkit::dense_layout(tokens, block);
      check_pattern(layout, tokens, block, [](index_t, index_t) { return true; });
      CHECK(layout.density() == 1.0);
      // As a mask it equals full attention on the tokens.
      const block_sparse mask(layout);
      CHECK(mask.classify({0, tokens}, {0, tokens}, 0) == tile_kind::full);
    }
  }
  const block_layout none = attnkit::dense_layout(0, 4);
  CHECK(none.shape().query_blocks == 0);
  CHECK(none.density() == 0.0);
}

TEST_CASE("strided_layout: |i - j| < local or (i - j) % stride == 0, causal j <= i",
          "[block_sparse][patterns]") {
  for (bool causal : {true, false})
    for (index_t tokens : {1, 33, 100, 257})
      for (index_t block : {1, 4, 16})
        for (index_t local : {0, 1, 2, 5})
          for (index_t stride : {1, 2, 3, 7}) {
            INFO("tokens " << tokens << " block " << block << " local " << local << " stride "
                           << stride << " causal " << causal);
            check_pattern(attnkit::strided_layout(tokens, block, local, stride, causal), tokens,
                          block, [&](index_t i, index_t j) {
                            if (causal && j > i) return false;
                            const index_t distance = i > j ? i - j : j - i;
                            return distance < local || (i - j) % stride == 0;
                          });
          }
}

TEST_CASE("fixed_layout: own chunk or summary blocks of every chunk, causal j <= i",
          "[block_sparse][patterns]") {
  for (bool causal : {true, false})
    for (index_t tokens : {1, 50, 128, 299})
      for (index_t block : {1, 4, 8})
        for (index_t local : {1, 2, 4, 6})
          for (index_t summary = 0; summary <= local; ++summary) {
            INFO("tokens " << tokens << " block " << block << " local " << local << " summary "
                           << summary << " causal " << causal);
            check_pattern(attnkit::fixed_layout(tokens, block, local, summary, causal), tokens,
                          block, [&](index_t i, index_t j) {
                            if (causal && j > i) return false;
                            return i / local == j / local || j % local >= local - summary;
                          });
          }
}

TEST_CASE("pattern builders: invalid arguments", "[block_sparse][patterns]") {
  CHECK_THROWS_WITH(attnkit::dense_layout(-1, 4),
                    Catch::Contains("attnkit::dense_layout: tokens is -1"));
  CHECK_THROWS_WITH(attnkit::dense_layout(8, 0), Catch::Contains("block is 0, it must be >= 1"));
  CHECK_THROWS_WITH(attnkit::strided_layout(8, 2, -1, 2),
                    Catch::Contains("attnkit::strided_layout: local_blocks is -1"));
  CHECK_THROWS_WITH(attnkit::strided_layout(8, 2, 1, 0), Catch::Contains("stride is 0"));
  CHECK_THROWS_WITH(attnkit::fixed_layout(8, 2, 0, 0),
                    Catch::Contains("attnkit::fixed_layout: local_blocks is 0"));
  CHECK_THROWS_WITH(attnkit::fixed_layout(8, 2, 2, 3),
                    Catch::Contains("summary_blocks is 3, it must be in [0, local_blocks = 2]"));
}

// =============================================================================================
// MoBA gating

namespace {

struct moba_case {
  index_t q_tokens, kv_tokens, q_heads, kv_heads, head_dim, block_size, top_k;
  bool causal = true;
  layout k_layout = layout::contiguous;
  layout q_layout = layout::contiguous;
};

template <class TQ, class TK>
struct moba_inputs {
  tensor3<TQ> q;
  tensor3<TK> k;
};

template <class TQ, class TK>
moba_inputs<TQ, TK> make_moba_inputs(const moba_case& c, std::uint64_t seed) {
  moba_inputs<TQ, TK> in{make_tensor3<TQ>(c.q_tokens, c.q_heads, c.head_dim, c.q_layout),
                         make_tensor3<TK>(c.kv_tokens, c.kv_heads, c.head_dim, c.k_layout)};
  fill_normal(in.q, seed * 7 + 1);
  // A per-(block, head) offset on top of the noise spreads the block means apart, as the
  // clustered keys of real models do; plain N(0,1) keys make every mean ~N(0, 1/block).
  rng offsets(seed * 7 + 2);
  const index_t blocks = (c.kv_tokens + c.block_size - 1) / c.block_size;
  std::vector<double> shift(static_cast<std::size_t>(blocks * c.kv_heads * c.head_dim));
  for (auto& x : shift) x = 0.5 * offsets.normal();
  rng noise(seed * 7 + 3);
  in.k.for_each([&](const auto& at, index_t pos) {
    const index_t b = at[0] / c.block_size;
    const double base =
        shift[static_cast<std::size_t>((b * c.kv_heads + at[1]) * c.head_dim + at[2])];
    in.k.storage[static_cast<std::size_t>(pos)] = round_to<TK>(base + noise.normal());
  });
  return in;
}

struct layout_rows {
  block_layout_shape shape;
  std::vector<index_t> offsets, columns;
  std::vector<index_t> row(index_t h, index_t i) const {
    const index_t at = h * shape.query_blocks + i;
    return {columns.begin() + offsets[static_cast<std::size_t>(at)],
            columns.begin() + offsets[static_cast<std::size_t>(at + 1)]};
  }
};

layout_rows copy_rows(const block_layout& l) {
  return {l.shape(),
          {l.row_offsets().begin(), l.row_offsets().end()},
          {l.columns().begin(), l.columns().end()}};
}

// Exact (fp64) gate scores of every block for query (i, h), independently of the backends.
template <class TQ, class TK>
std::vector<double> exact_scores(const moba_inputs<TQ, TK>& in, const moba_case& c, index_t i,
                                 index_t h) {
  const auto q = in.q.cview();
  const auto k = in.k.cview();
  const index_t g = h / (c.q_heads / c.kv_heads);
  const index_t blocks = (c.kv_tokens + c.block_size - 1) / c.block_size;
  std::vector<double> scores(static_cast<std::size_t>(blocks));
  for (index_t b = 0; b < blocks; ++b) {
    const index_t end = std::min(c.kv_tokens, (b + 1) * c.block_size);
    double s = 0.0;
    for (index_t t = b * c.block_size; t < end; ++t)
      for (index_t d = 0; d < c.head_dim; ++d)
        s += double(attnkit::to_float(q(i, h, d))) * double(attnkit::to_float(k(t, g, d)));
    scores[static_cast<std::size_t>(b)] = s / double(end - b * c.block_size);
  }
  return scores;
}

// The structure every MoBA layout must have, whatever the scores: shape fields, a valid layout,
// row sizes, the own block last under causality, every candidate before it.
void check_moba_structure(const block_layout& layout, const moba_case& c) {
  const auto& s = layout.shape();
  const index_t blocks = (c.kv_tokens + c.block_size - 1) / c.block_size;
  REQUIRE(s.layouts == c.q_heads);
  REQUIRE(s.query_heads_per_layout == 1);
  REQUIRE(s.query_block == 1);
  REQUIRE(s.query_blocks == c.q_tokens);
  REQUIRE(s.first_position == c.kv_tokens - c.q_tokens);
  REQUIRE(s.key_block == c.block_size);
  REQUIRE(s.key_blocks == blocks);
  REQUIRE_NOTHROW(revalidated(layout));
  for (index_t h = 0; h < c.q_heads; ++h)
    for (index_t i = 0; i < c.q_tokens; ++i) {
      const position p = s.first_position + i;
      const auto row = layout.row(h, i);
      if (!c.causal) {
        REQUIRE(static_cast<index_t>(row.size()) == std::min(c.top_k, blocks));
      } else if (p < 0) {
        REQUIRE(row.empty());
      } else {
        const index_t own = p / c.block_size;
        REQUIRE(static_cast<index_t>(row.size()) == std::min(c.top_k, own) + 1);
        REQUIRE(row.back() == own);
      }
    }
  // The mask over it serves the call it was made for.
  REQUIRE_NOTHROW(block_sparse(layout).check({c.q_tokens, c.kv_tokens, c.q_heads, c.kv_heads}));
}

// Compares the SIMD rows with the reference rows. Where they differ, every block in the
// symmetric difference must score (exactly) within `tolerance` of the reference's k-th kept
// score: the two backends then disagree only on which of near-equal candidates wins.
//
// Tolerance: the SIMD kernel sums each block's ≤ block_size rows in fp32 and takes a fp32 dot
// product of length d (FMA, any order), so a score computed from the same rounded inputs is off
// by at most about eps·(block_size + d + 2)·Σ_c |q_c|·max|k| (eps = 2^-24; standard recursive
// summation bounds, γ_n ≈ n·eps, applied to the mean and then the dot product); two scores can
// then swap only if their exact values are within twice that.
template <class TQ, class TK>
index_t compare_with_reference(const moba_inputs<TQ, TK>& in, const moba_case& c,
                               const layout_rows& simd_rows, const layout_rows& ref_rows) {
  REQUIRE(simd_rows.offsets == ref_rows.offsets);
  double max_abs_k = 0.0;
  in.k.for_each([&](const auto& at, index_t) {
    max_abs_k = std::max(max_abs_k,
                         std::fabs(double(attnkit::to_float(in.k.cview()(at[0], at[1], at[2])))));
  });
  const double eps = std::ldexp(1.0, -24);
  index_t swaps = 0;
  for (index_t h = 0; h < c.q_heads; ++h)
    for (index_t i = 0; i < c.q_tokens; ++i) {
      const auto a = simd_rows.row(h, i);
      const auto b = ref_rows.row(h, i);
      if (a == b) continue;
      ++swaps;
      const auto scores = exact_scores(in, c, i, h);
      double q_l1 = 0.0;
      for (index_t d = 0; d < c.head_dim; ++d)
        q_l1 += std::fabs(double(attnkit::to_float(in.q.cview()(i, h, d))));
      const double tolerance = 2.0 * eps * double(c.block_size + c.head_dim + 2) * q_l1 * max_abs_k;
      // The reference's k-th kept candidate score (the own block is not a candidate).
      std::vector<index_t> candidates_kept = b;
      if (c.causal) candidates_kept.pop_back();
      double kth = HUGE_VAL;
      for (index_t x : candidates_kept) kth = std::min(kth, scores[static_cast<std::size_t>(x)]);
      std::vector<index_t> differ;
      std::set_symmetric_difference(a.begin(), a.end(), b.begin(), b.end(),
                                    std::back_inserter(differ));
      for (index_t x : differ) {
        INFO("head " << h << " token " << i << ": block " << x << " scores "
                     << scores[static_cast<std::size_t>(x)] << ", the k-th kept " << kth
                     << ", tolerance " << tolerance);
        REQUIRE(std::fabs(scores[static_cast<std::size_t>(x)] - kth) <= tolerance);
      }
    }
  return swaps;
}

template <class TQ, class TK>
void check_moba_case(const moba_case& c, std::uint64_t seed) {
  INFO("q_tokens " << c.q_tokens << " kv_tokens " << c.kv_tokens << " heads " << c.q_heads << "/"
                   << c.kv_heads << " d " << c.head_dim << " block " << c.block_size << " top_k "
                   << c.top_k << " causal " << c.causal << " q " << dtype_name<TQ> << " k "
                   << dtype_name<TK> << " k layout " << layout_name(c.k_layout));
  const auto in = make_moba_inputs<TQ, TK>(c, seed);
  const attnkit::moba_options options{c.block_size, c.top_k, c.causal};
  block_layout ref, fast;
  attnkit::moba_gate(attnkit::backend::reference{}, in.q.cview(), in.k.cview(), options, ref,
                     attnkit::parallel::serial{});
  attnkit::moba_gate(attnkit::cpu, in.q.cview(), in.k.cview(), options, fast);
  check_moba_structure(ref, c);
  check_moba_structure(fast, c);
  const index_t swaps = compare_with_reference(in, c, copy_rows(fast), copy_rows(ref));
  // Near-ties are rare with these inputs: a kernel that merely ranks "roughly" would differ on
  // many rows (and fail the tolerance above on some).
  CHECK(swaps <= std::max<index_t>(2, c.q_heads * c.q_tokens / 50));
}

}  // namespace

TEST_CASE("moba_gate: SIMD selection equals the reference up to near-ties", "[moba]") {
  const std::vector<moba_case> cases = {
      // prefill, GQA 8/2, d 64, blocks of 16, top 3
      {96, 96, 8, 2, 64, 16, 3},
      // chunked prefill: q_tokens < kv_tokens, short last block (kv 203 = 12·16 + 11)
      {40, 203, 4, 2, 64, 16, 3},
      // decode, MQA, d 128, larger k
      {1, 1000, 8, 1, 128, 32, 6},
      // more queries than keys: the first rows see nothing under causality
      {50, 30, 2, 2, 32, 4, 2},
      // odd head dim (vector tail), MHA, block 1 (every key its own block), k on the nth path
      {33, 70, 3, 3, 13, 1, 12},
      // k = 0: only the own block
      {20, 100, 2, 1, 16, 8, 0},
      // non-causal, all queries choose among every block
      {30, 130, 4, 2, 80, 10, 4},
      {10, 64, 2, 2, 16, 16, 10, false},  // k > blocks
      {17, 300, 4, 4, 24, 7, 20, false},  // nth_element path, short last block
  };
  std::uint64_t seed = 1;
  for (const auto& c : cases) check_moba_case<float, float>(c, seed++);
  // Strided and 16-bit keys, padded queries.
  moba_case strided{64, 200, 4, 2, 40, 16, 3};
  strided.k_layout = layout::dim_strided;
  strided.q_layout = layout::padded;
  check_moba_case<float, float>(strided, 11);
  moba_case bhsd{64, 200, 4, 2, 64, 16, 3};
  bhsd.k_layout = layout::bhsd;
  check_moba_case<attnkit::half, attnkit::half>(bhsd, 12);
  check_moba_case<float, attnkit::bfloat16>({48, 160, 8, 2, 64, 16, 2}, 13);
  check_moba_case<attnkit::bfloat16, attnkit::half>({48, 160, 8, 2, 64, 16, 9, false}, 14);
}

// Keys built so that many rows have near-ties: every block's rows are the same vector
// base + 2^-18·noise_b, so block means are exact and differ by ~1e-5 of scores of ~5, about the
// fp32 rounding of the dot products. The SIMD kernel then swaps near-equal blocks on some rows,
// and the tolerance must accept exactly those (the acceptance path is exercised, not just
// present).
TEST_CASE("moba_gate: near-ties are the only accepted differences", "[moba]") {
  const moba_case c{64, 640, 4, 2, 32, 8, 3};
  moba_inputs<float, float> in{make_tensor3<float>(c.q_tokens, c.q_heads, c.head_dim),
                               make_tensor3<float>(c.kv_tokens, c.kv_heads, c.head_dim)};
  fill_normal(in.q, 31);
  rng r(32);
  std::vector<double> base(static_cast<std::size_t>(c.kv_heads * c.head_dim));
  for (auto& x : base) x = r.normal();
  const index_t blocks = c.kv_tokens / c.block_size;
  std::vector<double> noise(static_cast<std::size_t>(blocks * c.kv_heads * c.head_dim));
  for (auto& x : noise) x = std::ldexp(r.normal(), -18);
  fill_with(in.k, [&](const auto& at) {
    const auto g_d = static_cast<std::size_t>(at[1] * c.head_dim + at[2]);
    return base[g_d] + noise[static_cast<std::size_t>(at[0] / c.block_size) * base.size() + g_d];
  });
  block_layout ref, fast;
  const attnkit::moba_options options{c.block_size, c.top_k, c.causal};
  attnkit::moba_gate(attnkit::backend::reference{}, in.q.cview(), in.k.cview(), options, ref);
  attnkit::moba_gate(attnkit::cpu, in.q.cview(), in.k.cview(), options, fast);
  check_moba_structure(fast, c);
  const index_t swaps = compare_with_reference(in, c, copy_rows(fast), copy_rows(ref));
  CHECK(swaps > 0);
}

TEST_CASE("moba_gate: exact ties go to the lower block index in both backends", "[moba]") {
  // Block b's keys are all c_b·u (u a small integer vector), so its mean is exactly c_b·u and
  // its score c_b·(q·u): blocks with equal c_b tie bit for bit in any precision (the same
  // operations on the same numbers), and blocks with c_b = 2 score exactly twice the others.
  // Pattern 0: every c_b = 1 (all tied); pattern 1: c_b = 2 for b % 4 == 3 (ties below and
  // above the k-th score, which the nth_element path must split by index).
  for (int pattern = 0; pattern < 2; ++pattern)
    for (index_t top_k : {1, 3, 8, 9, 15})
      for (bool causal : {true, false}) {
        const moba_case c{24, 160, 4, 2, 32, 8, top_k, causal};
        auto q = make_tensor3<float>(c.q_tokens, c.q_heads, c.head_dim);
        auto k = make_tensor3<float>(c.kv_tokens, c.kv_heads, c.head_dim);
        fill_normal(q, 5);
        auto weight = [&](index_t b) { return pattern == 1 && b % 4 == 3 ? 2.0 : 1.0; };
        auto u = [](index_t d) { return double(d % 5) - 2.0; };
        fill_with(k, [&](const auto& at) { return weight(at[0] / c.block_size) * u(at[2]); });
        const attnkit::moba_options options{c.block_size, c.top_k, c.causal};
        for (int backend = 0; backend < 2; ++backend) {
          INFO("pattern " << pattern << " top_k " << top_k << " causal " << causal
                          << (backend == 0 ? " reference" : " cpu"));
          block_layout layout;
          if (backend == 0)
            attnkit::moba_gate(attnkit::backend::reference{}, q.cview(), k.cview(), options,
                               layout);
          else
            attnkit::moba_gate(attnkit::cpu, q.cview(), k.cview(), options, layout);
          check_moba_structure(layout, c);
          for (index_t h = 0; h < c.q_heads; ++h)
            for (index_t i = 0; i < c.q_tokens; ++i) {
              double qu = 0.0;
              for (index_t d = 0; d < c.head_dim; ++d) qu += double(q.cview()(i, h, d)) * u(d);
              if (std::fabs(qu) < 1e-3) continue;  // the fp32 sign of q·u could differ
              const position p = c.kv_tokens - c.q_tokens + i;
              const index_t candidates = causal ? p / c.block_size : 20;
              std::vector<index_t> expected(static_cast<std::size_t>(candidates));
              for (index_t b = 0; b < candidates; ++b) expected[static_cast<std::size_t>(b)] = b;
              std::stable_sort(expected.begin(), expected.end(), [&](index_t a, index_t b) {
                return weight(a) * qu > weight(b) * qu;
              });
              expected.resize(static_cast<std::size_t>(std::min(top_k, candidates)));
              std::sort(expected.begin(), expected.end());
              if (causal) expected.push_back(p / c.block_size);
              const auto row = layout.row(h, i);
              REQUIRE(std::vector<index_t>(row.begin(), row.end()) == expected);
            }
        }
      }
}

TEST_CASE("moba_gate: NaN and -inf scores rank lowest, ties by index", "[moba]") {
  // Block b's keys are all (b + 1)·0.37 (distinct, well separated scores for positive queries),
  // except: blocks 2 and 5 hold a NaN (score NaN), block 4 a -inf in dim 0 (score -inf). Both
  // rank as -inf, below every finite score, among themselves by index. Small k keeps them out;
  // k near the candidate count needs them, which the SIMD kernel's vector network cannot rank
  // (NaN compares false) and must redo per row.
  const index_t block = 4, blocks = 8, d = 8;
  auto q = make_tensor3<float>(32, 2, d);
  auto k = make_tensor3<float>(blocks * block, 1, d);
  fill_with(q, [](const auto& at) { return 0.5 + 0.125 * double((at[0] + at[1] + at[2]) % 8); });
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  fill_with(k, [&](const auto& at) {
    const index_t b = at[0] / block;
    if ((b == 2 || b == 5) && at[2] == 3) return nan;
    if (b == 4 && at[2] == 0) return -inf;
    return 0.37 * double(b + 1);
  });
  auto rank = [&](index_t b) { return b == 2 || b == 4 || b == 5 ? -inf : double(b); };
  for (bool causal : {true, false})
    for (index_t top_k : {1, 3, 5, 7, 9, 12}) {
      for (int backend = 0; backend < 2; ++backend) {
        INFO("causal " << causal << " top_k " << top_k << (backend == 0 ? " reference" : " cpu"));
        block_layout layout;
        const attnkit::moba_options options{block, top_k, causal};
        if (backend == 0)
          attnkit::moba_gate(attnkit::backend::reference{}, q.cview(), k.cview(), options, layout);
        else
          attnkit::moba_gate(attnkit::cpu, q.cview(), k.cview(), options, layout);
        for (index_t h = 0; h < 2; ++h)
          for (index_t i = 0; i < 32; ++i) {
            const index_t candidates = causal ? i / block : blocks;
            std::vector<index_t> expected;
            for (index_t b = 0; b < candidates; ++b) expected.push_back(b);
            std::stable_sort(expected.begin(), expected.end(),
                             [&](index_t a, index_t b) { return rank(a) > rank(b); });
            expected.resize(static_cast<std::size_t>(std::min(top_k, candidates)));
            std::sort(expected.begin(), expected.end());
            if (causal) expected.push_back(i / block);
            const auto row = layout.row(h, i);
            REQUIRE(std::vector<index_t>(row.begin(), row.end()) == expected);
          }
      }
    }
}

TEST_CASE("moba_gate: rows of one vector with different candidate counts", "[moba]") {
  // Blocks of 2 keys: consecutive query rows (which the SIMD kernel ranks together, one per
  // lane) have different own blocks. Scores grow with the block index, so each row's own block
  // would beat all its candidates: it must not be ranked as one. Expected: the k blocks just
  // before the own block, then the own block.
  const index_t block = 2, tokens = 70, d = 16;
  auto q = make_tensor3<float>(tokens, 2, d);
  auto k = make_tensor3<float>(tokens, 1, d);
  fill_with(q, [](const auto& at) { return 0.25 + 0.125 * double((at[0] * 3 + at[2]) % 5); });
  fill_with(k, [&](const auto& at) { return 0.01 * double(at[0] / block + 1); });
  for (index_t top_k : {1, 3, 8}) {
    for (int backend = 0; backend < 2; ++backend) {
      INFO("top_k " << top_k << (backend == 0 ? " reference" : " cpu"));
      block_layout layout;
      const attnkit::moba_options options{block, top_k, true};
      if (backend == 0)
        attnkit::moba_gate(attnkit::backend::reference{}, q.cview(), k.cview(), options, layout);
      else
        attnkit::moba_gate(attnkit::cpu, q.cview(), k.cview(), options, layout,
                           attnkit::parallel::serial{});
      for (index_t h = 0; h < 2; ++h)
        for (index_t i = 0; i < tokens; ++i) {
          const index_t own = i / block;
          std::vector<index_t> expected;
          for (index_t b = std::max<index_t>(0, own - top_k); b <= own; ++b) expected.push_back(b);
          const auto row = layout.row(h, i);
          REQUIRE(std::vector<index_t>(row.begin(), row.end()) == expected);
        }
    }
  }
}

TEST_CASE("moba_gate: a known selection", "[moba]") {
  // One head, d 2, blocks of 2 keys, 10 keys (5 blocks). Block means along x: 1, 4, -2, 3, 0
  // (the last block's mean over its 2 rows); the query (1, 0) at position 9 (own block 4)
  // scores them 1, 4, -2, 3: top 2 = blocks 1 and 3, plus own block 4.
  auto q = make_tensor3<float>(1, 1, 2);
  auto k = make_tensor3<float>(10, 1, 2);
  fill_with(q, [](const auto& at) { return at[2] == 0 ? 1.0 : 0.0; });
  const double x[10] = {0, 2, 3, 5, -1, -3, 2, 4, 0.5, -0.5};
  fill_with(k, [&](const auto& at) { return at[2] == 0 ? x[at[0]] : 7.0 * (at[0] % 3); });
  for (int backend = 0; backend < 2; ++backend) {
    block_layout layout;
    const attnkit::moba_options options{2, 2, true};
    if (backend == 0)
      attnkit::moba_gate(attnkit::backend::reference{}, q.cview(), k.cview(), options, layout);
    else
      attnkit::moba_gate(attnkit::cpu, q.cview(), k.cview(), options, layout);
    const auto row = layout.row(0, 0);
    CHECK(std::vector<index_t>(row.begin(), row.end()) == std::vector<index_t>{1, 3, 4});
    // Non-causal, top 3 of all five blocks: 1 (4), 3 (3), 0 (1).
    attnkit::moba_options all{2, 3, false};
    if (backend == 0)
      attnkit::moba_gate(attnkit::backend::reference{}, q.cview(), k.cview(), all, layout);
    else
      attnkit::moba_gate(attnkit::cpu, q.cview(), k.cview(), all, layout);
    const auto row2 = layout.row(0, 0);
    CHECK(std::vector<index_t>(row2.begin(), row2.end()) == std::vector<index_t>{0, 1, 3});
  }
}

TEST_CASE("moba_gate: k >= candidates keeps every past block; with causal it is causal", "[moba]") {
  for (const moba_case& c : {moba_case{70, 70, 4, 2, 16, 8, 9}, moba_case{30, 101, 2, 1, 16, 8, 50},
                             moba_case{40, 25, 2, 2, 8, 4, 7}}) {
    auto in = make_moba_inputs<float, float>(c, 3);
    for (int backend = 0; backend < 2; ++backend) {
      block_layout layout;
      const attnkit::moba_options options{c.block_size, c.top_k, true};
      if (backend == 0)
        attnkit::moba_gate(attnkit::backend::reference{}, in.q.cview(), in.k.cview(), options,
                           layout);
      else
        attnkit::moba_gate(attnkit::cpu, in.q.cview(), in.k.cview(), options, layout);
      const block_sparse gate(layout);
      const attnkit::causal causal;
      const position first = c.kv_tokens - c.q_tokens;
      for (index_t h = 0; h < c.q_heads; ++h)
        for (position p = first; p < c.kv_tokens; ++p)
          for (position j = 0; j < c.kv_tokens; ++j) {
            // Block-level: every block up to the own one.
            REQUIRE(gate.allows(p, j, h) == (p >= 0 && j / c.block_size <= p / c.block_size));
            // Element-level, composed with causal: exactly causal.
            REQUIRE((gate.allows(p, j, h) && causal.allows(p, j, h)) == causal.allows(p, j, h));
          }
      // Non-causal with k >= blocks: every block, i.e. full attention.
      attnkit::moba_options everything{c.block_size, c.top_k + 100, false};
      if (backend == 0)
        attnkit::moba_gate(attnkit::backend::reference{}, in.q.cview(), in.k.cview(), everything,
                           layout);
      else
        attnkit::moba_gate(attnkit::cpu, in.q.cview(), in.k.cview(), everything, layout);
      const block_sparse all(layout);
      for (index_t h = 0; h < c.q_heads; ++h)
        CHECK(all.classify({first, c.kv_tokens}, {0, c.kv_tokens}, h) == tile_kind::full);
    }
  }
}

TEST_CASE("moba_gate: executors, layout reuse and empty calls", "[moba]") {
  const moba_case big{130, 600, 8, 2, 64, 32, 3};
  const auto in = make_moba_inputs<float, float>(big, 21);
  const attnkit::moba_options options{big.block_size, big.top_k, true};
  block_layout pooled, serial, custom;
  attnkit::moba_gate(attnkit::cpu, in.q.cview(), in.k.cview(), options, pooled);
  attnkit::moba_gate(attnkit::cpu, in.q.cview(), in.k.cview(), options, serial,
                     attnkit::parallel::serial{});
  attnkit::parallel::thread_pool pool(3);
  std::size_t calls = 0;
  auto on_pool = [&](std::size_t n, auto&& item) {
    ++calls;
    pool(n, item);
  };
  attnkit::moba_gate(attnkit::cpu, in.q.cview(), in.k.cview(), options, custom, on_pool);
  CHECK(calls > 0);
  CHECK(same_layout(pooled, serial));
  CHECK(same_layout(pooled, custom));

  // Reusing a layout for a smaller, then a larger call gives the same as a fresh one.
  const moba_case small{5, 40, 2, 1, 64, 8, 2};
  const auto small_in = make_moba_inputs<float, float>(small, 22);
  attnkit::moba_gate(attnkit::cpu, small_in.q.cview(), small_in.k.cview(),
                     {small.block_size, small.top_k, true}, custom);
  block_layout fresh_small;
  attnkit::moba_gate(attnkit::cpu, small_in.q.cview(), small_in.k.cview(),
                     {small.block_size, small.top_k, true}, fresh_small);
  CHECK(same_layout(custom, fresh_small));
  attnkit::moba_gate(attnkit::cpu, in.q.cview(), in.k.cview(), options, custom);
  CHECK(same_layout(custom, pooled));

  // No queries, no keys.
  auto q0 = make_tensor3<float>(0, 4, 16);
  auto k0 = make_tensor3<float>(0, 2, 16);
  auto q3 = make_tensor3<float>(3, 4, 16);
  fill_normal(q3, 1);
  block_layout layout;
  attnkit::moba_gate(attnkit::cpu, q0.cview(), k0.cview(), {}, layout);
  CHECK(layout.shape().query_blocks == 0);
  CHECK(layout.row_offsets().size() == 1);
  attnkit::moba_gate(attnkit::cpu, q3.cview(), k0.cview(), {}, layout);
  CHECK(layout.shape().key_blocks == 0);
  CHECK(layout.nonzero_blocks() == 0);
  attnkit::moba_gate(attnkit::cpu, q3.cview(), k0.cview(), {4, 2, false}, layout);
  CHECK(layout.nonzero_blocks() == 0);
}

TEST_CASE("moba_gate: invalid arguments throw and leave the layout unchanged", "[moba]") {
  auto q = make_tensor3<float>(6, 4, 16);
  auto k = make_tensor3<float>(20, 2, 16);
  auto k_dim = make_tensor3<float>(20, 2, 8);
  auto k_heads = make_tensor3<float>(20, 3, 16);
  auto q_none = make_tensor3<float>(6, 0, 16);
  auto q_dim0 = make_tensor3<float>(6, 4, 0);
  auto k_dim0 = make_tensor3<float>(20, 2, 0);
  fill_normal(q, 1);
  fill_normal(k, 2);
  fill_normal(k_dim, 3);
  fill_normal(k_heads, 4);
  const attnkit::tensor_view<const float, 3> null_q(nullptr, {6, 4, 16});
  const attnkit::tensor_view<const float, 3> null_k(nullptr, {20, 2, 16});

  for (int backend = 0; backend < 2; ++backend) {
    block_layout layout;
    attnkit::moba_gate(attnkit::cpu, q.cview(), k.cview(), {4, 2, true}, layout);
    const block_layout before = layout;
    auto expect = [&](auto&& call, const char* fragment) {
      INFO(fragment);
      CHECK_THROWS_WITH(call(),
                        Catch::Contains("attnkit::moba_gate: ") && Catch::Contains(fragment));
      CHECK(same_layout(layout, before));
    };
    auto gate = [&](auto qv, auto kv, attnkit::moba_options o) {
      return [&, qv, kv, o] {
        if (backend == 0)
          attnkit::moba_gate(attnkit::backend::reference{}, qv, kv, o, layout);
        else
          attnkit::moba_gate(attnkit::cpu, qv, kv, o, layout);
      };
    };
    expect(gate(q.cview(), k_dim.cview(), {}), "k head_dim (extent 2) is 8 but q head_dim is 16");
    expect(gate(q.cview(), k_heads.cview(), {}), "q_heads (4) is not a multiple of kv_heads (3)");
    expect(gate(q_none.cview(), k.cview(), {}), "q_heads (q extent 1) is 0");
    expect(gate(q_dim0.cview(), k_dim0.cview(), {}), "head_dim (q extent 2) is 0, it must be >= 1");
    expect(gate(q.cview(), k.cview(), {0, 2, true}), "block_size is 0, it must be >= 1");
    expect(gate(q.cview(), k.cview(), {-4, 2, true}), "block_size is -4");
    expect(gate(q.cview(), k.cview(), {4, -1, true}), "top_k is -1, it must be >= 0");
    expect(gate(null_q, k.cview(), {}), "'q' has null data but 384 elements");
    expect(gate(q.cview(), null_k, {}), "'k' has null data but 640 elements");
  }
}
