// merge_states: attention over disjoint key sets, merged with the log-sum-exp rule, must equal
// attention over their union. The pieces are computed by attnkit::cpu (so this also checks the
// cpu kernel's log-sum-exp, which the merge amplifies: a wrong lse moves every merged value) and
// compared with the unsplit fp64 reference.
//
// Tolerance of a merged result: each piece carries the cpu error model (harness.hpp), and a
// merge weight exp(lse_piece - lse) inherits the error of both lse values, which moves the
// output by at most 2·max|v| per unit of lse error. With P pieces:
//   out: P · out_tol + 4 · max|v| · lse_tol,   lse: P · lse_tol
// (lse_tol / out_tol are those of the unsplit problem; the pieces are smaller, so this is a bound).
#include <catch2/catch.hpp>
#include <cmath>
#include <limits>
#include <vector>

#include "support/harness.hpp"

using namespace attnkit_test;

namespace {

constexpr float neg_inf = -std::numeric_limits<float>::infinity();

// Keys [lo, hi) of a [tokens, heads, dim] view (a sub-range view; hi == lo gives an empty one).
template <class T>
tensor_view<const T, 3> key_range(tensor_view<const T, 3> t, index_t lo, index_t hi) {
  return {t.data() + lo * t.stride(0), {hi - lo, t.extent(1), t.extent(2)}, t.strides()};
}

// A custom mask: keys in [lo, hi), intersected with causal when `causal`. classify is exact
// (never conservative), so the kernel's full/empty fast paths run on it too.
struct key_range_mask {
  index_t lo = 0, hi = 0;
  bool causal = false;
  constexpr attnkit::tile_kind classify(attnkit::position_range q, attnkit::position_range kv,
                                        attnkit::head_index) const noexcept {
    if (kv.end <= lo || kv.begin >= hi) return attnkit::tile_kind::empty;
    if (causal && kv.begin > q.end - 1) return attnkit::tile_kind::empty;
    const bool in_range = kv.begin >= lo && kv.end <= hi;
    const bool before = !causal || kv.end - 1 <= q.begin;
    return in_range && before ? attnkit::tile_kind::full : attnkit::tile_kind::partial;
  }
  constexpr bool allows(attnkit::position q, attnkit::position kv,
                        attnkit::head_index) const noexcept {
    return kv >= lo && kv < hi && (!causal || kv <= q);
  }
};
static_assert(attnkit::attention_mask<key_range_mask>);

struct piece {
  tensor3<float> out;
  tensor2<float> lse;
};

piece make_piece(index_t nq, index_t hq, index_t d) {
  return {make_tensor3<float>(nq, hq, d), make_lse(hq, nq)};
}

// Merges the pieces left to right into a fresh (out, lse).
piece merge_all(std::vector<piece>& pieces) {
  piece acc = std::move(pieces[0]);
  for (std::size_t p = 1; p < pieces.size(); ++p) {
    piece next = make_piece(acc.out.extents[0], acc.out.extents[1], acc.out.extents[2]);
    attnkit::merge_states(acc.out.cview(), acc.lse.cview(), pieces[p].out.cview(),
                          pieces[p].lse.cview(), next.out.view(), next.lse.view());
    acc = std::move(next);
  }
  return acc;
}

// Reference over all keys (mask `m`) vs the merge of cpu pieces computed by `compute_piece`.
template <class Mask, class ComputePiece>
void check_split(const attention_case& c, const attention_inputs<float, float>& in,
                 const Mask& mask, const std::vector<index_t>& cuts, ComputePiece&& compute_piece) {
  auto ref_out = make_tensor3<float>(c.q_tokens, c.q_heads, c.head_dim);
  auto ref_lse = make_lse(c.q_heads, c.q_tokens);
  attnkit::attention(attnkit::backend::reference{}, in.q.cview(), in.k.cview(), in.v.cview(),
                     ref_out.view(), mask, lse_options(ref_lse.view()));

  std::vector<piece> pieces;
  for (std::size_t p = 0; p + 1 < cuts.size(); ++p) {
    pieces.push_back(make_piece(c.q_tokens, c.q_heads, c.head_dim));
    compute_piece(cuts[p], cuts[p + 1], pieces.back());
  }
  const double n = static_cast<double>(pieces.size());
  const piece merged = merge_all(pieces);

  const error_model model = model_for(c, in);
  const tolerance out_tol = model.output_tolerance<float>();
  const tolerance lse_tol = model.lse_tolerance();
  const comparison co = compare_output<float>(
      merged.out.cview(), ref_out.cview(),
      {n * out_tol.abs + 4.0 * model.max_v * lse_tol.abs, out_tol.rel}, "merged output");
  const comparison cl = compare_lse(merged.lse.cview(), ref_lse.cview(),
                                    {n * lse_tol.abs, n * lse_tol.rel}, "merged lse");
  std::string cut_list;
  for (index_t x : cuts) cut_list += std::to_string(x) + " ";
  INFO("cuts " << cut_list);
  INFO((describe_case<float, float, float>(c)));
  INFO(co.describe());
  INFO(cl.describe());
  CHECK(co.ok());
  CHECK(cl.ok());
  // Rows empty in the union must stay exact zeros.
  index_t bad_empty = 0;
  for (index_t h = 0; h < c.q_heads; ++h)
    for (index_t i = 0; i < c.q_tokens; ++i)
      if (std::isinf(ref_lse.cview()(h, i)))
        for (index_t d = 0; d < c.head_dim; ++d)
          if (merged.out.cview()(i, h, d) != 0.0f) ++bad_empty;
  CHECK(bad_empty == 0);
}

}  // namespace

TEST_CASE("merge_states: kv split into 2 and 3 sub-range pieces equals the unsplit result",
          "[merge]") {
  // Each piece is attention with the full mask over the sub-range views k[lo:hi], v[lo:hi];
  // cuts at 0 or n_kv make an empty piece (no keys: zeros and lse -inf) that must merge as a no-op.
  attention_case c = shape(33, 200, 4, 2, 64, mask_kind::full);
  c.seed = 5000;
  const auto in = make_inputs<float, float>(c);
  const std::vector<std::vector<index_t>> splits = {
      {0, 100, 200},  {0, 1, 200},      {0, 199, 200},     {0, 64, 200},
      {0, 0, 200},    {0, 200, 200},    {0, 10, 150, 200}, {0, 64, 128, 200},
      {0, 0, 0, 200}, {0, 0, 200, 200}, {0, 37, 37, 200}};
  for (const auto& cuts : splits) {
    check_split(c, in, attnkit::full{}, cuts, [&](index_t lo, index_t hi, piece& p) {
      cpu_default{}(in.q.cview(), key_range(in.k.cview(), lo, hi), key_range(in.v.cview(), lo, hi),
                    p.out.view(), attnkit::full{}, lse_options(p.lse.view()));
    });
  }
}

TEST_CASE("merge_states: causal pieces with a key-range mask including fully masked rows",
          "[merge]") {
  // Each piece runs over all keys with the custom mask "causal and lo <= key < hi". A query row
  // before lo sees nothing in that piece (lse -inf), and with n_q > n_kv the leading rows see
  // nothing in any piece (both sides empty: zeros, -inf). Merged, it must equal plain causal.
  std::uint64_t seed = 5100;
  for (attention_case c :
       {shape(70, 150, 4, 2, 64, mask_kind::causal), shape(90, 60, 2, 1, 32, mask_kind::causal)}) {
    c.seed = ++seed;
    const auto in = make_inputs<float, float>(c);
    const index_t n = c.kv_tokens;
    for (const std::vector<index_t>& cuts :
         {std::vector<index_t>{0, n / 2, n}, std::vector<index_t>{0, 17, n - 5, n},
          std::vector<index_t>{0, 64, 128, n}, std::vector<index_t>{0, n - 1, n}}) {
      check_split(c, in, attnkit::causal{}, cuts, [&](index_t lo, index_t hi, piece& p) {
        cpu_default{}(in.q.cview(), in.k.cview(), in.v.cview(), p.out.view(),
                      key_range_mask{lo, hi, true}, lse_options(p.lse.view()));
      });
    }
  }
}

TEST_CASE("merge_states: in place into either operand", "[merge]") {
  // out aliases o_a and lse_out aliases lse_a: the result must be bit-identical to the
  // out-of-place merge.
  attention_case c = shape(20, 100, 4, 2, 48, mask_kind::full);
  c.seed = 5200;
  const auto in = make_inputs<float, float>(c);
  piece a = make_piece(20, 4, 48), b = make_piece(20, 4, 48), fresh = make_piece(20, 4, 48);
  cpu_default{}(in.q.cview(), key_range(in.k.cview(), 0, 30), key_range(in.v.cview(), 0, 30),
                a.out.view(), attnkit::full{}, lse_options(a.lse.view()));
  cpu_default{}(in.q.cview(), key_range(in.k.cview(), 30, 100), key_range(in.v.cview(), 30, 100),
                b.out.view(), attnkit::full{}, lse_options(b.lse.view()));
  attnkit::merge_states(a.out.cview(), a.lse.cview(), b.out.cview(), b.lse.cview(),
                        fresh.out.view(), fresh.lse.view());
  attnkit::merge_states(a.out.cview(), a.lse.cview(), b.out.cview(), b.lse.cview(), a.out.view(),
                        a.lse.view());
  CHECK(a.out.unchanged_since(fresh.out.storage));
  CHECK(a.lse.unchanged_since(fresh.lse.storage));
  // ... and into the second operand.
  piece a2 = make_piece(20, 4, 48);
  cpu_default{}(in.q.cview(), key_range(in.k.cview(), 0, 30), key_range(in.v.cview(), 0, 30),
                a2.out.view(), attnkit::full{}, lse_options(a2.lse.view()));
  piece b2 = make_piece(20, 4, 48);
  cpu_default{}(in.q.cview(), key_range(in.k.cview(), 30, 100), key_range(in.v.cview(), 30, 100),
                b2.out.view(), attnkit::full{}, lse_options(b2.lse.view()));
  attnkit::merge_states(a2.out.cview(), a2.lse.cview(), b2.out.cview(), b2.lse.cview(),
                        b2.out.view(), b2.lse.view());
  CHECK(b2.out.unchanged_since(fresh.out.storage));
  CHECK(b2.lse.unchanged_since(fresh.lse.storage));
}

TEST_CASE("merge_states: both sides empty gives zeros and -inf", "[merge]") {
  // Weights are 0 when both lse are -inf, whatever (finite) the partial outputs hold.
  auto oa = make_tensor3<float>(3, 2, 8), ob = make_tensor3<float>(3, 2, 8),
       out = make_tensor3<float>(3, 2, 8);
  fill_normal(oa, 1);
  fill_normal(ob, 2);
  auto la = make_lse(2, 3), lb = make_lse(2, 3), lo = make_lse(2, 3);
  fill_with(la, [](const auto&) { return double(neg_inf); });
  fill_with(lb, [](const auto&) { return double(neg_inf); });
  attnkit::merge_states(oa.cview(), la.cview(), ob.cview(), lb.cview(), out.view(), lo.view());
  index_t bad = 0;
  for (float x : out.storage) bad += x != 0.0f;
  for (float x : lo.storage) bad += !(std::isinf(x) && x < 0);
  CHECK(bad == 0);
}

TEST_CASE("merge_states: one side empty returns the other side exactly", "[merge]") {
  // lse_b = -inf: weight_a = exp(0)/1 = 1 and weight_b = 0, so out == o_a and lse == lse_a
  // bit for bit; the same mirrored.
  auto oa = make_tensor3<float>(5, 3, 16), ob = make_tensor3<float>(5, 3, 16);
  fill_normal(oa, 3);
  fill_normal(ob, 4);
  auto la = make_lse(3, 5), lb = make_lse(3, 5);
  fill_normal(la, 5, 4.0);
  fill_with(lb, [](const auto&) { return double(neg_inf); });
  auto out = make_tensor3<float>(5, 3, 16);
  auto lo = make_lse(3, 5);
  attnkit::merge_states(oa.cview(), la.cview(), ob.cview(), lb.cview(), out.view(), lo.view());
  CHECK(out.unchanged_since(oa.storage));
  CHECK(lo.unchanged_since(la.storage));
  attnkit::merge_states(ob.cview(), lb.cview(), oa.cview(), la.cview(), out.view(), lo.view());
  CHECK(out.unchanged_since(oa.storage));
  CHECK(lo.unchanged_since(la.storage));
}

TEST_CASE("merge_states: operand order and equal weights", "[merge]") {
  auto oa = make_tensor3<float>(4, 2, 32), ob = make_tensor3<float>(4, 2, 32);
  fill_normal(oa, 6);
  fill_normal(ob, 7);
  auto la = make_lse(2, 4), lb = make_lse(2, 4);
  fill_normal(la, 8, 3.0);
  fill_normal(lb, 9, 3.0);
  auto ab = make_tensor3<float>(4, 2, 32), ba = make_tensor3<float>(4, 2, 32);
  auto lab = make_lse(2, 4), lba = make_lse(2, 4);
  attnkit::merge_states(oa.cview(), la.cview(), ob.cview(), lb.cview(), ab.view(), lab.view());
  attnkit::merge_states(ob.cview(), lb.cview(), oa.cview(), la.cview(), ba.view(), lba.view());
  // Not bit-exact: the compiler may contract w_a*o_a + w_b*o_b into an FMA on either product.
  index_t asym = 0;
  for (index_t i = 0; i < 4; ++i)
    for (index_t h = 0; h < 2; ++h)
      for (index_t d = 0; d < 32; ++d)
        asym += std::fabs(ab.cview()(i, h, d) - ba.cview()(i, h, d)) >
                4 * error_model::eps *
                    std::fmax(std::fabs(oa.cview()(i, h, d)), std::fabs(ob.cview()(i, h, d)));
  CHECK(asym == 0);
  CHECK(lab.unchanged_since(lba.storage));

  // Equal lse x on both sides: out = (o_a + o_b) / 2 and lse = x + ln 2 (to fp32 rounding).
  auto same = make_lse(2, 4);
  fill_normal(same, 10, 3.0);
  attnkit::merge_states(oa.cview(), same.cview(), ob.cview(), same.cview(), ab.view(), lab.view());
  index_t bad = 0;
  for (index_t i = 0; i < 4; ++i)
    for (index_t h = 0; h < 2; ++h) {
      for (index_t d = 0; d < 32; ++d) {
        const double want = 0.5 * (double(oa.cview()(i, h, d)) + double(ob.cview()(i, h, d)));
        bad += std::fabs(ab.cview()(i, h, d) - want) > 4 * error_model::eps * (1 + std::fabs(want));
      }
      const double want = double(same.cview()(h, i)) + std::log(2.0);
      bad += std::fabs(lab.cview()(h, i) - want) > 4 * error_model::eps * (1 + std::fabs(want));
    }
  CHECK(bad == 0);
}

TEST_CASE("merge_states: 16-bit pieces merged into float and bfloat16", "[merge][dtype]") {
  // Pieces stored in half carry one extra rounding each (2^-11 relative of the piece output, at
  // most 2^-11 max|v| after weighting); a bfloat16 merged output adds its own half ulp (2^-8).
  attention_case c = shape(33, 150, 4, 2, 64, mask_kind::full);
  c.seed = 5300;
  const auto in = make_inputs<float, float>(c);
  auto ref_out = make_tensor3<float>(33, 4, 64);
  auto ref_lse = make_lse(4, 33);
  attnkit::attention(attnkit::backend::reference{}, in.q.cview(), in.k.cview(), in.v.cview(),
                     ref_out.view(), attnkit::full{}, lse_options(ref_lse.view()));
  auto oa = make_tensor3<attnkit::half>(33, 4, 64), ob = make_tensor3<attnkit::half>(33, 4, 64);
  auto la = make_lse(4, 33), lb = make_lse(4, 33);
  cpu_default{}(in.q.cview(), key_range(in.k.cview(), 0, 70), key_range(in.v.cview(), 0, 70),
                oa.view(), attnkit::full{}, lse_options(la.view()));
  cpu_default{}(in.q.cview(), key_range(in.k.cview(), 70, 150), key_range(in.v.cview(), 70, 150),
                ob.view(), attnkit::full{}, lse_options(lb.view()));
  const error_model model = model_for(c, in);
  const double fp32_abs =
      2.0 * model.output_tolerance<float>().abs + 4.0 * model.max_v * model.lse_tolerance().abs;
  const double piece_rounding = 0x1p-11 * model.max_v;
  {
    auto out = make_tensor3<float>(33, 4, 64);
    attnkit::merge_states(oa.cview(), la.cview(), ob.cview(), lb.cview(), out.view());
    const comparison co = compare_output<float>(
        out.cview(), ref_out.cview(), {fp32_abs + piece_rounding, 0x1p-24}, "half pieces -> float");
    INFO(co.describe());
    CHECK(co.ok());
  }
  {
    auto out = make_tensor3<attnkit::bfloat16>(33, 4, 64);
    auto lo = make_lse(4, 33);
    attnkit::merge_states(oa.cview(), la.cview(), ob.cview(), lb.cview(), out.view(), lo.view());
    const comparison co = compare_output<attnkit::bfloat16>(
        out.cview(), ref_out.cview(),
        {(1 + 0x1p-8) * (fp32_abs + piece_rounding), 0x1p-8 + 0x1p-24}, "half pieces -> bfloat16");
    const comparison cl =
        compare_lse(lo.cview(), ref_lse.cview(),
                    {2 * model.lse_tolerance().abs, 2 * model.lse_tolerance().rel});
    INFO(co.describe());
    INFO(cl.describe());
    CHECK(co.ok());
    CHECK(cl.ok());
  }
}
