// attnkit — the CPU (xsimd) backend of linear_attention(): picks the exact form for the call.
//
// Prefill runs the chunked form (linear_chunked.hpp): GEMM-shaped, constant cost per token. A few
// tokens — decode — run the recurrent form (linear_recurrent.hpp): one pass over the state per
// token. Both compute the same recurrence, so a sequence may switch between them from call to
// call (prompt in chunks, then token by token).
#pragma once

#include "attnkit/backend/simd/linear_chunked.hpp"
#include "attnkit/backend/simd/linear_recurrent.hpp"
#include "attnkit/backend/tags.hpp"
#include "attnkit/core/tensor_view.hpp"
#include "attnkit/linear/linear_state.hpp"
#include "attnkit/linear/options.hpp"

namespace attnkit {
namespace detail {

template <class Arch, class TQ, class TKV, class TO, class Map, class Executor>
void linear_attention_impl(backend::simd<Arch>, tensor_view<const TQ, 3> q,
                           tensor_view<const TKV, 3> k, tensor_view<const TKV, 3> v,
                           tensor_view<TO, 3> out, const Map& map, linear_state& state,
                           const linear_params& p, Executor& executor) {
  const bool recurrent =
      p.form == linear_form::recurrent ||
      (p.form == linear_form::automatic && p.tokens <= simd::linear_recurrent_max_tokens);
  if (recurrent) {
    simd::run_recurrent<Arch>(q, k, v, out, map, state, p, executor);
  } else {
    simd::run_chunked<Arch, simd::linear_chunk_tokens>(q, k, v, out, map, state, p, executor);
  }
}

}  // namespace detail
}  // namespace attnkit
