// Masks on their own, without kernels: sliding_window, sliding_window_per_head, custom and a & b.
//
// Every mask is checked against its own allows() on a grid of positions (queries [-24, 200),
// keys [-8, 200): negative query positions are what q_tokens > kv_tokens produces) through a
// 2-D prefix sum of visible pairs, so that every (query range, key range) tile of the grid costs
// O(1) to judge:
//   - classify is never wrong (empty => no visible pair, full => every pair visible), and equals
//     the brute-force answer where the header promises exactness (sliding_window, custom);
//   - for_each_visible_run lists exactly the maximal runs of the allows() scan, in order;
// and allows() itself is checked against an independent, literal transcription of the
// semantics (sliding_window) or against the bits that were set (custom). Windows as large as
// INT64_MAX are included: the masks promise not to overflow, and the sanitizer build checks it.
#include <catch2/catch.hpp>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "attnkit/mask/causal.hpp"
#include "attnkit/mask/custom.hpp"
#include "attnkit/mask/full.hpp"
#include "attnkit/mask/intersection.hpp"
#include "attnkit/mask/sliding_window.hpp"
#include "support/random.hpp"

using attnkit::attention_shape;
using attnkit::custom;
using attnkit::custom_bits;
using attnkit::head_index;
using attnkit::index_t;
using attnkit::position;
using attnkit::position_range;
using attnkit::sliding_window;
using attnkit::sliding_window_per_head;
using attnkit::tile_kind;

// ---- the concept and its optional members, at compile time ---------------------------------

using window_and_causal = attnkit::intersection<attnkit::causal, sliding_window>;
using nested =
    attnkit::intersection<attnkit::intersection<sliding_window, custom>, attnkit::causal>;

static_assert(attnkit::attention_mask<sliding_window>);
static_assert(attnkit::attention_mask<sliding_window_per_head>);
static_assert(attnkit::attention_mask<custom>);
static_assert(attnkit::attention_mask<window_and_causal>);
static_assert(attnkit::attention_mask<nested>);
static_assert(attnkit::detail::has_visible_runs<sliding_window>);
static_assert(attnkit::detail::has_visible_runs<sliding_window_per_head>);
static_assert(attnkit::detail::has_visible_runs<custom>);
static_assert(attnkit::detail::has_visible_runs<nested>);
static_assert(attnkit::detail::has_mask_check<sliding_window>);
static_assert(attnkit::detail::has_mask_check<sliding_window_per_head>);
static_assert(attnkit::detail::has_mask_check<custom>);
static_assert(attnkit::detail::has_mask_check<nested>);
static_assert(attnkit::detail::has_varies_by_head<sliding_window_per_head>);
static_assert(attnkit::detail::has_varies_by_head<custom>);
static_assert(attnkit::detail::has_varies_by_head<nested>);
static_assert(std::is_aggregate_v<sliding_window> && std::is_aggregate_v<custom>);
static_assert(std::is_same_v<decltype(attnkit::causal{} & sliding_window{}), window_and_causal>);
static_assert(std::is_same_v<decltype(sliding_window{} & custom{} & attnkit::causal{}), nested>);

// The aggregate spelling and constexpr use (what device code needs).
constexpr sliding_window streaming{1024, 0, 4};
static_assert(streaming.left == 1024 && streaming.right == 0 && streaming.sinks == 4 &&
              streaming.dilation == 1);
static_assert(sliding_window{2, 0}.allows(5, 3, 0) && !sliding_window{2, 0}.allows(5, 2, 0));
static_assert(sliding_window{2, 0}.classify({10, 12}, {0, 5}, 0) == tile_kind::empty);
static_assert(sliding_window{2, 0, 5}.classify({10, 12}, {0, 5}, 0) == tile_kind::full);
static_assert((attnkit::causal{} & sliding_window{2, 1}).allows(5, 5, 0));
static_assert(!(attnkit::causal{} & sliding_window{2, 1}).allows(5, 6, 0));
constexpr std::uint64_t constexpr_bits[] = {0b1011};
constexpr custom constexpr_custom{constexpr_bits, 0, 1, 4};
static_assert(constexpr_custom.allows(0, 0, 0) && !constexpr_custom.allows(0, 2, 0));
static_assert(constexpr_custom.classify({0, 1}, {0, 2}, 0) == tile_kind::full);
static_assert(constexpr_custom.classify({0, 1}, {2, 3}, 0) == tile_kind::empty);
constexpr int count_runs(const sliding_window& w, position p, position_range kv) {
  int runs = 0;
  w.for_each_visible_run(p, 0, kv, [&](position, position) { ++runs; });
  return runs;
}
static_assert(count_runs(sliding_window{4, 0, 2, 2}, 10, {0, 20}) == 4);  // [0,2) 6 8 10

namespace {

constexpr index_t huge = index_t{1} << 40;
constexpr index_t largest = std::numeric_limits<index_t>::max();

// ---- the grid -------------------------------------------------------------------------------

constexpr position p_lo = -24, p_hi = 200;  // query positions
constexpr position j_lo = -8, j_hi = 200;   // keys (negative ones exist nowhere: never visible)
constexpr index_t p_count = p_hi - p_lo, j_count = j_hi - j_lo;

std::vector<position_range> ranges(const std::vector<position>& begins) {
  std::vector<position_range> out;
  for (position b : begins)
    for (index_t size : {0, 1, 2, 3, 16, 64}) out.push_back({b, b + size});
  return out;
}
const std::vector<position_range> q_tiles = ranges({-20, -3, 0, 1, 5, 17, 40, 63, 64, 100, 130});
const std::vector<position_range> kv_tiles = ranges({-5, 0, 1, 5, 17, 40, 63, 64, 100, 136});

// Random tiles inside the grid, for the shapes the fixed list misses.
std::vector<std::pair<position_range, position_range>> random_tiles(std::uint64_t seed, int n) {
  attnkit_test::rng r(seed);
  std::vector<std::pair<position_range, position_range>> out;
  for (int i = 0; i < n; ++i) {
    const position qa = r.integer(p_lo, p_hi - 1), ka = r.integer(j_lo, j_hi - 1);
    out.push_back({{qa, r.integer(qa + 1, p_hi)}, {ka, r.integer(ka + 1, j_hi)}});
  }
  return out;
}
const auto extra_tiles = random_tiles(7, 300);

// What one (mask, head) shows on the grid, with a prefix sum to count visible pairs of a tile.
class visibility {
 public:
  template <class M>
  visibility(const M& mask, head_index h)
      : seen_(static_cast<std::size_t>(p_count * j_count)),
        prefix_(static_cast<std::size_t>((p_count + 1) * (j_count + 1)), 0) {
    for (position p = p_lo; p < p_hi; ++p)
      for (position j = j_lo; j < j_hi; ++j) seen_[index(p, j)] = mask.allows(p, j, h) ? 1 : 0;
    for (index_t a = 0; a < p_count; ++a)
      for (index_t b = 0; b < j_count; ++b)
        prefix_at(a + 1, b + 1) = seen_[static_cast<std::size_t>(a * j_count + b)] +
                                  prefix_at(a, b + 1) + prefix_at(a + 1, b) - prefix_at(a, b);
  }
  bool at(position p, position j) const { return seen_[index(p, j)] != 0; }
  index_t count(position_range q, position_range kv) const {
    const index_t a0 = q.begin - p_lo, a1 = q.end - p_lo, b0 = kv.begin - j_lo, b1 = kv.end - j_lo;
    return prefix_at(a1, b1) - prefix_at(a0, b1) - prefix_at(a1, b0) + prefix_at(a0, b0);
  }
  // The maximal runs of visible keys of kv for query p, by scanning.
  void runs(position p, position_range kv, std::vector<position_range>& out) const {
    out.clear();
    for (position j = kv.begin; j < kv.end;) {
      while (j < kv.end && !at(p, j)) ++j;
      const position b = j;
      while (j < kv.end && at(p, j)) ++j;
      if (b < j) out.push_back({b, j});
    }
  }

 private:
  static std::size_t index(position p, position j) {
    return static_cast<std::size_t>((p - p_lo) * j_count + (j - j_lo));
  }
  index_t& prefix_at(index_t a, index_t b) {
    return prefix_[static_cast<std::size_t>(a * (j_count + 1) + b)];
  }
  index_t prefix_at(index_t a, index_t b) const {
    return prefix_[static_cast<std::size_t>(a * (j_count + 1) + b)];
  }
  std::vector<std::uint8_t> seen_;
  std::vector<index_t> prefix_;
};

std::string str(position_range r) {
  return "[" + std::to_string(r.begin) + ", " + std::to_string(r.end) + ")";
}
const char* name(tile_kind k) {
  return k == tile_kind::empty ? "empty" : k == tile_kind::full ? "full" : "partial";
}

// Collects the first few failures of a grid sweep, so that one REQUIRE reports them (an
// assertion per tile would dominate the run time).
struct failures {
  int count = 0;
  std::string text;
  void add(const std::string& s) {
    if (count++ < 6) text += s + "\n";
  }
};

// How many tiles of each kind the sweeps saw: the sweeps would prove little if, say, no mask
// ever produced a full tile with dilation > 1.
struct kind_tally {
  index_t empty = 0, partial = 0, full = 0;
  void add(tile_kind k) {
    (k == tile_kind::empty ? empty : k == tile_kind::full ? full : partial)++;
  }
};

// The sweep described at the top, for one mask and head.
template <class M>
void check_on_grid(const M& mask, head_index h, bool exact, const std::string& label,
                   kind_tally* tally = nullptr) {
  const visibility v(mask, h);
  failures bad;
  auto judge = [&](position_range q, position_range kv) {
    const tile_kind kind = mask.classify(q, kv, h);
    if (tally) tally->add(kind);
    const index_t total = (q.end - q.begin) * (kv.end - kv.begin);
    tile_kind expected = tile_kind::partial;
    if (total == 0) {
      expected = tile_kind::empty;  // the header's promise for empty ranges
    } else {
      const index_t visible = v.count(q, kv);
      expected = visible == 0       ? tile_kind::empty
                 : visible == total ? tile_kind::full
                                    : tile_kind::partial;
    }
    const bool wrong = (kind == tile_kind::empty && expected != tile_kind::empty) ||
                       (kind == tile_kind::full && expected != tile_kind::full) ||
                       (total == 0 && kind != tile_kind::empty);
    if (wrong || (exact && kind != expected))
      bad.add("classify(q " + str(q) + ", kv " + str(kv) + ", head " + std::to_string(h) +
              ") = " + name(kind) + ", brute force says " + name(expected));
  };
  for (position_range q : q_tiles)
    for (position_range kv : kv_tiles) judge(q, kv);
  for (const auto& [q, kv] : extra_tiles) judge(q, kv);

  std::vector<position_range> expected, from_member, from_detail;
  std::vector<position_range> rows = kv_tiles;
  rows.push_back({j_lo, j_hi});
  for (position p = p_lo; p < p_hi; ++p) {
    for (position_range kv : rows) {
      v.runs(p, kv, expected);
      from_detail.clear();
      attnkit::detail::for_each_visible_run(mask, p, h, kv, [&](position b, position e) {
        from_detail.push_back({b, e});
      });
      bool same = from_detail.size() == expected.size();
      for (std::size_t i = 0; same && i < expected.size(); ++i)
        same = from_detail[i].begin == expected[i].begin && from_detail[i].end == expected[i].end;
      if constexpr (attnkit::detail::has_visible_runs<M>) {
        from_member.clear();
        mask.for_each_visible_run(p, h, kv, [&](position b, position e) {
          from_member.push_back({b, e});
        });
        same = same && from_member.size() == from_detail.size();
        for (std::size_t i = 0; same && i < from_member.size(); ++i)
          same = from_member[i].begin == from_detail[i].begin &&
                 from_member[i].end == from_detail[i].end;
      }
      if (!same) {
        std::string got, want;
        for (auto r : from_detail) got += str(r);
        for (auto r : expected) want += str(r);
        bad.add("runs(p " + std::to_string(p) + ", kv " + str(kv) + ", head " + std::to_string(h) +
                ") = " + got + ", allows() scan says " + want);
      }
    }
  }
  INFO(label);
  INFO(bad.text);
  REQUIRE(bad.count == 0);
}

std::string describe(const sliding_window& w) {
  return "sliding_window{" + std::to_string(w.left) + ", " + std::to_string(w.right) + ", " +
         std::to_string(w.sinks) + ", " + std::to_string(w.dilation) + "}";
}

// The semantics as the header states them, transcribed literally in 128-bit arithmetic (so that
// p + right and p - left cannot overflow here even where the mask must avoid it differently):
// j >= 0 and ( (j < sinks and j <= p + right)
//              or (p - left <= j <= p + right and (p - j) is a multiple of dilation) ).
__extension__ typedef __int128 wide;
bool literal_window_allows(const sliding_window& w, position p, position j) {
  if (j < 0) return false;
  const wide P = p, J = j, d = w.dilation;
  const bool sink = J < w.sinks && J <= P + w.right;
  const bool band = P - w.left <= J && J <= P + w.right && ((P - J) % d + d) % d == 0;
  return sink || band;
}

sliding_window random_window(attnkit_test::rng& r) {
  const index_t lefts[] = {0, 1, 2, 3, 7, 16, 63, 64, 65, 200, huge, largest};
  const index_t rights[] = {0, 0, 0, 0, 1, 2, 5, 16, 64, 300, huge, largest};
  const index_t sinks[] = {0, 0, 0, 1, 4, 17, 64, 65, 300};
  return {lefts[r.integer(0, 11)], rights[r.integer(0, 11)], sinks[r.integer(0, 8)],
          r.integer(1, 5)};
}

// Random bits with structure: rows come in runs sharing a pattern (all hidden, all visible, a
// key interval, dense or sparse noise), so that whole tiles are often empty or full, not only
// partial. The padding bits past `keys` are garbage on purpose: the mask must ignore them.
custom_bits random_bits(attnkit_test::rng& r, position first, index_t rows, index_t keys,
                        index_t layouts, index_t per_layout) {
  custom_bits bits(rows, keys, layouts, per_layout, first);
  for (index_t layout = 0; layout < layouts; ++layout) {
    index_t row = 0;
    while (row < rows) {
      const index_t run = r.integer(1, 40);
      const int pattern = static_cast<int>(r.integer(0, 5));
      const position a = r.integer(0, keys), b = r.integer(a, keys);
      const double density = pattern == 4 ? 0.97 : 0.1;
      for (index_t i = row; i < rows && i < row + run; ++i)
        for (position j = 0; j < keys; ++j) {
          bool on = false;
          switch (pattern) {
            case 0:
              on = false;
              break;
            case 1:
              on = true;
              break;
            case 2:
              on = a <= j && j < b;
              break;
            case 3:
              on = j < a || j >= b;
              break;
            default:
              on = r.uniform() < density;
              break;
          }
          if (on) bits.set(layout, first + i, j);
        }
      row += run;
    }
  }
  if (keys % 64 != 0) {
    const std::uint64_t valid = (std::uint64_t{1} << (keys % 64)) - 1;
    const index_t wpr = bits.words_per_row();
    for (index_t row = 0; row < layouts * rows; ++row)
      bits.words()[static_cast<std::size_t>(row * wpr + wpr - 1)] |= r.next_u64() & ~valid;
  }
  return bits;
}

// Runs `call`, which must throw attnkit::error whose message holds every fragment.
template <class Call>
void expect_error(Call&& call, const std::vector<std::string>& fragments) {
  std::string message;
  bool threw = false;
  try {
    call();
  } catch (const attnkit::error& e) {
    threw = true;
    message = e.what();
  }
  INFO("message: " << message);
  REQUIRE(threw);
  for (const std::string& f : fragments) {
    INFO("expected fragment: " << f);
    CHECK(message.find(f) != std::string::npos);
  }
}

}  // namespace

// ---- sliding_window --------------------------------------------------------------------------

TEST_CASE("sliding_window: allows() is the stated semantics", "[mask][sliding_window]") {
  attnkit_test::rng r(11);
  std::vector<sliding_window> windows = {
      {0, 0}, {3, 0}, {3, 0, 4}, {0, 0, 4}, {3, 3}, {2, 5, 3, 2}, {largest, largest, largest, 5}};
  for (int i = 0; i < 300; ++i) windows.push_back(random_window(r));
  for (const sliding_window& w : windows) {
    failures bad;
    for (position p = p_lo; p < p_hi; ++p)
      for (position j = j_lo; j < j_hi; ++j)
        if (w.allows(p, j, 0) != literal_window_allows(w, p, j))
          bad.add("allows(" + std::to_string(p) + ", " + std::to_string(j) + ")");
    INFO(describe(w));
    INFO(bad.text);
    REQUIRE(bad.count == 0);
  }
  // The sinks obey the band's upper edge: a prompt token does not see later sink tokens.
  CHECK_FALSE(sliding_window{8, 0, 4}.allows(1, 2, 0));
  CHECK(sliding_window{8, 0, 4}.allows(100, 3, 0));
  CHECK_FALSE(sliding_window{8, 0, 4}.allows(100, 4, 0));
}

TEST_CASE("sliding_window: classify is exact and runs are exact on random windows",
          "[mask][sliding_window]") {
  attnkit_test::rng r(12);
  std::vector<sliding_window> windows = {
      {0, 0},       {1, 0},       {63, 0},       {64, 0, 4},   {16, 16},          {0, 5},
      {5, 0, 0, 5}, {4, 4, 0, 2}, {200, 0, 300}, {huge, huge}, {largest, 0, 2, 3}};
  for (int i = 0; i < 150; ++i) windows.push_back(random_window(r));
  kind_tally dilated;
  for (const sliding_window& w : windows)
    check_on_grid(w, 0, true, describe(w), w.dilation > 1 ? &dilated : nullptr);
  // Dilated windows must have produced every kind of tile, or exactness was not exercised.
  CHECK(dilated.empty > 0);
  CHECK(dilated.partial > 0);
  CHECK(dilated.full > 0);
}

TEST_CASE("sliding_window: equivalences", "[mask][sliding_window]") {
  const attnkit::causal causal;
  const attnkit::full full;
  auto same_on_grid = [](const auto& a, const auto& b, const std::string& label) {
    failures bad;
    for (position p = p_lo; p < p_hi; ++p)
      for (position j = 0; j < j_hi; ++j)
        if (static_cast<bool>(a.allows(p, j, 0)) != static_cast<bool>(b.allows(p, j, 0)))
          bad.add("allows(" + std::to_string(p) + ", " + std::to_string(j) + ")");
    // Both classify exactly, so they must agree on every non-empty tile of existing keys.
    for (position_range q : q_tiles)
      for (position_range kv : kv_tiles)
        if (q.begin < q.end && kv.begin < kv.end && kv.begin >= 0 &&
            a.classify(q, kv, 0) != b.classify(q, kv, 0))
          bad.add("classify(" + str(q) + ", " + str(kv) + ")");
    INFO(label);
    INFO(bad.text);
    REQUIRE(bad.count == 0);
  };
  for (index_t big : {index_t{p_hi - p_lo + 1}, index_t{1000}, huge, largest}) {
    for (index_t sinks : {0, 4, 1000}) {
      const std::string suffix =
          " (left " + std::to_string(big) + ", sinks " + std::to_string(sinks) + ")";
      same_on_grid(sliding_window{big, 0, sinks}, causal,
                   "window covering the past == causal" + suffix);
      same_on_grid(sliding_window{big, big, sinks}, full, "window covering all == full" + suffix);
    }
  }
  // dilation 1 is the plain band: j <= p + right and (j >= p - left or j < sinks).
  struct plain_band {
    index_t left, right, sinks;
    constexpr tile_kind classify(position_range, position_range, head_index) const {
      return tile_kind::partial;
    }
    bool allows(position p, position j, head_index) const {
      return j >= 0 && j - p <= right && (p - j <= left || j < sinks);
    }
  };
  attnkit_test::rng r(13);
  for (int i = 0; i < 100; ++i) {
    sliding_window w = random_window(r);
    w.dilation = 1;
    const plain_band band{w.left, w.right, w.sinks};
    failures bad;
    for (position p = p_lo; p < p_hi; ++p)
      for (position j = j_lo; j < j_hi; ++j)
        if (w.allows(p, j, 0) != band.allows(p, j, 0))
          bad.add("allows(" + std::to_string(p) + ", " + std::to_string(j) + ")");
    INFO(describe(w));
    INFO(bad.text);
    REQUIRE(bad.count == 0);
  }
  // A dilation larger than both reaches keeps only the query's own key. (With sinks the two
  // differ: the sinks' upper edge p + right still depends on right.)
  for (index_t d : {2, 3, 5})
    for (index_t reach = 0; reach < d; ++reach)
      same_on_grid(
          sliding_window{reach, d - 1 - reach, 0, d}, sliding_window{0, 0},
          "dilation beyond the reach: d " + std::to_string(d) + ", left " + std::to_string(reach));
}

TEST_CASE("sliding_window: check() rejects invalid windows and names the field",
          "[mask][sliding_window][errors]") {
  const attention_shape shape{4, 10, 8, 2};
  const std::string fn = "attnkit::sliding_window: ";
  expect_error([&] { sliding_window{-3, 0}.check(shape); }, {fn + "left is -3, it must be >= 0"});
  expect_error([&] { sliding_window{0, -1}.check(shape); }, {fn + "right is -1, it must be >= 0"});
  expect_error([&] { sliding_window{0, 0, -2}.check(shape); }, {fn + "sinks is -2", ">= 0"});
  expect_error([&] { sliding_window{0, 0, 0, 0}.check(shape); }, {fn + "dilation is 0", ">= 1"});
  expect_error([&] { sliding_window{1, 1, 1, -4}.check(shape); }, {fn + "dilation is -4"});
  expect_error([&] { attnkit::detail::check_mask(sliding_window{-1, 0}, shape); }, {"left is -1"});
  for (const sliding_window& w : {sliding_window{0, 0}, sliding_window{5, 2, 4, 3},
                                  sliding_window{largest, largest, largest, largest}})
    CHECK_NOTHROW(w.check(shape));
  CHECK_FALSE(attnkit::detail::mask_varies_by_head(sliding_window{3, 0}));
}

// ---- sliding_window_per_head -----------------------------------------------------------------

TEST_CASE("sliding_window_per_head: each head behaves as its own window",
          "[mask][sliding_window]") {
  attnkit_test::rng r(21);
  for (int trial = 0; trial < 12; ++trial) {
    std::vector<sliding_window> table;
    for (int h = 0; h < 4; ++h) table.push_back(random_window(r));
    table[0] = {0, 0};  // heads as different as MSWA's: a point window next to wide ones
    const sliding_window_per_head mask{table};
    CHECK(attnkit::detail::mask_varies_by_head(mask));
    for (head_index h = 0; h < 4; ++h) {
      const sliding_window& w = table[static_cast<std::size_t>(h)];
      check_on_grid(mask, h, true, "head " + std::to_string(h) + ": " + describe(w));
      failures bad;
      for (position_range q : q_tiles)
        for (position_range kv : kv_tiles)
          if (mask.classify(q, kv, h) != w.classify(q, kv, h)) bad.add(str(q) + str(kv));
      for (position p = p_lo; p < p_hi; ++p)
        for (position j = j_lo; j < j_hi; ++j)
          if (mask.allows(p, j, h) != w.allows(p, j, h)) bad.add("allows");
      INFO(bad.text);
      REQUIRE(bad.count == 0);
    }
  }
}

TEST_CASE("sliding_window_per_head: check() wants one valid window per query head",
          "[mask][sliding_window][errors]") {
  const std::vector<sliding_window> three = {{4, 0}, {8, 0, 4}, {16, 0}};
  const std::vector<sliding_window> bad_head = {{4, 0}, {8, 0}, {-1, 0}, {2, 2}};
  const std::vector<sliding_window> good = {{4, 0}, {8, 0}, {1, 1, 0, 2}, {2, 2}};
  const std::string fn = "attnkit::sliding_window_per_head: ";
  expect_error(
      [&] {
        sliding_window_per_head{three}.check({4, 10, 4, 2});
      },
      {fn, "windows has 3 entries", "q_heads = 4"});
  expect_error(
      [&] {
        sliding_window_per_head{{}}.check({4, 10, 4, 2});
      },
      {fn, "windows has 0 entries", "q_heads = 4"});
  expect_error(
      [&] {
        sliding_window_per_head{bad_head}.check({4, 10, 4, 2});
      },
      {fn, "head 2", "left is -1, it must be >= 0"});
  CHECK_NOTHROW(sliding_window_per_head{good}.check({4, 10, 4, 2}));
  CHECK_NOTHROW(sliding_window_per_head{three}.check({1, 10, 3, 1}));
}

// ---- custom ----------------------------------------------------------------------------------

TEST_CASE("custom: allows() reads the bits that were set", "[mask][custom]") {
  attnkit_test::rng r(31);
  for (index_t keys : {1, 63, 64, 65, 130}) {
    custom_bits bits(7, keys, 2, 3, -2);
    std::vector<std::uint8_t> expected(static_cast<std::size_t>(2 * 7 * keys), 0);
    for (int i = 0; i < 200; ++i) {
      const index_t layout = r.integer(0, 1);
      const position q = r.integer(-2, 4), kv = r.integer(0, keys - 1);
      const bool value = r.uniform() < 0.7;
      bits.set(layout, q, kv, value);
      expected[static_cast<std::size_t>((layout * 7 + q + 2) * keys + kv)] = value ? 1 : 0;
    }
    const custom mask = bits.mask();
    CHECK(mask.varies_by_head());
    failures bad;
    for (head_index h = 0; h < 6; ++h)
      for (position q = -5; q < 8; ++q)
        for (position kv = -3; kv < keys + 70; ++kv) {
          const bool inside = q >= -2 && q < 5 && kv >= 0 && kv < keys;
          const bool want =
              inside && expected[static_cast<std::size_t>((h / 3 * 7 + q + 2) * keys + kv)];
          if (mask.allows(q, kv, h) != want) bad.add("allows");
          if (inside && bits.test(h / 3, q, kv) != want) bad.add("test");
        }
    INFO("keys " << keys);
    INFO(bad.text);
    REQUIRE(bad.count == 0);
    const custom_bits copy = custom_bits::from_predicate(
        7, keys, 2, 3, -2,
        [&](position q, position kv, index_t layout) { return bits.test(layout, q, kv); });
    CHECK(std::vector<std::uint64_t>(copy.words().begin(), copy.words().end()) ==
          std::vector<std::uint64_t>(bits.words().begin(), bits.words().end()));
  }
}

TEST_CASE("custom: classify is exact and runs are exact on random bits", "[mask][custom]") {
  attnkit_test::rng r(32);
  struct layout_case {
    index_t layouts, per_layout;
  };
  kind_tally tally;
  int trial = 0;
  for (position first : {-30, -5, 0, 7, 100})
    for (index_t rows : {0, 1, 37, 64, 130})
      for (index_t keys : {0, 1, 63, 64, 65, 130, 175})
        for (layout_case lc : {layout_case{1, 1}, layout_case{2, 2}, layout_case{3, 1}}) {
          if ((++trial) % 3 != 0) continue;  // a third of the combinations keeps this under 1 s
          const custom_bits bits = random_bits(r, first, rows, keys, lc.layouts, lc.per_layout);
          const custom mask = bits.mask();
          CHECK(mask.varies_by_head() == (lc.layouts > 1));
          const head_index heads = lc.layouts > 1 ? lc.layouts * lc.per_layout : 2;
          for (head_index h = 0; h < heads; ++h)
            check_on_grid(mask, h, true,
                          "custom: first " + std::to_string(first) + ", rows " +
                              std::to_string(rows) + ", keys " + std::to_string(keys) +
                              ", layouts " + std::to_string(lc.layouts) + ", head " +
                              std::to_string(h),
                          &tally);
        }
  CHECK(tally.empty > 0);
  CHECK(tally.partial > 0);
  CHECK(tally.full > 0);
}

TEST_CASE("custom: check() wants bits for every query position and key of the call",
          "[mask][custom][errors]") {
  const std::uint64_t words[64] = {};
  const std::string fn = "attnkit::custom: ";
  // q_tokens 4 over kv_tokens 10: query positions [6, 10).
  const attention_shape shape{4, 10, 8, 2};
  auto with = [&](position first, index_t rows, index_t keys, index_t layouts = 1,
                  index_t per_layout = 1, const std::uint64_t* bits = nullptr) {
    return custom{bits ? bits : words, first, rows, keys, layouts, per_layout};
  };
  CHECK_NOTHROW(with(6, 4, 10).check(shape));
  CHECK_NOTHROW(with(0, 10, 64).check(shape));
  CHECK_NOTHROW(with(6, 4, 10, 8, 1).check(shape));
  CHECK_NOTHROW(with(6, 4, 10, 4, 2).check(shape));
  CHECK_NOTHROW(with(6, 4, 10, 1, 5).check(shape));  // per_layout is unused with one layout
  expect_error([&] { with(6, 4, 10, 0).check(shape); }, {fn + "layouts is 0, it must be >= 1"});
  expect_error([&] { with(6, 4, 10, 2, 0).check(shape); },
               {fn + "query_heads_per_layout is 0", ">= 1"});
  expect_error([&] { with(6, -1, 10).check(shape); }, {fn + "rows is -1"});
  expect_error([&] { with(6, 4, -1).check(shape); }, {fn + "keys is -1"});
  expect_error([&] { with(6, 4, 10, 2, 3).check(shape); },
               {fn, "layouts (2)", "query_heads_per_layout (3)", "= 6", "q_heads = 8"});
  expect_error([&] { with(0, 9, 10).check(shape); }, {fn, "[0, 9)", "query positions [6, 10)"});
  expect_error([&] { with(7, 3, 10).check(shape); }, {fn, "[7, 10)", "[6, 10)"});
  expect_error([&] { with(6, 4, 9).check(shape); }, {fn + "keys is 9", "kv_tokens = 10"});
  expect_error([&] { custom{nullptr, 6, 4, 10}.check(shape); }, {fn + "bits is null", "4 rows"});
  // More queries than keys: positions [-2, 3); the negative ones need no rows (they see nothing).
  const attention_shape tall{5, 3, 1, 1};
  CHECK_NOTHROW(with(0, 3, 3).check(tall));
  CHECK_NOTHROW(with(-2, 5, 3).check(tall));
  expect_error([&] { with(1, 2, 3).check(tall); }, {fn, "query positions [0, 3)"});
  // Nothing to cover: no queries, or only negative positions; but the keys must still exist.
  CHECK_NOTHROW(custom{nullptr, 0, 0, 10}.check({0, 10, 1, 1}));
  CHECK_NOTHROW(custom{nullptr, 0, 0, 0}.check({2, 0, 1, 1}));
  expect_error([&] { custom{nullptr, 0, 0, 0}.check({0, 10, 1, 1}); }, {fn + "keys is 0"});
}

TEST_CASE("custom_bits: the builder validates its arguments", "[mask][custom][errors]") {
  const std::string fn = "attnkit::custom_bits";
  expect_error([] { custom_bits(-1, 4); }, {fn, "rows is -1"});
  expect_error([] { custom_bits(4, -2); }, {fn, "keys is -2"});
  expect_error([] { custom_bits(4, 4, 0); }, {fn, "layouts is 0"});
  expect_error([] { custom_bits(4, 4, 2, 0); }, {fn, "query_heads_per_layout is 0"});
  custom_bits bits(4, 70, 2, 1, 10);  // rows are query positions [10, 14)
  CHECK(bits.words().size() == 2 * 4 * 2);
  bits.set(1, 13, 69);
  CHECK(bits.test(1, 13, 69));
  bits.set(1, 13, 69, false);
  CHECK_FALSE(bits.test(1, 13, 69));
  expect_error([&] { bits.set(2, 10, 0); }, {fn + "::set: layout is 2", "[0, 2)"});
  expect_error([&] { bits.set(0, 9, 0); }, {fn + "::set: q is 9", "[10, 14)"});
  expect_error([&] { bits.set(0, 14, 0); }, {fn + "::set: q is 14"});
  expect_error([&] { bits.set(0, 10, 70); }, {fn + "::set: kv is 70", "[0, 70)"});
  expect_error([&] { (void)bits.test(0, 10, -1); }, {fn + "::test: kv is -1"});
  const custom view = bits.mask();
  CHECK(view.first_position == 10);
  CHECK(view.rows == 4);
  CHECK(view.keys == 70);
  CHECK(view.layouts == 2);
  CHECK(view.words_per_row() == 2);
}

// ---- intersection ----------------------------------------------------------------------------

TEST_CASE("intersection: sound classify, exact runs, for windows, causal and custom bits",
          "[mask][intersection]") {
  attnkit_test::rng r(41);
  const attnkit::causal causal;
  // An intersection is empty where an operand is and full where both are; beyond that its
  // classify may be conservative, so the sweep checks soundness, plus those two rules here.
  auto rules_hold = [](const auto& both, head_index h) {
    failures bad;
    for (position_range q : q_tiles)
      for (position_range kv : kv_tiles) {
        const tile_kind a = both.first.classify(q, kv, h), b = both.second.classify(q, kv, h);
        const tile_kind k = both.classify(q, kv, h);
        if ((a == tile_kind::empty || b == tile_kind::empty) != (k == tile_kind::empty) ||
            (a == tile_kind::full && b == tile_kind::full) != (k == tile_kind::full))
          bad.add(str(q) + str(kv));
      }
    INFO(bad.text);
    REQUIRE(bad.count == 0);
  };
  for (int i = 0; i < 40; ++i) {
    const sliding_window w = random_window(r);
    const auto both = causal & w;
    check_on_grid(both, 0, false, "causal & " + describe(w));
    rules_hold(both, 0);
    CHECK_FALSE(both.varies_by_head());
  }
  for (int i = 0; i < 30; ++i) {
    const sliding_window w = random_window(r);
    const index_t layouts = r.integer(1, 3);
    const custom_bits bits = random_bits(r, -10, 190, 185, layouts, 2);
    const auto both = bits.mask() & w;
    const auto three = w & bits.mask() & causal;
    CHECK(both.varies_by_head() == (layouts > 1));
    for (head_index h = 0; h < (layouts > 1 ? layouts * 2 : 1); ++h) {
      check_on_grid(both, h, false, "custom & " + describe(w));
      check_on_grid(three, h, false, describe(w) + " & custom & causal");
      rules_hold(both, h);
    }
  }
  // Per-head windows under per-layout bits: both operands differ by head.
  std::vector<sliding_window> table;
  for (int h = 0; h < 4; ++h) table.push_back(random_window(r));
  const custom_bits bits = random_bits(r, 0, 200, 200, 2, 2);
  const auto per_head = sliding_window_per_head{table} & bits.mask();
  CHECK(per_head.varies_by_head());
  CHECK((causal & sliding_window_per_head{table}).varies_by_head());
  for (head_index h = 0; h < 4; ++h) check_on_grid(per_head, h, false, "per head & custom");
}

TEST_CASE("intersection: with full is the other mask; check() checks both operands",
          "[mask][intersection][errors]") {
  const attnkit::causal causal;
  const auto same = attnkit::full{} & causal;
  for (position_range q : q_tiles)
    for (position_range kv : kv_tiles)
      if (q.begin < q.end && kv.begin < kv.end)
        REQUIRE(same.classify(q, kv, 0) == causal.classify(q, kv, 0));

  const attention_shape shape{4, 10, 4, 2};
  const std::uint64_t words[4] = {};
  CHECK_NOTHROW((causal & sliding_window{3, 0}).check(shape));
  CHECK_NOTHROW(attnkit::detail::check_mask(causal & sliding_window{3, 0}, shape));
  expect_error(
      [&] {
        (causal & sliding_window{-3, 0}).check(shape);
      },
      {"attnkit::sliding_window: left is -3"});
  expect_error(
      [&] {
        (sliding_window{3, 0} & custom{words, 0, 4, 10}).check(shape);
      },
      {"attnkit::custom: the rows cover query positions [0, 4)"});
  expect_error(
      [&] {
        (sliding_window{3, 0} & causal & sliding_window{0, 0, 0, 0}).check(shape);
      },
      {"dilation is 0"});
}
