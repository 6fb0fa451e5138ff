// attnkit CUDA tests — linear_attention on backend::cuda against the fp64 reference (compiled by
// the host compiler; the kernels are behind cuda/cuda_runner_linear.hpp).
//
// Without a CUDA device the executable prints why and exits with 77, which CTest reports as
// skipped (SKIP_RETURN_CODE).
//
// Tolerances (|got - ref| <= abs + rel·|ref|, ref from backend::reference in fp64, rounded to
// fp32): abs = 5e-5 · max|ref| and rel = 5e-5 (+ u_out for 16-bit outputs), states 5e-5 ·
// max|S_ref| (max|z_ref|). The kernels accumulate in fp32 exactly like the CPU chunked form —
// feature dot products over F terms (here in tiles of 32), then up to 64 intra-chunk terms plus
// the carried state, every step rounded at u = 2^-24 relative to running magnitudes within a
// small factor of max|ref| — for which support/linear_harness.hpp observes ~5e-7 · max|ref| and
// allows 2e-5. The device adds FMA contraction, expf (2 ulp) and another summation order, so the
// bound here is 2.5x the CPU one: ~100x above the expected error and still ~1000x below what a
// wrong decay power ((1 - γ) relative), a dropped chunk, a missing state term or a state updated
// once per query head instead of once per KV head (GQA 4: 4x the update) produce. 16-bit inputs
// need nothing extra: the reference reads the very same rounded values.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "cuda/cuda_runner.hpp"
#include "cuda/cuda_runner_linear.hpp"
#include "support/linear_harness.hpp"

namespace {

using namespace attnkit_test;
namespace feature = attnkit::feature;
using cuda::linear_map;
using cuda::linear_map_choice;

constexpr double device_tolerance = 5e-5;

template <class TO>
comparison compare_device_output(tensor_view<const TO, 3> got, tensor_view<const float, 3> ref) {
  return compare_output<TO>(
      got, ref, linear_output_tolerance<TO>(max_abs_view(ref), device_tolerance), "output");
}

// The device state (downloaded into a CPU linear_state) against the reference's.
comparison compare_device_state(const linear_state& got, const linear_state& ref) {
  return compare_states(got, ref, device_tolerance);
}

// Calls fn(cpu map, device map choice) for map `which` (taylor2 scaled as BASED does).
template <class Fn>
void with_maps(linear_map which, index_t key_dim, Fn&& fn) {
  switch (which) {
    case linear_map::identity:
      return fn(feature::identity{}, linear_map_choice{which});
    case linear_map::relu:
      return fn(feature::relu{}, linear_map_choice{which});
    case linear_map::elu_plus_one:
      return fn(feature::elu_plus_one{}, linear_map_choice{which});
    default: {
      const feature::taylor2 map =
          feature::taylor2::approximating(1.0f / std::sqrt(float(key_dim)));
      return fn(map, linear_map_choice{which, map.input_scale});
    }
  }
}

const char* map_name(linear_map m) {
  switch (m) {
    case linear_map::identity:
      return "identity";
    case linear_map::relu:
      return "relu";
    case linear_map::elu_plus_one:
      return "elu_plus_one";
    default:
      return "taylor2";
  }
}

// A state that has seen a prefix, so that every call continues a non-zero state: the reference
// runs `prefix` tokens first on the CPU state, which is then uploaded to the device.
template <class TQ, class TKV, class TO, class Map>
void check_call(const Map& map, linear_map_choice choice, const linear_shape& s, bool normalize,
                bool decay, std::uint64_t seed, index_t prefix = 0) {
  const bool positive = choice.which == linear_map::identity && normalize;
  const std::vector<float> gammas = decay_table(s.kv_heads);
  const linear_options options = make_options(normalize, decay ? &gammas : nullptr);
  const index_t F = map.feature_dim(s.key_dim);

  linear_state ref_state(s.kv_heads, F, s.value_dim);
  if (prefix > 0) {
    linear_shape ps = s;
    ps.tokens = prefix;
    const auto pin = make_linear_inputs<TQ, TKV>(ps, seed + 99, positive);
    (void)run_linear<float>(attnkit::backend::reference{}, linear_form::automatic, pin, map,
                            ref_state, options);
  }
  cuda::linear_session session(s.kv_heads, F, s.value_dim);
  session.upload(ref_state);

  const auto in = make_linear_inputs<TQ, TKV>(s, seed, positive);
  const tensor3<float> ref = run_linear<float>(attnkit::backend::reference{},
                                               linear_form::automatic, in, map, ref_state, options);
  tensor3<TO> got = make_tensor3<TO>(s.tokens, s.q_heads, s.value_dim);
  session.run<TQ, TKV, TO>(choice, in.q.cview(), in.k.cview(), in.v.cview(), got.view(), options);

  const comparison c = compare_device_output<TO>(got.cview(), ref.cview());
  INFO(c.describe());
  CHECK(c.ok());
  linear_state device_state(s.kv_heads, F, s.value_dim);
  session.download(device_state);
  const comparison cs = compare_device_state(device_state, ref_state);
  INFO(cs.describe());
  CHECK(cs.ok());
  CHECK(session.tokens() == ref_state.tokens());
}

// Elementwise maps: head dims 16..128 (80 included), lengths 1, 3, 64, 65, 200, 1000 around the
// prefill chunk (64) and the decode form (<= 4 tokens), GQA 1 and 4, dv != dk once.
const linear_shape elementwise_shapes[] = {
    {1, 4, 4, 16, 16},    {3, 8, 2, 64, 64},   {64, 4, 1, 80, 80},
    {65, 2, 2, 128, 128}, {200, 8, 2, 32, 48}, {1000, 4, 1, 64, 64},
};
// taylor2: feature dim 1 + d + d(d+1)/2 = 45, 153 for d = 8, 16 (several feature tiles of 32).
const linear_shape taylor_shapes[] = {
    {1, 2, 1, 16, 16},   {3, 4, 4, 16, 32},   {65, 2, 2, 8, 8},
    {200, 4, 1, 16, 64}, {1000, 2, 2, 8, 16},
};

TEST_CASE("cuda linear_attention matches the reference: every map, normalise and decay") {
  std::uint64_t seed = 1;
  for (linear_map m :
       {linear_map::identity, linear_map::relu, linear_map::elu_plus_one, linear_map::taylor2}) {
    const bool taylor = m == linear_map::taylor2;
    for (bool normalize : {true, false})
      for (bool decay : {false, true})
        for (const linear_shape& s :
             taylor ? std::vector<linear_shape>(std::begin(taylor_shapes), std::end(taylor_shapes))
                    : std::vector<linear_shape>(std::begin(elementwise_shapes),
                                                std::end(elementwise_shapes))) {
          INFO("map " << map_name(m) << ", normalize " << normalize << ", decay " << decay << ", "
                      << describe(s));
          with_maps(m, s.key_dim, [&](const auto& map, linear_map_choice choice) {
            // Half the cases continue a state that has seen 70 tokens already.
            const std::uint64_t case_seed = ++seed;
            check_call<float, float, float>(map, choice, s, normalize, decay, case_seed,
                                            case_seed % 2 == 0 ? 70 : 0);
          });
        }
  }
}

TEST_CASE("cuda linear_attention: 16-bit inputs and outputs") {
  const linear_shape s{130, 8, 2, 64, 32};
  for (bool decay : {false, true}) {
    INFO("decay " << decay);
    check_call<attnkit::half, attnkit::half, attnkit::half>(
        feature::elu_plus_one{}, {linear_map::elu_plus_one}, s, true, decay, 500 + decay, 33);
    check_call<attnkit::bfloat16, attnkit::bfloat16, float>(feature::relu{}, {linear_map::relu}, s,
                                                            false, decay, 510 + decay);
  }
}

TEST_CASE("cuda linear_attention: prefill then token by token equals one call") {
  for (linear_map m : {linear_map::elu_plus_one, linear_map::taylor2}) {
    const linear_shape s{200, 8, 2, 16, 24};
    with_maps(m, s.key_dim, [&](const auto& map, linear_map_choice choice) {
      INFO("map " << map_name(m));
      const std::vector<float> gammas = decay_table(s.kv_heads);
      const linear_options options = make_options(true, &gammas);
      const index_t F = map.feature_dim(s.key_dim);
      const auto in = make_linear_inputs<float, float>(s, 900, false);
      linear_state ref_state(s.kv_heads, F, s.value_dim);
      const tensor3<float> ref = run_linear<float>(
          attnkit::backend::reference{}, linear_form::automatic, in, map, ref_state, options);

      // 130 tokens of prefill, one call of 3, then one token per call.
      cuda::linear_session session(s.kv_heads, F, s.value_dim);
      tensor3<float> got = make_tensor3<float>(s.tokens, s.q_heads, s.value_dim);
      auto slice = [](auto view, index_t first, index_t count) {
        using V = decltype(view);
        return V(view.data() + first * view.stride(0), {count, view.extent(1), view.extent(2)},
                 {view.stride(0), view.stride(1), view.stride(2)});
      };
      index_t at = 0;
      for (index_t count = 130; at < s.tokens; at += count, count = at == 130 ? 3 : 1)
        session.run<float, float, float>(
            choice, slice(in.q.cview(), at, count), slice(in.k.cview(), at, count),
            slice(in.v.cview(), at, count), slice(got.view(), at, count), options);
      CHECK(session.tokens() == s.tokens);
      const comparison c = compare_device_output<float>(got.cview(), ref.cview());
      INFO(c.describe());
      CHECK(c.ok());
      linear_state device_state(s.kv_heads, F, s.value_dim);
      session.download(device_state);
      const comparison cs = compare_device_state(device_state, ref_state);
      INFO(cs.describe());
      CHECK(cs.ok());

      // reset() starts a new sequence: zeros, then the same first call as a fresh state.
      session.reset();
      CHECK(session.tokens() == 0);
      for (float x : session.download()) REQUIRE(x == 0.0f);
    });
  }
}

TEST_CASE("cuda linear_attention: zero denominators give zeros, a workspace serves the scratch") {
  // relu features of all-negative queries are 0: the denominator is exactly 0, the output 0.
  const linear_shape s{70, 2, 1, 16, 16};
  auto in = make_linear_inputs<float, float>(s, 77, false);
  fill_with(in.q, [](const auto&) { return -1.0; });
  cuda::linear_session session(s.kv_heads, s.key_dim, s.value_dim);
  tensor3<float> got = make_tensor3<float>(s.tokens, s.q_heads, s.value_dim);
  session.run<float, float, float>({linear_map::relu}, in.q.cview(), in.k.cview(), in.v.cview(),
                                   got.view(), make_options(true, nullptr),
                                   /*with_workspace=*/true);
  const auto view = got.cview();
  for (index_t t = 0; t < s.tokens; ++t)
    for (index_t h = 0; h < s.q_heads; ++h)
      for (index_t c = 0; c < s.value_dim; ++c) REQUIRE(view(t, h, c) == 0.0f);
}

TEST_CASE("cuda linear_attention: invalid arguments throw and leave the state untouched") {
  const linear_shape s{8, 4, 2, 16, 16};
  const auto in = make_linear_inputs<float, float>(s, 5, false);
  linear_state prior(s.kv_heads, s.key_dim, s.value_dim);
  (void)run_linear<float>(attnkit::backend::reference{}, linear_form::automatic, in,
                          feature::relu{}, prior, make_options(true, nullptr));
  cuda::linear_session session(s.kv_heads, s.key_dim, s.value_dim);
  session.upload(prior);
  const std::vector<float> before = session.download();
  tensor3<float> out = make_tensor3<float>(s.tokens, s.q_heads, s.value_dim);
  const linear_map_choice relu{linear_map::relu};
  // (a lambda: the template arguments' commas would split CHECK_THROWS_WITH's arguments)
  const auto run = [&](linear_map_choice map, const auto& q, tensor3<float>& o,
                       const linear_options& options) {
    session.run<float, float, float>(map, q.cview(), in.k.cview(), in.v.cview(), o.view(), options);
  };

  SECTION("decay outside (0, 1]") {
    const std::vector<float> bad = {0.9f, 1.5f};
    CHECK_THROWS_WITH(run(relu, in.q, out, make_options(true, &bad)),
                      Catch::Contains("decay[1] is 1.5"));
  }
  SECTION("a feature map of another feature dim than the state") {
    CHECK_THROWS_WITH(run({linear_map::taylor2}, in.q, out, make_options(true, nullptr)),
                      Catch::Contains("state feature_dim is 16"));
  }
  SECTION("out of another value dim") {
    tensor3<float> wrong = make_tensor3<float>(s.tokens, s.q_heads, s.value_dim + 1);
    CHECK_THROWS_WITH(run(relu, in.q, wrong, make_options(true, nullptr)),
                      Catch::Contains("out value dim"));
  }
  SECTION("q_heads not a multiple of kv_heads") {
    linear_shape odd = s;
    odd.q_heads = 3;
    const auto bad = make_linear_inputs<float, float>(odd, 6, false);
    tensor3<float> bad_out = make_tensor3<float>(odd.tokens, odd.q_heads, odd.value_dim);
    CHECK_THROWS_WITH(run(relu, bad.q, bad_out, make_options(true, nullptr)),
                      Catch::Contains("not a multiple"));
  }
  CHECK(session.download() == before);
  CHECK(session.tokens() == 0);

  CHECK_THROWS_WITH(cuda::linear_misuse_call(cuda::linear_misuse::host_query),
                    Catch::Contains("host memory"));
  CHECK_THROWS_WITH(cuda::linear_misuse_call(cuda::linear_misuse::unshaped_state),
                    Catch::Contains("no shape"));
  CHECK_THROWS_WITH(cuda::linear_misuse_call(cuda::linear_misuse::small_workspace),
                    Catch::Contains("cuda_workspace"));
  CHECK_THROWS_WITH(cuda::linear_misuse_call(cuda::linear_misuse::download_wrong_size),
                    Catch::Contains("the span holds"));
}

}  // namespace

int main(int argc, char* argv[]) {
  if (attnkit_test::cuda::device_count() == 0) {
    std::printf(
        "attnkit CUDA linear attention tests: no CUDA device on this machine, so the kernels "
        "(compiled for sm_80 and sm_90) were not run: SKIPPED\n");
    return 77;
  }
  std::printf("attnkit CUDA linear attention tests on %s\n",
              attnkit_test::cuda::device_name().c_str());
  return Catch::Session().run(argc, argv);
}
