// attnkit CUDA tests — linear attention on the device (backend/cuda/linear_attention.cuh) behind a
// plain C++ interface, so that the tests compile with the host compiler and only the kernels go
// through nvcc (cuda_runner_linear.cu).
//
// A linear_session owns a cuda::linear_state. Each run() copies its host inputs to the device
// (whole strided spans), enqueues attnkit::linear_attention on backend::cuda (default stream),
// waits for the device and copies `out` back. Errors thrown by the front door propagate unchanged.
#pragma once

#include <memory>
#include <vector>

#include "attnkit/core/float16.hpp"
#include "attnkit/core/tensor_view.hpp"
#include "attnkit/linear/linear_state.hpp"
#include "attnkit/linear/options.hpp"

namespace attnkit_test::cuda {

using attnkit::index_t;
using attnkit::tensor_view;

// The built-in feature maps the device supports; taylor2 with input_scale = taylor_scale.
enum class linear_map { identity, relu, elu_plus_one, taylor2 };
struct linear_map_choice {
  linear_map which = linear_map::identity;
  float taylor_scale = 1.0f;
};

class linear_session {
 public:
  linear_session(index_t kv_heads, index_t feature_dim, index_t value_dim);
  ~linear_session();
  linear_session(const linear_session&) = delete;
  linear_session& operator=(const linear_session&) = delete;

  // linear_attention(cuda, device copies of q, k, v, out, map, state, options); options.decay
  // stays in host memory (the front door reads it there). with_workspace: the scratch comes from
  // a cuda_workspace of linear_attention_workspace_bytes.
  template <class TQ, class TKV, class TO>
  void run(linear_map_choice map, tensor_view<const TQ, 3> q, tensor_view<const TKV, 3> k,
           tensor_view<const TKV, 3> v, tensor_view<TO, 3> out,
           const attnkit::linear_options& options, bool with_workspace = false);

  // The device state into / from a CPU state of the same shape, and as one flat span.
  void download(attnkit::linear_state& host) const;
  std::vector<float> download() const;
  void upload(const attnkit::linear_state& host);
  void reset();
  index_t tokens() const;

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

// Calls that must throw attnkit::error before enqueuing anything (each builds its own small,
// otherwise valid setup and spoils one thing).
enum class linear_misuse {
  host_query,          // q in host memory
  unshaped_state,      // a default-constructed cuda::linear_state
  small_workspace,     // a cuda_workspace smaller than linear_attention_workspace_bytes
  download_wrong_size  // download() into a span of the wrong length
};
void linear_misuse_call(linear_misuse which);

}  // namespace attnkit_test::cuda
