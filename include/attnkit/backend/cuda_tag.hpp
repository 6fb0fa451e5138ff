// attnkit — the backend::cuda tag, on its own so that CPU code can hold one (and nvcc code can
// name it) without the xsimd headers.
#pragma once

// cudaStream_t is `CUstream_st*`; naming the struct lets CPU-only code hold a cuda tag without
// the CUDA headers.
struct CUstream_st;

namespace attnkit {

class cuda_workspace;  // <attnkit/backend/cuda/runtime.cuh>

namespace backend {

// The CUDA backend: kernels are enqueued on `stream` (null: the default stream). Their scratch
// (split-KV partial results) comes from `workspace` when one is given, else from the stream's
// memory pool. The kernels live in <attnkit/cuda.cuh> and are compiled by nvcc only.
struct cuda {
  CUstream_st* stream = nullptr;
  cuda_workspace* workspace = nullptr;
};

}  // namespace backend
}  // namespace attnkit
