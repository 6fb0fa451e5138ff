// attnkit — element types in device code: attnkit::half / bfloat16 / float as the CUDA kernels
// load, convert and store them.
//
// attnkit's 16-bit types are plain 2-byte PODs with the same bits as CUDA's __half and
// __nv_bfloat16, so device code reinterprets them and uses the hardware conversions (round to
// nearest even, as the CPU side). Inputs whose type only matters once per call (queries,
// outputs) are passed as untyped pointers with a storage_kind, so that they do not multiply the
// kernels' template instantiations; keys and values, read in the hot loop, are template
// parameters.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "attnkit/core/config.hpp"
#include "attnkit/core/float16.hpp"

namespace attnkit::detail::cuda {

enum class storage_kind : std::uint8_t { float32, float16, bfloat16 };

template <class T>
constexpr storage_kind storage_kind_of() {
  if constexpr (std::is_same_v<T, float>)
    return storage_kind::float32;
  else if constexpr (std::is_same_v<T, half>)
    return storage_kind::float16;
  else
    return storage_kind::bfloat16;
}

template <class T>
__device__ __forceinline__ float device_to_float(T x) {
  if constexpr (std::is_same_v<T, float>)
    return x;
  else if constexpr (std::is_same_v<T, half>)
    return __half2float(__ushort_as_half(x.to_bits()));
  else
    return __bfloat162float(__ushort_as_bfloat16(x.to_bits()));
}

template <class T>
__device__ __forceinline__ T device_from_float(float x) {
  if constexpr (std::is_same_v<T, float>)
    return x;
  else if constexpr (std::is_same_v<T, half>)
    return half::from_bits(__half_as_ushort(__float2half_rn(x)));
  else
    return bfloat16::from_bits(__bfloat16_as_ushort(__float2bfloat16_rn(x)));
}

__device__ __forceinline__ float load_element(const void* data, storage_kind kind, index_t at) {
  switch (kind) {
    case storage_kind::float32:
      return static_cast<const float*>(data)[at];
    case storage_kind::float16:
      return device_to_float(static_cast<const half*>(data)[at]);
    default:
      return device_to_float(static_cast<const bfloat16*>(data)[at]);
  }
}

__device__ __forceinline__ void store_element(void* data, storage_kind kind, index_t at, float x) {
  switch (kind) {
    case storage_kind::float32:
      static_cast<float*>(data)[at] = x;
      break;
    case storage_kind::float16:
      static_cast<half*>(data)[at] = device_from_float<half>(x);
      break;
    default:
      static_cast<bfloat16*>(data)[at] = device_from_float<bfloat16>(x);
      break;
  }
}

// Count consecutive elements starting at `row` into `out`, as 16-byte loads when the caller has
// established that the row is 16-byte aligned and Count elements span whole 16-byte words (the
// loads a warp's lanes make side by side then coalesce), element by element otherwise. Elements
// at or past `valid` read as 0 (a head dim that is not a multiple of the per-thread width).
template <int Count, class T>
__device__ __forceinline__ void load_row_chunk(const T* row, bool vector_aligned, int valid,
                                               float (&out)[Count]) {
  constexpr int per_word = 16 / static_cast<int>(sizeof(T));
  if constexpr (Count % per_word == 0) {
    if (vector_aligned && valid >= Count) {
#pragma unroll
      for (int w = 0; w < Count / per_word; ++w) {
        const uint4 word = __ldg(reinterpret_cast<const uint4*>(row) + w);
        T elements[per_word];
        static_assert(sizeof(elements) == sizeof(word));
        __builtin_memcpy(elements, &word, sizeof(word));
#pragma unroll
        for (int e = 0; e < per_word; ++e) out[w * per_word + e] = device_to_float(elements[e]);
      }
      return;
    }
  }
#pragma unroll
  for (int i = 0; i < Count; ++i) out[i] = i < valid ? device_to_float(row[i]) : 0.0f;
}

}  // namespace attnkit::detail::cuda
