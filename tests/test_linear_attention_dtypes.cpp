// attnkit::linear_attention — fp16 / bf16 inputs and outputs and strided memory layouts, against
// the fp64 reference reading the very same inputs. Tolerances (support/linear_harness.hpp): the
// fp32 bound plus the output type's unit roundoff (2^-11 half, 2^-8 bfloat16) relative to |ref|.
// Inputs need no allowance: 16-bit values convert to fp32 exactly, in both backends.
#include <catch2/catch.hpp>

#include "support/linear_harness.hpp"

namespace {

using namespace attnkit_test;
namespace feature = attnkit::feature;

template <class TQ, class TKV, class TO>
void check_dtypes(layout l, std::uint64_t seed) {
  const linear_shape s{150, 4, 2, 64, 32};
  const auto in = make_linear_inputs<TQ, TKV>(s, seed, false, l);
  const std::vector<float> gammas = decay_table(s.kv_heads);
  for (bool normalize : {true, false}) {
    const linear_options options = make_options(normalize, &gammas);
    linear_state ref_state;
    const auto ref =
        run_linear<float>(attnkit::backend::reference{}, linear_form::automatic, in,
                          feature::elu_plus_one{}, ref_state, options, attnkit::parallel::serial{});
    for (linear_form form : {linear_form::chunked, linear_form::recurrent}) {
      INFO("q " << dtype_name<TQ> << ", kv " << dtype_name<TKV> << ", out "
                << dtype_name<TO> << ", layout " << layout_name(l) << ", normalize " << normalize
                << ", form " << int(form));
      linear_state state;
      const auto got = run_linear<TO>(attnkit::cpu, form, in, feature::elu_plus_one{}, state,
                                      options, wide_executor{}, l);
      check_output_and_state(got, ref, state, ref_state);
      CHECK(got.clobbered_outside() == 0);
    }
  }
}

}  // namespace

TEST_CASE("linear attention: fp16 and bf16 inputs and outputs", "[linear][dtypes]") {
  check_dtypes<half, half, half>(layout::contiguous, 1);
  check_dtypes<bfloat16, bfloat16, bfloat16>(layout::contiguous, 2);
  check_dtypes<float, half, float>(layout::contiguous, 3);
  check_dtypes<float, bfloat16, bfloat16>(layout::contiguous, 4);
  check_dtypes<half, float, float>(layout::contiguous, 5);
}

TEST_CASE("linear attention: strided layouts", "[linear][dtypes]") {
  for (layout l : {layout::padded, layout::packed, layout::bhsd, layout::dim_strided,
                   layout::tokens_innermost}) {
    check_dtypes<float, float, float>(l, 10 + int(l));
  }
  check_dtypes<half, half, bfloat16>(layout::dim_strided, 20);
}

TEST_CASE("linear attention: a custom executor (a lambda) runs every item", "[linear][dtypes]") {
  const linear_shape s{100, 8, 2, 32, 32};
  const auto in = make_linear_inputs<float, float>(s, 30, false);
  std::size_t calls = 0;
  auto on_caller = [&](std::size_t n, auto&& item) {
    ++calls;
    for (std::size_t i = n; i-- > 0;) item(i);  // any order
  };
  linear_state ref_state, state;
  const auto ref = run_linear<float>(attnkit::backend::reference{}, linear_form::automatic, in,
                                     feature::relu{}, ref_state, {}, attnkit::parallel::serial{});
  auto out = make_tensor3<float>(s.tokens, s.q_heads, s.value_dim);
  attnkit::linear_attention(attnkit::cpu, in.q.cview(), in.k.cview(), in.v.cview(), out.view(),
                            feature::relu{}, state, {}, on_caller);
  CHECK(calls >= 1);
  const comparison c = compare_linear_output(out, ref);
  INFO(c.describe());
  CHECK(c.ok());
}
