// attnkit — what the CPU backend's two tile kernels share: the work item, the per-call context,
// and the logit pipeline (scale folded into the queries, softcap, ALiBi, base-2 softmax).
//
// Both tile kernels (column_tile.hpp for prefill, row_tile.hpp for decode) run the
// FlashAttention-2 loop: stream the key range in blocks, compute the block's logits, update a
// running maximum m and sum l per query row (online softmax, base 2), rescale the accumulated
// output by 2^(m_old - m_new), add P·V. Inputs: staged, pre-scaled query rows; outputs:
// unnormalised output rows, m and l per row, for the driver to normalise or merge.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>

#include "attnkit/backend/simd/convert.hpp"
#include "attnkit/backend/simd/vector_math.hpp"
#include "attnkit/core/options.hpp"
#include "attnkit/core/simd_include.hpp"
#include "attnkit/core/softmax_state.hpp"
#include "attnkit/core/tensor_view.hpp"
#include "attnkit/mask/tile.hpp"

namespace attnkit {
namespace detail {
namespace simd {

inline constexpr index_t key_block = 64;  // keys per block: Sᵀ block 64 x 64 floats stays in L1

constexpr index_t round_up(index_t value, index_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

// One work item: a tile of query tokens for `kv_heads` consecutive KV heads (with all their
// query heads), over a key range. Its rows are ordered (KV head, token, query head in group):
// row r is token  token_begin + (r / group) % tokens  of query head  kv_head·group + r % group +
// (r / (tokens·group))·group.
struct tile_job {
  index_t kv_head = 0;
  index_t kv_heads = 1;
  index_t token_begin = 0;
  index_t tokens = 0;
  index_t kv_begin = 0;
  index_t kv_end = 0;

  index_t rows(index_t group) const noexcept { return kv_heads * tokens * group; }
  index_t row_token(index_t r, index_t group) const noexcept {
    return token_begin + (r / group) % tokens;
  }
  index_t row_head(index_t r, index_t group) const noexcept {
    return kv_head * group + (r / (tokens * group)) * group + r % group;
  }
};

// Everything a tile kernel reads that is the same for every work item of a call.
template <class TKV, class Mask>
struct tile_context {
  tensor_view<const TKV, 3> k;
  tensor_view<const TKV, 3> v;
  const Mask* mask;
  const attention_params* params;
  index_t padded_dim;   // head_dim rounded up to the vector width
  index_t padded_rows;  // rows of the largest tile rounded up to the vector width
};

// The mask's verdict for a block over every query head of the group: empty only if empty for
// all, full only if full for all.
template <class Mask>
tile_kind classify_group(const Mask& mask, position_range q, position_range kv, head_index first,
                         index_t heads) {
  const tile_kind kind = mask.classify(q, kv, first);
  for (index_t g = 1; g < heads; ++g)
    if (mask.classify(q, kv, first + g) != kind) return tile_kind::partial;
  return kind;
}

inline position_range query_range(const attention_params& p, const tile_job& job) {
  return {p.query_position(job.token_begin), p.query_position(job.token_begin + job.tokens)};
}

// Folds the scale (and log2 e, unless a logit transform must see natural-unit logits first)
// into the staged queries, so the logit GEMM directly yields base-2 softmax inputs.
inline float query_multiplier(const attention_params& p) {
  return p.has_logit_transform() ? p.scale : p.scale * log2e;
}

// softcap and ALiBi on a vector of natural-unit logits, then the conversion to base 2.
template <class A>
ATTNKIT_ALWAYS_INLINE xsimd::batch<float, A> transform_logits(const attention_params& p,
                                                              xsimd::batch<float, A> s,
                                                              xsimd::batch<float, A> slope,
                                                              xsimd::batch<float, A> distance) {
  using batch = xsimd::batch<float, A>;
  if (p.softcap > 0.0f) s = batch(p.softcap) * simd::tanh<A>(s * batch(1.0f / p.softcap));
  if (p.alibi_slopes != nullptr) s = xsimd::fnma(slope, distance, s);
  return s * batch(log2e);
}

}  // namespace simd
}  // namespace detail
}  // namespace attnkit
