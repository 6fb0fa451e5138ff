// attnkit — the umbrella for CUDA users, compiled by nvcc only.
//
// Today it brings the vocabulary that device code shares with the CPU side (config, 16-bit
// types, views, options, masks, the log-sum-exp merge) and the backend::cuda tag. The CUDA
// kernels themselves are not implemented yet: calling attnkit::attention with backend::cuda is
// a compile-time error that says so.
#pragma once

#if !defined(__CUDACC__)
#error "<attnkit/cuda.cuh> is for translation units compiled by nvcc; CPU code includes <attnkit/attnkit.hpp>"
#endif

#include <cuda_runtime.h>

#include "attnkit/core/config.hpp"
#include "attnkit/core/error.hpp"
#include "attnkit/core/float16.hpp"
#include "attnkit/core/options.hpp"
#include "attnkit/core/softmax_state.hpp"
#include "attnkit/core/tensor_view.hpp"
#include "attnkit/mask/causal.hpp"
#include "attnkit/mask/full.hpp"
#include "attnkit/mask/tile.hpp"

// cuda_runtime.h's cudaStream_t is CUstream_st*, the type backend::cuda holds.
static_assert(sizeof(cudaStream_t) == sizeof(void*));
