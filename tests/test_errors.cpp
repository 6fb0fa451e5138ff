// Invalid arguments: every one raises attnkit::error whose message names the function, the
// argument and the offending values, and nothing is written: the output and log-sum-exp buffers
// (filled with a NaN sentinel) and the inputs are bit-identical afterwards. Checked for
// attnkit::cpu and for the reference backend (both go through the same front door).
#include <catch2/catch.hpp>
#include <cmath>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "support/harness.hpp"

using namespace attnkit_test;

namespace {

constexpr float nan_f = std::numeric_limits<float>::quiet_NaN();
constexpr float inf_f = std::numeric_limits<float>::infinity();

struct extents3 {
  index_t t, h, d;
};

// A problem whose pieces can each be given wrong extents. Defaults are valid:
// q [5, 4, 16], k/v [7, 2, 16], out [5, 4, 16], lse [4, 5].
struct problem {
  extents3 q{5, 4, 16}, k{7, 2, 16}, v{7, 2, 16}, out{5, 4, 16};
  index_t lse_heads = 4, lse_tokens = 5;
  bool want_lse = true;

  tensor3<float> tq, tk, tv, tout;
  tensor2<float> tlse;

  void build() {
    tq = make_tensor3<float>(q.t, q.h, q.d);
    tk = make_tensor3<float>(k.t, k.h, k.d);
    tv = make_tensor3<float>(v.t, v.h, v.d);
    tout = make_tensor3<float>(out.t, out.h, out.d);
    tlse = make_lse(lse_heads, lse_tokens);
    fill_normal(tq, 1);
    fill_normal(tk, 2);
    fill_normal(tv, 3);
  }
};

// Runs `call` (which must throw attnkit::error), then checks the message fragments and that no
// buffer of `p` changed.
template <class Call>
void expect_error(problem& p, Call&& call, const std::vector<std::string>& fragments) {
  const auto q0 = p.tq.snapshot(), k0 = p.tk.snapshot(), v0 = p.tv.snapshot();
  const auto out0 = p.tout.snapshot();
  const auto lse0 = p.tlse.snapshot();
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
  CHECK(p.tout.unchanged_since(out0));
  CHECK(p.tlse.unchanged_since(lse0));
  CHECK(p.tq.unchanged_since(q0));
  CHECK(p.tk.unchanged_since(k0));
  CHECK(p.tv.unchanged_since(v0));
}

// attnkit::attention for the reference backend, or attnkit::cpu through the suite's shared
// instantiation (support/cpu_kernel.hpp: the views and options reach attnkit::attention unchanged).
template <class B, class Q, class K, class V, class O, class Mask>
void call_attention(Q q, K k, V v, O out, const Mask& mask,
                    const attnkit::attention_options& o = {}) {
  if constexpr (std::is_same_v<B, attnkit::backend::reference>) {
    attnkit::attention(B{}, q, k, v, out, mask, o);
  } else {
    run_cpu(q, k, v, out, mask, o);
  }
}

using cpu_backend = attnkit::backend::simd<>;

// Calls attention on p with options `o` (lse attached if p.want_lse) for backend B.
template <class B>
auto attention_call(problem& p, attnkit::attention_options o = {}) {
  if (p.want_lse) o.log_sum_exp = p.tlse.view();
  return [&p, o] {
    call_attention<B>(p.tq.cview(), p.tk.cview(), p.tv.cview(), p.tout.view(), attnkit::causal{},
                      o);
  };
}

// A case: how to break the default problem, and what the message must contain.
template <class B>
void check_extent_error(void (*breaker)(problem&), const std::vector<std::string>& fragments) {
  problem p;
  breaker(p);
  p.build();
  expect_error(p, attention_call<B>(p), fragments);
}

template <class B>
void all_extent_errors() {
  const std::string fn = "attnkit::attention";
  SECTION("k and v token counts differ") {
    check_extent_error<B>([](problem& p) { p.v.t = 8; }, {fn, "v tokens", "is 8", "k tokens is 7"});
  }
  SECTION("k and v head counts differ") {
    check_extent_error<B>([](problem& p) { p.v.h = 4; },
                          {fn, "v kv_heads", "is 4", "k kv_heads is 2"});
  }
  SECTION("k head_dim differs from q") {
    check_extent_error<B>([](problem& p) { p.k.d = 15; },
                          {fn, "k head_dim", "is 15", "q head_dim is 16"});
  }
  SECTION("v head_dim differs from q") {
    check_extent_error<B>([](problem& p) { p.v.d = 8; },
                          {fn, "v head_dim", "is 8", "q head_dim is 16"});
  }
  SECTION("q_heads not a multiple of kv_heads") {
    check_extent_error<B>(
        [](problem& p) {
          p.q.h = p.out.h = p.lse_heads = 12;
          p.k.h = p.v.h = 8;
        },
        {fn, "q_heads (12) is not a multiple of kv_heads (8)"});
    check_extent_error<B>([](problem& p) { p.q.h = p.out.h = p.lse_heads = 3; },
                          {fn, "q_heads (3)", "kv_heads (2)"});
  }
  SECTION("more kv heads than q heads") {
    check_extent_error<B>([](problem& p) { p.k.h = p.v.h = 8; },
                          {fn, "q_heads (4)", "kv_heads (8)"});
  }
  SECTION("zero heads") {
    check_extent_error<B>([](problem& p) { p.q.h = p.out.h = p.lse_heads = 0; },
                          {fn, "q_heads", "is 0"});
    check_extent_error<B>([](problem& p) { p.k.h = p.v.h = 0; }, {fn, "kv_heads", "is 0"});
  }
  SECTION("head_dim 0") {
    check_extent_error<B>([](problem& p) { p.q.d = p.k.d = p.v.d = p.out.d = 0; },
                          {fn, "head_dim", "is 0", "1..256"});
  }
  SECTION("head_dim 257") {
    check_extent_error<B>([](problem& p) { p.q.d = p.k.d = p.v.d = p.out.d = 257; },
                          {fn, "head_dim", "is 257", "1..256"});
  }
  SECTION("out has too few tokens") {
    check_extent_error<B>([](problem& p) { p.out.t = 4; },
                          {fn, "out tokens", "is 4", "q tokens is 5"});
  }
  SECTION("out has too many tokens") {
    check_extent_error<B>([](problem& p) { p.out.t = 6; },
                          {fn, "out tokens", "is 6", "q tokens is 5"});
  }
  SECTION("out has the kv head count") {
    check_extent_error<B>([](problem& p) { p.out.h = 2; },
                          {fn, "out heads", "is 2", "q_heads is 4"});
  }
  SECTION("out head_dim differs") {
    check_extent_error<B>([](problem& p) { p.out.d = 8; },
                          {fn, "out head_dim", "is 8", "q head_dim is 16"});
  }
  SECTION("lse transposed") {
    check_extent_error<B>(
        [](problem& p) {
          p.lse_heads = 5;
          p.lse_tokens = 4;
        },
        {fn, "log_sum_exp extent 0", "is 5", "q_heads is 4"});
  }
  SECTION("lse has too many tokens") {
    check_extent_error<B>([](problem& p) { p.lse_tokens = 6; },
                          {fn, "log_sum_exp extent 1", "is 6", "q tokens is 5"});
  }
  SECTION("errors are raised even with zero query tokens") {
    check_extent_error<B>(
        [](problem& p) {
          p.q.t = p.out.t = p.lse_tokens = 0;
          p.q.h = p.out.h = p.lse_heads = 3;
        },
        {fn, "q_heads (3)", "kv_heads (2)"});
  }
}

template <class B>
void all_data_errors() {
  problem p;
  p.build();
  const std::string fn = "attnkit::attention";
  SECTION("null q data") {
    expect_error(p,
                 [&] {
                   call_attention<B>(tensor_view<const float, 3>(nullptr, {5, 4, 16}), p.tk.cview(),
                                     p.tv.cview(), p.tout.view(), attnkit::causal{},
                                     lse_options(p.tlse.view()));
                 },
                 {fn, "'q'", "null data", "320 elements"});
  }
  SECTION("null k data") {
    expect_error(p,
                 [&] {
                   call_attention<B>(p.tq.cview(), tensor_view<const float, 3>(nullptr, {7, 2, 16}),
                                     p.tv.cview(), p.tout.view(), attnkit::causal{},
                                     lse_options(p.tlse.view()));
                 },
                 {fn, "'k'", "null data", "224 elements"});
  }
  SECTION("null v data") {
    expect_error(p,
                 [&] {
                   call_attention<B>(p.tq.cview(), p.tk.cview(),
                                     tensor_view<const float, 3>(nullptr, {7, 2, 16}),
                                     p.tout.view(), attnkit::causal{}, lse_options(p.tlse.view()));
                 },
                 {fn, "'v'", "null data", "224 elements"});
  }
  SECTION("null out data") {
    expect_error(p,
                 [&] {
                   call_attention<B>(p.tq.cview(), p.tk.cview(), p.tv.cview(),
                                     tensor_view<float, 3>(nullptr, {5, 4, 16}), attnkit::causal{},
                                     lse_options(p.tlse.view()));
                 },
                 {fn, "'out'", "null data", "320 elements"});
  }
  SECTION("null lse data") {
    expect_error(p,
                 [&] {
                   call_attention<B>(p.tq.cview(), p.tk.cview(), p.tv.cview(), p.tout.view(),
                                     attnkit::causal{},
                                     lse_options(tensor_view<float, 2>(nullptr, {4, 5})));
                 },
                 {fn, "'log_sum_exp'", "null data", "20 elements"});
  }
  SECTION("lse with data but no extent") {
    expect_error(p,
                 [&] {
                   call_attention<B>(
                       p.tq.cview(), p.tk.cview(), p.tv.cview(), p.tout.view(), attnkit::causal{},
                       lse_options(tensor_view<float, 2>(p.tlse.storage.data(), {0, 0})));
                 },
                 {fn, "log_sum_exp extent 0", "is 0", "q_heads is 4"});
  }
}

template <class B>
void all_option_errors() {
  problem p;
  p.build();
  const std::string fn = "attnkit::attention";
  auto with = [&](auto modify) {
    attnkit::attention_options o;
    modify(o);
    return attention_call<B>(p, o);
  };
  SECTION("negative scale") {
    expect_error(p, with([](auto& o) { o.scale = -0.5f; }), {fn, "scale is -0.5"});
  }
  SECTION("NaN scale") {
    expect_error(p, with([](auto& o) { o.scale = nan_f; }), {fn, "scale is nan"});
  }
  SECTION("infinite scale") {
    expect_error(p, with([](auto& o) { o.scale = inf_f; }), {fn, "scale is inf"});
  }
  SECTION("negative softcap") {
    expect_error(p, with([](auto& o) { o.softcap = -5.0f; }), {fn, "softcap is -5"});
  }
  SECTION("NaN and infinite softcap") {
    expect_error(p, with([](auto& o) { o.softcap = nan_f; }), {fn, "softcap is nan"});
    expect_error(p, with([](auto& o) { o.softcap = inf_f; }), {fn, "softcap is inf"});
  }
  static const float three[] = {0.5f, 0.25f, 0.125f};
  static const float five[] = {0.5f, 0.25f, 0.125f, 0.0625f, 0.1f};
  static const float with_nan[] = {0.5f, 0.25f, nan_f, 0.0625f};
  static const float with_inf[] = {0.5f, -inf_f, 0.125f, 0.0625f};
  SECTION("alibi slopes too few") {
    expect_error(p, with([](auto& o) { o.alibi_slopes = tensor_view<const float, 1>(three, {3}); }),
                 {fn, "alibi_slopes extent 0 is 3", "q_heads is 4"});
  }
  SECTION("alibi slopes too many") {
    expect_error(p, with([](auto& o) { o.alibi_slopes = tensor_view<const float, 1>(five, {5}); }),
                 {fn, "alibi_slopes extent 0 is 5", "q_heads is 4"});
  }
  SECTION("alibi slope NaN") {
    expect_error(p,
                 with([](auto& o) { o.alibi_slopes = tensor_view<const float, 1>(with_nan, {4}); }),
                 {fn, "alibi_slopes[2] is nan"});
  }
  SECTION("alibi slope infinite") {
    expect_error(p,
                 with([](auto& o) { o.alibi_slopes = tensor_view<const float, 1>(with_inf, {4}); }),
                 {fn, "alibi_slopes[1] is -inf"});
  }
  SECTION("alibi slopes null with extent") {
    expect_error(p,
                 with([](auto& o) { o.alibi_slopes = tensor_view<const float, 1>(nullptr, {4}); }),
                 {fn, "'alibi_slopes'", "null data"});
  }
}

}  // namespace

TEST_CASE("errors: extents that disagree with cpu", "[errors]") {
  all_extent_errors<cpu_backend>();
}
TEST_CASE("errors: extents that disagree with reference", "[errors]") {
  all_extent_errors<attnkit::backend::reference>();
}
TEST_CASE("errors: null data with cpu", "[errors]") { all_data_errors<cpu_backend>(); }
TEST_CASE("errors: null data with reference", "[errors]") {
  all_data_errors<attnkit::backend::reference>();
}
TEST_CASE("errors: invalid options with cpu", "[errors]") { all_option_errors<cpu_backend>(); }
TEST_CASE("errors: invalid options with reference", "[errors]") {
  all_option_errors<attnkit::backend::reference>();
}

TEST_CASE("errors: valid edge values of the options are accepted", "[errors]") {
  // scale 0, softcap 0 (off), zero and negative slopes are all legal.
  problem p;
  p.build();
  static const float slopes[] = {0.0f, -1.0f, 0.5f, 0.0f};
  attnkit::attention_options o;
  o.scale = 0.0f;
  o.softcap = 0.0f;
  o.alibi_slopes = tensor_view<const float, 1>(slopes, {4});
  o.log_sum_exp = p.tlse.view();
  CHECK_NOTHROW(call_attention<cpu_backend>(p.tq.cview(), p.tk.cview(), p.tv.cview(), p.tout.view(),
                                            attnkit::causal{}, o));
  CHECK_NOTHROW(call_attention<cpu_backend>(p.tq.cview(), p.tk.cview(), p.tv.cview(), p.tout.view(),
                                            attnkit::causal{}));
}

TEST_CASE("errors: attnkit::error is a std::exception with the message", "[errors]") {
  problem p;
  p.v.t = 9;
  p.build();
  CHECK_THROWS_AS(call_attention<cpu_backend>(p.tq.cview(), p.tk.cview(), p.tv.cview(),
                                              p.tout.view(), attnkit::causal{}),
                  std::exception);
  CHECK_THROWS_WITH(call_attention<cpu_backend>(p.tq.cview(), p.tk.cview(), p.tv.cview(),
                                                p.tout.view(), attnkit::causal{}),
                    Catch::Contains("v tokens (extent 0) is 9 but k tokens is 7"));
}

TEST_CASE("errors: tensor_view rejects negative extents", "[errors][tensor_view]") {
  float buffer[8] = {};
  CHECK_THROWS_AS((tensor_view<float, 3>(buffer, {2, -1, 3})), attnkit::error);
  CHECK_THROWS_WITH((tensor_view<float, 3>(buffer, {2, -1, 3})), Catch::Contains("extent 1 is -1"));
  CHECK_THROWS_WITH((tensor_view<float, 2>(buffer, {-4, 2}, {2, 1})),
                    Catch::Contains("extent 0 is -4"));
  CHECK_THROWS_WITH((tensor_view<const float, 1>(buffer, {-1})), Catch::Contains("non-negative"));
  CHECK_NOTHROW(tensor_view<float, 3>(buffer, {0, 0, 0}));
}

TEST_CASE("errors: merge_states rejects mismatched arguments without writing", "[errors][merge]") {
  const std::string fn = "attnkit::merge_states";
  auto oa = make_tensor3<float>(3, 2, 8), ob = make_tensor3<float>(3, 2, 8);
  auto la = make_lse(2, 3), lb = make_lse(2, 3);
  fill_normal(oa, 1);
  fill_normal(ob, 2);
  fill_normal(la, 3);
  fill_normal(lb, 4);
  auto out = make_tensor3<float>(3, 2, 8);
  auto lo = make_lse(2, 3);
  auto expect = [&](auto&& call, const std::vector<std::string>& fragments) {
    const auto out0 = out.snapshot();
    const auto lo0 = lo.snapshot();
    std::string message;
    try {
      call();
    } catch (const attnkit::error& e) {
      message = e.what();
    }
    INFO("message: " << message);
    for (const std::string& f : fragments) {
      INFO("expected fragment: " << f);
      CHECK(message.find(f) != std::string::npos);
    }
    CHECK(out.unchanged_since(out0));
    CHECK(lo.unchanged_since(lo0));
  };
  auto ob_short = make_tensor3<float>(2, 2, 8);
  fill_normal(ob_short, 5);
  expect(
      [&] {
        attnkit::merge_states(oa.cview(), la.cview(), ob_short.cview(), lb.cview(), out.view(),
                              lo.view());
      },
      {fn, "o_b", "is 2", "3"});
  auto out_wide = make_tensor3<float>(3, 2, 9);
  expect(
      [&] {
        attnkit::merge_states(oa.cview(), la.cview(), ob.cview(), lb.cview(), out_wide.view(),
                              lo.view());
      },
      {fn, "out", "is 9", "8"});
  CHECK(out_wide.clobbered_outside() == 0);
  auto la_t = make_lse(3, 2);
  fill_normal(la_t, 6);
  expect(
      [&] {
        attnkit::merge_states(oa.cview(), la_t.cview(), ob.cview(), lb.cview(), out.view(),
                              lo.view());
      },
      {fn, "lse_a extent 0", "is 3", "heads is 2"});
  auto lb_long = make_lse(2, 4);
  fill_normal(lb_long, 7);
  expect(
      [&] {
        attnkit::merge_states(oa.cview(), la.cview(), ob.cview(), lb_long.cview(), out.view(),
                              lo.view());
      },
      {fn, "lse_b extent 1", "is 4", "tokens is 3"});
  auto lo_bad = make_lse(2, 2);
  expect(
      [&] {
        attnkit::merge_states(oa.cview(), la.cview(), ob.cview(), lb.cview(), out.view(),
                              lo_bad.view());
      },
      {fn, "lse_out extent 1", "is 2", "tokens is 3"});
  expect(
      [&] {
        attnkit::merge_states(oa.cview(), la.cview(),
                              tensor_view<const float, 3>(nullptr, {3, 2, 8}), lb.cview(),
                              out.view(), lo.view());
      },
      {fn, "'o_b'", "null data"});
  expect(
      [&] {
        attnkit::merge_states(oa.cview(), tensor_view<const float, 2>(nullptr, {2, 3}), ob.cview(),
                              lb.cview(), out.view(), lo.view());
      },
      {fn, "'lse_a'", "null data"});
}
