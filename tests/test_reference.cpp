// The oracle checked independently: attnkit::backend::reference against a dense Eigen
// formulation in double (S = scale·Q Kᵀ, softcap, ALiBi, mask, row softmax, O = P V, lse = m +
// log Σ exp(S - m)), per head, on several shapes including GQA, causal with more queries than
// keys, options and 16-bit inputs.
//
// Tolerance: both compute in fp64 from the same inputs, so before rounding they agree to ~1e-14;
// we allow 1e-10 (1 + |x|). The reference then rounds once to float, which adds at most half an
// ulp: |ref - eigen| <= 2^-24 |eigen| + 1e-10 (1 + |eigen|). A float output that is not the
// correctly rounded fp64 value (or a wrong mask, transform or head mapping) fails.
// Scalar Eigen: the cross-check needs no speed, and GCC 12 reports -Wmaybe-uninitialized inside
// its own AVX-512 intrinsics headers when Eigen's AVX-512 packet code is inlined (with -Werror).
#define EIGEN_DONT_VECTORIZE
#include <Eigen/Dense>
#include <catch2/catch.hpp>
#include <cmath>
#include <limits>

#include "support/harness.hpp"

using namespace attnkit_test;

namespace {

using matrix = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

template <class T>
matrix head_matrix(const tensor3<T>& t, index_t h) {
  const auto v = t.cview();
  matrix m(t.extents[0], t.extents[2]);
  for (index_t i = 0; i < t.extents[0]; ++i)
    for (index_t d = 0; d < t.extents[2]; ++d) m(i, d) = attnkit::to_float(v(i, h, d));
  return m;
}

template <class TQ, class TKV>
void cross_check(const attention_case& c, const attention_inputs<TQ, TKV>& in) {
  const index_t nq = c.q_tokens, nkv = c.kv_tokens, hq = c.q_heads, d = c.head_dim;
  const index_t group = hq / c.kv_heads;
  // The front door resolves the default scale in float: 1.0f / sqrt(float(d)).
  const double used_scale =
      c.scale ? double(*c.scale) : double(1.0f / std::sqrt(static_cast<float>(d)));
  constexpr double inf = std::numeric_limits<double>::infinity();

  auto out = make_tensor3<float>(nq, hq, d);
  auto lse = make_lse(hq, nq);
  std::vector<float> slopes;
  with_mask(c.mask, [&](const auto& mask) {
    attnkit::attention(attnkit::backend::reference{}, in.q.cview(), in.k.cview(), in.v.cview(),
                       out.view(), mask, make_options(c, slopes, lse.view()),
                       attnkit::parallel::serial{});
  });

  comparison out_cmp, lse_cmp;
  out_cmp.what = "reference output vs Eigen";
  lse_cmp.what = "reference lse vs Eigen";
  out_cmp.tol = lse_cmp.tol = {1e-10, 0x1p-24 + 1e-10};
  index_t masked_row_errors = 0;
  for (index_t h = 0; h < hq; ++h) {
    const matrix Q = head_matrix(in.q, h);
    const matrix K = head_matrix(in.k, h / group);
    const matrix V = head_matrix(in.v, h / group);
    matrix S = used_scale * (Q * K.transpose());
    for (index_t i = 0; i < nq; ++i) {
      const index_t q_pos = nkv - nq + i;
      for (index_t j = 0; j < nkv; ++j) {
        double s = S(i, j);
        if (c.softcap > 0.0f) s = double(c.softcap) * std::tanh(s / double(c.softcap));
        if (!c.alibi.empty())
          s -= double(c.alibi[static_cast<std::size_t>(h)]) * std::fabs(double(q_pos - j));
        if (c.mask == mask_kind::causal && j > q_pos) s = -inf;
        S(i, j) = s;
      }
    }
    Eigen::VectorXd m =
        nkv > 0 ? Eigen::VectorXd(S.rowwise().maxCoeff()) : Eigen::VectorXd::Constant(nq, -inf);
    matrix P(nq, nkv);
    for (index_t i = 0; i < nq; ++i)
      for (index_t j = 0; j < nkv; ++j) P(i, j) = std::isinf(m(i)) ? 0.0 : std::exp(S(i, j) - m(i));
    const Eigen::VectorXd l = P.rowwise().sum();
    const matrix O = P * V;
    for (index_t i = 0; i < nq; ++i) {
      const bool empty = l(i) == 0.0;
      for (index_t dd = 0; dd < d; ++dd)
        out_cmp.add(out.cview()(i, h, dd), empty ? 0.0 : O(i, dd) / l(i), {i, h, dd});
      lse_cmp.add(lse.cview()(h, i), empty ? -inf : m(i) + std::log(l(i)), {h, i, -1});
      if (empty) {
        bool zero = true;
        for (index_t dd = 0; dd < d; ++dd) zero = zero && out.cview()(i, h, dd) == 0.0f;
        if (!zero) ++masked_row_errors;
      }
    }
  }
  INFO((describe_case<TQ, TKV, float>(c)));
  INFO(out_cmp.describe());
  INFO(lse_cmp.describe());
  CHECK(out_cmp.ok());
  CHECK(lse_cmp.ok());
  CHECK(masked_row_errors == 0);
}

template <class TQ = float, class TKV = float>
void cross_check(const attention_case& c) {
  cross_check(c, make_inputs<TQ, TKV>(c));
}

}  // namespace

TEST_CASE("reference: matches Eigen on dense shapes", "[reference]") {
  std::uint64_t seed = 4000;
  for (attention_case c :
       {shape(7, 7, 2, 2, 16, mask_kind::causal), shape(20, 33, 4, 2, 32, mask_kind::full),
        shape(20, 33, 4, 2, 32, mask_kind::causal), shape(1, 50, 8, 2, 64, mask_kind::full),
        shape(1, 50, 8, 2, 64, mask_kind::causal), shape(65, 65, 4, 1, 80, mask_kind::causal),
        shape(3, 9, 16, 1, 1, mask_kind::full), shape(40, 100, 8, 4, 256, mask_kind::causal)}) {
    c.seed = ++seed;
    cross_check(c);
  }
}

TEST_CASE("reference: matches Eigen with more queries than keys and with no keys", "[reference]") {
  std::uint64_t seed = 4100;
  for (attention_case c :
       {shape(33, 20, 4, 1, 8, mask_kind::causal), shape(9, 1, 2, 2, 16, mask_kind::causal),
        shape(33, 20, 4, 1, 8, mask_kind::full), shape(5, 0, 2, 1, 16, mask_kind::full),
        shape(5, 0, 2, 1, 16, mask_kind::causal)}) {
    c.seed = ++seed;
    cross_check(c);
  }
}

TEST_CASE("reference: matches Eigen with scale softcap and ALiBi", "[reference]") {
  std::uint64_t seed = 4200;
  for (mask_kind m : {mask_kind::full, mask_kind::causal}) {
    attention_case c = shape(17, 40, 4, 2, 32, m);
    c.scale = 0.3f;
    c.seed = ++seed;
    cross_check(c);
    c.softcap = 10.0f;
    c.q_sd = c.k_sd = 4.0;
    c.seed = ++seed;
    cross_check(c);
    c.alibi = {0.5f, 0.25f, -0.125f, 0.0f};
    c.seed = ++seed;
    cross_check(c);
    c.scale = 0.0f;
    c.seed = ++seed;
    cross_check(c);
  }
}

TEST_CASE("reference: matches Eigen with 16-bit inputs", "[reference]") {
  std::uint64_t seed = 4300;
  attention_case c = shape(30, 45, 4, 2, 64, mask_kind::causal);
  c.seed = ++seed;
  cross_check<attnkit::half, attnkit::bfloat16>(c);
  c.seed = ++seed;
  cross_check<attnkit::bfloat16, attnkit::half>(c);
  c.q_layout = layout::bhsd;
  c.k_layout = layout::dim_strided;
  c.v_layout = layout::packed;
  c.seed = ++seed;
  cross_check<float, attnkit::half>(c);
}

TEST_CASE("reference: output of 16-bit type is its float output rounded", "[reference]") {
  // The reference rounds its fp64 result to float and then to the output type: so its half and
  // bfloat16 outputs must equal its float output converted, bit for bit.
  attention_case c = shape(20, 30, 4, 2, 48, mask_kind::causal);
  c.seed = 4400;
  const auto in = make_inputs<float, float>(c);
  auto of = make_tensor3<float>(20, 4, 48);
  auto oh = make_tensor3<attnkit::half>(20, 4, 48);
  auto ob = make_tensor3<attnkit::bfloat16>(20, 4, 48);
  const attnkit::backend::reference ref;
  attnkit::attention(ref, in.q.cview(), in.k.cview(), in.v.cview(), of.view(), attnkit::causal{});
  attnkit::attention(ref, in.q.cview(), in.k.cview(), in.v.cview(), oh.view(), attnkit::causal{});
  attnkit::attention(ref, in.q.cview(), in.k.cview(), in.v.cview(), ob.view(), attnkit::causal{});
  index_t bad = 0;
  for (std::size_t i = 0; i < of.storage.size(); ++i) {
    if (oh.storage[i].bits != attnkit::half(of.storage[i]).bits) ++bad;
    if (ob.storage[i].bits != attnkit::bfloat16(of.storage[i]).bits) ++bad;
  }
  CHECK(bad == 0);
}
