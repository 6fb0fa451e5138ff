// attnkit — argument checks shared by the softmax-attention front doors.
//
// Everything is validated before any backend runs, so a throw leaves every output untouched.
// Messages name the function, the argument and the values, e.g.
//   attnkit::attention: q_heads (12) is not a multiple of kv_heads (8)
#pragma once

#include <cmath>
#include <type_traits>

#include "attnkit/core/error.hpp"
#include "attnkit/core/float16.hpp"
#include "attnkit/core/options.hpp"
#include "attnkit/core/tensor_view.hpp"

namespace attnkit {

// The largest head dimension the kernels support (their tiles hold a full row in registers).
inline constexpr index_t max_head_dim = 256;

namespace detail {

template <class T, std::size_t Rank>
void check_view_data(const char* function, const char* name, const tensor_view<T, Rank>& view) {
  require(view.data() != nullptr || view.empty(), function, ": '", name, "' has null data but ",
          view.size(), " elements");
}

inline void check_extent(const char* function, const char* what, index_t value,
                         const char* expected_what, index_t expected) {
  require(value == expected, function, ": ", what, " is ", value, " but ", expected_what, " is ",
          expected);
}

template <class TQ, class TK, class TV, class TO>
attention_params check_attention_arguments(const char* function, const tensor_view<TQ, 3>& q,
                                           const tensor_view<TK, 3>& k, const tensor_view<TV, 3>& v,
                                           const tensor_view<TO, 3>& out,
                                           const attention_options& options) {
  static_assert(is_storage_type_v<std::remove_cv_t<TQ>>, "q must hold float, half or bfloat16");
  static_assert(is_storage_type_v<std::remove_cv_t<TK>>, "k must hold float, half or bfloat16");
  static_assert(std::is_same_v<std::remove_cv_t<TK>, std::remove_cv_t<TV>>,
                "k and v must have the same element type (a KV cache stores both alike)");
  static_assert(is_storage_type_v<TO>, "out must be a mutable view of float, half or bfloat16");

  attention_params p;
  p.q_tokens = q.extent(0);
  p.q_heads = q.extent(1);
  p.head_dim = q.extent(2);
  p.kv_tokens = k.extent(0);
  p.kv_heads = k.extent(1);

  require(p.head_dim >= 1 && p.head_dim <= max_head_dim, function, ": head_dim (q extent 2) is ",
          p.head_dim, ", supported head dims are 1..", max_head_dim);
  check_extent(function, "k head_dim (extent 2)", k.extent(2), "q head_dim", p.head_dim);
  check_extent(function, "v tokens (extent 0)", v.extent(0), "k tokens", p.kv_tokens);
  check_extent(function, "v kv_heads (extent 1)", v.extent(1), "k kv_heads", p.kv_heads);
  check_extent(function, "v head_dim (extent 2)", v.extent(2), "q head_dim", p.head_dim);
  require(p.q_heads >= 1, function, ": q_heads (q extent 1) is ", p.q_heads,
          ", at least one head is needed");
  require(p.kv_heads >= 1, function, ": kv_heads (k extent 1) is ", p.kv_heads,
          ", at least one head is needed");
  require(p.q_heads % p.kv_heads == 0, function, ": q_heads (", p.q_heads,
          ") is not a multiple of kv_heads (", p.kv_heads, ")");
  p.group_size = p.q_heads / p.kv_heads;
  check_extent(function, "out tokens (extent 0)", out.extent(0), "q tokens", p.q_tokens);
  check_extent(function, "out heads (extent 1)", out.extent(1), "q_heads", p.q_heads);
  check_extent(function, "out head_dim (extent 2)", out.extent(2), "q head_dim", p.head_dim);
  check_view_data(function, "q", q);
  check_view_data(function, "k", k);
  check_view_data(function, "v", v);
  check_view_data(function, "out", out);

  p.scale = options.scale ? *options.scale : 1.0f / std::sqrt(static_cast<float>(p.head_dim));
  require(std::isfinite(p.scale) && p.scale >= 0.0f, function, ": scale is ", p.scale,
          ", it must be finite and non-negative");
  require(std::isfinite(options.softcap) && options.softcap >= 0.0f, function, ": softcap is ",
          options.softcap, ", it must be 0 (off) or finite and positive");
  p.softcap = options.softcap;

  if (!options.alibi_slopes.empty() || options.alibi_slopes.data() != nullptr) {
    check_extent(function, "alibi_slopes extent 0", options.alibi_slopes.extent(0), "q_heads",
                 p.q_heads);
    check_view_data(function, "alibi_slopes", options.alibi_slopes);
    for (index_t h = 0; h < p.q_heads; ++h)
      require(std::isfinite(options.alibi_slopes(h)), function, ": alibi_slopes[", h, "] is ",
              options.alibi_slopes(h), ", slopes must be finite");
    p.alibi_slopes = options.alibi_slopes.data();
    p.alibi_stride = options.alibi_slopes.stride(0);
  }
  if (!options.log_sum_exp.empty() || options.log_sum_exp.data() != nullptr) {
    check_extent(function, "log_sum_exp extent 0", options.log_sum_exp.extent(0), "q_heads",
                 p.q_heads);
    check_extent(function, "log_sum_exp extent 1", options.log_sum_exp.extent(1), "q tokens",
                 p.q_tokens);
    check_view_data(function, "log_sum_exp", options.log_sum_exp);
    p.log_sum_exp = options.log_sum_exp;
  }
  options.observer.check(function, p.shape());
  p.observer = options.observer;
  return p;
}

}  // namespace detail
}  // namespace attnkit
