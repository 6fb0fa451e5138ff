// attnkit — FlashAttention-2 on the tensor cores: prefill for half / bfloat16 with head dims 64,
// 80, 96, 128 and 256 (sm_80 and later).
//
// A block of four warps owns 64 query rows of one KV head. GQA rows are packed: row r of the
// block is query token (first + r) / group, query head (first + r) % group of the KV head, so
// every K/V tile loaded into shared memory serves all query heads of the group. Each warp keeps
// its 16 rows' Q fragments in shared memory, its output accumulator (16 x head_dim, fp32) and
// its running max and sum in registers, and walks the KV tiles the mask does not rule out:
//   S = Q Kᵀ          mma.m16n8k16, K read with ldmatrix
//   mask, transform   only on partial tiles (classified by the same mask types as the CPU)
//   online softmax    base 2, rows reduced across the four lanes that share them
//   O += P V          P packed from S's registers, V read with ldmatrix.trans
// while cp.async stages the next K/V tile into the other half of a double buffer. Rows of
// shared memory are padded by 16 bytes, so ldmatrix's eight row addresses fall in distinct bank
// groups for every supported head dim. Blocks are issued from the last query rows backwards:
// under a causal mask those see the most keys, and starting them first balances the tail.
#pragma once

#include <cstdint>

#include "attnkit/backend/cuda/device_types.cuh"
#include "attnkit/backend/cuda/kernel_common.cuh"
#include "attnkit/backend/cuda/key_source.cuh"
#include "attnkit/backend/cuda/mma.cuh"
#include "attnkit/core/config.hpp"
#include "attnkit/mask/tile.hpp"

namespace attnkit::detail::cuda {

template <int HeadDim>
struct tensor_core_tile {
  static_assert(HeadDim % 16 == 0 && HeadDim <= 256, "head dims are multiples of 16 up to 256");
  static constexpr int threads = 128;
  static constexpr int rows = 64;                        // query rows per block, 16 per warp
  static constexpr int keys = HeadDim <= 128 ? 64 : 32;  // keys per tile (registers at 256)
  static constexpr int stride = HeadDim + 8;             // shared row, padded by 16 bytes
  static constexpr int chunks = HeadDim / 8;             // 16-byte pieces of a row
  static constexpr std::size_t shared_bytes =
      static_cast<std::size_t>(rows + 4 * keys) * stride * 2;  // Q, K x2, V x2
};

constexpr bool has_tensor_core_kernel(index_t head_dim) {
  return head_dim == 64 || head_dim == 80 || head_dim == 96 || head_dim == 128 || head_dim == 256;
}

template <class T, int HeadDim, class Mask>
__global__ void __launch_bounds__(tensor_core_tile<HeadDim>::threads)
    tensor_core_attention_kernel(device_attention_params p, contiguous_key_source<T> kv,
                                 Mask mask) {
  using tile = tensor_core_tile<HeadDim>;
  constexpr int key_blocks = tile::keys / 8;  // n8 blocks of S
  constexpr int dim_blocks = HeadDim / 8;     // n8 blocks of O
  extern __shared__ __align__(16) unsigned char shared_memory[];
  T* const q_tile = reinterpret_cast<T*>(shared_memory);
  T* const k_tiles = q_tile + tile::rows * tile::stride;
  T* const v_tiles = k_tiles + 2 * tile::keys * tile::stride;

  const index_t group = p.group_size;
  const index_t total_rows = p.q_tokens * group;
  const index_t row_tiles = (total_rows + tile::rows - 1) / tile::rows;
  const index_t first_row = (row_tiles - 1 - blockIdx.x) * tile::rows;
  const index_t kv_head = blockIdx.y;
  const head_index group_first_head = kv_head * group;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const T* const q = static_cast<const T*>(p.q);
  const T* const k = kv.keys;
  const T* const v = kv.values;

  for (int c = threadIdx.x; c < tile::rows * tile::chunks; c += tile::threads) {
    const int r = c / tile::chunks, piece = c % tile::chunks;
    const index_t row = first_row + r;
    const index_t token = row / group;
    const bool valid = token < p.q_tokens;
    const T* source = valid ? q + token * p.q_token_stride +
                                  (group_first_head + row % group) * p.q_head_stride + piece * 8
                            : q;
    copy_async_16(q_tile + r * tile::stride + piece * 8, source, valid);
  }

  // The block's query positions (bottom-right aligned) and the KV tiles it may need.
  const index_t last_row =
      first_row + tile::rows - 1 < total_rows - 1 ? first_row + tile::rows - 1 : total_rows - 1;
  const position offset = kv.tokens - p.q_tokens;
  const position_range queries{offset + first_row / group, offset + last_row / group + 1};
  const position_range bounds =
      key_bounds(mask, queries, group_first_head, group, position_range{0, kv.tokens});
  const index_t end_tile = (bounds.end + tile::keys - 1) / tile::keys;
  auto kind_of = [&](index_t t) {
    const position begin = t * tile::keys;
    const position end = kv.tokens - begin < tile::keys ? kv.tokens : begin + tile::keys;
    return classify_heads(mask, queries, position_range{begin, end}, group_first_head, group);
  };
  auto next_tile = [&](index_t t) {
    for (++t; t < end_tile; ++t)
      if (kind_of(t) != tile_kind::empty) return t;
    return end_tile;
  };
  auto load_kv = [&](index_t t, int stage) {
    T* const k_stage = k_tiles + stage * tile::keys * tile::stride;
    T* const v_stage = v_tiles + stage * tile::keys * tile::stride;
    for (int c = threadIdx.x; c < tile::keys * tile::chunks; c += tile::threads) {
      const int r = c / tile::chunks, piece = c % tile::chunks;
      const position j = t * tile::keys + r;
      const bool valid = j < kv.tokens;
      copy_async_16(
          k_stage + r * tile::stride + piece * 8,
          valid ? k + j * kv.key_token_stride + kv_head * kv.key_head_stride + piece * 8 : k,
          valid);
      copy_async_16(
          v_stage + r * tile::stride + piece * 8,
          valid ? v + j * kv.value_token_stride + kv_head * kv.value_head_stride + piece * 8 : v,
          valid);
    }
  };

  index_t t = bounds.begin / tile::keys;
  if (t < end_tile && kind_of(t) == tile_kind::empty) t = next_tile(t);
  if (t < end_tile) load_kv(t, 0);
  copy_async_commit();

  // This thread's two rows of its warp's 16: g and g + 8.
  const int g = lane / 4;
  const int pair = 2 * (lane % 4);
  index_t row_token[2];
  head_index row_head[2];
  position row_query[2];
  float row_slope[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const index_t row = first_row + warp * 16 + g + 8 * h;
    row_token[h] = row / group;
    row_head[h] = group_first_head + row % group;
    row_query[h] = offset + row_token[h];
    row_slope[h] = row_token[h] < p.q_tokens ? p.alibi_slope(row_head[h]) : 0.0f;
  }
  const bool transformed = p.transforms_logits();
  const float scale_log2 = p.scale * log2e;

  float o[dim_blocks][4];
#pragma unroll
  for (int b = 0; b < dim_blocks; ++b) o[b][0] = o[b][1] = o[b][2] = o[b][3] = 0.0f;
  float row_max[2] = {negative_infinity(), negative_infinity()};
  float row_sum[2] = {0.0f, 0.0f};

  int stage = 0;
  while (t < end_tile) {
    const tile_kind kind = kind_of(t);
    const bool last_is_short = (t + 1) * tile::keys > kv.tokens;
    const index_t next = next_tile(t);
    if (next < end_tile) load_kv(next, stage ^ 1);
    copy_async_commit();
    copy_async_wait<1>();  // all but the group just committed (the next tile) have landed
    __syncthreads();

    const T* const k_stage = k_tiles + stage * tile::keys * tile::stride;
    const T* const v_stage = v_tiles + stage * tile::keys * tile::stride;
    float s[key_blocks][4];
#pragma unroll
    for (int b = 0; b < key_blocks; ++b) s[b][0] = s[b][1] = s[b][2] = s[b][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < HeadDim / 16; ++kk) {
      std::uint32_t a[4];
      load_matrix_x4(a, q_tile + (warp * 16 + lane % 8 + ((lane / 8) % 2) * 8) * tile::stride +
                            kk * 16 + (lane / 16) * 8);
#pragma unroll
      for (int b = 0; b < key_blocks; b += 2) {
        std::uint32_t kb[4];
        load_matrix_x4(kb, k_stage + (b * 8 + lane % 8 + (lane / 16) * 8) * tile::stride + kk * 16 +
                               ((lane / 8) % 2) * 8);
        mma_16x8x16<T>(s[b], a, kb[0], kb[1]);
        mma_16x8x16<T>(s[b + 1], a, kb[2], kb[3]);
      }
    }

    // Logits in base 2; the element predicate only where the tile is partial or runs past the
    // last key.
    const bool check_elements = kind != tile_kind::full || last_is_short;
#pragma unroll
    for (int b = 0; b < key_blocks; ++b) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int h = e / 2;
        const position j = t * tile::keys + b * 8 + pair + e % 2;
        const bool visible =
            !check_elements ||
            (j < kv.tokens && row_token[h] < p.q_tokens &&
             (kind == tile_kind::full || mask.allows(row_query[h], j, row_head[h])));
        s[b][e] = !visible      ? negative_infinity()
                  : transformed ? logit_log2(p, s[b][e], row_slope[h], row_query[h], j)
                                : s[b][e] * scale_log2;
      }
    }

    // Online softmax over the tile, per row: the four lanes of a quad hold one row's 64 logits.
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float tile_max = row_max[h];
#pragma unroll
      for (int b = 0; b < key_blocks; ++b) {
        tile_max = fmaxf(tile_max, s[b][2 * h]);
        tile_max = fmaxf(tile_max, s[b][2 * h + 1]);
      }
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
      // A row that has seen nothing yet keeps -inf; subtracting 0 then turns its masked logits
      // into exp2(-inf) = 0 instead of NaN.
      const float base = tile_max == negative_infinity() ? 0.0f : tile_max;
      const float correction = exp2f(row_max[h] - base);
      row_max[h] = tile_max;
      row_sum[h] *= correction;
#pragma unroll
      for (int b = 0; b < dim_blocks; ++b) {
        o[b][2 * h] *= correction;
        o[b][2 * h + 1] *= correction;
      }
#pragma unroll
      for (int b = 0; b < key_blocks; ++b) {
        s[b][2 * h] = exp2f(s[b][2 * h] - base);
        s[b][2 * h + 1] = exp2f(s[b][2 * h + 1] - base);
        row_sum[h] += s[b][2 * h] + s[b][2 * h + 1];
      }
    }

    // O += P V, P straight from S's registers.
#pragma unroll
    for (int kk = 0; kk < tile::keys / 16; ++kk) {
      const std::uint32_t a[4] = {pack_pair<T>(s[2 * kk][0], s[2 * kk][1]),
                                  pack_pair<T>(s[2 * kk][2], s[2 * kk][3]),
                                  pack_pair<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                  pack_pair<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int b = 0; b < dim_blocks; b += 2) {
        std::uint32_t vb[4];
        load_matrix_x4_transposed(
            vb, v_stage + (kk * 16 + lane % 8 + ((lane / 8) % 2) * 8) * tile::stride + b * 8 +
                    (lane / 16) * 8);
        mma_16x8x16<T>(o[b], a, vb[0], vb[1]);
        mma_16x8x16<T>(o[b + 1], a, vb[2], vb[3]);
      }
    }
    __syncthreads();  // every warp is done with this stage before it is refilled
    stage ^= 1;
    t = next;
  }
  copy_async_wait<0>();  // a block with no tile still has the Q copy in flight

#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float sum = row_sum[h];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    if (row_token[h] >= p.q_tokens) continue;
    const float inverse = sum > 0.0f ? 1.0f / sum : 0.0f;
#pragma unroll
    for (int b = 0; b < dim_blocks; ++b) {
#pragma unroll
      for (int e = 0; e < 2; ++e)
        store_element(p.out, p.out_kind, p.out_offset(row_token[h], row_head[h], b * 8 + pair + e),
                      o[b][2 * h + e] * inverse);
    }
    if (lane % 4 == 0) p.store_lse(row_token[h], row_head[h], row_max[h], sum);
  }
}

}  // namespace attnkit::detail::cuda
