// attnkit — feature rows for the CPU linear-attention kernels: input rows of any storage type and
// stride, staged as fp32 and mapped through φ into padded, aligned feature rows.
#pragma once

#include <algorithm>
#include <type_traits>

#include "attnkit/backend/simd/convert.hpp"
#include "attnkit/backend/simd/tile.hpp"
#include "attnkit/core/config.hpp"
#include "attnkit/core/simd_include.hpp"
#include "attnkit/feature/feature_map.hpp"
#include "attnkit/feature/identity.hpp"

namespace attnkit {
namespace detail {
namespace simd {

// Padding of every row the linear kernels keep (features, values, state rows): 16 floats, a
// multiple of every xsimd float width, so one layout serves every architecture and matches
// linear_state's rows.
inline constexpr index_t linear_row_alignment = 16;

constexpr index_t linear_padded(index_t n) { return round_up(n, linear_row_alignment); }

// destination row r = φ(source row r) for r in [0, rows): source row r starts at
// source + r · row_stride with elements col_stride apart; destination rows are
// destination_stride floats apart, 64-byte aligned, and zero in [feature_dim,
// linear_padded(feature_dim)). `staging` holds linear_padded(input_dim) aligned floats.
template <class A, class Map, class T>
void feature_rows(const Map& map, const T* source, index_t row_stride, index_t col_stride,
                  index_t rows, index_t input_dim, index_t feature_dim, float* staging,
                  float* destination, index_t destination_stride) {
  const index_t padded_input = linear_padded(input_dim);
  const index_t padded_features = linear_padded(feature_dim);
  for (index_t r = 0; r < rows; ++r) {
    float* out = destination + r * destination_stride;
    const T* in = source + r * row_stride;
    if constexpr (std::is_same_v<Map, feature::identity>) {
      stage_rows<A>(in, 0, col_stride, 1, input_dim, out, padded_features, padded_features, 1.0f);
      continue;
    } else {
      stage_rows<A>(in, 0, col_stride, 1, input_dim, staging, padded_input, padded_input, 1.0f);
      if constexpr (feature_map_simd<Map, A>) {
        map.template apply_simd<A>(input_dim, staging, out);
      } else {
        map.apply(input_dim, static_cast<const float*>(staging), out);
      }
      std::fill(out + feature_dim, out + padded_features, 0.0f);
    }
  }
}

}  // namespace simd
}  // namespace detail
}  // namespace attnkit
