// attnkit — loading float, half and bfloat16 storage into fp32 registers, per architecture.
//
// xsimd 8.1 has no 16-bit float batch, so this is the one place that knows the conversion
// instructions: F16C / AVX-512 vcvtph2ps for half, a 16-bit shift for bfloat16 (its top 16 bits
// are an fp32). Every kernel above this header only ever sees batch<float>. The overloads take
// xsimd's arch tags, which inherit from one another, so the most specific one wins and the
// generic one serves every other architecture.
#pragma once

#include <cstring>
#include <type_traits>

#include "attnkit/core/config.hpp"
#include "attnkit/core/float16.hpp"
#include "attnkit/core/simd_include.hpp"

namespace attnkit {
namespace detail {
namespace simd {

template <class A>
using float_batch = xsimd::batch<float, A>;

// Generic path: convert one batch worth of elements through a small aligned array.
template <class A, class T>
ATTNKIT_ALWAYS_INLINE float_batch<A> load_as_float(const T* source,
                                                   xsimd::kernel::requires_arch<xsimd::generic>) {
  if constexpr (std::is_same_v<T, float>) {
    return float_batch<A>::load_unaligned(source);
  } else {
    alignas(64) float lanes[float_batch<A>::size];
    for (std::size_t i = 0; i < float_batch<A>::size; ++i) lanes[i] = to_float(source[i]);
    return float_batch<A>::load_aligned(lanes);
  }
}

#if defined(__AVX2__) && defined(__F16C__)
template <class A, class T>
ATTNKIT_ALWAYS_INLINE float_batch<A> load_as_float(const T* source,
                                                   xsimd::kernel::requires_arch<xsimd::avx2>) {
  if constexpr (std::is_same_v<T, float>) {
    return float_batch<A>::load_unaligned(source);
  } else if constexpr (std::is_same_v<T, half>) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(source)));
  } else {
    const __m256i wide =
        _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(source)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  }
}
#endif

#if defined(__AVX512F__)
template <class A, class T>
ATTNKIT_ALWAYS_INLINE float_batch<A> load_as_float(const T* source,
                                                   xsimd::kernel::requires_arch<xsimd::avx512f>) {
  if constexpr (std::is_same_v<T, float>) {
    return float_batch<A>::load_unaligned(source);
  } else if constexpr (std::is_same_v<T, half>) {
    // The zero-masking forms: GCC 12 flags the plain ones' _mm512_undefined passthrough as
    // maybe-uninitialized once inlined.
    return _mm512_maskz_cvtph_ps(0xFFFF,
                                 _mm256_loadu_si256(reinterpret_cast<const __m256i*>(source)));
  } else {
    const __m512i wide = _mm512_maskz_cvtepu16_epi32(
        0xFFFF, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(source)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
  }
}
#endif

// Loads one batch of float_batch<A>::size consecutive elements as fp32.
template <class A, class T>
ATTNKIT_ALWAYS_INLINE float_batch<A> load_float(const T* source) {
  return load_as_float<A, T>(source, A{});
}

// Stores one batch of fp32 values as T (float, or half rounded to nearest even, as
// attnkit::half(float) rounds). streaming: a store that bypasses the caches (x86 non-temporal:
// no read-for-ownership of the line, no eviction of data the caller still needs), for buffers
// written once now and read back only after much other traffic; `to` must then be aligned to the
// bytes stored, and stream_fence() must run before another thread reads them (non-temporal
// stores are weakly ordered). Without it, or where the architecture has none, a plain store.
template <class A, class T>
ATTNKIT_ALWAYS_INLINE void store_from_float(T* to, float_batch<A> x, bool streaming) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, half>);
#if defined(__AVX512F__)
  if constexpr (std::is_base_of_v<xsimd::avx512f, A>) {
    if constexpr (std::is_same_v<T, float>) {
      if (streaming)
        _mm512_stream_ps(to, x);
      else
        _mm512_storeu_ps(to, x);
    } else {
      const __m256i h = _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      if (streaming)
        _mm256_stream_si256(reinterpret_cast<__m256i*>(to), h);
      else
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(to), h);
    }
    return;
  }
#endif
#if defined(__AVX2__) && defined(__F16C__)
  if constexpr (std::is_base_of_v<xsimd::avx2, A> && !std::is_base_of_v<xsimd::avx512f, A>) {
    if constexpr (std::is_same_v<T, float>) {
      if (streaming)
        _mm256_stream_ps(to, x);
      else
        _mm256_storeu_ps(to, x);
    } else {
      const __m128i h = _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      if (streaming)
        _mm_stream_si128(reinterpret_cast<__m128i*>(to), h);
      else
        _mm_storeu_si128(reinterpret_cast<__m128i*>(to), h);
    }
    return;
  }
#endif
  (void)streaming;
  if constexpr (std::is_same_v<T, float>) {
    x.store_unaligned(to);
  } else {
    alignas(64) float lanes[float_batch<A>::size];
    x.store_aligned(lanes);
    for (std::size_t i = 0; i < float_batch<A>::size; ++i) to[i] = T(lanes[i]);
  }
}

inline void stream_fence() {
#if defined(__SSE__)
  _mm_sfence();
#endif
}

// Converts `rows` rows of `cols` elements (row r starts at source + r * row_stride, elements
// col_stride apart) into fp32 rows of `padded_cols` floats at destination + r * destination_stride,
// multiplied by `multiplier`, with columns [cols, padded_cols) zeroed so that padded lanes add
// exact zeros to dot products. Vector path when the row is contiguous.
template <class A, class T>
void stage_rows(const T* source, index_t row_stride, index_t col_stride, index_t rows, index_t cols,
                float* destination, index_t destination_stride, index_t padded_cols,
                float multiplier) {
  constexpr index_t width = float_batch<A>::size;
  const float_batch<A> scale(multiplier);
  for (index_t r = 0; r < rows; ++r) {
    const T* in = source + r * row_stride;
    float* out = destination + r * destination_stride;
    index_t c = 0;
    if (col_stride == 1) {
      for (; c + width <= cols; c += width) (load_float<A>(in + c) * scale).store_aligned(out + c);
    }
    for (; c < cols; ++c) out[c] = to_float(in[c * col_stride]) * multiplier;
    for (; c < padded_cols; ++c) out[c] = 0.0f;
  }
}

// Asks for the cache line holding `address` to be brought into L2 (x86 prefetcht1), without
// waiting for it: the kernels that prefetch touch each line once, soon after.
ATTNKIT_ALWAYS_INLINE void prefetch_line(const void* address) noexcept {
#if defined(__GNUC__) || defined(__clang__)
  __builtin_prefetch(address, 0, 2);
#else
  (void)address;
#endif
}

// A range of rows to pull towards the core a few lines at a time, interleaved with compute: a
// whole block of prefetches at once only stalls on the line-fill buffers, while a steady trickle
// keeps memory busy during the arithmetic of the previous block. Lines go to L2 (prefetcht1):
// the kernels that use this touch each line once, soon after.
class prefetch_stream {
 public:
  prefetch_stream() = default;
  prefetch_stream(const void* first_row, index_t row_bytes, index_t row_stride_bytes, index_t rows)
      : base_(static_cast<const char*>(first_row)),
        row_bytes_(row_bytes),
        row_stride_bytes_(row_stride_bytes),
        rows_(rows) {}

  // Lines not issued yet.
  index_t lines() const noexcept {
    return (rows_ - row_) * ((row_bytes_ + 63) / 64) - offset_ / 64;
  }

  // The cursor is copied into locals for the loop, as prefetch_rows::issue does (kept in the
  // object, it would be stored and reloaded for every line).
  ATTNKIT_ALWAYS_INLINE void issue(index_t lines) noexcept {
    index_t row = row_, offset = offset_;
    for (; lines > 0 && row < rows_; --lines) {
      prefetch_line(base_ + row * row_stride_bytes_ + offset);
      offset += 64;
      if (offset >= row_bytes_) {
        offset = 0;
        ++row;
      }
    }
    row_ = row;
    offset_ = offset;
  }

 private:
  const char* base_ = nullptr;
  index_t row_bytes_ = 0;
  index_t row_stride_bytes_ = 0;
  index_t rows_ = 0;
  index_t row_ = 0;
  index_t offset_ = 0;
};

}  // namespace simd
}  // namespace detail
}  // namespace attnkit
