// attnkit::attention on a paged KV cache with per-head lengths (core/paged_kv_view.hpp): the CPU
// kernel and the reference read the pages in place, and must give what they give on contiguous
// copies of the same keys and values.
//
// Each case builds a page pool by hand: page ids drawn from a shuffled pool (so consecutive pages
// of a head are scattered), every slot the view does not cover filled with NaN (so a read past a
// head's length or into a foreign page poisons the result), per-head lengths that differ
// (0 and 1 included), page sizes 1, 3, 16, 64 and 256, per-head pages or one vLLM-style pool
// whose pages hold every head. The logical cache is a contiguous [max_len, kv_heads, d] tensor;
// KV head g of the paged cache is its first lengths[g] slots of head g.
//
// What is checked, per case and mask:
//   1. The paged reference against the contiguous reference, run once per KV head g on the
//      contiguous tensor cut to lengths[g] tokens (so its queries sit at the head's own last
//      slots): the rows of g's query heads must be bit-identical (same fp64 operations on the same
//      values).
//   2. attnkit::cpu on the paged cache against the paged reference, within the error model of
//      support/harness.hpp (kv_tokens = the longest head); rows that see no key (a head of length
//      0, queries before a short head's first slot) exactly zeros with log-sum-exp -inf; nothing
//      written outside out and the log-sum-exp.
//   3. attnkit::cpu on the paged cache against attnkit::cpu on the contiguous tensor cut to
//      lengths[g], for the rows of KV head g: within twice the model's tolerance (each is within
//      one tolerance of the same fp64 result; the two runs may split keys differently, so they
//      are not bit-identical).
// Masks: full, causal, sliding_window with sinks, sliding_window_per_head, block_sparse from
// paged Quest selection; decode (1 query), multi-token decode (row kernel) and prefill chunks
// (column kernel); GQA ratios 1, 4, 8; K/V fp32, fp16, bf16; head dims 64, 80, 128; split-KV
// through an executor that claims 64 threads. Observers: the probabilities of every observed row
// against the paged reference's (tolerance of tests/test_observers.cpp), over lengths[g] keys.
// Quest: paged page bounds bit-identical to contiguous bounds of each head, SIMD selection equal
// to the reference's and to a per-head contiguous selection, incremental updates equal to a
// rebuild. Invalid views throw attnkit::error naming the argument and write nothing.
// Merged keys (a slot that stands for `count` tokens, RazorAttention's compensation token): the
// kernel against the paged reference with every mask, softcap and ALiBi, and observers; the paged
// reference against the contiguous reference with the merged row repeated `count` times (full and
// causal masks, integer counts), which is what the weight means.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>
#include <numeric>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "attnkit/attention/quest.hpp"
#include "attnkit/core/paged_kv_view.hpp"
#include "attnkit/mask/block_sparse.hpp"
#include "attnkit/mask/sliding_window.hpp"
#include "support/masked_harness.hpp"

using namespace attnkit_test;
using attnkit::page_id;
using attnkit::paged_kv_view;

namespace {

constexpr attnkit::backend::reference reference{};
constexpr double eps = 0x1p-24;

// ---------------------------------------------------------------------------------------------
// A hand-built paged cache.
// ---------------------------------------------------------------------------------------------

struct cache_shape {
  index_t kv_heads = 1;
  index_t head_dim = 64;
  index_t page_size = 16;
  std::vector<index_t> lengths;
  bool shared_pool = false;  // vLLM style: [pages, page_size, kv_heads, head_dim]
  std::uint64_t seed = 1;
  std::vector<attnkit::merged_key> merged;  // empty, or one per KV head

  index_t max_length() const {
    return lengths.empty() ? 0 : *std::max_element(lengths.begin(), lengths.end());
  }
};

template <class T>
struct paged_cache {
  cache_shape shape;
  tensor3<T> k, v;  // the logical cache [max_len, kv_heads, head_dim], contiguous
  std::vector<T> key_pool, value_pool;
  std::vector<page_id> table;
  std::vector<index_t> lengths;
  index_t table_stride = 0, row_stride = 0, page_stride = 0, head_stride = 0;

  paged_kv_view<const T> view() const {
    return {key_pool.data(),
            value_pool.data(),
            nullptr,
            table.data(),
            lengths.data(),
            shape.kv_heads,
            shape.head_dim,
            shape.page_size,
            table_stride,
            row_stride,
            page_stride,
            head_stride,
            shape.merged.empty() ? nullptr : shape.merged.data()};
  }
  // K or V of KV head g as the contiguous call for that head sees them: [lengths[g], kv_heads, d].
  tensor_view<const T, 3> k_until(index_t g) const { return cut(k, g); }
  tensor_view<const T, 3> v_until(index_t g) const { return cut(v, g); }

 private:
  tensor_view<const T, 3> cut(const tensor3<T>& t, index_t g) const {
    return {t.storage.data() + t.offset,
            {lengths[static_cast<std::size_t>(g)], t.extents[1], t.extents[2]},
            t.strides};
  }
};

template <class T>
paged_cache<T> make_cache(const cache_shape& s) {
  paged_cache<T> c;
  c.shape = s;
  c.lengths = s.lengths;
  const index_t heads = s.kv_heads, d = s.head_dim, ps = s.page_size;
  const index_t n = std::max<index_t>(1, s.max_length());
  c.k = make_tensor3<T>(n, heads, d);
  c.v = make_tensor3<T>(n, heads, d);
  fill_normal(c.k, s.seed * 1000 + 2);
  fill_normal(c.v, s.seed * 1000 + 3);

  c.table_stride = (s.max_length() + ps - 1) / ps + 1;  // one spare entry per row
  rng r(s.seed * 1000 + 7);
  auto shuffled = [&](index_t count) {
    std::vector<page_id> ids(static_cast<std::size_t>(count));
    std::iota(ids.begin(), ids.end(), page_id{0});
    for (index_t i = count - 1; i > 0; --i)
      std::swap(ids[static_cast<std::size_t>(i)], ids[static_cast<std::size_t>(r.integer(0, i))]);
    return ids;
  };
  c.table.assign(static_cast<std::size_t>(heads * c.table_stride), page_id{-1});
  if (!s.shared_pool) {
    // Per-(head) pages [page_size, head_dim], drawn from one pool with spare pages.
    index_t used = 0;
    for (index_t len : s.lengths) used += (len + ps - 1) / ps;
    const index_t pool_pages = used + 3;
    const std::vector<page_id> ids = shuffled(pool_pages);
    c.row_stride = d;
    c.page_stride = ps * d;
    c.head_stride = 0;
    index_t next = 0;
    for (index_t g = 0; g < heads; ++g)
      for (index_t p = 0; p < (s.lengths[static_cast<std::size_t>(g)] + ps - 1) / ps; ++p)
        c.table[static_cast<std::size_t>(g * c.table_stride + p)] =
            ids[static_cast<std::size_t>(next++)];
    c.key_pool.assign(static_cast<std::size_t>(pool_pages * ps * d), nan_sentinel<T>());
  } else {
    // One pool whose page holds every head: [pages, page_size, kv_heads, head_dim]; every head
    // uses the same page-table row (repeated per head: page_table_stride must cover the lengths).
    const index_t pages = (s.max_length() + ps - 1) / ps;
    const index_t pool_pages = pages + 2;
    const std::vector<page_id> ids = shuffled(pool_pages);
    c.row_stride = heads * d;
    c.page_stride = ps * heads * d;
    c.head_stride = d;
    for (index_t g = 0; g < heads; ++g)
      for (index_t p = 0; p < pages; ++p)
        c.table[static_cast<std::size_t>(g * c.table_stride + p)] =
            ids[static_cast<std::size_t>(p)];
    c.key_pool.assign(static_cast<std::size_t>(pool_pages * ps * heads * d), nan_sentinel<T>());
  }
  c.value_pool = c.key_pool;
  const paged_kv_view<const T> view = c.view();
  const auto k = c.k.cview();
  const auto v = c.v.cview();
  for (index_t g = 0; g < heads; ++g)
    for (index_t slot = 0; slot < s.lengths[static_cast<std::size_t>(g)]; ++slot) {
      const std::ptrdiff_t offset = view.key(g, slot) - view.keys;
      for (index_t e = 0; e < d; ++e) {
        c.key_pool[static_cast<std::size_t>(offset + e)] = k(slot, g, e);
        c.value_pool[static_cast<std::size_t>(offset + e)] = v(slot, g, e);
      }
    }
  return c;
}

// ---------------------------------------------------------------------------------------------
// Running and judging one case.
// ---------------------------------------------------------------------------------------------

struct paged_case {
  index_t q_tokens = 1;
  index_t q_heads = 8;
  cache_shape cache;
  float softcap = 0.0f;
  bool alibi = false;
  bool wide = false;  // split-KV as on 64 threads
};

std::string describe(const paged_case& c, const any_mask& mask, const char* kv_type) {
  std::ostringstream s;
  s << "q " << c.q_tokens << " x " << c.q_heads << " heads; paged " << kv_type << " "
    << c.cache.kv_heads << " KV heads, d " << c.cache.head_dim << ", page " << c.cache.page_size
    << (c.cache.shared_pool ? " (shared pool)" : "") << ", lengths {";
  for (std::size_t i = 0; i < c.cache.lengths.size(); ++i)
    s << (i ? ", " : "") << c.cache.lengths[i];
  s << "}; mask " << mask.name();
  if (c.softcap > 0.0f) s << "; softcap " << c.softcap;
  if (c.alibi) s << "; alibi";
  if (c.wide) s << "; wide executor";
  for (std::size_t g = 0; g < c.cache.merged.size(); ++g)
    if (c.cache.merged[g].slot >= 0)
      s << "; head " << g << " slot " << c.cache.merged[g].slot << " x" << c.cache.merged[g].count;
  s << "; seed " << c.cache.seed;
  return s.str();
}

attnkit::attention_options options_for(const paged_case& c, const std::vector<float>& slopes,
                                       tensor_view<float, 2> lse) {
  attnkit::attention_options o;
  o.softcap = c.softcap;
  if (c.alibi)
    o.alibi_slopes =
        tensor_view<const float, 1>(slopes.data(), {static_cast<index_t>(slopes.size())});
  o.log_sum_exp = lse;
  return o;
}

// attnkit::cpu on a paged cache: one instantiation per K/V type (float q and out, any_mask, the
// erased executor).
template <class T>
void cpu_paged(tensor_view<const float, 3> q, paged_kv_view<const T> kv, tensor_view<float, 3> out,
               const any_mask& mask, const attnkit::attention_options& options,
               const any_executor* executor) {
  const any_executor& e = executor != nullptr ? *executor : default_executor();
  attnkit::attention(attnkit::cpu, q, kv, out, mask, options, e);
}

template <class T>
error_model paged_model(const paged_case& c, const paged_cache<T>& cache, const tensor3<float>& q,
                        const std::vector<float>& slopes) {
  error_model m;
  m.max_v = max_abs(cache.v);
  m.rms_v = rms(cache.v);
  m.logit_dot_bound =
      max_row_norm(q) * max_row_norm(cache.k) / std::sqrt(static_cast<double>(c.cache.head_dim));
  double max_slope = 0.0;
  for (float s : slopes) max_slope = std::fmax(max_slope, std::fabs(static_cast<double>(s)));
  m.alibi_bound = max_slope * static_cast<double>(c.q_tokens + c.cache.max_length());
  // A merged key's ln(count) is one more additive logit term, rounded like ALiBi's.
  for (const attnkit::merged_key& key : c.cache.merged)
    if (key.slot >= 0) m.alibi_bound += std::fabs(std::log(static_cast<double>(key.count)));
  m.softcap = c.softcap;
  m.head_dim = c.cache.head_dim;
  m.kv_tokens = std::max<index_t>(1, c.cache.max_length());
  return m;
}

// The logical cache cut to `length` tokens with slot `slot` repeated `copies` times (every head's
// row, though only one head's rows are compared): [length + copies - 1, kv_heads, d].
template <class T>
tensor3<T> with_copies(const tensor3<T>& t, index_t length, index_t slot, index_t copies) {
  tensor3<T> expanded = make_tensor3<T>(length + copies - 1, t.extents[1], t.extents[2]);
  const auto from = t.cview();
  const auto to = expanded.view();
  for (index_t i = 0; i < length + copies - 1; ++i) {
    const index_t source = i <= slot ? i : (i < slot + copies ? slot : i - copies + 1);
    for (index_t g = 0; g < t.extents[1]; ++g)
      for (index_t e = 0; e < t.extents[2]; ++e) to(i, g, e) = from(source, g, e);
  }
  return expanded;
}

// What a merged key means: the paged reference with slot s of head g standing for n tokens
// equals the contiguous reference with that row repeated n times, for the rows of g's query heads.
// Only where repeating keys changes nothing else: full masks, or causal ones where every query row
// sees the merged slot (the copies move the queries n - 1 slots on: one before the slot would see
// keys it did not), no ALiBi (distances would move), whole counts. The two fp64 results round to
// fp32 once each, after sums in different orders: within 4 ulps.
template <class T>
void check_merged_as_copies(const paged_case& c, const paged_cache<T>& cache,
                            const tensor3<float>& q, const any_mask& mask, index_t g,
                            const tensor3<float>& ref_out, const tensor2<float>& ref_lse) {
  const attnkit::merged_key merged = c.cache.merged[static_cast<std::size_t>(g)];
  const auto copies = static_cast<index_t>(merged.count);
  const index_t d = c.cache.head_dim, group = c.q_heads / c.cache.kv_heads;
  const index_t length = c.cache.lengths[static_cast<std::size_t>(g)];
  const bool causal_sees_it = mask.name() == "causal" && merged.slot <= length - c.q_tokens;
  if (c.alibi || static_cast<float>(copies) != merged.count ||
      !(mask.name() == "full" || causal_sees_it))
    return;
  const tensor3<T> k = with_copies(cache.k, length, merged.slot, copies);
  const tensor3<T> v = with_copies(cache.v, length, merged.slot, copies);
  auto out = make_tensor3<float>(c.q_tokens, c.q_heads, d);
  auto lse = make_lse(c.q_heads, c.q_tokens);
  attnkit::attention(reference, q.cview(), k.cview(), v.cview(), out.view(), mask,
                     options_for(c, {}, lse.view()));
  comparison out_cmp, lse_cmp;
  out_cmp.what = "merged key vs repeated rows, output";
  out_cmp.tol = {0x1p-126, 4 * eps};
  lse_cmp.what = "merged key vs repeated rows, log_sum_exp";
  lse_cmp.tol = {0x1p-126, 4 * eps};
  for (index_t h = g * group; h < (g + 1) * group; ++h)
    for (index_t i = 0; i < c.q_tokens; ++i) {
      lse_cmp.add(ref_lse.cview()(h, i), lse.cview()(h, i), {h, i, -1});
      for (index_t e = 0; e < d; ++e)
        out_cmp.add(ref_out.cview()(i, h, e), out.cview()(i, h, e), {i, h, e});
    }
  INFO("KV head " << g << ": slot " << merged.slot << " as " << copies << " copies");
  INFO(out_cmp.describe());
  INFO(lse_cmp.describe());
  CHECK(out_cmp.ok());
  CHECK(lse_cmp.ok());
}

template <class T>
void check_paged(const paged_case& c, const any_mask& mask) {
  const paged_cache<T> cache = make_cache<T>(c.cache);
  const index_t d = c.cache.head_dim, kv_heads = c.cache.kv_heads;
  const index_t group = c.q_heads / kv_heads;
  auto q = make_tensor3<float>(c.q_tokens, c.q_heads, d);
  fill_normal(q, c.cache.seed * 1000 + 1);
  const std::vector<float> slopes = c.alibi ? alibi_slopes(c.q_heads) : std::vector<float>{};
  const any_executor* executor = c.wide ? wide_executor() : nullptr;
  INFO(describe(c, mask, attnkit::type_name<T>()));

  // The paged reference.
  auto ref_out = make_tensor3<float>(c.q_tokens, c.q_heads, d);
  auto ref_lse = make_lse(c.q_heads, c.q_tokens);
  attnkit::attention(reference, q.cview(), cache.view(), ref_out.view(), mask,
                     options_for(c, slopes, ref_lse.view()));

  // The kernel under test on the paged cache.
  auto out = make_tensor3<float>(c.q_tokens, c.q_heads, d);
  auto lse = make_lse(c.q_heads, c.q_tokens, /*padded=*/true);
  const std::vector<T> keys_before = cache.key_pool, values_before = cache.value_pool;
  cpu_paged<T>(q.cview(), cache.view(), out.view(), mask, options_for(c, slopes, lse.view()),
               executor);
  CHECK(out.clobbered_outside() == 0);
  CHECK(lse.clobbered_outside() == 0);
  CHECK(std::memcmp(keys_before.data(), cache.key_pool.data(), keys_before.size() * sizeof(T)) ==
        0);
  CHECK(std::memcmp(values_before.data(), cache.value_pool.data(),
                    values_before.size() * sizeof(T)) == 0);

  // 2. Against the paged reference.
  const error_model model = paged_model(c, cache, q, slopes);
  const comparison out_cmp =
      compare_output<float>(out.cview(), ref_out.cview(), model.output_tolerance<float>());
  const comparison lse_cmp = compare_lse(lse.cview(), ref_lse.cview(), model.lse_tolerance());
  INFO(out_cmp.describe());
  INFO(lse_cmp.describe());
  CHECK(out_cmp.ok());
  CHECK(lse_cmp.ok());
  index_t masked_rows = 0, masked_row_errors = 0;
  for (index_t h = 0; h < c.q_heads; ++h)
    for (index_t i = 0; i < c.q_tokens; ++i) {
      if (ref_lse.cview()(h, i) != -std::numeric_limits<float>::infinity()) continue;
      ++masked_rows;
      for (index_t e = 0; e < d; ++e)
        if (out.cview()(i, h, e) != 0.0f) {
          ++masked_row_errors;
          break;
        }
    }
  CAPTURE(masked_rows);
  CHECK(masked_row_errors == 0);

  // 1 and 3: per KV head, the contiguous runs.
  const tolerance twice_out{2 * model.output_tolerance<float>().abs,
                            2 * model.output_tolerance<float>().rel};
  const tolerance twice_lse{2 * model.lse_tolerance().abs, 2 * model.lse_tolerance().rel};
  index_t reference_mismatches = 0;
  for (index_t g = 0; g < kv_heads; ++g) {
    if (!c.cache.merged.empty() && c.cache.merged[static_cast<std::size_t>(g)].slot >= 0) {
      check_merged_as_copies(c, cache, q, mask, g, ref_out, ref_lse);
      continue;  // a contiguous K/V pair has no merged keys
    }
    auto contiguous_ref = make_tensor3<float>(c.q_tokens, c.q_heads, d);
    auto contiguous_ref_lse = make_lse(c.q_heads, c.q_tokens);
    attnkit::attention(reference, q.cview(), cache.k_until(g), cache.v_until(g),
                       contiguous_ref.view(), mask,
                       options_for(c, slopes, contiguous_ref_lse.view()));
    auto contiguous = make_tensor3<float>(c.q_tokens, c.q_heads, d);
    auto contiguous_lse = make_lse(c.q_heads, c.q_tokens);
    cpu_attention_masked(erase(q.cview()), erase(cache.k_until(g)), erase(cache.v_until(g)),
                         erase(contiguous.view()), mask,
                         options_for(c, slopes, contiguous_lse.view()), executor);
    comparison rows_cmp, rows_lse_cmp;
    rows_cmp.what = "paged vs contiguous output";
    rows_cmp.tol = twice_out;
    rows_lse_cmp.what = "paged vs contiguous log_sum_exp";
    rows_lse_cmp.tol = twice_lse;
    for (index_t h = g * group; h < (g + 1) * group; ++h)
      for (index_t i = 0; i < c.q_tokens; ++i) {
        const float a = ref_lse.cview()(h, i), b = contiguous_ref_lse.cview()(h, i);
        if (std::memcmp(&a, &b, sizeof a) != 0) ++reference_mismatches;
        rows_lse_cmp.add(lse.cview()(h, i), contiguous_lse.cview()(h, i), {h, i, -1});
        for (index_t e = 0; e < d; ++e) {
          const float x = ref_out.cview()(i, h, e), y = contiguous_ref.cview()(i, h, e);
          if (std::memcmp(&x, &y, sizeof x) != 0) ++reference_mismatches;
          rows_cmp.add(out.cview()(i, h, e), contiguous.cview()(i, h, e), {i, h, e});
        }
      }
    INFO("KV head " << g << " (length " << cache.lengths[static_cast<std::size_t>(g)] << ")");
    INFO(rows_cmp.describe());
    INFO(rows_lse_cmp.describe());
    CHECK(rows_cmp.ok());
    CHECK(rows_lse_cmp.ok());
  }
  CHECK(reference_mismatches == 0);
}

const any_mask causal_mask(attnkit::causal{}, "causal");
const any_mask full_mask(attnkit::full{}, "full");
const any_mask window_mask(attnkit::sliding_window{100, 0, 4}, "window 100 sinks 4");

// Per-query-head windows for q_heads heads (the table lives as long as the test binary).
any_mask per_head_windows(index_t q_heads) {
  static std::map<index_t, std::vector<attnkit::sliding_window>> tables;
  auto& table = tables[q_heads];
  if (table.empty())
    for (index_t h = 0; h < q_heads; ++h)
      table.push_back({17 + 29 * h, h % 3 == 0 ? 2 : 0, h % 2 == 0 ? 3 : 0});
  return any_mask(attnkit::sliding_window_per_head{table}, "per-head windows");
}

template <class T>
void check_every_mask(const paged_case& c) {
  check_paged<T>(c, causal_mask);
  check_paged<T>(c, full_mask);
  check_paged<T>(c, window_mask);
  check_paged<T>(c, per_head_windows(c.q_heads));
}

paged_case make_case(index_t q_tokens, index_t q_heads, index_t kv_heads, index_t head_dim,
                     index_t page_size, std::vector<index_t> lengths, std::uint64_t seed,
                     bool wide = false) {
  paged_case c;
  c.q_tokens = q_tokens;
  c.q_heads = q_heads;
  c.cache.kv_heads = kv_heads;
  c.cache.head_dim = head_dim;
  c.cache.page_size = page_size;
  c.cache.lengths = std::move(lengths);
  c.cache.seed = seed;
  c.wide = wide;
  return c;
}

}  // namespace

TEMPLATE_TEST_CASE("paged decode equals the reference and the contiguous kernel", "[paged]", float,
                   attnkit::half, attnkit::bfloat16) {
  // GQA 1, 4 and 8; page sizes 1, 3, 16, 64, 256; head dims 64, 80, 128; lengths 0 and 1, page
  // multiples and off-by-ones; split-KV on the wide executor.
  check_every_mask<TestType>(
      make_case(1, 8, 8, 64, 16, {300, 0, 1, 17, 64, 700, 255, 256}, 1, /*wide=*/true));
  check_every_mask<TestType>(make_case(1, 16, 4, 128, 3, {700, 1, 0, 334}, 2));
  check_every_mask<TestType>(make_case(1, 16, 2, 80, 256, {1000, 257}, 3, /*wide=*/true));
  check_every_mask<TestType>(make_case(1, 8, 1, 128, 1, {130}, 4));
  check_every_mask<TestType>(make_case(1, 12, 3, 64, 64, {513, 64, 0}, 5, /*wide=*/true));
}

TEMPLATE_TEST_CASE("paged prefill chunks equal the reference and the contiguous kernel", "[paged]",
                   float, attnkit::half, attnkit::bfloat16) {
  // Column kernel (q_tokens x group >= vector width) with heads shorter than the chunk (their
  // first rows see nothing under causal), and the row kernel with a few query tokens.
  check_every_mask<TestType>(make_case(20, 16, 4, 64, 16, {300, 20, 5, 0}, 11));
  check_every_mask<TestType>(
      make_case(37, 8, 8, 80, 3, {100, 37, 50, 0, 1, 64, 90, 200}, 12, /*wide=*/true));
  check_every_mask<TestType>(make_case(3, 8, 8, 128, 64, {3, 130, 0, 2, 64, 65, 700, 1}, 13));
  check_every_mask<TestType>(make_case(33, 8, 1, 128, 256, {600}, 14, /*wide=*/true));
}

TEST_CASE("paged attention: shared (vLLM-style) pool, softcap and ALiBi", "[paged]") {
  paged_case c = make_case(1, 16, 4, 128, 16, {500, 3, 0, 250}, 21, /*wide=*/true);
  c.cache.shared_pool = true;
  check_every_mask<attnkit::half>(c);
  paged_case prefill = make_case(24, 16, 4, 64, 3, {100, 24, 7, 0}, 22);
  prefill.cache.shared_pool = true;
  check_every_mask<float>(prefill);
  paged_case options = make_case(1, 8, 2, 64, 16, {400, 77}, 23, /*wide=*/true);
  options.softcap = 5.0f;
  options.alibi = true;
  check_every_mask<attnkit::bfloat16>(options);
  options.q_tokens = 30;
  check_every_mask<float>(options);
}

TEMPLATE_TEST_CASE("paged attention: a merged key weighs as count copies of its row",
                   "[paged][merged]", float, attnkit::half, attnkit::bfloat16) {
  // Decode with split-KV: a merged key mid-page, at a head's last slot (its own query sees it),
  // a head without one, a fractional count, and a head of length 0 beside them.
  paged_case decode = make_case(1, 16, 4, 128, 16, {300, 50, 0, 129}, 41, /*wide=*/true);
  decode.cache.merged = {{17, 5.0f}, {49, 37.0f}, {-1, 1.0f}, {128, 2.5f}};
  check_every_mask<TestType>(decode);
  // Multi-token decode (row kernel) at d 64, and prefill chunks (column kernel) at d 80 with the
  // merged key at slot 0 of a head as short as the chunk (every causal row sees it).
  paged_case rows = make_case(3, 8, 8, 64, 3, {3, 130, 0, 2, 64, 65, 700, 1}, 42);
  rows.cache.merged = {{1, 4.0f},  {64, 1000.0f}, {-1, 1.0f},  {0, 2.0f},
                       {63, 0.5f}, {64, 3.0f},    {350, 9.0f}, {0, 6.0f}};
  check_every_mask<TestType>(rows);
  paged_case prefill = make_case(37, 8, 2, 80, 16, {100, 37}, 43, /*wide=*/true);
  prefill.cache.merged = {{60, 11.0f}, {0, 3.0f}};
  check_every_mask<TestType>(prefill);
  // Softcap and ALiBi: the weight is applied after both.
  paged_case options = make_case(1, 8, 2, 64, 16, {400, 77}, 44, /*wide=*/true);
  options.softcap = 5.0f;
  options.alibi = true;
  options.cache.merged = {{200, 50.0f}, {76, 2.0f}};
  check_every_mask<TestType>(options);
  options.q_tokens = 30;
  options.alibi = false;
  check_every_mask<TestType>(options);
}

// ---------------------------------------------------------------------------------------------
// Observers.
// ---------------------------------------------------------------------------------------------

namespace {

struct row_collector {
  struct row {
    index_t token, head, kv_head;
    std::vector<float> probabilities;
  };
  std::mutex lock;
  std::map<std::pair<index_t, index_t>, row> rows;  // (token, head)
  index_t duplicates = 0;

  void operator()(const attnkit::observed_row& r) {
    const std::lock_guard<std::mutex> guard(lock);
    const auto key = std::make_pair(r.q_token, r.q_head);
    if (rows.count(key) != 0) ++duplicates;
    rows[key] = {r.q_token, r.q_head, r.kv_head,
                 std::vector<float>(r.probabilities.begin(), r.probabilities.end())};
  }
};

template <class T>
void check_observed(const paged_case& c, const any_mask& mask, index_t last_queries) {
  const paged_cache<T> cache = make_cache<T>(c.cache);
  const index_t d = c.cache.head_dim;
  auto q = make_tensor3<float>(c.q_tokens, c.q_heads, d);
  fill_normal(q, c.cache.seed * 1000 + 1);
  INFO(describe(c, mask, attnkit::type_name<T>()) << "; last_queries " << last_queries);

  row_collector expected, got;
  auto ref_out = make_tensor3<float>(c.q_tokens, c.q_heads, d);
  auto ref_lse = make_lse(c.q_heads, c.q_tokens);
  attnkit::attention_options ref_options = options_for(c, {}, ref_lse.view());
  ref_options.observer = attnkit::attention_observer(expected, last_queries);
  attnkit::attention(reference, q.cview(), cache.view(), ref_out.view(), mask, ref_options);

  auto out = make_tensor3<float>(c.q_tokens, c.q_heads, d);
  auto lse = make_lse(c.q_heads, c.q_tokens);
  attnkit::attention_options options = options_for(c, {}, lse.view());
  options.observer = attnkit::attention_observer(got, last_queries);
  cpu_paged<T>(q.cview(), cache.view(), out.view(), mask, options,
               c.wide ? wide_executor() : nullptr);

  // The tolerance of tests/test_observers.cpp: |p - p_ref| <= p_ref·(δs + δlse + eps·(|ln p_ref|
  // + 6)) + 2^-125.
  const error_model model = paged_model(c, cache, q, {});
  const index_t observed = std::min(last_queries, c.q_tokens);
  CHECK(got.duplicates == 0);
  CHECK(static_cast<index_t>(got.rows.size()) == observed * c.q_heads);
  CHECK(got.rows.size() == expected.rows.size());
  index_t violations = 0, wrong_sizes = 0;
  double worst = 0.0;
  for (const auto& [key, r] : expected.rows) {
    const auto it = got.rows.find(key);
    REQUIRE(it != got.rows.end());
    const auto& g = it->second;
    CHECK(g.kv_head == r.kv_head);
    const index_t length = c.cache.lengths[static_cast<std::size_t>(r.kv_head)];
    if (static_cast<index_t>(g.probabilities.size()) != length ||
        static_cast<index_t>(r.probabilities.size()) != length) {
      ++wrong_sizes;
      continue;
    }
    const double row_lse = ref_lse.cview()(r.head, r.token);
    for (index_t j = 0; j < length; ++j) {
      const double p_ref = r.probabilities[static_cast<std::size_t>(j)];
      const double p = g.probabilities[static_cast<std::size_t>(j)];
      const double allowed =
          p_ref == 0.0 ? 0x1p-125
                       : p_ref * (model.logit_error() + model.lse_tolerance().allowed(row_lse) +
                                  eps * (std::fabs(std::log(p_ref)) + 6.0)) +
                             0x1p-125;
      const double error = std::fabs(p - p_ref);
      if (!(error <= allowed)) ++violations;
      worst = std::max(worst, error / allowed);
    }
  }
  CAPTURE(worst);
  CHECK(wrong_sizes == 0);
  CHECK(violations == 0);
}

}  // namespace

TEST_CASE("paged attention: observers see each head's own keys", "[paged][observer]") {
  // Decode with split-KV, per-head jobs and a head of length 0; a prefill window.
  const paged_case decode = make_case(1, 16, 4, 128, 16, {900, 0, 1, 333}, 31, /*wide=*/true);
  check_observed<attnkit::half>(decode, causal_mask, 1);
  check_observed<attnkit::half>(decode, window_mask, 1);
  check_observed<float>(make_case(1, 8, 8, 64, 3, {40, 7, 0, 1, 2, 3, 64, 100}, 32), causal_mask,
                        1);
  const paged_case prefill = make_case(24, 8, 2, 64, 16, {300, 10}, 33);
  check_observed<attnkit::bfloat16>(prefill, causal_mask, 8);
  check_observed<float>(prefill, per_head_windows(8), 30);
  // A merged key's probability is the mass of every token it stands for.
  paged_case merged = decode;
  merged.cache.merged = {{450, 40.0f}, {-1, 1.0f}, {0, 3.0f}, {332, 7.5f}};
  check_observed<attnkit::half>(merged, causal_mask, 1);
  merged = prefill;
  merged.cache.merged = {{100, 20.0f}, {9, 2.0f}};
  check_observed<float>(merged, causal_mask, 8);

  // accumulate_key_mass over rows of different lengths: each head's row sums to group_size.
  const paged_cache<float> cache = make_cache<float>(decode.cache);
  auto q = make_tensor3<float>(1, 16, 128);
  fill_normal(q, 77);
  auto out = make_tensor3<float>(1, 16, 128);
  // On the serial executor each head is one unsplit item that adds its own rows (with its own
  // length, 0 and 1 included): bit for bit what adding the delivered rows gives.
  for (const any_executor* executor :
       {static_cast<const any_executor*>(nullptr), serial_executor()}) {
    std::vector<float> mass(4 * 900, 0.0f), by_rows(mass.size(), 0.0f);
    attnkit::accumulate_key_mass key_mass({mass.data(), {4, 900}});
    row_adder adder{{by_rows.data(), {4, 900}}};
    attnkit::attention_options options;
    options.observer = key_mass;
    cpu_paged<float>(q.cview(), cache.view(), out.view(), causal_mask, options, executor);
    options.observer = adder;
    cpu_paged<float>(q.cview(), cache.view(), out.view(), causal_mask, options, executor);
    INFO((executor == nullptr ? "default pool" : "serial executor"));
    CHECK(identical_bits(mass, by_rows));
    for (index_t g = 0; g < 4; ++g) {
      const index_t length = decode.cache.lengths[static_cast<std::size_t>(g)];
      double sum = 0.0, beyond = 0.0;
      for (index_t j = 0; j < 900; ++j)
        (j < length ? sum : beyond) += mass[static_cast<std::size_t>(g * 900 + j)];
      INFO("KV head " << g << " length " << length);
      CHECK(beyond == 0.0);
      CHECK(std::fabs(sum - (length > 0 ? 4.0 : 0.0)) < 1e-4);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Quest on the paged cache.
// ---------------------------------------------------------------------------------------------

namespace {

template <class B>
std::vector<B> bound_bits(const attnkit::page_bounds<B>& bounds, index_t head) {
  std::vector<B> bits;
  for (index_t p = 0; p < bounds.pages(head); ++p) {
    bits.insert(bits.end(), bounds.min(head, p), bounds.min(head, p) + bounds.head_dim());
    bits.insert(bits.end(), bounds.max(head, p), bounds.max(head, p) + bounds.head_dim());
  }
  return bits;
}

template <class B>
bool same_bounds(const std::vector<B>& a, const std::vector<B>& b) {
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(B)) == 0);
}

}  // namespace

TEMPLATE_TEST_CASE("paged Quest: bounds, selection and block-sparse attention", "[paged][quest]",
                   float, attnkit::half, attnkit::bfloat16) {
  using T = TestType;
  struct quest_case {
    index_t cache_page, quest_page, kv_heads, q_heads, q_tokens, top;
    std::vector<index_t> lengths;
  };
  const std::vector<quest_case> cases = {
      {16, 16, 4, 16, 1, 6, {700, 0, 1, 333}},  // Quest page = cache page
      {16, 64, 2, 16, 1, 3, {900, 200}},        // Quest page a multiple of the cache page
      {3, 16, 4, 8, 1, 5, {400, 17, 16, 250}},  // neither: slots are what the bounds index
      {64, 16, 2, 8, 4, 4, {520, 130}},         // several query tokens (speculative decode)
  };
  for (const quest_case& qc : cases) {
    paged_case c = make_case(qc.q_tokens, qc.q_heads, qc.kv_heads, 128, qc.cache_page, qc.lengths,
                             41 + static_cast<std::uint64_t>(qc.quest_page), /*wide=*/true);
    const paged_cache<T> cache = make_cache<T>(c.cache);
    const index_t group = qc.q_heads / qc.kv_heads;
    INFO(describe(c, full_mask, attnkit::type_name<T>()) << "; quest page " << qc.quest_page);
    auto q = make_tensor3<float>(qc.q_tokens, qc.q_heads, 128);
    fill_normal(q, 4242);

    attnkit::page_bounds<attnkit::half> simd_bounds(qc.quest_page, qc.kv_heads, 128, 1024);
    attnkit::page_bounds<attnkit::half> ref_bounds(qc.quest_page, qc.kv_heads, 128, 1024);
    simd_bounds.update(attnkit::cpu, cache.view());
    ref_bounds.update(reference, cache.view());
    CHECK(simd_bounds.tokens() == c.cache.max_length());

    attnkit::block_layout simd_layout, ref_layout;
    attnkit::quest_select(attnkit::cpu, q.cview(), simd_bounds, qc.top, simd_layout);
    attnkit::quest_select(reference, q.cview(), ref_bounds, qc.top, ref_layout);
    CHECK(std::vector<index_t>(simd_layout.columns().begin(), simd_layout.columns().end()) ==
          std::vector<index_t>(ref_layout.columns().begin(), ref_layout.columns().end()));
    CHECK(
        std::vector<index_t>(simd_layout.row_offsets().begin(), simd_layout.row_offsets().end()) ==
        std::vector<index_t>(ref_layout.row_offsets().begin(), ref_layout.row_offsets().end()));

    for (index_t g = 0; g < qc.kv_heads; ++g) {
      const index_t length = qc.lengths[static_cast<std::size_t>(g)];
      INFO("KV head " << g << " length " << length);
      CHECK(simd_bounds.tokens(g) == length);
      CHECK(same_bounds(bound_bits(simd_bounds, g), bound_bits(ref_bounds, g)));
      if (length == 0) {
        CHECK(simd_layout.row(g, 0).empty());
        continue;
      }
      // Head g alone, contiguous: the same bounds and the same selection.
      const tensor_view<const T, 3> k_head(cache.k.storage.data() + g * 128, {length, 1, 128},
                                           cache.k.strides);
      attnkit::page_bounds<attnkit::half> head_bounds(qc.quest_page, 1, 128, 1024);
      head_bounds.update(attnkit::cpu, k_head);
      CHECK(same_bounds(bound_bits(head_bounds, 0), bound_bits(simd_bounds, g)));
      if (length >= qc.q_tokens) {
        const tensor_view<const float, 3> q_head(q.storage.data() + g * group * 128,
                                                 {qc.q_tokens, group, 128}, q.strides);
        attnkit::block_layout head_layout;
        attnkit::quest_select(attnkit::cpu, q_head, head_bounds, qc.top, head_layout);
        const auto a = head_layout.row(0, 0), b = simd_layout.row(g, 0);
        CHECK(std::vector<index_t>(a.begin(), a.end()) == std::vector<index_t>(b.begin(), b.end()));
      }
    }

    // Attention under the selection, alone and with causal.
    const attnkit::block_sparse selection(simd_layout);
    check_paged<T>(c, any_mask(selection, "quest"));
    check_paged<T>(c, any_mask(selection & attnkit::causal{}, "quest & causal"));
  }
}

TEST_CASE("paged Quest: incremental updates equal a rebuild", "[paged][quest]") {
  cache_shape s;
  s.kv_heads = 3;
  s.head_dim = 64;
  s.page_size = 16;
  s.lengths = {300, 40, 0};
  s.seed = 51;
  paged_cache<float> before = make_cache<float>(s);
  attnkit::page_bounds<float> bounds(16, 3, 64, 512);
  bounds.update(attnkit::cpu, before.view());
  CHECK_FALSE(bounds.uniform());

  // Heads grow by different amounts: the cache `after` holds the grown lengths; viewed with the
  // old lengths it is the cache before the appends (same pages, same values).
  cache_shape grown = s;
  grown.lengths = {301, 57, 5};
  paged_cache<float> after = make_cache<float>(grown);
  after.lengths = s.lengths;
  attnkit::page_bounds<float> incremental(16, 3, 64, 512);
  incremental.update(attnkit::cpu, after.view());
  after.lengths = grown.lengths;
  const std::vector<index_t> first = {300, 40, 0};
  incremental.update(attnkit::cpu, after.view(), first);
  attnkit::page_bounds<float> rebuilt(16, 3, 64, 512);
  rebuilt.update(attnkit::cpu, after.view());
  for (index_t g = 0; g < 3; ++g) {
    INFO("KV head " << g);
    CHECK(incremental.tokens(g) == grown.lengths[static_cast<std::size_t>(g)]);
    CHECK(same_bounds(bound_bits(incremental, g), bound_bits(rebuilt, g)));
  }
  // A contiguous update makes the heads uniform again.
  auto k = make_tensor3<float>(64, 3, 64);
  fill_normal(k, 9);
  bounds.update(attnkit::cpu, k.cview());
  CHECK(bounds.uniform());
  CHECK(bounds.tokens(2) == 64);
}

// ---------------------------------------------------------------------------------------------
// Errors.
// ---------------------------------------------------------------------------------------------

TEST_CASE("paged attention: invalid views throw naming the argument and write nothing",
          "[paged][errors]") {
  cache_shape s;
  s.kv_heads = 2;
  s.head_dim = 64;
  s.page_size = 16;
  s.lengths = {40, 20};
  const paged_cache<float> cache = make_cache<float>(s);
  auto q = make_tensor3<float>(1, 4, 64);
  fill_normal(q, 3);
  auto out = make_tensor3<float>(1, 4, 64);
  const auto out_before = out.snapshot();
  std::vector<index_t> lengths = cache.lengths;
  std::vector<page_id> table = cache.table;

  auto expect = [&](paged_kv_view<const float> kv, const std::string& needle,
                    tensor_view<const float, 3> query, tensor_view<float, 3> output) {
    INFO("expected a message containing: " << needle);
    try {
      attnkit::attention(attnkit::cpu, query, kv, output, attnkit::causal{});
      FAIL("no attnkit::error thrown");
    } catch (const attnkit::error& e) {
      INFO(e.what());
      CHECK(std::string(e.what()).find(needle) != std::string::npos);
    }
    try {
      attnkit::attention(reference, query, kv, output, attnkit::causal{});
      FAIL("no attnkit::error thrown (reference)");
    } catch (const attnkit::error& e) {
      CHECK(std::string(e.what()).find(needle) != std::string::npos);
    }
    CHECK(out.unchanged_since(out_before));
  };
  const auto base = [&] {
    paged_kv_view<const float> kv = cache.view();
    kv.lengths = lengths.data();
    kv.page_table = table.data();
    return kv;
  };
  {
    auto kv = base();
    kv.page_size = 0;
    expect(kv, "kv.page_size is 0", q.cview(), out.view());
  }
  {
    lengths = {40, -1};
    expect(base(), "kv.lengths[1] is -1", q.cview(), out.view());
    lengths = {40, 20 + cache.table_stride * 16};
    expect(base(), "kv.page_table_stride", q.cview(), out.view());
    lengths = cache.lengths;
  }
  {
    auto kv = base();
    kv.lengths = nullptr;
    expect(kv, "kv.lengths is null", q.cview(), out.view());
  }
  {
    auto kv = base();
    kv.page_table = nullptr;
    expect(kv, "kv.page_table is null", q.cview(), out.view());
    kv = base();
    kv.keys = nullptr;
    expect(kv, "kv.keys is null", q.cview(), out.view());
    kv = base();
    kv.values = nullptr;
    expect(kv, "kv.values is null", q.cview(), out.view());
  }
  {
    table[static_cast<std::size_t>(cache.table_stride + 1)] = -5;
    expect(base(), "is -5, page ids must be >= 0", q.cview(), out.view());
    table = cache.table;
  }
  {
    auto kv = base();
    kv.head_dim = 32;
    expect(kv, "kv.head_dim is 32", q.cview(), out.view());
    lengths = {40, 20, 0};
    kv = base();
    kv.kv_heads = 3;
    expect(kv, "q_heads (4) is not a multiple of kv.kv_heads (3)", q.cview(), out.view());
    lengths = cache.lengths;
    kv = base();
    kv.row_stride = -1;
    expect(kv, "kv strides", q.cview(), out.view());
  }
  {
    std::vector<attnkit::merged_key> merged = {{-1, 1.0f}, {20, 2.0f}};
    auto kv = base();
    kv.merged_keys = merged.data();
    expect(kv, "kv.merged_keys[1].slot is 20 but head 1 holds 20 slots", q.cview(), out.view());
    merged = {{-2, 1.0f}, {-1, 1.0f}};
    expect(kv, "kv.merged_keys[0].slot is -2", q.cview(), out.view());
    merged = {{3, 0.0f}, {-1, 1.0f}};
    expect(kv, "kv.merged_keys[0].count is 0, it must be finite and > 0", q.cview(), out.view());
    merged = {{3, 2.0f}, {0, std::numeric_limits<float>::infinity()}};
    expect(kv, "kv.merged_keys[1].count is inf", q.cview(), out.view());
  }
  {
    auto small_out = make_tensor3<float>(1, 2, 64);
    try {
      attnkit::attention(attnkit::cpu, q.cview(), base(), small_out.view(), attnkit::causal{});
      FAIL("no attnkit::error thrown");
    } catch (const attnkit::error& e) {
      CHECK(std::string(e.what()).find("out heads (extent 1) is 2") != std::string::npos);
    }
  }
  {
    // A mask or observer checked against the longest head: a key-mass table too narrow.
    std::vector<float> mass(2 * 30, 0.0f);
    attnkit::accumulate_key_mass key_mass({mass.data(), {2, 30}});
    attnkit::attention_options options;
    options.observer = key_mass;
    try {
      attnkit::attention(attnkit::cpu, q.cview(), base(), out.view(), attnkit::causal{}, options);
      FAIL("no attnkit::error thrown");
    } catch (const attnkit::error& e) {
      CHECK(std::string(e.what()).find("the call has 40 keys") != std::string::npos);
    }
    CHECK(out.unchanged_since(out_before));
  }
  {
    // Quest's paged update validates the same way, and the first slots.
    attnkit::page_bounds<float> bounds(16, 2, 64, 64);
    auto kv = base();
    kv.page_size = 0;
    CHECK_THROWS_WITH(bounds.update(attnkit::cpu, kv),
                      Catch::Contains("attnkit::page_bounds::update: kv.page_size is 0"));
    const std::vector<index_t> first = {1, 0};
    CHECK_THROWS_WITH(bounds.update(attnkit::cpu, base(), first),
                      Catch::Contains("first_slots[0] is 1"));
    CHECK(bounds.tokens() == 0);
  }
}
