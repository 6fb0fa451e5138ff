// attnkit — linear_read() and linear_append(): a linear_state used as a memory.
//
// linear_attention() reads and writes the state token by token (causal). Some layers separate
// the two: Infini-attention retrieves from the memory of the *previous* segments,
//   A_mem = σ(Q) M_{s-1} / σ(Q) z_{s-1},   σ = ELU + 1,
// and only then adds the current segment, M_s = M_{s-1} + σ(K)ᵀ V. With these two calls:
//
//   attnkit::linear_state memory(kv_heads, feature::elu_plus_one{}.feature_dim(d), d);  // zeros
//   for each segment:
//     attnkit::linear_read(attnkit::cpu, q, a_mem, feature::elu_plus_one{}, memory);
//     attnkit::attention(attnkit::cpu, q, k, v, a_local, attnkit::causal{});
//     attnkit::linear_append(attnkit::cpu, k, v, feature::elu_plus_one{}, memory);
//     out = gate · a_mem + (1 - gate) · a_local   (the caller's per-head learned gate)
#pragma once

#include <type_traits>

#include "attnkit/attention/check.hpp"
#include "attnkit/backend/reference/linear_attention.hpp"
#include "attnkit/backend/simd/linear_memory.hpp"
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

// out_t = φ(q_t)ᵀ S / φ(q_t)ᵀ z  (options.normalize; otherwise φ(q_t)ᵀ S) for every token, from
// the state as it is: nothing is added to it and it is not modified. Query head h reads KV head
// h / (q_heads / state.kv_heads()).
//   q    [tokens, q_heads, key_dim]           float, half or bfloat16
//   out  [tokens, q_heads, state.value_dim()] float, half or bfloat16
// The state must have a shape (construct it with one, or append to it first); an empty memory
// (all zeros) reads as zeros. options.decay is not used (reading does not advance time).
template <class Backend, class TQ, class TO, feature_map Map, parallel::executor Executor>
void linear_read(const Backend& backend, tensor_view<TQ, 3> q, tensor_view<TO, 3> out,
                 const Map& map, const linear_state& state, const linear_options& options,
                 Executor&& executor) {
  static_assert(!std::is_same_v<Backend, backend::cuda>,
                "attnkit::linear_read: the CUDA backend is not implemented yet");
  static_assert(is_storage_type_v<std::remove_cv_t<TQ>>, "q must hold float, half or bfloat16");
  static_assert(is_storage_type_v<TO>, "out must be a mutable view of float, half or bfloat16");
  constexpr const char* function = "attnkit::linear_read";
  detail::require(state.has_shape(), function,
                  ": the state has no shape yet (construct it with its shape, or append first)");
  detail::linear_params p;
  p.tokens = q.extent(0);
  p.q_heads = q.extent(1);
  p.key_dim = q.extent(2);
  p.kv_heads = state.kv_heads();
  p.value_dim = state.value_dim();
  p.normalize = options.normalize;
  detail::require(p.key_dim >= 1, function, ": key dim (q extent 2) is ", p.key_dim,
                  ", it must be >= 1");
  detail::require(p.q_heads >= 1 && p.q_heads % p.kv_heads == 0, function, ": q_heads (", p.q_heads,
                  ") is not a positive multiple of the state's kv_heads (", p.kv_heads, ")");
  p.group_size = p.q_heads / p.kv_heads;
  p.feature_dim = static_cast<index_t>(map.feature_dim(p.key_dim));
  detail::require(state.feature_dim() == p.feature_dim, function, ": state feature_dim is ",
                  state.feature_dim(), " but the feature map gives ", p.feature_dim,
                  " for key dim ", p.key_dim);
  detail::check_out_extents(function, out, p.tokens, p.q_heads, "out value dim (extent 2)",
                            "state value_dim", p.value_dim);
  detail::check_view_data(function, "q", q);
  detail::check_view_data(function, "out", out);
  if (p.tokens == 0) return;
  using Q = std::remove_cv_t<TQ>;
  detail::linear_read_impl(backend, tensor_view<const Q, 3>(q), out, map, state, p, executor);
}

template <class Backend, class TQ, class TO, feature_map Map>
void linear_read(const Backend& backend, tensor_view<TQ, 3> q, tensor_view<TO, 3> out,
                 const Map& map, const linear_state& state, const linear_options& options = {}) {
  linear_read(backend, q, out, map, state, options, parallel::default_thread_pool());
}

// Adds tokens to the state without producing output — exactly the state update of
// linear_attention() over the same tokens:
//   S ← γ^n S + Σ_s γ^(n-1-s) φ(k_s) v_sᵀ,   z ← γ^n z + Σ_s γ^(n-1-s) φ(k_s).
//   k  [tokens, kv_heads, key_dim], v [tokens, kv_heads, value_dim]  (one type, 16-bit or fp32)
// A default-constructed state takes its shape from the call; a shaped one must match. Invalid
// arguments throw before the state is touched.
template <class Backend, class TK, class TV, feature_map Map, parallel::executor Executor>
void linear_append(const Backend& backend, tensor_view<TK, 3> k, tensor_view<TV, 3> v,
                   const Map& map, linear_state& state, const linear_options& options,
                   Executor&& executor) {
  static_assert(!std::is_same_v<Backend, backend::cuda>,
                "attnkit::linear_append: the CUDA backend is not implemented yet");
  static_assert(is_storage_type_v<std::remove_cv_t<TK>>, "k must hold float, half or bfloat16");
  static_assert(std::is_same_v<std::remove_cv_t<TK>, std::remove_cv_t<TV>>,
                "k and v must have the same element type");
  constexpr const char* function = "attnkit::linear_append";
  detail::linear_params p;
  p.tokens = k.extent(0);
  p.kv_heads = k.extent(1);
  p.q_heads = p.kv_heads;
  p.key_dim = k.extent(2);
  p.value_dim = v.extent(2);
  detail::require(p.key_dim >= 1, function, ": key dim (k extent 2) is ", p.key_dim,
                  ", it must be >= 1");
  detail::require(p.value_dim >= 1, function, ": value dim (v extent 2) is ", p.value_dim,
                  ", it must be >= 1");
  detail::require(p.kv_heads >= 1, function, ": kv_heads (k extent 1) is ", p.kv_heads,
                  ", at least one head is needed");
  detail::check_extent(function, "v tokens (extent 0)", v.extent(0), "k tokens", p.tokens);
  detail::check_extent(function, "v kv_heads (extent 1)", v.extent(1), "k kv_heads", p.kv_heads);
  detail::check_view_data(function, "k", k);
  detail::check_view_data(function, "v", v);
  p.feature_dim = static_cast<index_t>(map.feature_dim(p.key_dim));
  detail::require(p.feature_dim >= 1, function, ": the feature map's feature_dim(", p.key_dim,
                  ") is ", p.feature_dim, ", it must be >= 1");
  if (state.has_shape()) {
    detail::check_extent(function, "state kv_heads", state.kv_heads(), "k kv_heads", p.kv_heads);
    detail::require(state.feature_dim() == p.feature_dim, function, ": state feature_dim is ",
                    state.feature_dim(), " but the feature map gives ", p.feature_dim,
                    " for key dim ", p.key_dim);
    detail::check_extent(function, "state value_dim", state.value_dim(), "v value dim",
                         p.value_dim);
  }
  detail::check_linear_decay(function, options, p.kv_heads, p);
  if (p.tokens == 0) return;
  state.adopt_shape(p.kv_heads, p.feature_dim, p.value_dim);
  using KV = std::remove_cv_t<TK>;
  detail::linear_append_impl(backend, tensor_view<const KV, 3>(k), tensor_view<const KV, 3>(v), map,
                             state, p, executor);
  state.advance(p.tokens);
}

template <class Backend, class TK, class TV, feature_map Map>
void linear_append(const Backend& backend, tensor_view<TK, 3> k, tensor_view<TV, 3> v,
                   const Map& map, linear_state& state, const linear_options& options = {}) {
  linear_append(backend, k, v, map, state, options, parallel::default_thread_pool());
}

}  // namespace attnkit
