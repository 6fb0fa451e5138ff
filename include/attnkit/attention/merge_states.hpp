// attnkit — merge_states(): exact merge of two partial attention results.
#pragma once

#include <type_traits>

#include "attnkit/attention/check.hpp"
#include "attnkit/core/softmax_state.hpp"

namespace attnkit {

// Merges attention over two disjoint key sets into attention over their union:
//   lse = log(exp(lse_a) + exp(lse_b)),  out = o_a·exp(lse_a - lse) + o_b·exp(lse_b - lse).
// o_a, o_b, out are [tokens, heads, head_dim] (any of float, half, bfloat16); lse_a, lse_b and the
// optional lse_out are [heads, tokens] as written by attention_options::log_sum_exp. out may be
// the same memory as o_a or o_b, and lse_out as lse_a or lse_b (in-place accumulation). A row
// empty on both sides stays zeros with lse -inf.
template <class TA, class TB, class TO>
void merge_states(tensor_view<TA, 3> o_a, tensor_view<const float, 2> lse_a, tensor_view<TB, 3> o_b,
                  tensor_view<const float, 2> lse_b, tensor_view<TO, 3> out,
                  tensor_view<float, 2> lse_out = {}) {
  static_assert(is_storage_type_v<std::remove_cv_t<TA>> && is_storage_type_v<std::remove_cv_t<TB>>,
                "o_a and o_b must hold float, half or bfloat16");
  static_assert(is_storage_type_v<TO>, "out must be a mutable view of float, half or bfloat16");
  constexpr const char* function = "attnkit::merge_states";
  const index_t tokens = o_a.extent(0), heads = o_a.extent(1), dim = o_a.extent(2);
  constexpr const char* o_b_extent[] = {"o_b extent 0", "o_b extent 1", "o_b extent 2"};
  constexpr const char* out_extent[] = {"out extent 0", "out extent 1", "out extent 2"};
  constexpr const char* o_a_extent[] = {"o_a extent 0", "o_a extent 1", "o_a extent 2"};
  for (std::size_t d = 0; d < 3; ++d) {
    detail::check_extent(function, o_b_extent[d], o_b.extent(d), o_a_extent[d], o_a.extent(d));
    detail::check_extent(function, out_extent[d], out.extent(d), o_a_extent[d], o_a.extent(d));
  }
  detail::check_extent(function, "lse_a extent 0", lse_a.extent(0), "heads", heads);
  detail::check_extent(function, "lse_a extent 1", lse_a.extent(1), "tokens", tokens);
  detail::check_extent(function, "lse_b extent 0", lse_b.extent(0), "heads", heads);
  detail::check_extent(function, "lse_b extent 1", lse_b.extent(1), "tokens", tokens);
  const bool want_lse = !lse_out.empty() || lse_out.data() != nullptr;
  if (want_lse) {
    detail::check_extent(function, "lse_out extent 0", lse_out.extent(0), "heads", heads);
    detail::check_extent(function, "lse_out extent 1", lse_out.extent(1), "tokens", tokens);
    detail::check_view_data(function, "lse_out", lse_out);
  }
  detail::check_view_data(function, "o_a", o_a);
  detail::check_view_data(function, "o_b", o_b);
  detail::check_view_data(function, "out", out);
  detail::check_view_data(function, "lse_a", lse_a);
  detail::check_view_data(function, "lse_b", lse_b);

  for (index_t t = 0; t < tokens; ++t) {
    for (index_t h = 0; h < heads; ++h) {
      const merge_weights w = merge_log_sum_exp(lse_a(h, t), lse_b(h, t));
      for (index_t c = 0; c < dim; ++c)
        out(t, h, c) = from_float<TO>(w.weight_a * to_float(o_a(t, h, c)) +
                                      w.weight_b * to_float(o_b(t, h, c)));
      if (want_lse) lse_out(h, t) = w.log_sum_exp;
    }
  }
}

}  // namespace attnkit
