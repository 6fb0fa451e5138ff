// attnkit CUDA tests — device queries, the error probes, and the dtype grid under full and causal
// masks (contiguous and paged).
#include <vector>

#include "attnkit/attention/key_mass.hpp"
#include "cuda/cuda_runner_impl.cuh"

namespace attnkit_test::cuda {

int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return count;
}

std::string device_name() {
  cudaDeviceProp properties{};
  check_cuda(cudaGetDeviceProperties(&properties, 0), "cudaGetDeviceProperties");
  return properties.name;
}

namespace {
// A small valid decode call on the device, whose pieces the probes below spoil one at a time.
struct decode_call {
  static constexpr index_t tokens = 300, q_heads = 8, kv_heads = 2, dim = 64;
  device_buffer q = allocate(q_heads * dim * sizeof(attnkit::half));
  device_buffer k = allocate(tokens * kv_heads * dim * sizeof(attnkit::half));
  device_buffer v = allocate(tokens * kv_heads * dim * sizeof(attnkit::half));
  device_buffer out = allocate(q_heads * dim * sizeof(float));
  tensor_view<const attnkit::half, 3> q_view{static_cast<const attnkit::half*>(q.get()),
                                             {1, q_heads, dim}};
  tensor_view<const attnkit::half, 3> k_view{static_cast<const attnkit::half*>(k.get()),
                                             {tokens, kv_heads, dim}};
  tensor_view<const attnkit::half, 3> v_view{static_cast<const attnkit::half*>(v.get()),
                                             {tokens, kv_heads, dim}};
  tensor_view<float, 3> out_view{static_cast<float*>(out.get()), {1, q_heads, dim}};
};
}  // namespace

void attention_with_host_query() {
  decode_call call;
  std::vector<attnkit::half> host_q(decode_call::q_heads * decode_call::dim);
  const tensor_view<const attnkit::half, 3> q(host_q.data(),
                                              {1, decode_call::q_heads, decode_call::dim});
  attnkit::attention(attnkit::backend::cuda{}, q, call.k_view, call.v_view, call.out_view,
                     attnkit::causal{});
}

void attention_with_observer() {
  decode_call call;
  std::vector<float> mass(decode_call::kv_heads * decode_call::tokens);
  attnkit::accumulate_key_mass accumulate(
      tensor_view<float, 2>(mass.data(), {decode_call::kv_heads, decode_call::tokens}));
  attnkit::attention_options options;
  options.observer = accumulate;
  attnkit::attention(attnkit::backend::cuda{}, call.q_view, call.k_view, call.v_view, call.out_view,
                     attnkit::causal{}, options);
}

void attention_with_strided_keys() {
  decode_call call;
  const tensor_view<const attnkit::half, 3> k(static_cast<const attnkit::half*>(call.k.get()),
                                              {decode_call::tokens / 2, 2, 32}, {2 * 64, 64, 2});
  const tensor_view<const attnkit::half, 3> q(static_cast<const attnkit::half*>(call.q.get()),
                                              {1, 8, 32});
  const tensor_view<float, 3> out(static_cast<float*>(call.out.get()), {1, 8, 32});
  attnkit::attention(attnkit::backend::cuda{}, q, k, k, out, attnkit::causal{});
}

void attention_with_small_workspace() {
  decode_call call;
  attnkit::cuda_workspace workspace(16);
  attnkit::attention(attnkit::backend::cuda{nullptr, &workspace}, call.q_view, call.k_view,
                     call.v_view, call.out_view, attnkit::causal{});
}

}  // namespace attnkit_test::cuda

// (attnkit::half spelled out: CUDA declares a global `half`.)
using attnkit_half = attnkit::half;
using attnkit_bf16 = attnkit::bfloat16;
#define ATTNKIT_TEST_DTYPES(MASK)                                              \
  ATTNKIT_TEST_CUDA_CONTIGUOUS(attnkit_half, attnkit_half, attnkit_half, MASK) \
  ATTNKIT_TEST_CUDA_CONTIGUOUS(attnkit_bf16, attnkit_bf16, attnkit_bf16, MASK) \
  ATTNKIT_TEST_CUDA_CONTIGUOUS(attnkit_half, attnkit_half, float, MASK)        \
  ATTNKIT_TEST_CUDA_CONTIGUOUS(float, float, float, MASK)                      \
  ATTNKIT_TEST_CUDA_CONTIGUOUS(float, attnkit_half, float, MASK)               \
  ATTNKIT_TEST_CUDA_PAGED(attnkit_half, attnkit_half, attnkit_half, MASK)      \
  ATTNKIT_TEST_CUDA_PAGED(float, attnkit_bf16, float, MASK)
ATTNKIT_TEST_DTYPES(attnkit::full)
ATTNKIT_TEST_DTYPES(attnkit::causal)
