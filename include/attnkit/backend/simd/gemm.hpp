// attnkit — the register-blocked micro-kernel both attention GEMMs run on.
//
//   C[M x N] (+)= A[M x K] · B[K x N]
//
// B and C are row-major fp32 with N a multiple of the vector width (the kernels pad); A is read
// one scalar at a time and broadcast, so it may have any row and depth strides. That one shape
// covers both products without ever transposing K or V in memory:
//   scores:  Sᵀ[key][query] = Σ_c K[key][c] · Qᵀ[c][query]         (A = staged K rows)
//   output:  Oᵀ[c][query]  += Σ_key V[key][c] · Pᵀ[key][query]      (A = staged V, read down
//   columns)
// and the row-wise decode kernel's P·V as well. A block of MR rows x NR vectors of C lives in
// registers for the whole depth loop: each step loads NR vectors of B and broadcasts MR scalars of
// A for MR·NR FMAs, so on AVX-512 (6 x 4: 24 accumulators of 32 registers) the loads stay well
// below the two FMA ports' rate.
#pragma once

#include <cstddef>
#include <utility>

#include "attnkit/core/config.hpp"
#include "attnkit/core/simd_include.hpp"

namespace attnkit {
namespace detail {
namespace simd {

// Register blocking by vector width: 32 registers (AVX-512) afford 6 x 4 accumulators, 16
// registers (AVX2 and narrower) 4 x 2 or 3 x 3 — 4 x 2 keeps B loads cheap.
template <class A>
struct gemm_shape {
  static constexpr int width = static_cast<int>(xsimd::batch<float, A>::size);
  static constexpr int rows = width >= 16 ? 6 : 4;     // MR
  static constexpr int vectors = width >= 16 ? 4 : 2;  // NR
};

template <class A, int MR, int NR>
ATTNKIT_ALWAYS_INLINE void gemm_micro_kernel(index_t depth, const float* ATTNKIT_RESTRICT a,
                                             index_t a_row_stride, index_t a_depth_stride,
                                             const float* ATTNKIT_RESTRICT b, index_t b_stride,
                                             float* ATTNKIT_RESTRICT c, index_t c_stride,
                                             bool accumulate) {
  using batch = xsimd::batch<float, A>;
  constexpr int width = static_cast<int>(batch::size);
  batch acc[MR][NR];
  if (accumulate) {
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m)
#pragma GCC unroll 8
      for (int n = 0; n < NR; ++n) acc[m][n] = batch::load_aligned(c + m * c_stride + n * width);
  } else {
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m)
#pragma GCC unroll 8
      for (int n = 0; n < NR; ++n) acc[m][n] = batch(0.0f);
  }
  for (index_t p = 0; p < depth; ++p) {
    batch bv[NR];
#pragma GCC unroll 8
    for (int n = 0; n < NR; ++n) bv[n] = batch::load_aligned(b + p * b_stride + n * width);
    const float* a_column = a + p * a_depth_stride;
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      const batch av(a_column[m * a_row_stride]);
#pragma GCC unroll 8
      for (int n = 0; n < NR; ++n) acc[m][n] = xsimd::fma(av, bv[n], acc[m][n]);
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 8
    for (int n = 0; n < NR; ++n) acc[m][n].store_aligned(c + m * c_stride + n * width);
}

// Rows [0, rows) of one column panel of NR vectors: full MR blocks, then one smaller block.
template <class A, int NR>
ATTNKIT_ALWAYS_INLINE void gemm_panel(index_t rows, index_t depth, const float* a,
                                      index_t a_row_stride, index_t a_depth_stride, const float* b,
                                      index_t b_stride, float* c, index_t c_stride,
                                      bool accumulate) {
  constexpr int MR = gemm_shape<A>::rows;
  index_t m = 0;
  for (; m + MR <= rows; m += MR)
    gemm_micro_kernel<A, MR, NR>(depth, a + m * a_row_stride, a_row_stride, a_depth_stride, b,
                                 b_stride, c + m * c_stride, c_stride, accumulate);
  const index_t rest = rows - m;
  if (rest == 0) return;
  const float* a_rest = a + m * a_row_stride;
  float* c_rest = c + m * c_stride;
  [&]<int... R>(std::integer_sequence<int, R...>) {
    ((rest == R + 1 ? gemm_micro_kernel<A, R + 1, NR>(depth, a_rest, a_row_stride, a_depth_stride,
                                                      b, b_stride, c_rest, c_stride, accumulate)
                    : void()),
     ...);
  }
  (std::make_integer_sequence<int, MR - 1>{});
}

// C[rows x columns] (+)= A · B with `columns` a multiple of the vector width: panels of NR
// vectors, then one narrower panel.
template <class A>
void gemm(index_t rows, index_t columns, index_t depth, const float* a, index_t a_row_stride,
          index_t a_depth_stride, const float* b, index_t b_stride, float* c, index_t c_stride,
          bool accumulate) {
  constexpr int width = gemm_shape<A>::width;
  constexpr int NR = gemm_shape<A>::vectors;
  index_t n = 0;
  for (; n + NR * width <= columns; n += NR * width)
    gemm_panel<A, NR>(rows, depth, a, a_row_stride, a_depth_stride, b + n, b_stride, c + n,
                      c_stride, accumulate);
  const index_t rest = (columns - n) / width;
  if (rest == 0) return;
  [&]<int... R>(std::integer_sequence<int, R...>) {
    ((rest == R + 1 ? gemm_panel<A, R + 1>(rows, depth, a, a_row_stride, a_depth_stride, b + n,
                                           b_stride, c + n, c_stride, accumulate)
                    : void()),
     ...);
  }
  (std::make_integer_sequence<int, NR - 1>{});
}

}  // namespace simd
}  // namespace detail
}  // namespace attnkit
