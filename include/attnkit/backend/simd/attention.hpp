// TEMPORARY placeholder: forwards to the reference kernel until the SIMD kernel lands.
#pragma once
#include "attnkit/backend/reference/attention.hpp"
namespace attnkit::detail {
template <class Arch, class TQ, class TK, class TV, class TO, class Mask, class Executor>
void attention_impl(backend::simd<Arch>, tensor_view<const TQ, 3> q, tensor_view<const TK, 3> k,
                    tensor_view<const TV, 3> v, tensor_view<TO, 3> out, const Mask& mask,
                    const attention_params& p, Executor& executor) {
  attention_impl(backend::reference{}, q, k, v, out, mask, p, executor);
}
}  // namespace attnkit::detail
