// attnkit — split-KV attention on CUDA cores (flash-decoding): decode, short query blocks, paged
// caches, any head dim 1..256 and any element type.
//
// One block of 128 threads takes one query token, up to four query heads of one GQA group and
// one split of that KV head's keys. Sixteen threads share a key row (each holds head_dim / 16
// consecutive elements, loaded as 16-byte words when the rows allow), so eight keys are in
// flight per block and each K/V row is read once for every query head of the block: decode reads
// the cache at close to memory bandwidth, and the four-way reuse across a GQA group is what
// keeps it there. Every thread keeps an online softmax (running maximum, sum, accumulator) per
// query head over the keys it saw; the eight partial states are merged through shared memory at
// the end. With more than one split, each split writes its normalised output and log-sum-exp to
// scratch memory and merge_splits_kernel combines them exactly (the same algebra as
// merge_states).
//
// Masks are asked per chunk of 64 keys: empty chunks are skipped without loading a byte, full
// ones run without the element predicate. The mask's key ranges bound the keys a split visits,
// so a window over a long cache only walks the window.
#pragma once

#include <cstdint>

#include "attnkit/backend/cuda/device_types.cuh"
#include "attnkit/backend/cuda/kernel_common.cuh"
#include "attnkit/core/config.hpp"
#include "attnkit/mask/tile.hpp"

namespace attnkit::detail::cuda {

inline constexpr int split_kv_threads = 128;
inline constexpr int split_kv_dim_lanes = 16;  // threads sharing one key row
inline constexpr int split_kv_key_lanes = split_kv_threads / split_kv_dim_lanes;
inline constexpr int split_kv_rows = 4;            // query heads per block
inline constexpr int split_kv_chunk = 64;          // keys per mask classification
inline constexpr index_t split_kv_min_keys = 256;  // keys per split, at least

// Elements of a row per thread: the smallest power of two with 16 of them covering head_dim.
constexpr int split_kv_dims_per_thread(index_t head_dim) {
  int dims = 1;
  while (dims * split_kv_dim_lanes < head_dim) dims *= 2;
  return dims;
}

struct split_kv_plan {
  index_t splits = 1;
  index_t split_size = 0;  // keys per split, a multiple of split_kv_chunk
  // With splits > 1: [splits, q_tokens · q_heads, head_dim] and [splits, q_tokens · q_heads].
  float* partial_out = nullptr;
  float* partial_lse = nullptr;
};

template <class KV, class Keys, class Mask, int DimsPerThread>
__global__ void __launch_bounds__(split_kv_threads)
    split_kv_attention_kernel(device_attention_params p, Keys keys, Mask mask, split_kv_plan plan) {
  const index_t token = blockIdx.x % p.q_tokens;
  const index_t split = blockIdx.x / p.q_tokens;
  const index_t head_chunks = (p.group_size + split_kv_rows - 1) / split_kv_rows;
  const index_t kv_head = blockIdx.y / head_chunks;
  const index_t first_in_group = (blockIdx.y % head_chunks) * split_kv_rows;
  const head_index first_head = kv_head * p.group_size + first_in_group;
  const int rows =
      static_cast<int>(p.group_size - first_in_group < split_kv_rows ? p.group_size - first_in_group
                                                                     : split_kv_rows);
  const int dim_lane = threadIdx.x % split_kv_dim_lanes;
  const int key_lane = threadIdx.x / split_kv_dim_lanes;
  const int first_dim = dim_lane * DimsPerThread;
  const int valid_dims =
      p.head_dim - first_dim <= 0
          ? 0
          : (p.head_dim - first_dim < DimsPerThread ? static_cast<int>(p.head_dim - first_dim)
                                                    : DimsPerThread);
  // The 16 threads of one key lane are one half of a warp; they reduce among themselves.
  const unsigned lane_group = 0xffffu << (16 * (key_lane % 2));

  const index_t length = keys.length(kv_head);
  const position query = length - p.q_tokens + token;  // bottom-right aligned, per KV head

  float q[split_kv_rows][DimsPerThread];
  float slope[split_kv_rows];
  float running_max[split_kv_rows], running_sum[split_kv_rows];
  float acc[split_kv_rows][DimsPerThread];
#pragma unroll
  for (int r = 0; r < split_kv_rows; ++r) {
    slope[r] = r < rows ? p.alibi_slope(first_head + r) : 0.0f;
    running_max[r] = negative_infinity();
    running_sum[r] = 0.0f;
#pragma unroll
    for (int i = 0; i < DimsPerThread; ++i) {
      q[r][i] = r < rows && i < valid_dims
                    ? load_element(p.q, p.q_kind, p.q_offset(token, first_head + r, first_dim + i))
                    : 0.0f;
      acc[r][i] = 0.0f;
    }
  }
  const bool transformed = p.transforms_logits();
  const float scale_log2 = p.scale * log2e;

  const position split_begin = split * plan.split_size;
  const position split_end =
      length - split_begin < plan.split_size ? length : split_begin + plan.split_size;
  const position_range queries{query, query + 1};
  const position_range bounds =
      split_begin < split_end
          ? key_bounds(mask, queries, first_head, rows, position_range{split_begin, split_end})
          : position_range{0, 0};

  for (position chunk = bounds.begin; chunk < bounds.end; chunk += split_kv_chunk) {
    const position chunk_end =
        bounds.end - chunk < split_kv_chunk ? bounds.end : chunk + split_kv_chunk;
    const tile_kind kind =
        classify_heads(mask, queries, position_range{chunk, chunk_end}, first_head, rows);
    if (kind == tile_kind::empty) continue;
    for (position j = chunk + key_lane; j < chunk_end; j += split_kv_key_lanes) {
      float k[DimsPerThread];
      load_row_chunk<DimsPerThread>(keys.key(kv_head, j) + first_dim, keys.vector_aligned,
                                    valid_dims, k);
      float s[split_kv_rows];
      bool some_visible = false;
#pragma unroll
      for (int r = 0; r < split_kv_rows; ++r) {
        float dot = 0.0f;
#pragma unroll
        for (int i = 0; i < DimsPerThread; ++i) dot = fmaf(q[r][i], k[i], dot);
#pragma unroll
        for (int offset = split_kv_dim_lanes / 2; offset > 0; offset /= 2)
          dot += __shfl_xor_sync(lane_group, dot, offset);
        const bool visible =
            r < rows && (kind == tile_kind::full || mask.allows(query, j, first_head + r));
        s[r] = !visible      ? negative_infinity()
               : transformed ? logit_log2(p, dot, slope[r], query, j)
                             : dot * scale_log2;
        some_visible = some_visible || visible;
      }
      if (!some_visible) continue;  // the same answer in all 16 threads of the key lane
      float v[DimsPerThread];
      load_row_chunk<DimsPerThread>(keys.value(kv_head, j) + first_dim, keys.vector_aligned,
                                    valid_dims, v);
#pragma unroll
      for (int r = 0; r < split_kv_rows; ++r) {
        if (s[r] == negative_infinity()) continue;
        const float new_max = s[r] > running_max[r] ? s[r] : running_max[r];
        const float correction = exp2f(running_max[r] - new_max);  // 0 when the max was -inf
        const float weight = exp2f(s[r] - new_max);
        running_sum[r] = running_sum[r] * correction + weight;
#pragma unroll
        for (int i = 0; i < DimsPerThread; ++i)
          acc[r][i] = fmaf(acc[r][i], correction, weight * v[i]);
        running_max[r] = new_max;
      }
    }
  }

  // Merge the eight key lanes' states.
  constexpr int row_width = DimsPerThread * split_kv_dim_lanes;
  __shared__ float lane_max[split_kv_key_lanes][split_kv_rows];
  __shared__ float lane_sum[split_kv_key_lanes][split_kv_rows];
  __shared__ float lane_acc[split_kv_key_lanes][split_kv_rows][row_width];
#pragma unroll
  for (int r = 0; r < split_kv_rows; ++r) {
    if (dim_lane == 0) {
      lane_max[key_lane][r] = running_max[r];
      lane_sum[key_lane][r] = running_sum[r];
    }
#pragma unroll
    for (int i = 0; i < DimsPerThread; ++i) lane_acc[key_lane][r][first_dim + i] = acc[r][i];
  }
  __syncthreads();

  const index_t rows_total = p.q_tokens * p.q_heads;
  for (index_t e = threadIdx.x; e < rows * p.head_dim; e += split_kv_threads) {
    const int r = static_cast<int>(e / p.head_dim);
    const int d = static_cast<int>(e % p.head_dim);
    float max_log2 = negative_infinity();
#pragma unroll
    for (int lane = 0; lane < split_kv_key_lanes; ++lane)
      max_log2 = lane_max[lane][r] > max_log2 ? lane_max[lane][r] : max_log2;
    float sum = 0.0f, value = 0.0f;
    if (max_log2 != negative_infinity()) {
#pragma unroll
      for (int lane = 0; lane < split_kv_key_lanes; ++lane) {
        const float weight = exp2f(lane_max[lane][r] - max_log2);
        sum = fmaf(lane_sum[lane][r], weight, sum);
        value = fmaf(lane_acc[lane][r][d], weight, value);
      }
    }
    const float normalised = sum > 0.0f ? value / sum : 0.0f;
    const head_index head = first_head + r;
    if (plan.splits == 1) {
      store_element(p.out, p.out_kind, p.out_offset(token, head, d), normalised);
      if (d == 0) p.store_lse(token, head, max_log2, sum);
    } else {
      const index_t row = split * rows_total + token * p.q_heads + head;
      plan.partial_out[row * p.head_dim + d] = normalised;
      if (d == 0)
        plan.partial_lse[row] = sum > 0.0f ? (max_log2 + log2f(sum)) * ln2 : negative_infinity();
    }
  }
}

// out = Σ_s w_s · out_s with w_s = exp(lse_s - lse), lse = log Σ_s exp(lse_s): the exact merge
// of softmax results over disjoint key sets. One block per (token, query head) row. (A template
// only so that every translation unit including this header-only library may define it.)
template <class = void>
__global__ void __launch_bounds__(split_kv_threads)
    merge_splits_kernel(device_attention_params p, split_kv_plan plan) {
  const index_t rows_total = p.q_tokens * p.q_heads;
  const index_t row = blockIdx.x;
  const index_t token = row / p.q_heads;
  const head_index head = row % p.q_heads;
  float max_lse = negative_infinity();
  for (index_t s = 0; s < plan.splits; ++s) {
    const float lse = plan.partial_lse[s * rows_total + row];
    max_lse = lse > max_lse ? lse : max_lse;
  }
  float sum = 0.0f;
  if (max_lse != negative_infinity())
    for (index_t s = 0; s < plan.splits; ++s)
      sum += expf(plan.partial_lse[s * rows_total + row] - max_lse);
  for (index_t d = threadIdx.x; d < p.head_dim; d += split_kv_threads) {
    float value = 0.0f;
    if (sum > 0.0f) {
      for (index_t s = 0; s < plan.splits; ++s) {
        const float weight = expf(plan.partial_lse[s * rows_total + row] - max_lse);
        value = fmaf(weight, plan.partial_out[(s * rows_total + row) * p.head_dim + d], value);
      }
      value /= sum;
    }
    store_element(p.out, p.out_kind, p.out_offset(token, head, d), value);
  }
  if (threadIdx.x == 0 && p.log_sum_exp != nullptr)
    p.log_sum_exp[head * p.lse_head_stride + token * p.lse_token_stride] =
        sum > 0.0f ? max_lse + logf(sum) : negative_infinity();
}

}  // namespace attnkit::detail::cuda
