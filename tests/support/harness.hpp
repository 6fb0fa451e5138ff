// attnkit tests — run a backend and the fp64 reference on identical inputs and judge the result.
//
//   attention_case c = shape(65, 65, 8, 2, 128);   // q_tokens, kv_tokens, q_heads, kv_heads, dim
//   c.mask = mask_kind::full;                       // (causal by default)
//   check_attention<float, half, float>(c);         // q, kv, out types; attnkit::cpu, default pool
//
//   auto in = make_inputs<float, half>(c);          // fixed seeds, N(0,1) rounded to the type
//   ... edit in.q / in.k / in.v ...
//   check_attention<float>(c, in, cpu_with<E>{&e}); // out type; on an executor of your choice
//
// The reference writes a float output and the log-sum-exp; the backend under test writes its
// own output type and layout, always with the log-sum-exp requested. The verdict covers:
//   * every output element within the error model below (NaN/inf always fail),
//   * every log-sum-exp within its model; rows that see no key must be exactly -inf,
//   * rows that see no key are exactly zero in the output,
//   * nothing outside the output / log-sum-exp views was written (sentinel bits unchanged),
//   * the inputs were not modified.
#pragma once

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "attnkit/attnkit.hpp"
#include "support/compare.hpp"
#include "support/cpu_kernel.hpp"
#include "support/tensor.hpp"
#if defined(ATTNKIT_TEST_CPU_IS_MODEL)
#include "support/flash_emulation.hpp"
#endif

namespace attnkit_test {

enum class mask_kind { full, causal };

inline const char* mask_name(mask_kind m) { return m == mask_kind::full ? "full" : "causal"; }

struct attention_case {
  index_t q_tokens = 1;
  index_t kv_tokens = 1;
  index_t q_heads = 1;
  index_t kv_heads = 1;
  index_t head_dim = 64;
  mask_kind mask = mask_kind::causal;
  layout q_layout = layout::contiguous;
  layout k_layout = layout::contiguous;
  layout v_layout = layout::contiguous;
  layout out_layout = layout::contiguous;
  bool lse_padded = false;
  std::optional<float> scale{};
  float softcap = 0.0f;
  std::vector<float> alibi{};  // empty: no ALiBi
  bool alibi_strided = false;  // pass the slopes through a stride-2 view
  double q_sd = 1.0, k_sd = 1.0, v_sd = 1.0;
  std::uint64_t seed = 1;
};

// The common way to start a case: the shape, causal, contiguous, default options.
inline attention_case shape(index_t q_tokens, index_t kv_tokens, index_t q_heads, index_t kv_heads,
                            index_t head_dim, mask_kind mask = mask_kind::causal) {
  attention_case c;
  c.q_tokens = q_tokens;
  c.kv_tokens = kv_tokens;
  c.q_heads = q_heads;
  c.kv_heads = kv_heads;
  c.head_dim = head_dim;
  c.mask = mask;
  return c;
}

// ALiBi slopes of the usual geometric form 2^(-8 (h+1) / H).
inline std::vector<float> alibi_slopes(index_t heads) {
  std::vector<float> s(static_cast<std::size_t>(heads));
  for (index_t h = 0; h < heads; ++h)
    s[static_cast<std::size_t>(h)] = static_cast<float>(
        std::exp2(-8.0 * static_cast<double>(h + 1) / static_cast<double>(heads)));
  return s;
}

template <class TQ, class TKV>
struct attention_inputs {
  tensor3<TQ> q;
  tensor3<TKV> k;
  tensor3<TKV> v;
};

// Inputs in the case's layouts, N(0, sd^2) rounded to the storage types, seeds derived from
// c.seed (q, k and v get different streams).
template <class TQ, class TKV>
attention_inputs<TQ, TKV> make_inputs(const attention_case& c) {
  attention_inputs<TQ, TKV> in{make_tensor3<TQ>(c.q_tokens, c.q_heads, c.head_dim, c.q_layout),
                               make_tensor3<TKV>(c.kv_tokens, c.kv_heads, c.head_dim, c.k_layout),
                               make_tensor3<TKV>(c.kv_tokens, c.kv_heads, c.head_dim, c.v_layout)};
  fill_normal(in.q, c.seed * 1000 + 1, c.q_sd);
  fill_normal(in.k, c.seed * 1000 + 2, c.k_sd);
  fill_normal(in.v, c.seed * 1000 + 3, c.v_sd);
  return in;
}

// ---------------------------------------------------------------------------------------------
// Error model. What a correct fp32-accumulating kernel can differ from the fp64 reference by,
// given that both see the same (already rounded) inputs. eps = 2^-24 is the fp32 unit roundoff.
//
//  logit error  δs = eps · ( c_dot · L_dot + 16 · softcap + 4 · L_alibi ),  c_dot = 4 + sqrt(d)/2
//     L_dot = scale · max‖q_i‖ · max‖k_j‖ bounds both |scale q·k| and scale Σ_c |q_c k_c| (Cauchy-
//     Schwarz), the quantity fp32 dot-product rounding is proportional to. A d-term fp32 dot
//     product errs by ~sqrt(d)/2 ulps of that in practice (random-walk growth; the worst case
//     d·eps is never approached with SIMD partial sums), plus a few ulps for the scaling, folding
//     log2(e) into the logit (exp2-based kernels) and subtracting the row max. A fast tanh for
//     the softcap errs by a few ulps of 1, times the cap. ALiBi adds slope·distance rounded once
//     (L_alibi = max|slope| · (q_tokens + kv_tokens)).
//  log-sum-exp  |lse - lse_ref| <= δs + eps · (24 + 2 sqrt(n_kv)) + 8 eps |lse|
//     lse = m + log(l) moves by at most max δs (the softmax weights sum to 1), plus the relative
//     error of l = Σ exp(s - m) (fast exp ≈ 2 eps per term, fp32 running sum and rescaling over
//     n_kv terms with random-walk growth, generous constant); the final additions and the ln 2
//     conversion round relative to |lse|.
//  output  |o - o_ref| <= rms(v) · (δs + eps · (8 + sqrt(n_kv))) + 4 eps |o|
//     o = Σ p_j v_j / Σ p_j. Weight errors e_j (logit error plus exp error) move o by
//     Σ p_j e_j (v_j - o): the softmax-weighted deviation of v around o, measured in units of the
//     spread of v (rms), times the weight error. The fp32 sum of p_j v_j adds ~sqrt(n) ulps of
//     rms(v); the final division (or reciprocal) is relative to |o|. This is the typical-case form
//     of the worst-case bound 2·max|v|·(max e_j): the worst case would be ~8x looser, and with it
//     a kernel computing 1/l with a 14-bit reciprocal estimate (no Newton step) would pass.
//     Then one rounding to the output type: + u_out·|o| (u = 2^-24, 2^-11, 2^-8 for fp32, fp16,
//     bf16) and half a subnormal spacing (fp16 outputs below 2^-14).
// Measured margins: the model kernel of test_checker.cpp (sequential fp32 sums, exp with a 4-ulp
// error) and attnkit::cpu stay below ~1/3 of every fp32 bound over the whole suite; 16-bit
// outputs legitimately come close to 1 (their half-ulp rounding is the bound itself).
// test_checker.cpp proves the bounds still reject the classic kernel bugs.
// ---------------------------------------------------------------------------------------------
struct error_model {
  double rms_v = 0.0;
  double max_v = 0.0;
  double logit_dot_bound = 0.0;  // L_dot
  double alibi_bound = 0.0;      // L_alibi
  double softcap = 0.0;
  index_t head_dim = 1;
  index_t kv_tokens = 0;

  static constexpr double eps = 0x1p-24;

  double logit_error() const {
    const double c_dot = 4.0 + 0.5 * std::sqrt(static_cast<double>(head_dim));
    return eps * (c_dot * logit_dot_bound + 16.0 * softcap + 4.0 * alibi_bound);
  }
  double sum_error() const {
    return eps * (24.0 + 2.0 * std::sqrt(static_cast<double>(kv_tokens)));
  }
  double output_error() const {
    return rms_v * (logit_error() + eps * (8.0 + std::sqrt(static_cast<double>(kv_tokens))));
  }

  template <class TO>
  tolerance output_tolerance() const {
    const double u = unit_roundoff<TO>();
    return {(1.0 + u) * output_error() + subnormal_half_spacing<TO>(), u + 4.0 * eps};
  }
  tolerance lse_tolerance() const { return {logit_error() + sum_error(), 8.0 * eps}; }
};

template <class TQ, class TKV>
error_model model_for(const attention_case& c, const attention_inputs<TQ, TKV>& in) {
  error_model m;
  m.max_v = max_abs(in.v);
  m.rms_v = rms(in.v);
  const double scale =
      c.scale ? static_cast<double>(*c.scale) : 1.0 / std::sqrt(static_cast<double>(c.head_dim));
  m.logit_dot_bound = scale * max_row_norm(in.q) * max_row_norm(in.k);
  double max_slope = 0.0;
  for (float s : c.alibi) max_slope = std::fmax(max_slope, std::fabs(static_cast<double>(s)));
  m.alibi_bound = max_slope * static_cast<double>(c.q_tokens + c.kv_tokens);
  m.softcap = c.softcap;
  m.head_dim = c.head_dim;
  m.kv_tokens = c.kv_tokens;
  return m;
}

template <class TQ, class TKV, class TO>
std::string describe_case(const attention_case& c) {
  std::ostringstream s;
  s << "q [" << c.q_tokens << ", " << c.q_heads << ", " << c.head_dim << "] "
    << attnkit::type_name<TQ>() << " " << layout_name(c.q_layout) << "; k/v [" << c.kv_tokens
    << ", " << c.kv_heads << ", " << c.head_dim << "] " << attnkit::type_name<TKV>() << " "
    << layout_name(c.k_layout) << "/" << layout_name(c.v_layout) << "; out "
    << attnkit::type_name<TO>() << " " << layout_name(c.out_layout)
    << (c.lse_padded ? "; lse padded" : "") << "; mask " << mask_name(c.mask);
  if (c.scale) s << "; scale " << *c.scale;
  if (c.softcap > 0.0f) s << "; softcap " << c.softcap;
  if (!c.alibi.empty()) s << "; alibi" << (c.alibi_strided ? " (stride 2)" : "");
  s << "; sd q/k/v " << c.q_sd << "/" << c.k_sd << "/" << c.v_sd << "; seed " << c.seed;
  return s.str();
}

// Options for the case; `slopes` keeps the (possibly strided) slope storage alive.
inline attnkit::attention_options make_options(const attention_case& c, std::vector<float>& slopes,
                                               tensor_view<float, 2> lse) {
  attnkit::attention_options o;
  o.scale = c.scale;
  o.softcap = c.softcap;
  if (!c.alibi.empty()) {
    const index_t n = static_cast<index_t>(c.alibi.size());
    const index_t stride = c.alibi_strided ? 2 : 1;
    slopes.assign(static_cast<std::size_t>(n * stride), std::numeric_limits<float>::quiet_NaN());
    for (index_t h = 0; h < n; ++h)
      slopes[static_cast<std::size_t>(h * stride)] = c.alibi[static_cast<std::size_t>(h)];
    o.alibi_slopes = tensor_view<const float, 1>(slopes.data(), {n}, {stride});
  }
  o.log_sum_exp = lse;
  return o;
}

// Options that only request the log-sum-exp (and optionally set the scale).
inline attnkit::attention_options lse_options(tensor_view<float, 2> lse,
                                              std::optional<float> scale = std::nullopt) {
  attnkit::attention_options o;
  o.scale = scale;
  o.log_sum_exp = lse;
  return o;
}

template <class F>
decltype(auto) with_mask(mask_kind m, F&& f) {
  if (m == mask_kind::full) return f(attnkit::full{});
  return f(attnkit::causal{});
}

// ---- Runners: how the backend under test is invoked. ----
//
// Calibration hook: compiled with -DATTNKIT_TEST_CPU_IS_MODEL, the numerical tests run the model
// kernel of support/flash_emulation.hpp instead of attnkit::cpu (with the bug named by the
// environment variable ATTNKIT_TEST_MUTATION, if any). That shows, test by test, that the
// tolerances accept a correct fp32 kernel and which tests catch which bug. Argument-checking
// tests are meaningless in that mode (the model validates nothing).

#if defined(ATTNKIT_TEST_CPU_IS_MODEL)
template <class Q, class K, class V, class O, class Mask>
void run_cpu(Q q, K k, V v, O out, const Mask& mask, const attnkit::attention_options& o) {
  emulated_runner{mutation_from_env()}(q, k, v, out, mask, o);
}
template <class Q, class K, class V, class O, class Mask, class Executor>
void run_cpu(Q q, K k, V v, O out, const Mask& mask, const attnkit::attention_options& o,
             Executor&) {
  emulated_runner{mutation_from_env()}(q, k, v, out, mask, o);
}
#else
namespace detail {
inline builtin_mask builtin(attnkit::full) { return builtin_mask::full; }
inline builtin_mask builtin(attnkit::causal) { return builtin_mask::causal; }
template <class Mask>
inline constexpr bool is_builtin_mask_v =
    std::is_same_v<Mask, attnkit::full> || std::is_same_v<Mask, attnkit::causal>;
}  // namespace detail

// The built-in masks go through the shared instantiation (support/cpu_kernel.hpp); any other
// mask is instantiated here.
template <class Q, class K, class V, class O, class Mask>
void run_cpu(Q q, K k, V v, O out, const Mask& mask, const attnkit::attention_options& o) {
  if constexpr (detail::is_builtin_mask_v<Mask>) {
    cpu_attention(erase(q), erase(k), erase(v), erase(out), detail::builtin(mask), o);
  } else {
    attnkit::attention(attnkit::cpu, q, k, v, out, mask, o);
  }
}
template <class Q, class K, class V, class O, class Mask, class Executor>
void run_cpu(Q q, K k, V v, O out, const Mask& mask, const attnkit::attention_options& o,
             Executor& executor) {
  if constexpr (detail::is_builtin_mask_v<Mask>) {
    const any_executor erased(executor);
    cpu_attention(erase(q), erase(k), erase(v), erase(out), detail::builtin(mask), o, &erased);
  } else {
    attnkit::attention(attnkit::cpu, q, k, v, out, mask, o, executor);
  }
}
#endif

// attnkit::cpu with the default thread pool (the overload without an executor).
struct cpu_default {
  template <class Q, class K, class V, class O, class Mask>
  void operator()(Q q, K k, V v, O out, const Mask& mask,
                  const attnkit::attention_options& o) const {
    run_cpu(q, k, v, out, mask, o);
  }
};

// attnkit::cpu with a given executor.
template <class Executor>
struct cpu_with {
  Executor* executor;
  template <class Q, class K, class V, class O, class Mask>
  void operator()(Q q, K k, V v, O out, const Mask& mask,
                  const attnkit::attention_options& o) const {
    run_cpu(q, k, v, out, mask, o, *executor);
  }
};

// ---- The verdict. ----

struct evaluation {
  std::string label;
  comparison out;
  comparison lse;
  index_t masked_rows = 0;        // rows the reference says see no key
  index_t masked_row_errors = 0;  // of those, rows whose output is not exactly zero
  index_t out_clobbered = 0;      // storage elements outside the output view that changed
  index_t lse_clobbered = 0;
  bool inputs_unchanged = true;
  std::vector<float> ref_out;  // the reference output [q_tokens, q_heads, head_dim], contiguous
  std::vector<float> ref_lse;  // [q_heads, q_tokens]

  bool ok() const {
    return out.ok() && lse.ok() && masked_row_errors == 0 && out_clobbered == 0 &&
           lse_clobbered == 0 && inputs_unchanged;
  }
  double worst_ratio() const { return std::max(out.worst_ratio, lse.worst_ratio); }
};

// Runs the reference and `runner` on the same inputs under `mask` and judges the runner.
template <class TO, class TQ, class TKV, class Runner, class Mask>
evaluation evaluate_with_mask(const attention_case& c, const attention_inputs<TQ, TKV>& in,
                              const Runner& runner, const Mask& mask) {
  evaluation e;
  e.label = describe_case<TQ, TKV, TO>(c);

  // The oracle: fp64 inside, float output, contiguous.
  auto ref_out = make_tensor3<float>(c.q_tokens, c.q_heads, c.head_dim);
  auto ref_lse = make_lse(c.q_heads, c.q_tokens);
  std::vector<float> ref_slopes;
  attnkit::attention(attnkit::backend::reference{}, in.q.cview(), in.k.cview(), in.v.cview(),
                     ref_out.view(), mask, make_options(c, ref_slopes, ref_lse.view()));

  // The backend under test, in the case's output layout.
  auto out = make_tensor3<TO>(c.q_tokens, c.q_heads, c.head_dim, c.out_layout);
  auto lse = make_lse(c.q_heads, c.q_tokens, c.lse_padded);
  const auto q_before = in.q.snapshot();
  const auto k_before = in.k.snapshot();
  const auto v_before = in.v.snapshot();
  std::vector<float> slopes;
  runner(in.q.cview(), in.k.cview(), in.v.cview(), out.view(), mask,
         make_options(c, slopes, lse.view()));

  const error_model model = model_for(c, in);
  e.out = compare_output<TO>(out.cview(), ref_out.cview(), model.output_tolerance<TO>(), "output");
  e.lse = compare_lse(lse.cview(), ref_lse.cview(), model.lse_tolerance(), "log_sum_exp");

  const auto got = out.cview();
  const auto rl = ref_lse.cview();
  for (index_t h = 0; h < c.q_heads; ++h)
    for (index_t i = 0; i < c.q_tokens; ++i) {
      if (!(std::isinf(rl(h, i)) && rl(h, i) < 0)) continue;
      ++e.masked_rows;
      bool zero = true;
      for (index_t d = 0; d < c.head_dim; ++d)
        zero = zero && attnkit::to_float(got(i, h, d)) == 0.0f;
      if (!zero) ++e.masked_row_errors;
    }
  e.out_clobbered = out.clobbered_outside();
  e.lse_clobbered = lse.clobbered_outside();
  e.inputs_unchanged = in.q.unchanged_since(q_before) && in.k.unchanged_since(k_before) &&
                       in.v.unchanged_since(v_before);
  e.ref_out = ref_out.storage;
  e.ref_lse = ref_lse.storage;
  return e;
}

template <class TO, class TQ, class TKV, class Runner>
evaluation evaluate(const attention_case& c, const attention_inputs<TQ, TKV>& in,
                    const Runner& runner) {
  return with_mask(c.mask,
                   [&](const auto& mask) { return evaluate_with_mask<TO>(c, in, runner, mask); });
}

// Catch2 assertions for an evaluation, with the case and the worst element in the message.
inline void require_ok(const evaluation& e) {
#if defined(ATTNKIT_TEST_PRINT_RATIOS)
  // Calibration aid: how close each case comes to its tolerances (1.0 = at the limit).
  std::printf("ratio out %.4f lse %.4f | %s\n", e.out.worst_ratio, e.lse.worst_ratio,
              e.label.c_str());
#endif
  INFO(e.label);
  INFO(e.out.describe());
  INFO(e.lse.describe());
  CAPTURE(e.masked_rows, e.masked_row_errors, e.out_clobbered, e.lse_clobbered);
  CHECK(e.out.ok());
  CHECK(e.lse.ok());
  CHECK(e.masked_row_errors == 0);
  CHECK(e.out_clobbered == 0);
  CHECK(e.lse_clobbered == 0);
  CHECK(e.inputs_unchanged);
}

// Builds inputs for the case, runs the backend (default: attnkit::cpu, default pool) and checks.
template <class TQ, class TKV, class TO, class Runner = cpu_default>
evaluation check_attention(const attention_case& c, const Runner& runner = Runner{}) {
  const auto in = make_inputs<TQ, TKV>(c);
  evaluation e = evaluate<TO>(c, in, runner);
  require_ok(e);
  return e;
}

// Same, on caller-provided inputs (special values: extreme logits, ties, ...).
template <class TO, class TQ, class TKV, class Runner = cpu_default>
evaluation check_attention(const attention_case& c, const attention_inputs<TQ, TKV>& in,
                           const Runner& runner = Runner{}) {
  evaluation e = evaluate<TO>(c, in, runner);
  require_ok(e);
  return e;
}

}  // namespace attnkit_test
