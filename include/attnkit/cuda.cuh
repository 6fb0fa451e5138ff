// attnkit — the umbrella for CUDA users, compiled by nvcc only.
//
//   #include <attnkit/cuda.cuh>
//   attnkit::attention(attnkit::backend::cuda{stream}, q, k, v, out, attnkit::causal{});
//
// Brings the vocabulary device code shares with the CPU side (config, 16-bit types, views,
// options, every mask type, the paged KV view, the log-sum-exp merge), the backend::cuda tag and
// its attention() front doors (backend/cuda/attention.cuh: FlashAttention-2 prefill on the
// tensor cores, split-KV decode over contiguous or paged caches), cuda_workspace,
// cuda::device_mask, Quest on the device (cuda::device_page_bounds, cuda::quest_select into a
// cuda::device_block_layout whose mask() attention() reads), and linear_attention() with its
// state in device memory (cuda::linear_state). It does not include the CPU backends
// (xsimd); a translation unit that wants both includes <attnkit/attnkit.hpp> as well, and overload
// resolution picks backend::cuda's front doors for the cuda tag.
#pragma once

#if !defined(__CUDACC__)
#error \
    "<attnkit/cuda.cuh> is for translation units compiled by nvcc; CPU code includes <attnkit/attnkit.hpp>"
#endif

#include <cuda_runtime.h>

#include "attnkit/backend/cuda/attention.cuh"
#include "attnkit/backend/cuda/device_block_layout.cuh"
#include "attnkit/backend/cuda/linear_attention.cuh"
#include "attnkit/backend/cuda/page_selection.cuh"
#include "attnkit/backend/cuda_tag.hpp"
#include "attnkit/core/config.hpp"
#include "attnkit/core/error.hpp"
#include "attnkit/core/float16.hpp"
#include "attnkit/core/options.hpp"
#include "attnkit/core/paged_kv_view.hpp"
#include "attnkit/core/softmax_state.hpp"
#include "attnkit/core/tensor_view.hpp"
#include "attnkit/mask/block_sparse.hpp"
#include "attnkit/mask/causal.hpp"
#include "attnkit/mask/custom.hpp"
#include "attnkit/mask/full.hpp"
#include "attnkit/mask/intersection.hpp"
#include "attnkit/mask/sliding_window.hpp"
#include "attnkit/mask/tile.hpp"

// cuda_runtime.h's cudaStream_t is CUstream_st*, the type backend::cuda holds.
static_assert(sizeof(cudaStream_t) == sizeof(void*));
