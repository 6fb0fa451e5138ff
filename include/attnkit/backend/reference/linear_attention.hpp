// attnkit — the reference linear attention: the oracle the chunked and recurrent forms are
// tested against.
//
// The quadratic masked form, straight from the definition and in fp64: for query token t (0-based
// within the call) of query head h over KV head g,
//
//   num_t = γ^(t+1) φq_t·S_in + Σ_{s<=t} γ^(t-s) (φq_t·φk_s) v_s
//   den_t = γ^(t+1) φq_t·z_in + Σ_{s<=t} γ^(t-s) (φq_t·φk_s)
//   out_t = den_t == 0 ? 0 : num_t / den_t   (normalize)   or   num_t
//
// γ^(t+1): the incoming state is S_{-1}, so by token t it has been decayed t+1 times. Then
//   S_out = γ^n S_in + Σ_s γ^(n-1-s) φk_s v_sᵀ,   z_out likewise,
// computed in fp64 and stored as fp32, so several reference calls chain like the fast kernels.
// No chunks, no recurrence: a bug in either cannot be mirrored here.
#pragma once

#include <cmath>
#include <cstddef>
#include <vector>

#include "attnkit/backend/reference/attention.hpp"  // round_from_double
#include "attnkit/backend/tags.hpp"
#include "attnkit/core/float16.hpp"
#include "attnkit/core/tensor_view.hpp"
#include "attnkit/feature/feature_map.hpp"
#include "attnkit/linear/linear_state.hpp"
#include "attnkit/linear/options.hpp"

namespace attnkit {
namespace detail {

// φ(row) in fp64: the map's fp64 overload when it has one, else its float one, widened.
template <class Map, class T>
void reference_features(const Map& map, const tensor_view<const T, 3>& x, index_t token,
                        index_t head, index_t input_dim, index_t feature_dim, double* out) {
  if constexpr (feature_map_fp64<Map>) {
    std::vector<double> in(static_cast<std::size_t>(input_dim));
    for (index_t c = 0; c < input_dim; ++c) in[c] = double(to_float(x(token, head, c)));
    map.apply(input_dim, in.data(), out);
  } else {
    std::vector<float> in(static_cast<std::size_t>(input_dim));
    std::vector<float> features(static_cast<std::size_t>(feature_dim));
    for (index_t c = 0; c < input_dim; ++c) in[c] = to_float(x(token, head, c));
    map.apply(input_dim, in.data(), features.data());
    for (index_t f = 0; f < feature_dim; ++f) out[f] = double(features[f]);
  }
}

// S ← γ^n S + Σ_s γ^(n-1-s) φk_s v_sᵀ and z likewise for KV head g, from fp64 features fk
// [n][F] and values vv [n][dv] and the fp64 entry state (s_in [F][dv], z_in [F]); stored fp32.
// (The views are taken once on the calling thread: state.s() is not for concurrent use.)
inline void reference_store_state(const tensor_view<float, 3>& s_state,
                                  const tensor_view<float, 2>& z_state, index_t g, double gamma,
                                  index_t n, index_t F, index_t dv, const std::vector<double>& fk,
                                  const std::vector<double>& vv, const std::vector<double>& s_in,
                                  const std::vector<double>& z_in) {
  const double carried_n = std::pow(gamma, static_cast<double>(n));
  auto at = [](const std::vector<double>& m, index_t row, index_t cols, index_t col) {
    return m[static_cast<std::size_t>(row * cols + col)];
  };
  for (index_t f = 0; f < F; ++f) {
    double z_new = carried_n * z_in[static_cast<std::size_t>(f)];
    double decay_s = 1.0;
    for (index_t s = n - 1; s >= 0; --s, decay_s *= gamma) z_new += decay_s * at(fk, s, F, f);
    z_state(g, f) = static_cast<float>(z_new);
    for (index_t c = 0; c < dv; ++c) {
      double s_new = carried_n * at(s_in, f, dv, c);
      double decay_c = 1.0;
      for (index_t s = n - 1; s >= 0; --s, decay_c *= gamma)
        s_new += decay_c * at(fk, s, F, f) * at(vv, s, dv, c);
      s_state(g, f, c) = static_cast<float>(s_new);
    }
  }
}

// The entry state of KV head g in fp64: s_in [F][dv], z_in [F].
inline void reference_load_state(const linear_state& state, index_t g, std::vector<double>& s_in,
                                 std::vector<double>& z_in) {
  const index_t F = state.feature_dim(), dv = state.value_dim();
  s_in.assign(static_cast<std::size_t>(F * dv), 0.0);
  z_in.assign(static_cast<std::size_t>(F), 0.0);
  const tensor_view<const float, 3> s = state.s();
  const tensor_view<const float, 2> z = state.z();
  for (index_t f = 0; f < F; ++f) {
    z_in[static_cast<std::size_t>(f)] = z(g, f);
    for (index_t c = 0; c < dv; ++c) s_in[static_cast<std::size_t>(f * dv + c)] = s(g, f, c);
  }
}

template <class TQ, class TKV, class TO, class Map, class Executor>
void linear_attention_impl(backend::reference, tensor_view<const TQ, 3> q,
                           tensor_view<const TKV, 3> k, tensor_view<const TKV, 3> v,
                           tensor_view<TO, 3> out, const Map& map, linear_state& state,
                           const linear_params& p, Executor& executor) {
  const index_t n = p.tokens, F = p.feature_dim, dk = p.key_dim, dv = p.value_dim;
  const tensor_view<float, 3> s_state = state.s();
  const tensor_view<float, 2> z_state = state.z();
  // One item per KV head: it reads and then rewrites only its own state.
  executor(static_cast<std::size_t>(p.kv_heads), [&](std::size_t item) {
    const index_t g = static_cast<index_t>(item);
    const double gamma = p.decay_of(g);
    auto at = [](std::vector<double>& m, index_t row, index_t cols, index_t col) -> double& {
      return m[static_cast<std::size_t>(row * cols + col)];
    };
    std::vector<double> s_in, z_in;
    reference_load_state(state, g, s_in, z_in);
    std::vector<double> fk(static_cast<std::size_t>(n * F)), vv(static_cast<std::size_t>(n * dv));
    for (index_t s = 0; s < n; ++s) {
      reference_features(map, k, s, g, dk, F, &at(fk, s, F, 0));
      for (index_t c = 0; c < dv; ++c) at(vv, s, dv, c) = double(to_float(v(s, g, c)));
    }
    std::vector<double> fq(static_cast<std::size_t>(F)), num(static_cast<std::size_t>(dv));
    for (index_t h = g * p.group_size; h < (g + 1) * p.group_size; ++h) {
      double carried = gamma;  // γ^(t+1)
      for (index_t t = 0; t < n; ++t, carried *= gamma) {
        reference_features(map, q, t, h, dk, F, fq.data());
        double den = 0.0;
        for (auto& x : num) x = 0.0;
        for (index_t f = 0; f < F; ++f) {
          const double w = carried * fq[f];
          den += w * z_in[f];
          for (index_t c = 0; c < dv; ++c) num[c] += w * at(s_in, f, dv, c);
        }
        double decay = 1.0;  // γ^(t-s), s from t down to 0
        for (index_t s = t; s >= 0; --s, decay *= gamma) {
          double dot = 0.0;
          for (index_t f = 0; f < F; ++f) dot += fq[f] * at(fk, s, F, f);
          const double w = decay * dot;
          den += w;
          for (index_t c = 0; c < dv; ++c) num[c] += w * at(vv, s, dv, c);
        }
        for (index_t c = 0; c < dv; ++c) {
          const double value = !p.normalize ? num[c] : den == 0.0 ? 0.0 : num[c] / den;
          out(t, h, c) = round_from_double<TO>(value);
        }
      }
    }
    reference_store_state(s_state, z_state, g, gamma, n, F, dv, fk, vv, s_in, z_in);
  });
}

// linear_read: out_t = φq_t·S / φq_t·z (or φq_t·S) for the state as it is.
template <class TQ, class TO, class Map, class Executor>
void linear_read_impl(backend::reference, tensor_view<const TQ, 3> q, tensor_view<TO, 3> out,
                      const Map& map, const linear_state& state, const linear_params& p,
                      Executor& executor) {
  const index_t F = p.feature_dim, dv = p.value_dim;
  executor(static_cast<std::size_t>(p.kv_heads), [&](std::size_t item) {
    const index_t g = static_cast<index_t>(item);
    std::vector<double> s_in, z_in, fq(static_cast<std::size_t>(F));
    std::vector<double> num(static_cast<std::size_t>(dv));
    reference_load_state(state, g, s_in, z_in);
    for (index_t h = g * p.group_size; h < (g + 1) * p.group_size; ++h)
      for (index_t t = 0; t < p.tokens; ++t) {
        reference_features(map, q, t, h, p.key_dim, F, fq.data());
        double den = 0.0;
        for (auto& x : num) x = 0.0;
        for (index_t f = 0; f < F; ++f) {
          den += fq[f] * z_in[f];
          for (index_t c = 0; c < dv; ++c) num[c] += fq[f] * s_in[f * dv + c];
        }
        for (index_t c = 0; c < dv; ++c)
          out(t, h, c) = round_from_double<TO>(!p.normalize ? num[c]
                                               : den == 0.0 ? 0.0
                                                            : num[c] / den);
      }
  });
}

// linear_append: the state update of linear_attention without its output.
template <class TKV, class Map, class Executor>
void linear_append_impl(backend::reference, tensor_view<const TKV, 3> k,
                        tensor_view<const TKV, 3> v, const Map& map, linear_state& state,
                        const linear_params& p, Executor& executor) {
  const index_t n = p.tokens, F = p.feature_dim, dv = p.value_dim;
  const tensor_view<float, 3> s_state = state.s();
  const tensor_view<float, 2> z_state = state.z();
  executor(static_cast<std::size_t>(p.kv_heads), [&](std::size_t item) {
    const index_t g = static_cast<index_t>(item);
    std::vector<double> s_in, z_in;
    reference_load_state(state, g, s_in, z_in);
    std::vector<double> fk(static_cast<std::size_t>(n * F)), vv(static_cast<std::size_t>(n * dv));
    for (index_t s = 0; s < n; ++s) {
      reference_features(map, k, s, g, p.key_dim, F, &fk[static_cast<std::size_t>(s * F)]);
      for (index_t c = 0; c < dv; ++c)
        vv[static_cast<std::size_t>(s * dv + c)] = double(to_float(v(s, g, c)));
    }
    reference_store_state(s_state, z_state, g, p.decay_of(g), n, F, dv, fk, vv, s_in, z_in);
  });
}

}  // namespace detail
}  // namespace attnkit
