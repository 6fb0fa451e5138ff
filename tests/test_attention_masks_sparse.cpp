// attnkit::cpu under block-sparse masks — Sparse-Transformer strided and fixed layouts, random
// layouts with odd block sizes, MoBA gating, Quest page selection — against the fp64 reference
// with the same mask applied densely (allows() only), prefill, chunked prefill and decode, alone
// and composed with causal. Windows, custom bits and their intersections are in
// test_attention_masks.cpp; the harness and the error model are those of support/harness.hpp.
//
// The layouts are built by the selection front doors on the reference backend (moba_gate,
// page_bounds::update, quest_select): which blocks they select is their own tests' business
// (test_quest.cpp and the MoBA tests); here any valid selection serves, and the reference backend
// keeps this file's compile time down.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "attnkit/attention/moba.hpp"
#include "attnkit/attention/quest.hpp"
#include "attnkit/mask/block_patterns.hpp"
#include "attnkit/mask/block_sparse.hpp"
#include "attnkit/mask/intersection.hpp"
#include "support/masked_harness.hpp"

using namespace attnkit_test;
using attnkit::block_layout;
using attnkit::block_layout_shape;
using attnkit::block_sparse;

namespace {

constexpr attnkit::backend::reference reference{};

const any_mask causal_mask(attnkit::causal{}, "causal");
const any_mask full_mask(attnkit::full{}, "full");

// The layout's mask alone, and composed with causal (element-level causality inside the blocks).
any_mask sparse(const block_layout& layout, const std::string& name) {
  return any_mask(block_sparse{layout}, name);
}
any_mask sparse_causal(const block_layout& layout, const std::string& name) {
  return any_mask(block_sparse{layout} & attnkit::causal{}, name + " & causal");
}

// A random layout over the case's queries and keys: query blocks of query_block positions
// starting `shift` positions before the first query (so block rows and the kernel's tiles do not
// line up), KV blocks of key_block keys (the last one short where key_block does not divide
// n_kv), each listed with probability `density`, and about one block row in six empty.
block_layout random_layout(const attention_case& c, index_t query_block, index_t key_block,
                           index_t layouts, index_t heads_per_layout, double density,
                           std::uint64_t seed, index_t shift = 3) {
  block_layout_shape s;
  s.query_block = query_block;
  s.key_block = key_block;
  s.query_blocks = (c.q_tokens + shift + query_block - 1) / query_block;
  s.key_blocks = (c.kv_tokens + key_block - 1) / key_block;
  s.layouts = layouts;
  s.query_heads_per_layout = heads_per_layout;
  s.first_position = c.kv_tokens - c.q_tokens - shift;
  rng r(seed);
  std::vector<index_t> offsets{0}, columns;
  for (index_t row = 0; row < layouts * s.query_blocks; ++row) {
    if (r.uniform() >= 1.0 / 6.0)
      for (index_t block = 0; block < s.key_blocks; ++block)
        if (r.uniform() < density) columns.push_back(block);
    offsets.push_back(static_cast<index_t>(columns.size()));
  }
  return block_layout(s, std::move(offsets), std::move(columns));
}

std::string block_layout_name(const char* what, index_t query_block, index_t key_block,
                              index_t layouts) {
  std::ostringstream s;
  s << what << " blocks " << query_block << "x" << key_block << ", " << layouts << " layout"
    << (layouts > 1 ? "s" : "");
  return s.str();
}

}  // namespace

// ---- Sparse-Transformer layouts ----------------------------------------------------------------

TEST_CASE("masked cpu: strided and fixed Sparse-Transformer layouts",
          "[cpu][masks][block_sparse]") {
  // Self-attention prefill (the builders' setting), chunked prefill over the same layout (the last
  // 63 positions of it) and decode (its last position), causal builders composed with causal and
  // the non-causal ones alone.
  struct pattern {
    index_t tokens, block;
  };
  std::uint64_t seed = 20000;
  for (const pattern& p :
       {pattern{65, 16}, pattern{257, 32}, pattern{257, 64}, pattern{1000, 64}}) {
    const block_layout strided = attnkit::strided_layout(p.tokens, p.block, 2, 3, true);
    const block_layout strided_full = attnkit::strided_layout(p.tokens, p.block, 2, 3, false);
    const block_layout fixed = attnkit::fixed_layout(p.tokens, p.block, 4, 1, true);
    const block_layout fixed_full = attnkit::fixed_layout(p.tokens, p.block, 3, 2, false);
    const index_t heads = p.tokens == 1000 ? 2 : 4, kv_heads = heads / 2;
    for (attention_case c : {shape(p.tokens, p.tokens, heads, kv_heads, 64),
                             shape(std::min<index_t>(63, p.tokens), p.tokens, 4, 2, 32),
                             shape(1, p.tokens, 8, 2, 128)}) {
      c.seed = ++seed;
      const auto in = make_inputs<float, float>(c);
      const any_executor* executor = c.q_tokens == 1 ? wide_executor() : nullptr;
      const std::string at =
          " (" + std::to_string(p.tokens) + " tokens, block " + std::to_string(p.block) + ")";
      check_masked_on<float>(c, in, sparse_causal(strided, "strided causal" + at), executor);
      check_masked_on<float>(c, in, sparse_causal(fixed, "fixed causal" + at), executor);
      if (c.q_tokens == 1000) continue;  // the non-causal layouts at 1000 tokens add only time
      check_masked_on<float>(c, in, sparse(strided_full, "strided non-causal" + at), executor);
      check_masked_on<float>(c, in, sparse(fixed_full, "fixed non-causal" + at), executor);
    }
  }
}

TEST_CASE("masked cpu: an all-ones block layout equals dense attention, bit for bit",
          "[cpu][masks][block_sparse][equivalence]") {
  // Bit-identical: every tile inside the layout's rows and keys classifies `full`, as under
  // attnkit::full (and `& causal` classifies exactly as causal: the layout never rules out a
  // pair causal keeps), there is one layout for every head (no per-head jobs), so the kernel
  // visits the same spans the same way. Block sizes that are not multiples of the kernel's 16/64
  // key granularity (7, 13, 100) included. n_q > n_kv only with causal: positions before the
  // first key have no block row, which full would let see every key but causal hides anyway.
  std::uint64_t seed = 21000;
  for (attention_case c :
       {shape(65, 65, 4, 2, 64), shape(257, 257, 2, 1, 32), shape(63, 257, 8, 2, 32),
        shape(70, 63, 2, 1, 32), shape(1, 1000, 8, 1, 128), shape(1, 4099, 8, 2, 64)}) {
    c.seed = ++seed;
    const auto in = make_inputs<float, float>(c);
    const any_executor* executor = c.q_tokens == 1 ? wide_executor() : nullptr;
    std::vector<block_layout> layouts;
    for (index_t block : {16, 64, 7, 13, 100})
      layouts.push_back(attnkit::dense_layout(c.kv_tokens, block));
    std::vector<any_mask> dense, dense_causal;
    for (const block_layout& l : layouts) {
      const std::string name = "dense layout, block " + std::to_string(l.shape().key_block);
      dense.push_back(sparse(l, name));
      dense_causal.push_back(sparse_causal(l, name));
    }
    if (c.q_tokens <= c.kv_tokens)
      check_equivalent<float>(c, in, full_mask, dense, equivalence::bit_identical, executor);
    check_equivalent<float>(c, in, causal_mask, dense_causal, equivalence::bit_identical, executor);
  }
}

// ---- random layouts with odd block sizes -------------------------------------------------------

TEST_CASE("masked cpu: random block layouts with odd block sizes, alone and & causal",
          "[cpu][masks][block_sparse]") {
  struct blocks {
    index_t query, key;
  };
  std::uint64_t seed = 22000;
  for (attention_case c :
       {shape(65, 65, 8, 2, 64), shape(63, 1000, 8, 2, 32), shape(130, 63, 4, 2, 32),
        shape(257, 257, 4, 2, 32), shape(1, 1000, 8, 2, 128), shape(3, 3000, 4, 1, 64)}) {
    c.seed = ++seed;
    const auto in = make_inputs<float, float>(c);
    const any_executor* executor = c.q_tokens <= 3 ? wide_executor() : nullptr;
    for (const blocks& b : {blocks{7, 13}, blocks{5, 1}, blocks{33, 17}, blocks{1, 100}})
      for (index_t layouts : {index_t{1}, c.q_heads}) {
        const block_layout layout =
            random_layout(c, b.query, b.key, layouts, c.q_heads / layouts, 0.3, ++seed);
        const std::string name = block_layout_name("random", b.query, b.key, layouts);
        check_masked_on<float>(c, in, sparse(layout, name), executor);
        check_masked_on<float>(c, in, sparse_causal(layout, name), executor);
      }
  }
}

TEST_CASE("masked cpu: block-sparse over every instantiated dtype combination",
          "[cpu][masks][block_sparse][dtypes]") {
  std::uint64_t seed = 23000;
  for_each_masked_dtype([&]<class TQ, class TKV, class TO>() {
    for (attention_case c : {shape(65, 100, 4, 2, 80), shape(1, 2000, 8, 2, 128)}) {
      c.seed = ++seed;
      const block_layout layout = random_layout(c, 9, 23, c.q_heads / 2, 2, 0.4, seed);
      check_masked<TQ, TKV, TO>(
          c, sparse_causal(layout, block_layout_name("random", 9, 23, c.q_heads / 2)),
          wide_executor());
    }
  });
}

TEST_CASE("masked cpu: block layouts that empty rows or the whole call",
          "[cpu][masks][block_sparse][masked]") {
  // An empty layout (no block listed) empties every row; rows outside the layout's block rows
  // (here: query positions before first_position) see nothing either.
  std::uint64_t seed = 24000;
  for (attention_case c : {shape(65, 65, 4, 2, 64), shape(1, 3000, 8, 1, 128)})
    for (const any_executor* executor :
         {static_cast<const any_executor*>(nullptr), wide_executor()}) {
      c.seed = ++seed;
      block_layout_shape s;
      s.query_block = 8;
      s.key_block = 16;
      s.query_blocks = (c.q_tokens + 7) / 8;
      s.key_blocks = (c.kv_tokens + 15) / 16;
      s.first_position = c.kv_tokens - c.q_tokens;
      const block_layout empty(
          s, std::vector<index_t>(static_cast<std::size_t>(s.query_blocks + 1), 0), {});
      const evaluation e =
          check_masked<float, float, float>(c, sparse(empty, "empty layout"), executor);
      INFO(e.label);
      CHECK(e.masked_rows == c.q_tokens * c.q_heads);
    }
  // Query rows at negative positions (n_q > n_kv) have no block row.
  attention_case c = shape(80, 63, 4, 2, 32);
  c.seed = ++seed;
  const block_layout tail = random_layout(c, 4, 8, 1, 1, 0.5, seed, -17);  // rows from position 0
  const evaluation e = check_masked<float, float, float>(c, sparse(tail, "layout from position 0"));
  INFO(e.label);
  CHECK(e.masked_rows >= 17 * c.q_heads);
}

TEST_CASE("masked cpu: a mask's check() runs before anything is written",
          "[cpu][masks][block_sparse][errors]") {
  // any_mask forwards check(): a layout that does not cover the call's keys must throw
  // attnkit::error from attnkit::attention, leaving output and log-sum-exp as they were.
  attention_case c = shape(4, 100, 4, 2, 64);
  const auto in = make_inputs<float, float>(c);
  const block_layout short_layout = attnkit::dense_layout(90, 10);
  auto out = make_tensor3<float>(c.q_tokens, c.q_heads, c.head_dim);
  auto lse = make_lse(c.q_heads, c.q_tokens);
  const auto out_before = out.snapshot();
  const auto lse_before = lse.snapshot();
  CHECK_THROWS_AS(
      cpu_attention_masked(erase(in.q.cview()), erase(in.k.cview()), erase(in.v.cview()),
                           erase(out.view()), sparse(short_layout, "layout of 90 keys"),
                           lse_options(lse.view())),
      attnkit::error);
  CHECK(out.unchanged_since(out_before));
  CHECK(lse.unchanged_since(lse_before));
}

// ---- MoBA --------------------------------------------------------------------------------------

TEST_CASE("masked cpu: MoBA layouts from moba_gate, & causal", "[cpu][masks][moba]") {
  // Prefill, chunked prefill and decode (split, with per-head jobs: the gate selects per query
  // head), GQA; and one non-causal gate used alone.
  struct run {
    attention_case c;
    attnkit::moba_options gate;
  };
  std::uint64_t seed = 25000;
  for (run r : {run{shape(257, 257, 8, 2, 64), {64, 2, true}},
                run{shape(1000, 1000, 2, 1, 64), {128, 3, true}},
                run{shape(65, 1000, 4, 2, 32), {100, 2, true}},
                run{shape(1, 5000, 8, 2, 128), {512, 3, true}},
                run{shape(1, 1000, 8, 1, 64), {64, 1, true}},
                run{shape(2, 3000, 4, 1, 64), {37, 5, true}}}) {
    r.c.seed = ++seed;
    const auto in = make_inputs<float, float>(r.c);
    block_layout layout;
    attnkit::moba_gate(reference, in.q.cview(), in.k.cview(), r.gate, layout);
    std::ostringstream name;
    name << "MoBA block " << r.gate.block_size << " top " << r.gate.top_k;
    const any_executor* executor = r.c.q_tokens <= 2 ? wide_executor() : nullptr;
    check_masked_on<float>(r.c, in, sparse_causal(layout, name.str()), executor);
  }
  attention_case c = shape(63, 257, 4, 2, 64);
  c.seed = ++seed;
  const auto in = make_inputs<float, float>(c);
  block_layout layout;
  attnkit::moba_gate(reference, in.q.cview(), in.k.cview(), {32, 2, false}, layout);
  check_masked_on<float>(c, in, sparse(layout, "MoBA non-causal block 32 top 2"));
}

TEST_CASE("masked cpu: MoBA keeping every block, & causal, equals causal",
          "[cpu][masks][moba][equivalence]") {
  // With top_k >= the number of blocks each query keeps every block up to its own, so the gate
  // & causal allows exactly causal's pairs and classifies every tile as causal does (the gate is
  // `full` wherever causal is, and `empty` only where causal is). It varies by head (one layout
  // per query head), so decode runs per-head jobs: bit-identical against causal on the same
  // per-head jobs (any_mask::with_per_head_jobs), within fp32 against causal's usual jobs.
  std::uint64_t seed = 26000;
  for (attention_case c :
       {shape(257, 257, 8, 2, 64), shape(65, 1000, 4, 2, 32), shape(130, 63, 4, 1, 32),
        shape(1, 3000, 8, 2, 128), shape(3, 2000, 4, 1, 64)}) {
    c.seed = ++seed;
    const auto in = make_inputs<float, float>(c);
    const any_executor* executor = c.q_tokens <= 3 ? wide_executor() : nullptr;
    std::vector<block_layout> layouts(2);
    attnkit::moba_gate(reference, in.q.cview(), in.k.cview(), {64, (c.kv_tokens + 63) / 64, true},
                       layouts[0]);
    attnkit::moba_gate(reference, in.q.cview(), in.k.cview(), {100, index_t{1} << 40, true},
                       layouts[1]);
    const std::vector<any_mask> gates = {sparse_causal(layouts[0], "MoBA block 64, top all"),
                                         sparse_causal(layouts[1], "MoBA block 100, top 2^40")};
    check_equivalent<float>(c, in, causal_mask.with_per_head_jobs(), gates,
                            equivalence::bit_identical, executor);
    check_equivalent<float>(c, in, causal_mask, gates, equivalence::within_fp32, executor);
  }
}

// ---- Quest -------------------------------------------------------------------------------------

namespace {

// Quest's layout for the newest q_tokens of the cache: page bounds over every key, then the
// top_pages pages per KV head.
template <class TQ, class TKV>
block_layout quest_layout(const attention_case& c, const attention_inputs<TQ, TKV>& in,
                          index_t page_size, index_t top_pages) {
  attnkit::page_bounds bounds(page_size, c.kv_heads, c.head_dim, c.kv_tokens);
  bounds.update(reference, in.k.cview());
  block_layout layout;
  attnkit::quest_select(reference, in.q.cview(), bounds, top_pages, layout);
  return layout;
}

}  // namespace

TEST_CASE("masked cpu: Quest decode over a long cache, pages of 1, 16 and 64 keys",
          "[cpu][masks][quest][decode][split]") {
  // 5000 keys, one layout per KV head (per-head decode jobs), the selected pages scattered over
  // the cache: the split-KV path divides sparse spans (single keys for page size 1) between
  // splits. fp32 and fp16 caches; the default pool and the wide executor.
  struct selection {
    index_t page_size, top_pages;
  };
  std::uint64_t seed = 27000;
  for (const selection& s : {selection{1, 700}, selection{16, 40}, selection{64, 12}}) {
    attention_case c = shape(1, 5000, 8, 2, 128);
    c.seed = ++seed;
    const auto in = make_inputs<float, float>(c);
    const block_layout layout = quest_layout(c, in, s.page_size, s.top_pages);
    std::ostringstream name;
    name << "Quest page " << s.page_size << " top " << s.top_pages;
    for (const any_executor* executor :
         {static_cast<const any_executor*>(nullptr), wide_executor()})
      check_masked_on<float>(c, in, sparse(layout, name.str()), executor);
    c.seed = ++seed;
    const auto half_in = make_inputs<float, attnkit::half>(c);
    const block_layout half_layout = quest_layout(c, half_in, s.page_size, s.top_pages);
    check_masked_on<float>(c, half_in, sparse(half_layout, name.str()), wide_executor());
  }
  // Speculative decode: 4 query tokens share one block row, causal inside it.
  attention_case c = shape(4, 3000, 8, 2, 64);
  c.seed = ++seed;
  const auto in = make_inputs<float, float>(c);
  const block_layout layout = quest_layout(c, in, 16, 30);
  check_masked_on<float>(c, in, sparse_causal(layout, "Quest 4 tokens page 16 top 30"),
                         wide_executor());
}

TEST_CASE("masked cpu: Quest keeping every page equals full attention",
          "[cpu][masks][quest][equivalence]") {
  // Every page kept: the block row lists every block, so each tile classifies `full` as under
  // attnkit::full. With one KV head the layout does not vary by head: bit-identical against full.
  // With two it does (decode runs per-head jobs): bit-identical against full on the same jobs,
  // within fp32 against full's usual jobs.
  std::uint64_t seed = 28000;
  for (index_t kv_heads : {1, 2})
    for (index_t page_size : {1, 16, 64}) {
      attention_case c = shape(1, 5000, 4 * kv_heads, kv_heads, 64);
      c.seed = ++seed;
      const auto in = make_inputs<float, float>(c);
      const index_t pages = (c.kv_tokens + page_size - 1) / page_size;
      const block_layout layout = quest_layout(c, in, page_size, pages);
      REQUIRE(layout.density() == 1.0);
      const any_mask all_pages =
          sparse(layout, "Quest page " + std::to_string(page_size) + ", every page");
      if (kv_heads == 1) {
        check_equivalent<float>(c, in, full_mask, all_pages, equivalence::bit_identical,
                                wide_executor());
      } else {
        check_equivalent<float>(c, in, full_mask.with_per_head_jobs(), all_pages,
                                equivalence::bit_identical, wide_executor());
        check_equivalent<float>(c, in, full_mask, all_pages, equivalence::within_fp32,
                                wide_executor());
      }
    }
}
