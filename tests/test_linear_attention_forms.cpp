// attnkit::linear_attention — the three exact forms agree: the fp64 quadratic reference, the
// chunked form (prefill) and the recurrent form (decode), for every feature map, with and
// without decay and normalisation, over head dims 16..256 (taylor2: 8..32), lengths 1..2000
// (chunk boundaries and lengths that are not multiples of the chunk) and GQA ratios 1..8.
// Outputs and the final states are compared; tolerances are explained in
// support/linear_harness.hpp.
#include <catch2/catch.hpp>
#include <utility>

#include "support/linear_harness.hpp"

namespace {

using namespace attnkit_test;

// Under AddressSanitizer every vector access is a call (see tests/CMakeLists.txt), so the
// longest runs are shortened there; every code path is still taken.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool sanitized = true;
#else
constexpr bool sanitized = false;
#endif
namespace feature = attnkit::feature;

struct map_case {
  const char* name;
  int which;  // 0 identity, 1 elu+1, 2 relu, 3 taylor2
};

// Calls fn(map) with the feature map `which` (taylor2 scaled as BASED does: exp(q·k/√d)).
template <class Fn>
void with_map(int which, index_t key_dim, Fn&& fn) {
  switch (which) {
    case 0:
      return fn(feature::identity{});
    case 1:
      return fn(feature::elu_plus_one{});
    case 2:
      return fn(feature::relu{});
    default:
      return fn(feature::taylor2::approximating(1.0f / std::sqrt(float(key_dim))));
  }
}

const map_case maps[] = {{"identity", 0}, {"elu_plus_one", 1}, {"relu", 2}, {"taylor2", 3}};

// Shapes for the elementwise maps: head dims 16..256, value dims that differ from key dims and
// are not multiples of 16, lengths around the chunk size (64), GQA ratios 1, 2, 4 and 8.
const linear_shape elementwise_shapes[] = {
    {1, 4, 4, 16, 16},    {2, 8, 1, 64, 64},   {5, 2, 1, 128, 128},   {63, 2, 2, 32, 24},
    {64, 4, 1, 16, 16},   {65, 8, 1, 16, 40},  {130, 4, 2, 128, 128}, {129, 8, 2, 100, 72},
    {200, 2, 1, 256, 64}, {257, 8, 8, 16, 16},
};
// taylor2: feature dim 1 + d + d(d+1)/2 = 45, 153, 561 for d = 8, 16, 32.
const linear_shape taylor_shapes[] = {
    {1, 2, 1, 8, 16}, {3, 4, 4, 16, 64}, {64, 2, 2, 8, 8}, {97, 8, 1, 16, 32}, {150, 4, 1, 32, 64},
};

template <class Map>
void check_forms(const Map& map, const linear_shape& s, bool normalize, bool decay, bool positive,
                 std::uint64_t seed) {
  const auto in = make_linear_inputs<float, float>(s, seed, positive);
  const std::vector<float> gammas = decay_table(s.kv_heads);
  const linear_options options = make_options(normalize, decay ? &gammas : nullptr);

  linear_state ref_state;
  const auto ref = run_linear<float>(attnkit::backend::reference{}, linear_form::automatic, in, map,
                                     ref_state, options, attnkit::parallel::serial{});
  // Each form on the serial executor and on one that claims 16 threads (which splits a KV
  // head's query heads, or the state's columns, over several items).
  const std::pair<linear_form, bool> runs[] = {{linear_form::chunked, false},
                                               {linear_form::chunked, true},
                                               {linear_form::recurrent, false},
                                               {linear_form::recurrent, true},
                                               {linear_form::automatic, true}};
  for (const auto& [form, wide] : runs) {
    {
      INFO(describe(s) << ", normalize " << normalize << ", decay " << decay << ", form "
                       << int(form) << ", executor " << (wide ? "wide" : "serial"));
      linear_state state;
      const auto got =
          wide ? run_linear<float>(attnkit::cpu, form, in, map, state, options, wide_executor{})
               : run_linear<float>(attnkit::cpu, form, in, map, state, options,
                                   attnkit::parallel::serial{});
      check_output_and_state(got, ref, state, ref_state);
      CHECK(got.clobbered_outside() == 0);
      CHECK(state.tokens() == s.tokens);
    }
  }
}

}  // namespace

TEST_CASE("linear attention: reference, chunked and recurrent forms agree", "[linear][forms]") {
  std::uint64_t seed = 100;
  for (const map_case& m : maps) {
    for (bool normalize : {true, false}) {
      for (bool decay : {false, true}) {
        INFO("map " << m.name);
        // Identity features with normalisation need positive inputs to be well conditioned.
        const bool positive = m.which == 0 && normalize;
        if (m.which == 3) {
          for (const linear_shape& s : taylor_shapes)
            with_map(m.which, s.key_dim, [&](const auto& map) {
              check_forms(map, s, normalize, decay, positive, ++seed);
            });
        } else {
          for (const linear_shape& s : elementwise_shapes) {
            // Under the sanitizer, the large shapes run with decay and normalisation only.
            const bool large =
                s.tokens * s.q_heads * s.value_dim * (s.key_dim + s.value_dim) > (index_t{4} << 20);
            if (sanitized && large && !(normalize && decay)) continue;
            with_map(m.which, s.key_dim, [&](const auto& map) {
              check_forms(map, s, normalize, decay, positive, ++seed);
            });
          }
        }
      }
    }
  }
}

TEST_CASE("linear attention: long sequences against the reference", "[linear][forms]") {
  // 2000 tokens: 31 full chunks and a partial one (2000 = 31·64 + 16). Small dims keep the
  // quadratic reference cheap.
  std::uint64_t seed = 900;
  for (const map_case& m : maps) {
    INFO("map " << m.name);
    const linear_shape s{sanitized ? 700 : 2000, 2, 1, m.which == 3 ? 8 : 16, 16};
    with_map(m.which, s.key_dim, [&](const auto& map) {
      check_forms(map, s, /*normalize=*/m.which != 0, /*decay=*/m.which % 2 == 0, false, ++seed);
    });
  }
}

TEST_CASE("linear attention: chunked and recurrent agree on long sequences at head dim 128",
          "[linear][forms]") {
  // Too long for the quadratic reference at this size; the two fast forms share no code path
  // beyond the feature rows, so agreement here is the check (plus the state they end with).
  std::uint64_t seed = 1300;
  for (const map_case& m : maps) {
    if (m.which == 3) continue;
    for (bool normalize : {true, false})
      for (bool decay : {false, true}) {
        INFO("map " << m.name << ", normalize " << normalize << ", decay " << decay);
        const linear_shape s{sanitized ? 400 : 1500, 4, 2, 128, 128};
        const bool positive = m.which == 0 && normalize;
        const auto in = make_linear_inputs<float, float>(s, ++seed, positive);
        const std::vector<float> gammas = decay_table(s.kv_heads);
        const linear_options options = make_options(normalize, decay ? &gammas : nullptr);
        with_map(m.which, s.key_dim, [&](const auto& map) {
          linear_state chunked_state, recurrent_state;
          const auto chunked = run_linear<float>(attnkit::cpu, linear_form::chunked, in, map,
                                                 chunked_state, options);
          const auto recurrent = run_linear<float>(attnkit::cpu, linear_form::recurrent, in, map,
                                                   recurrent_state, options);
          check_output_and_state(chunked, recurrent, chunked_state, recurrent_state);
        });
      }
  }
}
