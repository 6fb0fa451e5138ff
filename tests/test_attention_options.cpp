// attnkit::cpu against the reference with attention_options (scale, softcap, ALiBi, their
// combinations) and with extreme logits: ±1e4, ties, a single key, tiles whose maxima differ by
// 2e4 (rescale factors that underflow to exactly 0). Besides the reference comparison, the
// designed cases check the analytic answer with a tolerance that has no logit-error term: their
// logits are exact (integer data, power-of-two scale) or tied, so a correct kernel reproduces them
// up to fp32 accumulation alone.
#include <catch2/catch.hpp>
#include <cmath>
#include <limits>
#include <vector>

#include "support/harness.hpp"

using namespace attnkit_test;

namespace {

// Runs the cpu kernel on `in` (fp32 output, contiguous, lse requested) and returns out and lse.
struct run_result {
  tensor3<float> out;
  tensor2<float> lse;
};

template <class TQ, class TKV, class Mask>
run_result run_cpu_raw(attention_inputs<TQ, TKV>& in, const Mask& mask,
                       attnkit::attention_options o = {}) {
  run_result r{make_tensor3<float>(in.q.extents[0], in.q.extents[1], in.q.extents[2]),
               make_lse(in.q.extents[1], in.q.extents[0])};
  o.log_sum_exp = r.lse.view();
  cpu_default{}(in.q.cview(), in.k.cview(), in.v.cview(), r.out.view(), mask, o);
  return r;
}

// Designed cases with exact (or exactly tied) logits have no logit error: what remains is the fp32
// sum of n weighted values and the division, bounded by max|v| · eps · (24 + 2 sqrt(n)).
double accumulation_only(double max_v, index_t n) {
  return max_v * error_model::eps * (24.0 + 2.0 * std::sqrt(static_cast<double>(n)));
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// scale
// ---------------------------------------------------------------------------------------------

TEST_CASE("options: scale values against the reference", "[cpu][options][scale]") {
  std::uint64_t seed = 2000;
  for (float scale : {0.0f, 0.01f, 0.125f, 0.3f, 1.0f, 3.0f}) {
    for (mask_kind m : {mask_kind::full, mask_kind::causal}) {
      attention_case c = shape(65, 100, 4, 2, 64, m);
      c.scale = scale;
      c.seed = ++seed;
      check_attention<float, float, float>(c);
    }
  }
}

TEST_CASE("options: scale 0 averages the visible values uniformly", "[cpu][options][scale]") {
  // With scale 0 every visible logit is 0: out = mean of the visible v rows, lse = log(count).
  // Under causal with n_q = 5, n_kv = 9, row i sees keys 0 .. 4 + i.
  attention_case c = shape(5, 9, 2, 1, 16, mask_kind::causal);
  c.scale = 0.0f;
  c.seed = 2100;
  auto in = make_inputs<float, float>(c);
  const run_result r = run_cpu_raw(in, attnkit::causal{}, {.scale = 0.0f});
  const auto v = in.v.cview();
  const double tol = accumulation_only(max_abs(in.v), 9);
  for (index_t h = 0; h < 2; ++h)
    for (index_t i = 0; i < 5; ++i) {
      const index_t visible = 9 - 5 + i + 1;
      CAPTURE(h, i, visible);
      for (index_t d = 0; d < 16; ++d) {
        double mean = 0.0;
        for (index_t j = 0; j < visible; ++j) mean += v(j, 0, d);
        mean /= static_cast<double>(visible);
        CHECK(std::fabs(r.out.cview()(i, h, d) - mean) <= tol);
      }
      CHECK(std::fabs(r.lse.cview()(h, i) - std::log(static_cast<double>(visible))) <= 1e-6);
    }
}

TEST_CASE("options: an explicit scale equal to the default changes nothing",
          "[cpu][options][scale]") {
  // The front door resolves both to the same float, so the results must be bit-identical.
  attention_case c = shape(33, 70, 4, 2, 80, mask_kind::causal);
  c.seed = 2200;
  auto in = make_inputs<float, float>(c);
  const run_result a = run_cpu_raw(in, attnkit::causal{});
  const run_result b = run_cpu_raw(in, attnkit::causal{}, {.scale = 1.0f / std::sqrt(80.0f)});
  CHECK(a.out.unchanged_since(b.out.storage));
  CHECK(a.lse.unchanged_since(b.lse.storage));
}

// ---------------------------------------------------------------------------------------------
// softcap
// ---------------------------------------------------------------------------------------------

TEST_CASE("options: softcap 30 and 50 with logits far beyond the cap", "[cpu][options][softcap]") {
  // q and k with sd 8: raw logits of a few hundred, so tanh saturates and the cap changes the
  // softmax completely (without it the rows would be one-hot).
  std::uint64_t seed = 2300;
  for (float cap : {30.0f, 50.0f}) {
    for (attention_case c :
         {shape(65, 130, 4, 2, 64, mask_kind::causal), shape(7, 257, 8, 1, 128, mask_kind::full),
          shape(1, 1000, 8, 2, 64, mask_kind::full)}) {
      c.softcap = cap;
      c.q_sd = c.k_sd = 8.0;
      c.seed = ++seed;
      check_attention<float, float, float>(c);
    }
  }
}

TEST_CASE("options: softcap with ordinary logits and with half inputs", "[cpu][options][softcap]") {
  std::uint64_t seed = 2400;
  attention_case c = shape(65, 65, 4, 2, 96, mask_kind::causal);
  c.softcap = 5.0f;  // comparable to the logits: tanh in its curved part
  c.seed = ++seed;
  check_attention<float, float, float>(c);
  c.softcap = 30.0f;
  c.q_sd = c.k_sd = 6.0;
  c.seed = ++seed;
  check_attention<attnkit::half, attnkit::half, attnkit::half>(c);
}

// ---------------------------------------------------------------------------------------------
// ALiBi
// ---------------------------------------------------------------------------------------------

TEST_CASE("options: ALiBi slopes per head with causal and full masks", "[cpu][options][alibi]") {
  // The bias is -slope[h] * |q_pos - kv_pos| with bottom-right query positions, so the full-mask
  // cases with n_q != n_kv also check the alignment of the bias.
  std::uint64_t seed = 2500;
  for (attention_case c :
       {shape(65, 65, 4, 2, 64, mask_kind::causal), shape(65, 65, 4, 2, 64, mask_kind::full),
        shape(7, 257, 8, 1, 128, mask_kind::full), shape(300, 100, 4, 4, 32, mask_kind::full),
        shape(130, 200, 8, 2, 80, mask_kind::causal),
        shape(1, 1000, 8, 2, 128, mask_kind::causal)}) {
    c.alibi = alibi_slopes(c.q_heads);
    c.seed = ++seed;
    check_attention<float, float, float>(c);
  }
}

TEST_CASE("options: ALiBi through a strided slope view with zero and negative slopes",
          "[cpu][options][alibi]") {
  attention_case c = shape(65, 130, 4, 2, 64, mask_kind::full);
  c.alibi = {0.5f, 0.0f, -0.03f, 0.0625f};  // per head: steep, none, rewarding distance, mild
  c.alibi_strided = true;
  c.seed = 2600;
  check_attention<float, float, float>(c);
  c.mask = mask_kind::causal;
  c.seed = 2601;
  check_attention<float, float, float>(c);
}

TEST_CASE("options: scale softcap ALiBi GQA and causal combined", "[cpu][options][combo]") {
  std::uint64_t seed = 2700;
  for (attention_case c :
       {shape(65, 65, 8, 2, 64, mask_kind::causal), shape(33, 257, 16, 1, 128, mask_kind::full),
        shape(100, 40, 4, 2, 80, mask_kind::causal)}) {
    c.scale = 0.2f;
    c.softcap = 20.0f;
    c.alibi = alibi_slopes(c.q_heads);
    c.q_sd = c.k_sd = 3.0;
    c.seed = ++seed;
    check_attention<float, float, float>(c);
    c.seed = ++seed;
    check_attention<float, attnkit::half, attnkit::bfloat16>(c);
  }
}

// ---------------------------------------------------------------------------------------------
// Extreme logits
// ---------------------------------------------------------------------------------------------

namespace {

// The largest and second largest exact logit (integer data, scale 1) among the keys row i of head
// h sees, and the argmax.
struct top_two {
  double best = -1e300, second = -1e300;
  index_t arg = -1;
};

template <class TQ, class TKV>
top_two top_logits(const attention_inputs<TQ, TKV>& in, index_t i, index_t h, index_t kh,
                   index_t last_visible) {
  const auto q = in.q.cview();
  const auto k = in.k.cview();
  top_two t;
  for (index_t j = 0; j <= last_visible; ++j) {
    double s = 0.0;
    for (index_t d = 0; d < q.extent(2); ++d)
      s += double(attnkit::to_float(q(i, h, d))) * double(attnkit::to_float(k(j, kh, d)));
    if (s > t.best) {
      t.second = t.best;
      t.best = s;
      t.arg = j;
    } else if (s > t.second) {
      t.second = s;
    }
  }
  return t;
}

}  // namespace

TEST_CASE("extreme: random logits up to 1e4 give near one-hot rows", "[cpu][extreme]") {
  // Integer q, k in [-12, 12] with scale 1: logits are exact integers up to ~1e4 in magnitude and
  // typically hundreds apart, so most rows are one-hot. Checked against the reference; and every
  // row whose top two logits are >= 30 apart must equal v[argmax] (the other weights are below
  // n_kv * e^-30, far under fp32 resolution) to within fp32 accumulation, with lse = top logit
  // to 8 ulps.
  for (mask_kind m : {mask_kind::full, mask_kind::causal}) {
    attention_case c = shape(65, 130, 4, 2, 64, m);
    c.scale = 1.0f;
    c.seed = m == mask_kind::full ? 2800 : 2801;
    auto in = make_inputs<float, float>(c);
    rng r(c.seed);
    fill_with(in.q, [&](const auto&) { return static_cast<double>(r.integer(-12, 12)); });
    fill_with(in.k, [&](const auto&) { return static_cast<double>(r.integer(-12, 12)); });
    check_attention<float>(c, in);

    const run_result got =
        with_mask(m, [&](const auto& mask) { return run_cpu_raw(in, mask, {.scale = 1.0f}); });
    const auto v = in.v.cview();
    const double tol = accumulation_only(max_abs(in.v), c.kv_tokens);
    index_t one_hot_rows = 0, bad = 0;
    double max_logit = 0.0;
    for (index_t h = 0; h < c.q_heads; ++h)
      for (index_t i = 0; i < c.q_tokens; ++i) {
        const index_t kh = h / 2;
        const index_t last = m == mask_kind::full ? c.kv_tokens - 1 : c.kv_tokens - c.q_tokens + i;
        const top_two t = top_logits(in, i, h, kh, last);
        max_logit = std::fmax(max_logit, std::fabs(t.best));
        if (t.best - t.second < 30.0) continue;
        ++one_hot_rows;
        for (index_t d = 0; d < c.head_dim; ++d)
          if (!(std::fabs(got.out.cview()(i, h, d) - v(t.arg, kh, d)) <= tol)) ++bad;
        if (!(std::fabs(got.lse.cview()(h, i) - t.best) <=
              8.0 * error_model::eps * std::fabs(t.best)))
          ++bad;
      }
    CAPTURE(mask_name(m), max_logit, one_hot_rows);
    CHECK(max_logit > 1000.0);
    CHECK(one_hot_rows > c.q_heads * c.q_tokens / 2);
    CHECK(bad == 0);
  }
}

TEST_CASE("extreme: tied logits of +1e4 and -1e4 in every tile order", "[cpu][extreme]") {
  // head_dim 16, scale 1, q = 25 everywhere and k_j = ±25 everywhere: every logit is exactly
  // +1e4 or -1e4. A row averages v uniformly over its visible +1e4 keys (the -1e4 keys weigh
  // e^-2e4 = 0), or over all its visible keys if none is +1e4; lse = ±1e4 + log(count). The
  // patterns put the two kinds in different tiles in both orders (a tile max that jumps by 2e4,
  // and rescale factors that underflow to exactly 0), interleaved, or all equal (no overflow at
  // +1e4, no underflow to 0/0 at -1e4).
  struct pattern {
    const char* name;
    bool (*positive)(index_t j);
  };
  const pattern patterns[] = {
      {"all +1e4", [](index_t) { return true; }},
      {"all -1e4", [](index_t) { return false; }},
      {"-1e4 then +1e4 from key 64", [](index_t j) { return j >= 64; }},
      {"+1e4 for the first 10 keys then -1e4", [](index_t j) { return j < 10; }},
      {"+1e4 on every third key", [](index_t j) { return j % 3 == 1; }},
      {"+1e4 on the last key only", [](index_t j) { return j == 149; }},
  };
  for (const pattern& p : patterns) {
    for (mask_kind m : {mask_kind::full, mask_kind::causal}) {
      attention_case c = shape(40, 150, 2, 1, 16, m);
      c.scale = 1.0f;
      c.seed = 2900;
      auto in = make_inputs<float, float>(c);
      fill_with(in.q, [](const auto&) { return 25.0; });
      fill_with(in.k, [&](const auto& at) { return p.positive(at[0]) ? 25.0 : -25.0; });
      check_attention<float>(c, in);

      const run_result got =
          with_mask(m, [&](const auto& mask) { return run_cpu_raw(in, mask, {.scale = 1.0f}); });
      const auto v = in.v.cview();
      const double tol = accumulation_only(max_abs(in.v), c.kv_tokens);
      index_t bad = 0;
      for (index_t h = 0; h < 2; ++h)
        for (index_t i = 0; i < c.q_tokens; ++i) {
          const index_t last = m == mask_kind::full ? 149 : 150 - 40 + i;
          index_t n_pos = 0;
          for (index_t j = 0; j <= last; ++j) n_pos += p.positive(j) ? 1 : 0;
          const bool use_pos = n_pos > 0;
          const index_t count = use_pos ? n_pos : last + 1;
          for (index_t d = 0; d < 16; ++d) {
            double mean = 0.0;
            for (index_t j = 0; j <= last; ++j)
              if (p.positive(j) == use_pos) mean += v(j, 0, d);
            mean /= static_cast<double>(count);
            if (!(std::fabs(got.out.cview()(i, h, d) - mean) <= tol)) ++bad;
          }
          const double lse = (use_pos ? 1e4 : -1e4) + std::log(static_cast<double>(count));
          if (!(std::fabs(got.lse.cview()(h, i) - lse) <= 8.0 * error_model::eps * 1e4)) ++bad;
        }
      CAPTURE(p.name, mask_name(m));
      CHECK(bad == 0);
    }
  }
}

TEST_CASE("extreme: all logits equal gives the uniform average", "[cpu][extreme]") {
  // q = 0: every logit is 0 whatever the scale. k rows all identical: every logit of a row is
  // the same (nonzero) value. Both must give the mean of the visible values and lse =
  // logit + log(count).
  for (mask_kind m : {mask_kind::full, mask_kind::causal}) {
    for (bool zero_q : {true, false}) {
      attention_case c = shape(33, 100, 4, 2, 64, m);
      c.seed = 3000;
      auto in = make_inputs<float, float>(c);
      if (zero_q) {
        fill_with(in.q, [](const auto&) { return 0.0; });
      } else {
        rng r(3001);
        std::vector<double> row(64);
        for (double& x : row) x = r.normal();
        fill_with(in.k, [&](const auto& at) { return row[static_cast<std::size_t>(at[2])]; });
      }
      check_attention<float>(c, in);
      const run_result got = with_mask(m, [&](const auto& mask) { return run_cpu_raw(in, mask); });
      const auto q = in.q.cview();
      const auto k = in.k.cview();
      const auto v = in.v.cview();
      const double tol = accumulation_only(max_abs(in.v), c.kv_tokens);
      index_t bad = 0;
      for (index_t h = 0; h < 4; ++h)
        for (index_t i = 0; i < 33; ++i) {
          const index_t kh = h / 2, last = m == mask_kind::full ? 99 : 100 - 33 + i;
          for (index_t d = 0; d < 64; ++d) {
            double mean = 0.0;
            for (index_t j = 0; j <= last; ++j) mean += v(j, kh, d);
            mean /= static_cast<double>(last + 1);
            if (!(std::fabs(got.out.cview()(i, h, d) - mean) <= tol)) ++bad;
          }
          double s = 0.0;
          for (index_t d = 0; d < 64; ++d) s += double(q(i, h, d)) * double(k(0, kh, d));
          s /= 8.0;  // default scale 1/sqrt(64)
          const double lse = s + std::log(static_cast<double>(last + 1));
          if (!(std::fabs(got.lse.cview()(h, i) - lse) <= 1e-5 * (1.0 + std::fabs(lse)))) ++bad;
        }
      CAPTURE(mask_name(m), zero_q);
      CHECK(bad == 0);
    }
  }
}

TEST_CASE("extreme: a single key returns its value and its logit", "[cpu][extreme]") {
  // One key: its weight is exactly 1 whatever the logit (+1e4, -1e4 or ordinary), so out = v[0]
  // and lse = the logit. Under causal with 3 queries only the last row sees the key.
  for (double qv : {25.0, -25.0, 0.3}) {
    for (mask_kind m : {mask_kind::full, mask_kind::causal}) {
      attention_case c = shape(3, 1, 4, 1, 16, m);
      c.scale = 1.0f;
      c.seed = 3100;
      auto in = make_inputs<float, float>(c);
      fill_with(in.q, [&](const auto&) { return qv; });
      fill_with(in.k, [](const auto&) { return 25.0; });
      check_attention<float>(c, in);
      const run_result got =
          with_mask(m, [&](const auto& mask) { return run_cpu_raw(in, mask, {.scale = 1.0f}); });
      const double logit = 16.0 * qv * 25.0;
      index_t bad = 0;
      for (index_t h = 0; h < 4; ++h)
        for (index_t i = 0; i < 3; ++i) {
          const bool sees = m == mask_kind::full || i == 2;
          for (index_t d = 0; d < 16; ++d) {
            const double want = sees ? double(in.v.cview()(0, 0, d)) : 0.0;
            if (!(std::fabs(got.out.cview()(i, h, d) - want) <=
                  4.0 * error_model::eps * std::fabs(want)))
              ++bad;
          }
          const double lse = got.lse.cview()(h, i);
          if (sees ? !(std::fabs(lse - logit) <= 8.0 * error_model::eps * std::fabs(logit) + 1e-6)
                   : !(std::isinf(lse) && lse < 0))
            ++bad;
        }
      CAPTURE(qv, mask_name(m));
      CHECK(bad == 0);
    }
  }
}

TEST_CASE("extreme: huge logits from 16-bit inputs stay finite", "[cpu][extreme][dtype]") {
  // fp16 and bf16 integers in [-120, 120] (exact in both types), head_dim 32, scale 1: logits up
  // to ~4.6e5. No overflow, no NaN, and agreement with the reference within the error model
  // (whose logit term grows with the logit magnitude).
  for (mask_kind m : {mask_kind::full, mask_kind::causal}) {
    attention_case c = shape(65, 100, 4, 2, 32, m);
    c.scale = 1.0f;
    c.seed = 3200;
    auto hin = make_inputs<attnkit::half, attnkit::half>(c);
    auto bin = make_inputs<attnkit::bfloat16, attnkit::bfloat16>(c);
    rng r(3201);
    fill_with(hin.q, [&](const auto&) { return static_cast<double>(r.integer(-120, 120)); });
    fill_with(hin.k, [&](const auto&) { return static_cast<double>(r.integer(-120, 120)); });
    fill_with(bin.q, [&](const auto&) { return static_cast<double>(r.integer(-120, 120)); });
    fill_with(bin.k, [&](const auto&) { return static_cast<double>(r.integer(-120, 120)); });
    check_attention<attnkit::half>(c, hin);
    check_attention<float>(c, bin);
  }
}
