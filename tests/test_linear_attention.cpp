// attnkit::linear_attention — the front door and the state: several calls equal one call
// (prompt in pieces, then token-by-token decode), the state object, feature maps (taylor2's
// kernel identity, elu_plus_one's vector path, a user map), zero denominators and extreme
// inputs, and invalid arguments (attnkit::error, with the state and the output untouched).
#include <catch2/catch.hpp>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "attnkit/linear/linear_memory.hpp"
#include "support/linear_harness.hpp"

namespace {

using namespace attnkit_test;
namespace feature = attnkit::feature;
using attnkit::linear_attention;

// φ(x) = relu(x)², with fp32 `apply` only: the reference must then go through it in fp32.
struct squared_relu {
  index_t feature_dim(index_t d) const { return d; }
  void apply(index_t d, const float* in, float* out) const {
    for (index_t i = 0; i < d; ++i) out[i] = in[i] > 0.0f ? in[i] * in[i] : 0.0f;
  }
};
static_assert(attnkit::feature_map<squared_relu>);
static_assert(!attnkit::detail::feature_map_fp64<squared_relu>);
static_assert(attnkit::feature_map<feature::taylor2> && attnkit::feature_map<feature::identity>);
static_assert(attnkit::detail::feature_map_simd<feature::elu_plus_one, xsimd::default_arch>);

// The tokens [begin, end) of a tensor as its own view (a prompt piece or one decode token).
template <class T>
tensor_view<const T, 3> token_slice(const tensor3<T>& t, index_t begin, index_t end) {
  const auto v = t.cview();
  return tensor_view<const T, 3>(v.data() + begin * v.stride(0),
                                 {end - begin, v.extent(1), v.extent(2)}, v.strides());
}

std::vector<unsigned char> state_bytes(const linear_state& s) {
  std::vector<unsigned char> bytes;
  if (!s.has_shape()) return bytes;
  const auto sv = s.s();
  const auto zv = s.z();
  const auto* s_begin = reinterpret_cast<const unsigned char*>(sv.data());
  bytes.assign(s_begin, s_begin + s.kv_heads() * s.s_head_stride() * sizeof(float));
  const auto* z_begin = reinterpret_cast<const unsigned char*>(zv.data());
  bytes.insert(bytes.end(), z_begin, z_begin + s.kv_heads() * s.z_head_stride() * sizeof(float));
  const index_t tokens = s.tokens();
  const auto* t_begin = reinterpret_cast<const unsigned char*>(&tokens);
  bytes.insert(bytes.end(), t_begin, t_begin + sizeof tokens);
  return bytes;
}

}  // namespace

TEST_CASE("linear attention: a prompt in pieces, then decode token by token, equals one call",
          "[linear][state]") {
  const linear_shape s{230, 8, 2, 64, 48};
  const std::vector<float> gammas = decay_table(s.kv_heads);
  for (bool normalize : {true, false})
    for (bool decay : {false, true}) {
      INFO("normalize " << normalize << ", decay " << decay);
      const auto in = make_linear_inputs<float, float>(s, 7 + normalize + 2 * decay, false);
      const linear_options options = make_options(normalize, decay ? &gammas : nullptr);
      const feature::elu_plus_one map;

      linear_state ref_state;
      const auto ref = run_linear<float>(attnkit::backend::reference{}, linear_form::automatic, in,
                                         map, ref_state, options, attnkit::parallel::serial{});

      // Pieces: 37 (partial chunk), 64 (one chunk from an unaligned start), 100, 1, 3, then 25
      // single tokens. Every piece through the public front door (automatic form).
      const index_t cuts[] = {0, 37, 101, 201, 202, 205};
      auto out = make_tensor3<float>(s.tokens, s.q_heads, s.value_dim);
      const auto out_view = out.view();
      linear_state state;
      auto run_piece = [&](index_t begin, index_t end) {
        tensor_view<float, 3> o(out_view.data() + begin * out_view.stride(0),
                                {end - begin, s.q_heads, s.value_dim}, out_view.strides());
        linear_attention(attnkit::cpu, token_slice(in.q, begin, end), token_slice(in.k, begin, end),
                         token_slice(in.v, begin, end), o, map, state, options);
        CHECK(state.tokens() == end);
      };
      for (std::size_t i = 0; i + 1 < std::size(cuts); ++i) run_piece(cuts[i], cuts[i + 1]);
      for (index_t t = 205; t < s.tokens; ++t) run_piece(t, t + 1);

      check_output_and_state(out, ref, state, ref_state);

      // The reference chains the same way (its state goes through fp32 between calls).
      linear_state ref_pieces_state;
      auto ref_pieces = make_tensor3<float>(s.tokens, s.q_heads, s.value_dim);
      const index_t ref_cuts[] = {0, 50, 51, 230};
      for (std::size_t i = 0; i + 1 < std::size(ref_cuts); ++i) {
        const index_t b = ref_cuts[i], e = ref_cuts[i + 1];
        const auto rv = ref_pieces.view();
        tensor_view<float, 3> o(rv.data() + b * rv.stride(0), {e - b, s.q_heads, s.value_dim},
                                rv.strides());
        attnkit::detail::linear_attention_with_form(
            attnkit::backend::reference{}, linear_form::automatic, token_slice(in.q, b, e),
            token_slice(in.k, b, e), token_slice(in.v, b, e), o, map, ref_pieces_state, options,
            attnkit::parallel::serial{});
      }
      const comparison cr = compare_linear_output(ref_pieces, ref, "reference in pieces");
      INFO(cr.describe());
      CHECK(cr.ok());
    }
}

TEST_CASE("linear attention: the state object", "[linear][state]") {
  linear_state fresh;
  CHECK_FALSE(fresh.has_shape());
  CHECK(fresh.tokens() == 0);
  CHECK(fresh.s().empty());
  CHECK(fresh.z().empty());

  linear_state shaped(2, 16, 20);
  REQUIRE(shaped.has_shape());
  CHECK(shaped.s().extent(0) == 2);
  CHECK(shaped.s().extent(1) == 16);
  CHECK(shaped.s().extent(2) == 20);
  CHECK(shaped.s().stride(1) % 16 == 0);
  CHECK(reinterpret_cast<std::uintptr_t>(shaped.s().data()) % 64 == 0);
  CHECK(shaped.s()(1, 15, 19) == 0.0f);
  CHECK(shaped.z()(1, 15) == 0.0f);
  CHECK_THROWS_AS(linear_state(0, 16, 16), attnkit::error);

  // A preallocated state, a fresh one and a fork continue identically; reset starts again.
  const linear_shape s{80, 2, 2, 16, 20};
  const auto in = make_linear_inputs<float, float>(s, 31, false);
  const feature::relu map;
  const linear_options options{};
  linear_state a;
  const auto first = run_linear<float>(attnkit::cpu, linear_form::automatic, in, map, a, options);
  const float* storage = a.s().data();
  const auto again_a = run_linear<float>(attnkit::cpu, linear_form::automatic, in, map, a, options);
  CHECK(a.s().data() == storage);  // allocated once per shape, not per call
  CHECK(a.tokens() == 160);
  run_linear<float>(attnkit::cpu, linear_form::automatic, in, map, shaped, options);
  linear_state fork = shaped;
  const auto again_shaped =
      run_linear<float>(attnkit::cpu, linear_form::automatic, in, map, shaped, options);
  const auto again_fork =
      run_linear<float>(attnkit::cpu, linear_form::automatic, in, map, fork, options);
  CHECK(again_shaped.storage == again_a.storage);
  CHECK(again_fork.storage == again_a.storage);
  CHECK(state_bytes(fork) == state_bytes(a));

  // A state restored through the writable views (an engine reloading a saved sequence) is
  // continued from its contents, not taken for an empty one.
  linear_state restored(2, 16, 20);
  {
    const auto from_s = fork.s();
    const auto from_z = fork.z();
    auto to_s = restored.s();
    auto to_z = restored.z();
    for (index_t h = 0; h < 2; ++h)
      for (index_t f = 0; f < 16; ++f) {
        to_z(h, f) = from_z(h, f);
        for (index_t j = 0; j < 20; ++j) to_s(h, f, j) = from_s(h, f, j);
      }
  }
  CHECK_FALSE(restored.known_zero());
  const auto next_fork =
      run_linear<float>(attnkit::cpu, linear_form::chunked, in, map, fork, options);
  const auto next_restored =
      run_linear<float>(attnkit::cpu, linear_form::chunked, in, map, restored, options);
  CHECK(next_restored.storage == next_fork.storage);

  a.reset();
  CHECK(a.known_zero());
  CHECK(a.tokens() == 0);
  CHECK(a.has_shape());
  const auto after_reset =
      run_linear<float>(attnkit::cpu, linear_form::automatic, in, map, a, options);
  CHECK(after_reset.storage == first.storage);
}

TEST_CASE("linear attention: feature maps", "[linear][feature]") {
  SECTION("taylor2: φ(q)·φ(k) = 1 + s²q·k + (s²q·k)²/2 exactly, over 1 + d + d(d+1)/2 features") {
    rng r(5);
    for (index_t d : {1, 2, 8, 16, 32}) {
      for (double s : {1.0, 0.5}) {
        const feature::taylor2 map{float(s)};
        const index_t F = map.feature_dim(d);
        CHECK(F == 1 + d + d * (d + 1) / 2);
        std::vector<double> q(d), k(d), fq(F), fk(F);
        for (auto& x : q) x = r.normal();
        for (auto& x : k) x = r.normal();
        map.apply(d, q.data(), fq.data());
        map.apply(d, k.data(), fk.data());
        double dot = 0.0, features = 0.0;
        for (index_t i = 0; i < d; ++i) dot += q[i] * k[i];
        for (index_t f = 0; f < F; ++f) features += fq[f] * fk[f];
        const double x = s * s * dot;
        CHECK(features == Approx(1.0 + x + x * x / 2.0).epsilon(1e-12));
      }
    }
    CHECK(feature::taylor2::approximating(0.25f).input_scale == 0.5f);
  }
  SECTION("elu_plus_one: the vector path matches exp within a few ulp, 0 at -inf") {
    using batch = xsimd::batch<float>;
    constexpr index_t width = batch::size;
    alignas(64) float in[64], out[64];
    for (index_t i = 0; i < 64; ++i) in[i] = -90.0f + 100.0f * float(i) / 63.0f;
    in[0] = -std::numeric_limits<float>::infinity();
    in[1] = 0.0f;
    in[2] = std::numeric_limits<float>::infinity();
    feature::elu_plus_one{}.apply_simd<xsimd::default_arch>(64, in, out);
    // x·log2(e) is rounded to fp32 first: a relative error of 2^-24 in an exponent of |x|·1.44
    // becomes |x|·1.44·2^-24·ln 2 ≈ |x|·6e-8 in the result, on top of exp2's ~2 ulp.
    for (index_t i = 3; i < 64; ++i) {
      const double exact = in[i] > 0 ? double(in[i]) + 1.0 : std::exp(double(in[i]));
      INFO("x = " << in[i]);
      CHECK(std::fabs(out[i] - exact) <= (3e-7 + 1e-7 * std::fabs(in[i])) * exact);
    }
    CHECK(out[0] == 0.0f);
    CHECK(out[1] == 1.0f);
    CHECK(out[2] == std::numeric_limits<float>::infinity());
    static_assert(64 % width == 0);
  }
  SECTION("a user map with only an fp32 apply, through both backends") {
    const linear_shape s{90, 4, 2, 32, 32};
    const auto in = make_linear_inputs<float, float>(s, 44, false);
    for (bool normalize : {true, false}) {
      const linear_options options = make_options(normalize, nullptr);
      linear_state ref_state, state;
      const auto ref = run_linear<float>(attnkit::backend::reference{}, linear_form::automatic, in,
                                         squared_relu{}, ref_state, options);
      const auto got = run_linear<float>(attnkit::cpu, linear_form::automatic, in, squared_relu{},
                                         state, options);
      const comparison c = compare_linear_output(got, ref);
      INFO(c.describe());
      CHECK(c.ok());
    }
  }
}

TEST_CASE("linear attention: zero denominators give zeros, never NaN", "[linear][extreme]") {
  // relu features: a query with no positive component has φq = 0, so φq·z = 0 exactly in every
  // form; keys with no positive component leave z = 0 for every query.
  const linear_shape s{150, 2, 1, 16, 16};
  auto in = make_linear_inputs<float, float>(s, 3, false);
  fill_with(in.q, [](const auto& at) { return at[0] % 3 == 0 ? -1.0 - double(at[2]) : 0.5; });
  for (auto keys_negative : {false, true}) {
    if (keys_negative) fill_with(in.k, [](const auto&) { return -2.0; });
    for (linear_form form : {linear_form::chunked, linear_form::recurrent}) {
      linear_state state, ref_state;
      const auto got =
          run_linear<float>(attnkit::cpu, form, in, feature::relu{}, state, linear_options{});
      const auto ref = run_linear<float>(attnkit::backend::reference{}, form, in, feature::relu{},
                                         ref_state, linear_options{});
      const auto g = got.cview();
      for (index_t t = 0; t < s.tokens; ++t)
        for (index_t h = 0; h < s.q_heads; ++h)
          for (index_t c = 0; c < s.value_dim; ++c) {
            if (keys_negative || t % 3 == 0) REQUIRE(g(t, h, c) == 0.0f);
            REQUIRE(std::isfinite(g(t, h, c)));
          }
      const comparison cmp = compare_linear_output(got, ref);
      INFO(cmp.describe());
      CHECK(cmp.ok());
    }
  }
}

TEST_CASE("linear attention: extreme inputs and decays", "[linear][extreme]") {
  const linear_shape s{300, 2, 2, 16, 16};
  SECTION("decay that underflows within a chunk, and the largest decay below 1") {
    // γ = 1e-30: γ^2 is 0 in fp32 (and γ^k underflows in the reference's fp64 too after ~11
    // steps); γ = 1 - 2^-24.
    const std::vector<float> gammas = {1e-30f, 1.0f - 0x1p-24f};
    const auto in = make_linear_inputs<float, float>(s, 11, false);
    for (bool normalize : {true, false}) {
      const linear_options options = make_options(normalize, &gammas);
      linear_state ref_state;
      const auto ref = run_linear<float>(attnkit::backend::reference{}, linear_form::automatic, in,
                                         feature::elu_plus_one{}, ref_state, options);
      for (linear_form form : {linear_form::chunked, linear_form::recurrent}) {
        linear_state state;
        const auto got =
            run_linear<float>(attnkit::cpu, form, in, feature::elu_plus_one{}, state, options);
        check_output_and_state(got, ref, state, ref_state);
      }
    }
  }
  SECTION("-inf and huge negative inputs: elu+1 and relu features are exactly 0") {
    auto in = make_linear_inputs<float, float>(s, 12, false);
    const float ninf = -std::numeric_limits<float>::infinity();
    fill_with(in.k, [&](const auto& at) { return at[0] % 2 == 0 ? double(ninf) : -1e30; });
    for (linear_form form : {linear_form::chunked, linear_form::recurrent}) {
      linear_state a, b;
      const auto elu = run_linear<float>(attnkit::cpu, form, in, feature::elu_plus_one{}, a, {});
      const auto relu = run_linear<float>(attnkit::cpu, form, in, feature::relu{}, b, {});
      for (const auto* out : {&elu, &relu}) {
        const auto v = out->cview();
        for (index_t t = 0; t < s.tokens; ++t)
          for (index_t h = 0; h < s.q_heads; ++h)
            for (index_t c = 0; c < s.value_dim; ++c) REQUIRE(v(t, h, c) == 0.0f);
      }
      CHECK(a.z()(0, 0) == 0.0f);
      CHECK(b.s()(1, 3, 5) == 0.0f);
    }
  }
  SECTION("large magnitudes: taylor2 on inputs of 1e3, a long undecayed sum") {
    // (q·k)² ~ 1e12 · d: large but far from fp32 overflow; normalised output stays a convex
    // combination of v, and the forms still agree with the reference.
    auto in = make_linear_inputs<float, float>({700, 2, 1, 8, 16}, 13, false);
    fill_with(in.q, [](const auto& at) { return 1e3 * (1.0 + double((at[0] + at[2]) % 5)); });
    fill_with(in.k, [](const auto& at) { return 1e3 * (1.0 + double((at[0] * 3 + at[2]) % 7)); });
    const feature::taylor2 map{};
    linear_state ref_state;
    const auto ref = run_linear<float>(attnkit::backend::reference{}, linear_form::automatic, in,
                                       map, ref_state, {});
    for (linear_form form : {linear_form::chunked, linear_form::recurrent}) {
      linear_state state;
      const auto got = run_linear<float>(attnkit::cpu, form, in, map, state, {});
      const comparison c = compare_linear_output(got, ref);
      INFO(c.describe());
      CHECK(c.ok());
    }
  }
}

TEST_CASE("linear attention: invalid arguments throw and leave state and output untouched",
          "[linear][errors]") {
  const linear_shape s{20, 4, 2, 16, 24};
  const auto in = make_linear_inputs<float, float>(s, 21, false);
  const feature::elu_plus_one map;

  // A state with history, so "untouched" means something.
  linear_state state;
  run_linear<float>(attnkit::cpu, linear_form::automatic, in, map, state, {});
  REQUIRE(state.tokens() == 20);
  const auto before = state_bytes(state);

  auto out = make_tensor3<float>(s.tokens, s.q_heads, s.value_dim);
  fill_normal(out, 99);
  const auto out_before = out.snapshot();

  auto expect_error = [&](auto&& call, const char* needle) {
    try {
      call();
      FAIL("no attnkit::error thrown");
    } catch (const attnkit::error& e) {
      INFO(e.what());
      CHECK(std::string(e.what()).find("attnkit::linear_attention") != std::string::npos);
      CHECK(std::string(e.what()).find(needle) != std::string::npos);
    }
    CHECK(state_bytes(state) == before);
    CHECK(out.unchanged_since(out_before));
  };
  const auto q = in.q.cview();
  const auto k = in.k.cview();
  const auto v = in.v.cview();
  const auto o = out.view();

  SECTION("decay outside (0, 1], NaN or infinite") {
    for (float bad : {0.0f, -0.5f, 1.0f + 0x1p-23f, 2.0f, std::numeric_limits<float>::quiet_NaN(),
                      std::numeric_limits<float>::infinity()}) {
      INFO("decay " << bad);
      const std::vector<float> gammas = {0.9f, bad};
      expect_error(
          [&] {
            linear_attention(attnkit::cpu, q, k, v, o, map, state, make_options(true, &gammas));
          },
          "decay[1]");
      expect_error(
          [&] {
            attnkit::detail::linear_attention_with_form(
                attnkit::backend::reference{}, linear_form::automatic, q, k, v, o, map, state,
                make_options(true, &gammas), attnkit::parallel::serial{});
          },
          "decay[1]");
    }
    const std::vector<float> three = {0.9f, 0.9f, 0.9f};
    expect_error(
        [&] { linear_attention(attnkit::cpu, q, k, v, o, map, state, make_options(true, &three)); },
        "decay extent 0");
    linear_options null_decay;
    null_decay.decay = tensor_view<const float, 1>(nullptr, {2});
    expect_error([&] { linear_attention(attnkit::cpu, q, k, v, o, map, state, null_decay); },
                 "'decay' has null data");
  }
  SECTION("a state of another shape or feature dimension") {
    expect_error([&] { linear_attention(attnkit::cpu, q, k, v, o, feature::taylor2{}, state); },
                 "feature_dim");
    const auto in1 = make_linear_inputs<float, float>({20, 4, 1, 16, 24}, 22, false);
    expect_error(
        [&] {
          linear_attention(attnkit::cpu, in1.q.cview(), in1.k.cview(), in1.v.cview(), o, map,
                           state);
        },
        "state kv_heads");
    const auto in2 = make_linear_inputs<float, float>({20, 4, 2, 16, 8}, 23, false);
    auto out2 = make_tensor3<float>(20, 4, 8);
    expect_error(
        [&] {
          linear_attention(attnkit::cpu, in2.q.cview(), in2.k.cview(), in2.v.cview(), out2.view(),
                           map, state);
        },
        "state value_dim");
  }
  SECTION("shapes") {
    const auto in3 = make_linear_inputs<float, float>({20, 3, 2, 16, 24}, 24, false);
    auto out3 = make_tensor3<float>(20, 3, 24);
    expect_error(
        [&] {
          linear_attention(attnkit::cpu, in3.q.cview(), in3.k.cview(), in3.v.cview(), out3.view(),
                           map, state);
        },
        "not a multiple of kv_heads");
    expect_error(
        [&] { linear_attention(attnkit::cpu, q, token_slice(in.k, 0, 19), v, o, map, state); },
        "k tokens");
    expect_error(
        [&] { linear_attention(attnkit::cpu, q, k, token_slice(in.v, 1, 20), o, map, state); },
        "v tokens");
    tensor_view<const float, 3> k_wrong_dim(k.data(), {20, 2, 8}, k.strides());
    expect_error([&] { linear_attention(attnkit::cpu, q, k_wrong_dim, v, o, map, state); },
                 "k key dim");
    tensor_view<float, 3> o_wrong(o.data(), {20, 4, 23}, o.strides());
    expect_error([&] { linear_attention(attnkit::cpu, q, k, v, o_wrong, map, state); },
                 "out value dim");
    tensor_view<float, 3> o_heads(o.data(), {20, 2, 24}, o.strides());
    expect_error([&] { linear_attention(attnkit::cpu, q, k, v, o_heads, map, state); },
                 "out heads");
    tensor_view<const float, 3> q_empty_dim(q.data(), {20, 4, 0}, q.strides());
    expect_error([&] { linear_attention(attnkit::cpu, q_empty_dim, k, v, o, map, state); },
                 "key dim");
  }
  SECTION("null data") {
    expect_error(
        [&] {
          linear_attention(attnkit::cpu, tensor_view<const float, 3>(nullptr, {20, 4, 16}), k, v, o,
                           map, state);
        },
        "'q' has null data");
    expect_error(
        [&] {
          linear_attention(attnkit::cpu, q, tensor_view<const float, 3>(nullptr, {20, 2, 16}), v, o,
                           map, state);
        },
        "'k' has null data");
    expect_error(
        [&] {
          linear_attention(attnkit::cpu, q, k, tensor_view<const float, 3>(nullptr, {20, 2, 24}), o,
                           map, state);
        },
        "'v' has null data");
    expect_error(
        [&] {
          linear_attention(attnkit::cpu, q, k, v, tensor_view<float, 3>(nullptr, {20, 4, 24}), map,
                           state);
        },
        "'out' has null data");
  }
  SECTION("an unshaped state stays unshaped after an error, and after zero tokens") {
    linear_state unshaped;
    const std::vector<float> gammas = {0.9f, 0.0f};
    CHECK_THROWS_AS(
        linear_attention(attnkit::cpu, q, k, v, o, map, unshaped, make_options(true, &gammas)),
        attnkit::error);
    CHECK_FALSE(unshaped.has_shape());
    linear_attention(attnkit::cpu, token_slice(in.q, 0, 0), token_slice(in.k, 0, 0),
                     token_slice(in.v, 0, 0), tensor_view<float, 3>(o.data(), {0, 4, 24}), map,
                     unshaped);
    CHECK_FALSE(unshaped.has_shape());
    CHECK(out.unchanged_since(out_before));
  }
}

TEST_CASE("linear attention: the state as a memory (linear_read, linear_append)",
          "[linear][memory]") {
  const linear_shape s{150, 8, 2, 32, 48};
  const auto in = make_linear_inputs<float, float>(s, 61, false);
  const std::vector<float> gammas = decay_table(s.kv_heads);
  const feature::elu_plus_one map;

  SECTION("append is linear_attention's state update, in any pieces") {
    for (bool decay : {false, true}) {
      const linear_options options = make_options(true, decay ? &gammas : nullptr);
      linear_state attended;
      run_linear<float>(attnkit::backend::reference{}, linear_form::automatic, in, map, attended,
                        options);
      for (int backend = 0; backend < 2; ++backend) {
        linear_state appended;
        for (auto [b, e] : {std::pair<index_t, index_t>{0, 70}, {70, 71}, {71, 150}}) {
          if (backend == 0)
            attnkit::linear_append(attnkit::cpu, token_slice(in.k, b, e), token_slice(in.v, b, e),
                                   map, appended, options);
          else
            attnkit::linear_append(attnkit::backend::reference{}, token_slice(in.k, b, e),
                                   token_slice(in.v, b, e), map, appended, options,
                                   attnkit::parallel::serial{});
        }
        CHECK(appended.tokens() == s.tokens);
        const comparison cs = compare_states(appended, attended);
        INFO("backend " << backend << ", decay " << decay << ": " << cs.describe());
        CHECK(cs.ok());
      }
    }
  }
  SECTION("read is non-causal linear attention over everything appended") {
    linear_state memory(s.kv_heads, map.feature_dim(s.key_dim), s.value_dim);
    // An empty memory reads as zeros.
    auto empty_read = make_tensor3<float>(s.tokens, s.q_heads, s.value_dim);
    attnkit::linear_read(attnkit::cpu, in.q.cview(), empty_read.view(), map, memory);
    index_t nonzero = 0;
    const auto er = empty_read.cview();
    for (index_t t = 0; t < s.tokens; ++t)
      for (index_t h = 0; h < s.q_heads; ++h)
        for (index_t c = 0; c < s.value_dim; ++c) nonzero += er(t, h, c) != 0.0f;
    CHECK(nonzero == 0);
    CHECK(empty_read.clobbered_outside() == 0);

    attnkit::linear_append(attnkit::cpu, in.k.cview(), in.v.cview(), map, memory);
    const auto before = state_bytes(memory);
    for (bool normalize : {true, false}) {
      auto got = make_tensor3<float>(s.tokens, s.q_heads, s.value_dim);
      auto ref = make_tensor3<float>(s.tokens, s.q_heads, s.value_dim);
      attnkit::linear_read(attnkit::cpu, in.q.cview(), got.view(), map, memory,
                           make_options(normalize, nullptr));
      attnkit::linear_read(attnkit::backend::reference{}, in.q.cview(), ref.view(), map, memory,
                           make_options(normalize, nullptr), attnkit::parallel::serial{});
      CHECK(state_bytes(memory) == before);  // reading leaves the memory as it was
      // Brute force in fp64: out_t = Σ_s (φq_t·φk_s) v_s [/ Σ_s φq_t·φk_s] over all 150 tokens.
      auto brute = make_tensor3<float>(s.tokens, s.q_heads, s.value_dim);
      const auto q = in.q.cview(), k = in.k.cview(), v = in.v.cview();
      auto phi = [](double x) { return x > 0 ? x + 1.0 : std::exp(x); };
      for (index_t t = 0; t < s.tokens; ++t)
        for (index_t h = 0; h < s.q_heads; ++h) {
          const index_t g = h / (s.q_heads / s.kv_heads);
          std::vector<double> num(static_cast<std::size_t>(s.value_dim), 0.0);
          double den = 0.0;
          for (index_t j = 0; j < s.tokens; ++j) {
            double w = 0.0;
            for (index_t c = 0; c < s.key_dim; ++c) w += phi(q(t, h, c)) * phi(k(j, g, c));
            den += w;
            for (index_t c = 0; c < s.value_dim; ++c) num[c] += w * v(j, g, c);
          }
          for (index_t c = 0; c < s.value_dim; ++c)
            brute.view()(t, h, c) = float(normalize ? num[c] / den : num[c]);
        }
      for (const auto* result : {&got, &ref}) {
        const comparison c = compare_linear_output(*result, brute);
        INFO("normalize " << normalize << ": " << c.describe());
        CHECK(c.ok());
      }
    }
  }
  SECTION("invalid arguments") {
    linear_state unshaped;
    auto out = make_tensor3<float>(s.tokens, s.q_heads, s.value_dim);
    CHECK_THROWS_WITH(attnkit::linear_read(attnkit::cpu, in.q.cview(), out.view(), map, unshaped),
                      Catch::Contains("attnkit::linear_read: the state has no shape"));
    linear_state memory;
    attnkit::linear_append(attnkit::cpu, in.k.cview(), in.v.cview(), map, memory);
    const auto before = state_bytes(memory);
    const std::vector<float> bad = {0.5f, std::numeric_limits<float>::quiet_NaN()};
    CHECK_THROWS_WITH(attnkit::linear_append(attnkit::cpu, in.k.cview(), in.v.cview(), map, memory,
                                             make_options(true, &bad)),
                      Catch::Contains("attnkit::linear_append: decay[1]"));
    CHECK_THROWS_WITH(attnkit::linear_append(attnkit::cpu, in.k.cview(), in.v.cview(),
                                             feature::taylor2{}, memory),
                      Catch::Contains("feature_dim"));
    CHECK_THROWS_WITH(
        attnkit::linear_read(attnkit::cpu, in.q.cview(), out.view(), feature::taylor2{}, memory),
        Catch::Contains("feature_dim"));
    auto narrow = make_tensor3<float>(s.tokens, s.q_heads, s.value_dim - 1);
    CHECK_THROWS_WITH(attnkit::linear_read(attnkit::cpu, in.q.cview(), narrow.view(), map, memory),
                      Catch::Contains("out value dim"));
    CHECK(state_bytes(memory) == before);
  }
}
