// attnkit — configuration macros and the index type shared by every layer.
#pragma once

#include <cstdint>

#define ATTNKIT_VERSION_MAJOR 0
#define ATTNKIT_VERSION_MINOR 1
#define ATTNKIT_VERSION_PATCH 0

// Functions that CUDA device code may call (masks, 16-bit conversions, merge math) carry this
// marker; under a host compiler it expands to nothing.
#if defined(__CUDACC__)
#define ATTNKIT_HOST_DEVICE __host__ __device__
#else
#define ATTNKIT_HOST_DEVICE
#endif

#if defined(__GNUC__) || defined(__clang__)
#define ATTNKIT_ALWAYS_INLINE inline __attribute__((always_inline))
#define ATTNKIT_RESTRICT __restrict__
#else
#define ATTNKIT_ALWAYS_INLINE inline
#define ATTNKIT_RESTRICT
#endif

namespace attnkit {

// Extents, strides and positions are signed 64-bit: a 128k-token cache with 64 heads of 256
// dims already has 2^31 elements, and signed arithmetic keeps "position - window" well defined.
using index_t = std::int64_t;

}  // namespace attnkit
