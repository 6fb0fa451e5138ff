// attnkit — linear_attention(): causal linear attention over one sequence, continuing a state.
#pragma once

#include <cmath>
#include <type_traits>
#include <utility>

#include "attnkit/attention/check.hpp"
#include "attnkit/backend/reference/linear_attention.hpp"
#include "attnkit/backend/simd/linear_attention.hpp"
#include "attnkit/backend/tags.hpp"
#include "attnkit/core/error.hpp"
#include "attnkit/core/float16.hpp"
#include "attnkit/core/tensor_view.hpp"
#include "attnkit/feature/feature_map.hpp"
#include "attnkit/linear/linear_state.hpp"
#include "attnkit/linear/options.hpp"
#include "attnkit/parallel/executor.hpp"
#include "attnkit/parallel/thread_pool.hpp"

namespace attnkit {
namespace detail {

template <class TQ, class TK, class TV, class TO, class Map>
linear_params check_linear_arguments(const char* function, const tensor_view<TQ, 3>& q,
                                     const tensor_view<TK, 3>& k, const tensor_view<TV, 3>& v,
                                     const tensor_view<TO, 3>& out, const Map& map,
                                     const linear_state& state, const linear_options& options) {
  static_assert(is_storage_type_v<std::remove_cv_t<TQ>>, "q must hold float, half or bfloat16");
  static_assert(is_storage_type_v<std::remove_cv_t<TK>>, "k must hold float, half or bfloat16");
  static_assert(std::is_same_v<std::remove_cv_t<TK>, std::remove_cv_t<TV>>,
                "k and v must have the same element type");
  static_assert(is_storage_type_v<TO>, "out must be a mutable view of float, half or bfloat16");

  linear_params p;
  p.tokens = q.extent(0);
  p.q_heads = q.extent(1);
  p.key_dim = q.extent(2);
  p.kv_heads = k.extent(1);
  p.value_dim = v.extent(2);

  require(p.key_dim >= 1, function, ": key dim (q extent 2) is ", p.key_dim, ", it must be >= 1");
  require(p.value_dim >= 1, function, ": value dim (v extent 2) is ", p.value_dim,
          ", it must be >= 1");
  check_extent(function, "k tokens (extent 0)", k.extent(0), "q tokens", p.tokens);
  check_extent(function, "k key dim (extent 2)", k.extent(2), "q key dim", p.key_dim);
  check_extent(function, "v tokens (extent 0)", v.extent(0), "q tokens", p.tokens);
  check_extent(function, "v kv_heads (extent 1)", v.extent(1), "k kv_heads", p.kv_heads);
  p.group_size = check_head_counts(function, p.q_heads, p.kv_heads);
  check_out_extents(function, out, p.tokens, p.q_heads, "out value dim (extent 2)", "v value dim",
                    p.value_dim);
  check_view_data(function, "q", q);
  check_view_data(function, "k", k);
  check_view_data(function, "v", v);
  check_view_data(function, "out", out);

  p.feature_dim = static_cast<index_t>(map.feature_dim(p.key_dim));
  require(p.feature_dim >= 1, function, ": the feature map's feature_dim(", p.key_dim, ") is ",
          p.feature_dim, ", it must be >= 1");

  if (state.has_shape()) {
    check_extent(function, "state kv_heads", state.kv_heads(), "k kv_heads", p.kv_heads);
    require(state.feature_dim() == p.feature_dim, function, ": state feature_dim is ",
            state.feature_dim(), " but the feature map gives ", p.feature_dim, " for key dim ",
            p.key_dim, " (a state continues one sequence with one map)");
    check_extent(function, "state value_dim", state.value_dim(), "v value dim", p.value_dim);
  }

  p.normalize = options.normalize;
  check_linear_decay(function, options, p.kv_heads, p);
  p.state_is_zero = !state.has_shape() || state.known_zero();
  return p;
}

// The front door with the form a backend runs made explicit (the tests force each one).
template <class Backend, class TQ, class TK, class TV, class TO, class Map, class Executor>
void linear_attention_with_form(const Backend& backend, linear_form form, tensor_view<TQ, 3> q,
                                tensor_view<TK, 3> k, tensor_view<TV, 3> v, tensor_view<TO, 3> out,
                                const Map& map, linear_state& state, const linear_options& options,
                                Executor&& executor) {
  static_assert(!std::is_same_v<Backend, backend::cuda>,
                "attnkit::linear_attention: the CUDA kernels for backend::cuda are not "
                "implemented yet");
  linear_params params =
      check_linear_arguments("attnkit::linear_attention", q, k, v, out, map, state, options);
  params.form = form;
  if (params.tokens == 0) return;
  // Everything is valid: only now may the state be allocated and written.
  state.adopt_shape(params.kv_heads, params.feature_dim, params.value_dim);
  using Q = std::remove_cv_t<TQ>;
  using KV = std::remove_cv_t<TK>;
  linear_attention_impl(backend, tensor_view<const Q, 3>(q), tensor_view<const KV, 3>(k),
                        tensor_view<const KV, 3>(v), out, map, state, params, executor);
  state.advance(params.tokens);
}

}  // namespace detail

// Causal linear attention for the next q_tokens tokens of a sequence whose past is `state`:
//
//   S_t = γ·S_{t-1} + φ(k_t) v_tᵀ,   z_t = γ·z_{t-1} + φ(k_t),
//   out_t = φ(q_t)ᵀ S_t / φ(q_t)ᵀ z_t    (options.normalize; otherwise φ(q_t)ᵀ S_t)
//
// with S_{-1}, z_{-1} the state on entry; on return the state holds S, z after the last token.
// Equivalently, the quadratic form
//   out_t = [γ^(t+1) φq_t·S_in + Σ_{s<=t} γ^(t-s) (φq_t·φk_s) v_s] / [same with z_in and 1].
//
//   q    [tokens, q_heads, key_dim]      float, half or bfloat16
//   k    [tokens, kv_heads, key_dim]     float, half or bfloat16 (same type as v)
//   v    [tokens, kv_heads, value_dim]   value_dim may differ from key_dim (BASED: small key_dim)
//   out  [tokens, q_heads, value_dim]    float, half or bfloat16
//   map  feature::identity, elu_plus_one, relu, taylor2, or any feature_map
//   state  linear_state: default-constructed for a new sequence; fp32 whatever the inputs
//
// Query head h reads KV head h / (q_heads / kv_heads) (MHA, GQA, MQA). A call with many tokens
// (prefill) runs the chunked form, one with a few tokens (decode) the recurrent form, O(1) per
// token whatever the position; both are exact forms of the same recurrence. A row whose
// normalising denominator is exactly 0 yields zeros. Invalid arguments (shapes, null data, a
// state of another shape or feature dimension, decay outside (0, 1] or NaN) throw attnkit::error
// before the state or out is touched. The output is written, never accumulated into: hybrid
// layers (BASED, Infini-attention) combine it with attention()'s output themselves.
template <class Backend, class TQ, class TK, class TV, class TO, feature_map Map,
          parallel::executor Executor>
void linear_attention(const Backend& backend, tensor_view<TQ, 3> q, tensor_view<TK, 3> k,
                      tensor_view<TV, 3> v, tensor_view<TO, 3> out, const Map& map,
                      linear_state& state, const linear_options& options, Executor&& executor) {
  detail::linear_attention_with_form(backend, detail::linear_form::automatic, q, k, v, out, map,
                                     state, options, executor);
}

template <class Backend, class TQ, class TK, class TV, class TO, feature_map Map>
void linear_attention(const Backend& backend, tensor_view<TQ, 3> q, tensor_view<TK, 3> k,
                      tensor_view<TV, 3> v, tensor_view<TO, 3> out, const Map& map,
                      linear_state& state, const linear_options& options = {}) {
  linear_attention(backend, q, k, v, out, map, state, options, parallel::default_thread_pool());
}

}  // namespace attnkit
