// attnkit — infini_attention(): one segment of Infini-attention (Munkhdalai et al. 2024, "Leave
// No Context Behind: Efficient Infinite Context Transformers with Infini-attention").
//
// A long input is processed in segments. Within a segment, exact causal softmax attention; across
// segments, a compressive memory — linear attention's state with σ = ELU + 1 — that every past
// segment was added to. Per query head h, a learned gate β_h mixes the two:
//
//   A_mem   = σ(Q) M_{s-1} / σ(Q) z_{s-1}       retrieval from the previous segments only
//   A_local = softmax(Q Kᵀ · scale, causal) V     within the segment
//   out     = sigmoid(β_h) · A_mem + (1 - sigmoid(β_h)) · A_local
//   M_s = M_{s-1} + σ(K)ᵀ V,   z_s = z_{s-1} + Σ σ(K)     (the paper's "linear" update)
//
// Retrieval reads the memory *before* the segment is added (linear_read, then linear_append):
// unlike causal linear attention, a token does not retrieve its own segment from memory, which
// the local branch covers exactly. The first segment retrieves from an empty memory, which reads
// as zeros (its normaliser is 0; see linear_read). The memory has O(1) size per head whatever
// the input length: kv_heads · (feature_dim · head_dim + feature_dim) floats.
//
//   q [tokens, q_heads, head_dim],  k, v [tokens, kv_heads, head_dim]  (the segment)
//   out [tokens, q_heads, head_dim];  memory: linear_state carried from segment to segment
//   options.gate  β, [q_heads] (logits: sigmoid is applied here)
#pragma once

#include <cmath>
#include <type_traits>
#include <utility>

#include "attnkit/attention/attention.hpp"
#include "attnkit/attention/check.hpp"
#include "attnkit/core/error.hpp"
#include "attnkit/core/tensor_view.hpp"
#include "attnkit/feature/elu_plus_one.hpp"
#include "attnkit/linear/hybrid_workspace.hpp"
#include "attnkit/linear/linear_memory.hpp"
#include "attnkit/linear/linear_state.hpp"
#include "attnkit/linear/options.hpp"
#include "attnkit/mask/causal.hpp"
#include "attnkit/parallel/executor.hpp"
#include "attnkit/parallel/thread_pool.hpp"

namespace attnkit {

struct infini_options {
  tensor_view<const float, 1> gate{};  // β per query head ([q_heads]), required
  attention_options local{};           // scale, softcap, log_sum_exp, observer of the local branch
};

template <class Backend, class TQ, class TK, class TV, class TO, parallel::executor Executor>
void infini_attention(const Backend& backend, tensor_view<TQ, 3> q, tensor_view<TK, 3> k,
                      tensor_view<TV, 3> v, tensor_view<TO, 3> out, linear_state& memory,
                      hybrid_workspace& workspace, const infini_options& options,
                      Executor&& executor) {
  constexpr const char* function = "attnkit::infini_attention";
  attention_options local_checked = options.local;
  local_checked.observer = {};  // attention() checks the observer itself, once
  const detail::attention_params p =
      detail::check_attention_arguments(function, q, k, v, out, local_checked);
  detail::check_extent(function, "k tokens (extent 0)", p.kv_tokens, "q tokens (one segment)",
                       p.q_tokens);
  detail::check_extent(function, "options.gate extent 0", options.gate.extent(0), "q_heads",
                       p.q_heads);
  detail::check_view_data(function, "options.gate", options.gate);
  for (index_t h = 0; h < p.q_heads; ++h)
    detail::require(std::isfinite(options.gate(h)), function, ": options.gate[", h, "] is ",
                    options.gate(h), ", it must be finite");
  const feature::elu_plus_one sigma{};
  const index_t features = static_cast<index_t>(sigma.feature_dim(p.head_dim));
  if (memory.has_shape()) {
    detail::check_extent(function, "memory kv_heads", memory.kv_heads(), "k kv_heads", p.kv_heads);
    detail::check_extent(function, "memory feature_dim", memory.feature_dim(),
                         "ELU+1 features of head_dim", features);
    detail::check_extent(function, "memory value_dim", memory.value_dim(), "v head_dim",
                         p.head_dim);
  }
  if (p.q_tokens == 0) return;
  if (!memory.has_shape()) memory = linear_state(p.kv_heads, features, p.head_dim);

  const hybrid_workspace::branches b = workspace.prepare(p.q_tokens, p.q_heads, p.head_dim);
  linear_read(backend, q, b.first, sigma, memory, linear_options{}, executor);
  attention(backend, q, k, v, b.second, causal{}, options.local, executor);
  linear_append(backend, k, v, sigma, memory, linear_options{}, executor);
  detail::mix_branches(b.first, b.second, out, [&](index_t h) {
    const float g = 1.0f / (1.0f + std::exp(-options.gate(h)));
    return std::pair<float, float>{g, 1.0f - g};
  });
}

template <class Backend, class TQ, class TK, class TV, class TO>
void infini_attention(const Backend& backend, tensor_view<TQ, 3> q, tensor_view<TK, 3> k,
                      tensor_view<TV, 3> v, tensor_view<TO, 3> out, linear_state& memory,
                      hybrid_workspace& workspace, const infini_options& options) {
  infini_attention(backend, q, k, v, out, memory, workspace, options,
                   parallel::default_thread_pool());
}

}  // namespace attnkit
