// attnkit CUDA tests — the linear-attention runner of cuda_runner_linear.hpp.
#include <cuda_runtime.h>

#include <attnkit/cuda.cuh>
#include <span>
#include <vector>

#include "cuda/cuda_runner_impl.cuh"
#include "cuda/cuda_runner_linear.hpp"

namespace attnkit_test::cuda {

struct linear_session::impl {
  attnkit::cuda::linear_state state;
};

linear_session::linear_session(index_t kv_heads, index_t feature_dim, index_t value_dim)
    : impl_(new impl{attnkit::cuda::linear_state(kv_heads, feature_dim, value_dim)}) {}
linear_session::~linear_session() = default;

namespace {

// Calls fn(map) with the map `choice` names.
template <class Fn>
void with_map(linear_map_choice choice, Fn&& fn) {
  namespace feature = attnkit::feature;
  switch (choice.which) {
    case linear_map::identity:
      return fn(feature::identity{});
    case linear_map::relu:
      return fn(feature::relu{});
    case linear_map::elu_plus_one:
      return fn(feature::elu_plus_one{});
    default:
      return fn(feature::taylor2{choice.taylor_scale});
  }
}

}  // namespace

template <class TQ, class TKV, class TO>
void linear_session::run(linear_map_choice map, tensor_view<const TQ, 3> q,
                         tensor_view<const TKV, 3> k, tensor_view<const TKV, 3> v,
                         tensor_view<TO, 3> out, const attnkit::linear_options& options,
                         bool with_workspace) {
  const auto dq = to_device(q);
  const auto dk = to_device(k), dv = to_device(v);
  const auto dout = to_device(out);
  attnkit::cuda_workspace workspace;
  if (with_workspace)
    workspace.reserve(attnkit::cuda::linear_attention_workspace_bytes(impl_->state.kv_heads(),
                                                                      impl_->state.feature_dim()));
  const attnkit::backend::cuda backend{nullptr, with_workspace ? &workspace : nullptr};
  with_map(map, [&](const auto& m) {
    attnkit::linear_attention(backend, dq.view, dk.view, dv.view, dout.view, m, impl_->state,
                              options);
  });
  check_cuda(cudaDeviceSynchronize(), "kernel execution");
  to_host(dout, out);
}

void linear_session::download(attnkit::linear_state& host) const {
  check_cuda(cudaDeviceSynchronize(), "before download");
  impl_->state.download(host);
}

std::vector<float> linear_session::download() const {
  check_cuda(cudaDeviceSynchronize(), "before download");
  std::vector<float> flat(impl_->state.size());
  impl_->state.download(std::span<float>(flat));
  return flat;
}

void linear_session::upload(const attnkit::linear_state& host) { impl_->state.upload(host); }

void linear_session::reset() {
  impl_->state.reset();
  check_cuda(cudaDeviceSynchronize(), "reset");
}

index_t linear_session::tokens() const { return impl_->state.tokens(); }

template void linear_session::run<float, float, float>(
    linear_map_choice, tensor_view<const float, 3>, tensor_view<const float, 3>,
    tensor_view<const float, 3>, tensor_view<float, 3>, const attnkit::linear_options&, bool);
template void linear_session::run<attnkit::half, attnkit::half, attnkit::half>(
    linear_map_choice, tensor_view<const attnkit::half, 3>, tensor_view<const attnkit::half, 3>,
    tensor_view<const attnkit::half, 3>, tensor_view<attnkit::half, 3>,
    const attnkit::linear_options&, bool);
template void linear_session::run<attnkit::bfloat16, attnkit::bfloat16, float>(
    linear_map_choice, tensor_view<const attnkit::bfloat16, 3>,
    tensor_view<const attnkit::bfloat16, 3>, tensor_view<const attnkit::bfloat16, 3>,
    tensor_view<float, 3>, const attnkit::linear_options&, bool);

void linear_misuse_call(linear_misuse which) {
  constexpr index_t tokens = 8, heads = 2, dim = 16;
  const std::vector<float> host(static_cast<std::size_t>(tokens * heads * dim), 0.5f);
  const tensor_view<const float, 3> host_view(host.data(), {tokens, heads, dim});
  const auto q = to_device(host_view), k = to_device(host_view), v = to_device(host_view);
  auto out_memory = allocate(host.size() * sizeof(float));
  const tensor_view<float, 3> out(static_cast<float*>(out_memory.get()), {tokens, heads, dim});
  attnkit::cuda::linear_state state(heads, dim, dim);
  const attnkit::feature::relu map;
  switch (which) {
    case linear_misuse::host_query:
      attnkit::linear_attention(attnkit::backend::cuda{}, host_view, k.view, v.view, out, map,
                                state);
      break;
    case linear_misuse::unshaped_state: {
      attnkit::cuda::linear_state unshaped;
      attnkit::linear_attention(attnkit::backend::cuda{}, q.view, k.view, v.view, out, map,
                                unshaped);
      break;
    }
    case linear_misuse::small_workspace: {
      attnkit::cuda_workspace workspace(16);
      attnkit::linear_attention(attnkit::backend::cuda{nullptr, &workspace}, q.view, k.view, v.view,
                                out, map, state);
      break;
    }
    case linear_misuse::download_wrong_size: {
      std::vector<float> flat(state.size() - 1);
      state.download(std::span<float>(flat));
      break;
    }
  }
  check_cuda(cudaDeviceSynchronize(), "misuse call");
}

}  // namespace attnkit_test::cuda
