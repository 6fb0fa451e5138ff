// attnkit CUDA tests — every other mask type on the tensor-core path (half), the split-KV path
// (fp32 queries over a half cache) and a paged cache (half). bfloat16 runs the same
// masked code with another mma type; it is covered under full and causal (cuda_runner_basic.cu),
// which keeps this translation unit's nvcc time down.
#include "cuda/cuda_runner_impl.cuh"

// (attnkit::half spelled out: CUDA declares a global `half`.)
using attnkit_half = attnkit::half;
using causal_window = attnkit::intersection<attnkit::causal, attnkit::sliding_window>;
#define ATTNKIT_TEST_MASK(MASK)                                                \
  ATTNKIT_TEST_CUDA_CONTIGUOUS(attnkit_half, attnkit_half, attnkit_half, MASK) \
  ATTNKIT_TEST_CUDA_CONTIGUOUS(float, attnkit_half, float, MASK)               \
  ATTNKIT_TEST_CUDA_PAGED(attnkit_half, attnkit_half, attnkit_half, MASK)
ATTNKIT_TEST_MASK(attnkit::sliding_window)
ATTNKIT_TEST_MASK(attnkit::sliding_window_per_head)
ATTNKIT_TEST_MASK(attnkit::block_sparse)
ATTNKIT_TEST_MASK(attnkit::custom)
ATTNKIT_TEST_MASK(causal_window)
