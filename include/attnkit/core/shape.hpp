// attnkit — positions, head indices and the shape of one attention call, as masks and observers
// see them.
#pragma once

#include "attnkit/core/config.hpp"

namespace attnkit {

using position = index_t;    // absolute token position in the sequence
using head_index = index_t;  // query head

// Query row i sits at absolute position kv_tokens - q_tokens + i (bottom-right aligned).
struct attention_shape {
  index_t q_tokens = 0;
  index_t kv_tokens = 0;
  index_t q_heads = 0;
  index_t kv_heads = 0;

  constexpr position first_query_position() const noexcept { return kv_tokens - q_tokens; }
};

}  // namespace attnkit
