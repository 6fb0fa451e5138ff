// attnkit CUDA tests — every other mask type, for the tensor-core types (half, bfloat16) and for
// fp32 queries over a half cache (the split-KV kernel), contiguous and paged.
#include "cuda/cuda_runner_impl.cuh"

// (attnkit::half spelled out: CUDA declares a global `half`.)
using attnkit_half = attnkit::half;
using attnkit_bf16 = attnkit::bfloat16;
using causal_window = attnkit::intersection<attnkit::causal, attnkit::sliding_window>;
#define ATTNKIT_TEST_MASK(MASK)                                                \
  ATTNKIT_TEST_CUDA_CONTIGUOUS(attnkit_half, attnkit_half, attnkit_half, MASK) \
  ATTNKIT_TEST_CUDA_CONTIGUOUS(attnkit_bf16, attnkit_bf16, float, MASK)        \
  ATTNKIT_TEST_CUDA_CONTIGUOUS(float, attnkit_half, float, MASK)               \
  ATTNKIT_TEST_CUDA_PAGED(attnkit_half, attnkit_half, attnkit_half, MASK)
ATTNKIT_TEST_MASK(attnkit::sliding_window)
ATTNKIT_TEST_MASK(attnkit::sliding_window_per_head)
ATTNKIT_TEST_MASK(attnkit::block_sparse)
ATTNKIT_TEST_MASK(attnkit::custom)
ATTNKIT_TEST_MASK(causal_window)
