// Tests of the tests: the error model of support/harness.hpp must accept a correct fp32 kernel
// and reject buggy ones. The kernel here is support/flash_emulation.hpp (a scalar model of a
// FlashAttention-2 kernel: fp32 sums, online rescaling over 64-key tiles, exp2 with a 4-ulp error),
// run through exactly the same evaluate() as attnkit::cpu is in the other test files.
#include <catch2/catch.hpp>
#include <cmath>
#include <iostream>
#include <string>
#include <vector>

#include "support/flash_emulation.hpp"
#include "support/harness.hpp"

using namespace attnkit_test;

namespace {

// One probe: a case plus (optionally) hand-made inputs; fp32 output unless `half_out`.
struct probe {
  std::string name;
  attention_case c;
  bool half_out = false;
  bool extreme_negative = false;  // every logit about -1e4
};

std::vector<probe> probes() {
  std::vector<probe> p;
  {
    // Causal square with GQA 2, tail tiles (65 = 64 + 1 keys) and a head_dim tail (40 % 16 = 8).
    p.push_back({"causal 65x65 gqa2 d40", shape(65, 65, 4, 2, 40), false, false});
  }
  {
    // More queries than keys: leading rows see nothing; top-left vs bottom-right differ.
    p.push_back({"causal 9x5 masked rows", shape(9, 5, 2, 1, 16), false, false});
  }
  {
    // Full mask, many keys, ALiBi (one negative slope) and a softcap with large logits.
    attention_case c = shape(7, 257, 4, 4, 64, mask_kind::full);
    c.alibi = alibi_slopes(4);
    c.alibi[2] = -0.05f;
    c.softcap = 30.0f;
    c.q_sd = 3.0;
    c.k_sd = 3.0;
    p.push_back({"full 7x257 alibi softcap", c, false, false});
  }
  {
    // Decode over a long cache, MQA.
    p.push_back({"decode 1x1000 mqa", shape(1, 1000, 8, 1, 64, mask_kind::full), false, false});
  }
  {
    // A custom scale and a half output.
    attention_case c = shape(33, 33, 2, 2, 32);
    c.scale = 0.3f;
    p.push_back({"causal 33x33 scale 0.3 half out", c, true, false});
  }
  {
    // Every logit about -1e4 (a running max that starts at 0 underflows every weight).
    attention_case c = shape(5, 70, 2, 2, 16, mask_kind::full);
    c.scale = 1.0f;
    p.push_back({"full 5x70 logits near -1e4", c, false, true});
  }
  return p;
}

evaluation run_probe(const probe& pr, mutation mut) {
  auto in = make_inputs<float, float>(pr.c);
  if (pr.extreme_negative) {
    // q = 25 everywhere, k = -(25 + u), u in [0, 1): logits = -16 * 25 * (25 + u) ~ -1e4.
    fill_with(in.q, [](const auto&) { return 25.0; });
    rng r(7);
    fill_with(in.k, [&](const auto&) { return -(25.0 + r.uniform()); });
  }
  const emulated_runner runner{mut};
  return pr.half_out ? evaluate<attnkit::half>(pr.c, in, runner)
                     : evaluate<float>(pr.c, in, runner);
}

}  // namespace

TEST_CASE("checker: the fp32 model kernel passes every probe", "[checker]") {
  for (const probe& pr : probes()) {
    const evaluation e = run_probe(pr, mutation::none);
    INFO("probe " << pr.name);
    require_ok(e);
    // A correct kernel should sit well inside the bounds; a ratio near 1 would make the suite
    // flaky for the real kernel. (A 16-bit output legitimately reaches ~1: its half-ulp rounding
    // error is the tolerance itself.)
    if (!pr.half_out) CHECK(e.worst_ratio() < 0.5);
  }
}

TEST_CASE("checker: every injected kernel bug fails at least one probe", "[checker]") {
  const mutation all[] = {mutation::no_rescale,         mutation::partial_as_full,
                          mutation::causal_strict,      mutation::causal_top_left,
                          mutation::gqa_modulo,         mutation::drop_tail_key,
                          mutation::skip_first_key,     mutation::head_dim_tail,
                          mutation::output_dim_tail,    mutation::lse_log2,
                          mutation::lse_without_max,    mutation::max_init_zero,
                          mutation::masked_rows_nan,    mutation::masked_lse_unwritten,
                          mutation::alibi_signed,       mutation::softcap_after_alibi,
                          mutation::scale_ignored,      mutation::coarse_exp,
                          mutation::truncating_store,   mutation::unwritten_last_row,
                          mutation::bf16_probabilities, mutation::approx_reciprocal};
  for (mutation mut : all) {
    std::string caught_by;
    for (const probe& pr : probes()) {
      if (!run_probe(pr, mut).ok()) caught_by += pr.name + "; ";
    }
    INFO("mutation " << mutation_name(mut) << " caught by: " << caught_by);
    CHECK_FALSE(caught_by.empty());
  }
}

// Not run by default (hidden tag): prints how close the unmutated model kernel comes to the
// tolerances across the shape grid of the attnkit::cpu tests. Run it after changing the error
// model:  test_checker "[.calibration]" -s
TEST_CASE("checker: calibration of the error model over the shape grid", "[.calibration]") {
  double worst = 0.0;
  std::string worst_label;
  auto run = [&](const attention_case& c) {
    const auto in = make_inputs<float, float>(c);
    const evaluation e = evaluate<float>(c, in, emulated_runner{});
    CHECK(e.ok());
    if (e.worst_ratio() > worst) {
      worst = e.worst_ratio();
      worst_label = e.label + " | " + e.out.describe() + " | " + e.lse.describe();
    }
    std::cout << e.worst_ratio() << "  (out " << e.out.worst_ratio << ", lse " << e.lse.worst_ratio
              << ")  " << e.label << "\n";
  };
  for (index_t d : {1, 32, 64, 80, 96, 112, 128, 200, 256})
    for (mask_kind mk : {mask_kind::full, mask_kind::causal}) run(shape(65, 257, 4, 2, d, mk));
  for (index_t n : {1, 2, 7, 63, 64, 65, 257, 1000}) run(shape(n, n, 2, 1, 64));
  run(shape(1000, 1000, 2, 1, 128));
  run(shape(1, 4099, 8, 1, 128, mask_kind::full));
  {
    attention_case c = shape(65, 300, 4, 2, 128, mask_kind::full);
    c.softcap = 50.0f;
    c.q_sd = c.k_sd = 4.0;
    c.alibi = alibi_slopes(4);
    run(c);
  }
  {
    attention_case c = shape(64, 64, 4, 2, 256);
    c.q_sd = c.k_sd = 3.0;
    run(c);
  }
  std::cout << "worst ratio " << worst << ": " << worst_label << "\n";
}
