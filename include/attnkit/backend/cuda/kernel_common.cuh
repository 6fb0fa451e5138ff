// attnkit — what both CUDA attention kernels share: the call's parameters as device code sees
// them, the logit transform, and the mask questions asked for a whole group of query heads.
#pragma once

#include <cstdint>

#include "attnkit/backend/cuda/device_types.cuh"
#include "attnkit/core/config.hpp"
#include "attnkit/core/shape.hpp"
#include "attnkit/core/softmax_state.hpp"
#include "attnkit/mask/tile.hpp"

namespace attnkit::detail::cuda {

// Queries, output and options of one call (validated on the host). Strides are in elements.
struct device_attention_params {
  const void* q = nullptr;  // [q_tokens, q_heads, head_dim]
  storage_kind q_kind = storage_kind::float32;
  index_t q_token_stride = 0, q_head_stride = 0, q_dim_stride = 0;
  void* out = nullptr;  // [q_tokens, q_heads, head_dim]
  storage_kind out_kind = storage_kind::float32;
  index_t out_token_stride = 0, out_head_stride = 0, out_dim_stride = 0;
  float* log_sum_exp = nullptr;  // [q_heads, q_tokens], or null
  index_t lse_head_stride = 0, lse_token_stride = 0;
  index_t q_tokens = 0, q_heads = 0, kv_heads = 0, group_size = 1, head_dim = 0;
  float scale = 1.0f;                   // logits are scale · q·k ...
  float softcap = 0.0f;                 // ... then softcap · tanh(s / softcap) when > 0 ...
  const float* alibi_slopes = nullptr;  // ... then - slope[h] · |q_pos - k_pos| when given
  index_t alibi_stride = 1;

  __device__ __forceinline__ bool transforms_logits() const {
    return softcap > 0.0f || alibi_slopes != nullptr;
  }
  // The ALiBi slope of query head h (0 without ALiBi).
  __device__ __forceinline__ float alibi_slope(index_t head) const {
    return alibi_slopes != nullptr ? alibi_slopes[head * alibi_stride] : 0.0f;
  }
  __device__ __forceinline__ index_t q_offset(index_t token, index_t head, index_t dim) const {
    return token * q_token_stride + head * q_head_stride + dim * q_dim_stride;
  }
  __device__ __forceinline__ index_t out_offset(index_t token, index_t head, index_t dim) const {
    return token * out_token_stride + head * out_head_stride + dim * out_dim_stride;
  }
  // Writes a finished row element, and the row's log-sum-exp from its base-2 maximum and sum of
  // exponentials (an empty row, sum 0, gives zeros and -inf).
  __device__ __forceinline__ void store_lse(index_t token, index_t head, float max_log2,
                                            float sum) const {
    if (log_sum_exp == nullptr) return;
    log_sum_exp[head * lse_head_stride + token * lse_token_stride] =
        sum > 0.0f ? (max_log2 + log2f(sum)) * ln2 : -__builtin_huge_valf();
  }
};

__device__ __forceinline__ constexpr float negative_infinity() { return -__builtin_huge_valf(); }

// The kernels run the softmax in base 2 (exp2 is one instruction): every logit is multiplied by
// log2(e) once here, and the log-sum-exp is converted back to natural logarithms at the end.
__device__ __forceinline__ float logit_log2(const device_attention_params& p, float dot,
                                            float slope, position query, position key) {
  float s = dot * p.scale;
  if (p.softcap > 0.0f) s = p.softcap * tanhf(s / p.softcap);
  const float distance = static_cast<float>(query > key ? query - key : key - query);
  return (s - slope * distance) * log2e;
}

// classify() over every query head of [first, first + heads): empty only if empty for all,
// full only if full for all. Masks that do not vary by head answer once.
template <class Mask>
__device__ tile_kind classify_heads(const Mask& mask, position_range queries, position_range keys,
                                    head_index first, index_t heads) {
  if (!mask_varies_by_head(mask)) return mask.classify(queries, keys, first);
  bool some = false, all_full = true;
  for (head_index h = first; h < first + heads; ++h) {
    const tile_kind kind = mask.classify(queries, keys, h);
    some = some || kind != tile_kind::empty;
    all_full = all_full && kind == tile_kind::full;
  }
  return !some ? tile_kind::empty : all_full ? tile_kind::full : tile_kind::partial;
}

// The smallest range of keys within `keys` that holds every key the mask's key ranges name for
// these queries and heads (an empty range at keys.begin when there is none).
template <class Mask>
__device__ position_range key_bounds(const Mask& mask, position_range queries, head_index first,
                                     index_t heads, position_range keys) {
  position begin = keys.end, end = keys.begin;
  for_each_key_range(mask, queries, first, heads, keys, [&](position b, position e) {
    begin = b < begin ? b : begin;
    end = e > end ? e : end;
  });
  return begin < end ? position_range{begin, end} : position_range{keys.begin, keys.begin};
}

}  // namespace attnkit::detail::cuda
