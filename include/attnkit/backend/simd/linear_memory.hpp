// attnkit — the CPU backend of linear_read() and linear_append(): the state used as a memory,
// read without adding tokens, or written without producing output (Infini-attention's
// compressive memory: retrieve with the current segment's queries, then add its keys and values).
//
// Both are the state halves of the chunked form (linear_chunked.hpp) on their own:
//   read    O = Q · S (one GEMM per block of 64 tokens x the KV head's query heads), den = Q·z
//   append  S ← γ^c S + K̃ᵀ V, z ← γ^c z + Σ K̃, K̃_j = γ^(c-1-j) K_j, chunk by chunk
// One work item per KV head.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>

#include "attnkit/backend/simd/convert.hpp"
#include "attnkit/backend/simd/gemm.hpp"
#include "attnkit/backend/simd/linear_chunked.hpp"
#include "attnkit/backend/simd/linear_features.hpp"
#include "attnkit/backend/simd/scratch.hpp"
#include "attnkit/backend/tags.hpp"
#include "attnkit/core/config.hpp"
#include "attnkit/core/float16.hpp"
#include "attnkit/core/simd_include.hpp"
#include "attnkit/core/tensor_view.hpp"
#include "attnkit/linear/linear_state.hpp"
#include "attnkit/linear/options.hpp"

namespace attnkit {
namespace detail {
namespace simd {

template <class A, class TQ, class TO, class Map, class Executor>
void run_linear_read(tensor_view<const TQ, 3> q, tensor_view<TO, 3> out, const Map& map,
                     const linear_state& state, const linear_params& p, Executor& executor) {
  using batch = xsimd::batch<float, A>;
  constexpr index_t width = batch::size;
  constexpr index_t block = linear_chunk_tokens;
  const index_t F = p.feature_dim, fp = linear_padded(F);
  const index_t dv = p.value_dim, vp = linear_padded(dv);
  const index_t group = p.group_size;
  const index_t rows_max = block * group;
  const float* s_all = state.s().data();
  const float* z_all = state.z().data();
  executor(static_cast<std::size_t>(p.kv_heads), [&](std::size_t item) {
    const index_t g = static_cast<index_t>(item);
    float* staging = item_scratch().reserve(static_cast<std::size_t>(
        linear_padded(p.key_dim) + rows_max * fp + rows_max * vp + linear_padded(rows_max)));
    float* fq = staging + linear_padded(p.key_dim);
    float* o_rows = fq + rows_max * fp;
    float* multiplier = o_rows + rows_max * vp;
    const float* s = s_all + g * state.s_head_stride();
    const float* z = z_all + g * state.z_head_stride();
    for (index_t t0 = 0; t0 < p.tokens; t0 += block) {
      const index_t c = std::min(block, p.tokens - t0);
      const index_t rows = c * group;
      for (index_t t = 0; t < c; ++t)
        feature_rows<A>(map, q.row(t0 + t, g * group), q.stride(1), q.stride(2), group, p.key_dim,
                        F, staging, fq + t * group * fp, fp);
      gemm<A>(rows, vp, F, fq, fp, 1, s, vp, o_rows, vp, /*accumulate=*/false);
      for (index_t r = 0; r < rows; ++r) {
        multiplier[r] = 1.0f;
        if (!p.normalize) continue;
        batch dot(0.0f);
        for (index_t f = 0; f < fp; f += width)
          dot = xsimd::fma(batch::load_aligned(fq + r * fp + f), batch::load_aligned(z + f), dot);
        const float den = xsimd::hadd(dot);
        multiplier[r] = den != 0.0f ? 1.0f / den : 0.0f;
      }
      for (index_t r = 0; r < rows; ++r) {
        TO* destination = out.row(t0 + r / group, g * group + r % group);
        const float* o = o_rows + r * vp;
        for (index_t j = 0; j < dv; ++j)
          destination[j * out.stride(2)] = from_float<TO>(o[j] * multiplier[r]);
      }
    }
  });
}

template <class A, class TKV, class Map, class Executor>
void run_linear_append(tensor_view<const TKV, 3> k, tensor_view<const TKV, 3> v, const Map& map,
                       linear_state& state, const linear_params& p, Executor& executor) {
  constexpr index_t block = linear_chunk_tokens;
  const index_t F = p.feature_dim, fp = linear_padded(F);
  const index_t dv = p.value_dim, vp = linear_padded(dv);
  float* s_all = state.s().data();
  float* z_all = state.z().data();
  executor(static_cast<std::size_t>(p.kv_heads), [&](std::size_t item) {
    const index_t g = static_cast<index_t>(item);
    float* staging = item_scratch().reserve(
        static_cast<std::size_t>(linear_padded(p.key_dim) + block * fp + block * vp));
    float* fk = staging + linear_padded(p.key_dim);
    float* values = fk + block * fp;
    float* s = s_all + g * state.s_head_stride();
    float* z = z_all + g * state.z_head_stride();
    const double gamma = p.decay_of(g);
    for (index_t t0 = 0; t0 < p.tokens; t0 += block) {
      const index_t c = std::min(block, p.tokens - t0);
      feature_rows<A>(map, k.row(t0, g), k.stride(0), k.stride(2), c, p.key_dim, F, staging, fk,
                      fp);
      stage_rows<A>(v.row(t0, g), v.stride(0), v.stride(2), c, dv, values, vp, vp, 1.0f);
      add_chunk_to_state<A>(
          F, fp, vp, c, gamma < 1.0, /*state_is_zero=*/false,
          [&](index_t e) { return static_cast<float>(std::pow(gamma, static_cast<double>(e))); },
          fk, values, s, z);
    }
  });
}

}  // namespace simd

template <class Arch, class TQ, class TO, class Map, class Executor>
void linear_read_impl(backend::simd<Arch>, tensor_view<const TQ, 3> q, tensor_view<TO, 3> out,
                      const Map& map, const linear_state& state, const linear_params& p,
                      Executor& executor) {
  simd::run_linear_read<Arch>(q, out, map, state, p, executor);
}

template <class Arch, class TKV, class Map, class Executor>
void linear_append_impl(backend::simd<Arch>, tensor_view<const TKV, 3> k,
                        tensor_view<const TKV, 3> v, const Map& map, linear_state& state,
                        const linear_params& p, Executor& executor) {
  simd::run_linear_append<Arch>(k, v, map, state, p, executor);
}

}  // namespace detail
}  // namespace attnkit
