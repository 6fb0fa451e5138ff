// attnkit tests — linear attention: inputs, runs of every form, comparisons with the reference.
//
// Tolerances (fp32 accumulation everywhere in the CPU kernels, fp64 in the reference):
//   fp32 output: |got - ref| <= 2e-5 · max|ref| + 2e-5 · |ref|. Each output element is a sum of
//   F products (the feature dot products) and then of up to C = 64 intra-chunk terms plus the
//   carried state, every step rounded at u = 2^-24 ≈ 6e-8 relative to the running magnitude; the
//   running magnitudes stay within a small factor of max|ref| for these inputs (positive maps or
//   normalised outputs are convex combinations of v; unnormalised identity/relu sums have random
//   signs). Observed errors are ~5e-7 · max|ref|; the bound leaves a 40x margin and is still
//   ~1000x below what a wrong decay power (γ^t for γ^(t+1): (1-γ) relative), a dropped chunk or
//   a missing state term produce.
//   16-bit outputs: plus the output's own rounding, u_out · |ref| (2^-11 half, 2^-8 bfloat16).
//   16-bit inputs need nothing extra: the reference reads the very same rounded inputs.
//   States (always fp32): 2e-5 · max|S_ref| per element, the same argument.
#pragma once

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <vector>

#include "attnkit/attnkit.hpp"
#include "attnkit/feature/elu_plus_one.hpp"
#include "attnkit/feature/identity.hpp"
#include "attnkit/feature/relu.hpp"
#include "attnkit/feature/taylor2.hpp"
#include "attnkit/linear/linear_attention.hpp"
#include "support/compare.hpp"
#include "support/random.hpp"
#include "support/tensor.hpp"

namespace attnkit_test {

using attnkit::linear_options;
using attnkit::linear_state;
using attnkit::detail::linear_form;

inline constexpr double linear_fp32_tolerance = 2e-5;

// An executor that claims 16 threads (running on the default pool): makes the CPU kernels split
// query heads of a KV head over items (chunked) and value columns over items (recurrent) even on
// a small machine.
struct wide_executor {
  template <class Item>
  void operator()(std::size_t n, Item&& item) const {
    attnkit::parallel::default_thread_pool()(n, item);
  }
  static constexpr std::size_t concurrency() noexcept { return 16; }
};

struct linear_shape {
  index_t tokens = 1;
  index_t q_heads = 1;
  index_t kv_heads = 1;
  index_t key_dim = 16;
  index_t value_dim = 16;
};

inline std::string describe(const linear_shape& s) {
  return "tokens " + std::to_string(s.tokens) + ", heads " + std::to_string(s.q_heads) + "/" +
         std::to_string(s.kv_heads) + ", dk " + std::to_string(s.key_dim) + ", dv " +
         std::to_string(s.value_dim);
}

// A per-KV-head decay table with values from "forgets within a chunk" to "almost no decay".
inline std::vector<float> decay_table(index_t kv_heads) {
  static const float gammas[] = {0.9f, 0.5f, 0.999f, 1.0f, 0.97f, 0.8f, 0.99f, 0.6f};
  std::vector<float> d(static_cast<std::size_t>(kv_heads));
  for (index_t h = 0; h < kv_heads; ++h) d[static_cast<std::size_t>(h)] = gammas[h % 8];
  return d;
}

template <class TQ, class TKV>
struct linear_inputs {
  tensor3<TQ> q;
  tensor3<TKV> k;
  tensor3<TKV> v;
};

// q and k ~ N(0, 1) (identity with normalisation: uniform in [0.05, 1), so that φq·z > 0 and
// the normalised output is well conditioned); v ~ N(0, 1).
template <class TQ, class TKV>
linear_inputs<TQ, TKV> make_linear_inputs(const linear_shape& s, std::uint64_t seed,
                                          bool positive_keys, layout l = layout::contiguous) {
  linear_inputs<TQ, TKV> in{make_tensor3<TQ>(s.tokens, s.q_heads, s.key_dim, l),
                            make_tensor3<TKV>(s.tokens, s.kv_heads, s.key_dim, l),
                            make_tensor3<TKV>(s.tokens, s.kv_heads, s.value_dim, l)};
  if (positive_keys) {
    rng r(seed);
    fill_with(in.q, [&](const auto&) { return r.uniform(0.05, 1.0); });
    fill_with(in.k, [&](const auto&) { return r.uniform(0.05, 1.0); });
  } else {
    fill_normal(in.q, seed);
    fill_normal(in.k, seed + 1);
  }
  fill_normal(in.v, seed + 2);
  return in;
}

inline linear_options make_options(bool normalize, const std::vector<float>* decay) {
  linear_options o;
  o.normalize = normalize;
  if (decay != nullptr)
    o.decay = tensor_view<const float, 1>(decay->data(), {static_cast<index_t>(decay->size())});
  return o;
}

// One call of `form` on `backend`, continuing `state`; returns the output as a new tensor.
template <class TO, class Backend, class TQ, class TKV, class Map, class Executor = wide_executor>
tensor3<TO> run_linear(const Backend& backend, linear_form form, const linear_inputs<TQ, TKV>& in,
                       const Map& map, linear_state& state, const linear_options& options,
                       Executor executor = {}, layout out_layout = layout::contiguous) {
  tensor3<TO> out = make_tensor3<TO>(in.q.extents[0], in.q.extents[1], in.v.extents[2], out_layout);
  attnkit::detail::linear_attention_with_form(backend, form, in.q.cview(), in.k.cview(),
                                              in.v.cview(), out.view(), map, state, options,
                                              executor);
  return out;
}

template <class T>
double max_abs_view(tensor_view<const T, 3> t) {
  double m = 0.0;
  for (index_t i = 0; i < t.extent(0); ++i)
    for (index_t h = 0; h < t.extent(1); ++h)
      for (index_t c = 0; c < t.extent(2); ++c)
        m = std::fmax(m, std::fabs(double(attnkit::to_float(t(i, h, c)))));
  return m;
}

// `relative` is the fp32 bound (linear_fp32_tolerance for the CPU forms; a backend with another
// summation order passes its own).
template <class TO>
tolerance linear_output_tolerance(double max_ref, double relative = linear_fp32_tolerance) {
  constexpr bool narrow = !std::is_same_v<TO, float>;
  return {relative * max_ref + subnormal_half_spacing<TO>(),
          relative + (narrow ? unit_roundoff<TO>() : 0.0)};
}

// got against the reference's fp32 output.
template <class TO>
comparison compare_linear_output(const tensor3<TO>& got, const tensor3<float>& ref,
                                 const char* what = "output") {
  return compare_output<TO>(got.cview(), ref.cview(),
                            linear_output_tolerance<TO>(max_abs_view(ref.cview())), what);
}

// Two states: S and z element by element, tolerance relative to the largest |S| (|z|).
inline comparison compare_states(const linear_state& got, const linear_state& ref,
                                 double relative = linear_fp32_tolerance) {
  comparison c;
  c.what = "state";
  if (!got.has_shape() || !ref.has_shape() || got.kv_heads() != ref.kv_heads() ||
      got.feature_dim() != ref.feature_dim() || got.value_dim() != ref.value_dim()) {
    c.checked = 1;
    c.violations = 1;
    return c;
  }
  double max_s = 0.0, max_z = 0.0;
  const auto rs = ref.s(), gs = got.s();
  const auto rz = ref.z(), gz = got.z();
  for (index_t h = 0; h < ref.kv_heads(); ++h)
    for (index_t f = 0; f < ref.feature_dim(); ++f) {
      max_z = std::fmax(max_z, std::fabs(double(rz(h, f))));
      for (index_t j = 0; j < ref.value_dim(); ++j)
        max_s = std::fmax(max_s, std::fabs(double(rs(h, f, j))));
    }
  c.tol = {relative * max_s, relative};
  for (index_t h = 0; h < ref.kv_heads(); ++h)
    for (index_t f = 0; f < ref.feature_dim(); ++f)
      for (index_t j = 0; j < ref.value_dim(); ++j) c.add(gs(h, f, j), rs(h, f, j), {h, f, j});
  comparison cz;
  cz.what = "z";
  cz.tol = {relative * max_z, relative};
  for (index_t h = 0; h < ref.kv_heads(); ++h)
    for (index_t f = 0; f < ref.feature_dim(); ++f) cz.add(gz(h, f), rz(h, f), {h, f, -1});
  if (!cz.ok()) return cz;
  return c;
}

// CHECKs an output and the state the call left against the expected pair (the reference's, or
// another form's), with each comparison's description as context.
template <class TO>
void check_output_and_state(const tensor3<TO>& got, const tensor3<float>& expected,
                            const linear_state& state, const linear_state& expected_state) {
  const comparison c = compare_linear_output(got, expected);
  INFO(c.describe());
  CHECK(c.ok());
  const comparison cs = compare_states(state, expected_state);
  INFO(cs.describe());
  CHECK(cs.ok());
}

}  // namespace attnkit_test
