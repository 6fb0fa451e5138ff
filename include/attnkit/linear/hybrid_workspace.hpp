// attnkit — hybrid_workspace: the fp32 scratch a hybrid layer (BASED, Infini-attention) mixes
// its two branches in.
//
// A hybrid computes two attention outputs over the same tokens and returns a per-head weighted
// sum. Both branches are written in fp32 first, so that the mix is rounded to the output type
// once (rounding each branch to half and adding would round twice). The workspace owns those two
// buffers explicitly — the engine keeps one per worker or per layer and passes it to every call —
// and grows only when a call is larger than any before: a decode loop allocates nothing after
// its first step.
#pragma once

#include <cstddef>
#include <vector>

#include "attnkit/core/config.hpp"
#include "attnkit/core/float16.hpp"
#include "attnkit/core/tensor_view.hpp"

namespace attnkit {

class hybrid_workspace {
 public:
  hybrid_workspace() = default;
  // Reserves room for calls of up to `tokens · q_heads · value_dim` outputs.
  explicit hybrid_workspace(index_t tokens, index_t q_heads, index_t value_dim) {
    reserve(tokens * q_heads * value_dim);
  }

  // Floats held per branch.
  std::size_t capacity() const noexcept { return first_.size(); }

 private:
  void reserve(index_t elements) {
    const auto n = static_cast<std::size_t>(elements);
    if (first_.size() < n) {
      first_.resize(n);
      second_.resize(n);
    }
  }

  std::vector<float> first_;
  std::vector<float> second_;

 public:
  // The two branch outputs of a call of this shape, [tokens, q_heads, value_dim] contiguous.
  // Host-side, before any kernel runs: may grow the buffers.
  struct branches {
    tensor_view<float, 3> first;
    tensor_view<float, 3> second;
  };
  branches prepare(index_t tokens, index_t q_heads, index_t value_dim) {
    reserve(tokens * q_heads * value_dim);
    return {tensor_view<float, 3>(first_.data(), {tokens, q_heads, value_dim}),
            tensor_view<float, 3>(second_.data(), {tokens, q_heads, value_dim})};
  }
};

namespace detail {

// out[t, h, :] = a_h · first[t, h, :] + b_h · second[t, h, :], rounded once to the output type.
// weight(h) returns the pair {a_h, b_h}.
template <class TO, class Weights>
void mix_branches(const tensor_view<float, 3>& first, const tensor_view<float, 3>& second,
                  const tensor_view<TO, 3>& out, Weights&& weight) {
  const index_t tokens = out.extent(0), heads = out.extent(1), dim = out.extent(2);
  for (index_t h = 0; h < heads; ++h) {
    const auto [a, b] = weight(h);
    for (index_t t = 0; t < tokens; ++t) {
      const float* x = first.row(t, h);  // contiguous: made by hybrid_workspace::prepare
      const float* y = second.row(t, h);
      for (index_t c = 0; c < dim; ++c) out(t, h, c) = from_float<TO>(a * x[c] + b * y[c]);
    }
  }
}

}  // namespace detail
}  // namespace attnkit
