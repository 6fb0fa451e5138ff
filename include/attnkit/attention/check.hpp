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
#include "attnkit/core/paged_kv_view.hpp"
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

// At least one head of each kind, and q_heads a multiple of kv_heads (grouped-query attention:
// each KV head serves a group of query heads); returns the group size. The messages name the KV
// head count as kv_name followed by kv_where: "kv_heads (k extent 1)", or "kv.kv_heads" for a
// paged cache.
inline index_t check_head_counts(const char* function, index_t q_heads, index_t kv_heads,
                                 const char* kv_name = "kv_heads",
                                 const char* kv_where = " (k extent 1)") {
  require(q_heads >= 1, function, ": q_heads (q extent 1) is ", q_heads,
          ", at least one head is needed");
  require(kv_heads >= 1, function, ": ", kv_name, kv_where, " is ", kv_heads,
          ", at least one head is needed");
  require(q_heads % kv_heads == 0, function, ": q_heads (", q_heads, ") is not a multiple of ",
          kv_name, " (", kv_heads, ")");
  return q_heads / kv_heads;
}

// out is [q tokens, q_heads, row]: row_what names out's extent 2 ("out head_dim (extent 2)"),
// expected_row_what where its width comes from ("q head_dim").
template <class TO>
void check_out_extents(const char* function, const tensor_view<TO, 3>& out, index_t q_tokens,
                       index_t q_heads, const char* row_what, const char* expected_row_what,
                       index_t row) {
  check_extent(function, "out tokens (extent 0)", out.extent(0), "q tokens", q_tokens);
  check_extent(function, "out heads (extent 1)", out.extent(1), "q_heads", q_heads);
  check_extent(function, row_what, out.extent(2), expected_row_what, row);
}

// Where a call's tensors live. Device memory (backend::cuda) is not read by the checks: the
// ALiBi slopes' finiteness, which the host checks for host memory, is then the caller's promise.
enum class argument_memory { host, device };

// The options, for a call whose shape fields of `p` are set: resolves them into `p`.
// The logit scale (default 1/sqrt(head_dim)) and softcap of `options`, validated.
struct logit_transform {
  float scale = 1.0f;
  float softcap = 0.0f;
};

inline logit_transform check_logit_transform(const char* function, const attention_options& options,
                                             index_t head_dim) {
  const float scale =
      options.scale ? *options.scale : 1.0f / std::sqrt(static_cast<float>(head_dim));
  require(std::isfinite(scale) && scale >= 0.0f, function, ": scale is ", scale,
          ", it must be finite and non-negative");
  require(std::isfinite(options.softcap) && options.softcap >= 0.0f, function, ": softcap is ",
          options.softcap, ", it must be 0 (off) or finite and positive");
  return {scale, options.softcap};
}

// Whether the options ask for ALiBi (a view with data or with extents: an empty view with a
// pointer is checked, and refused, as slopes).
inline bool has_alibi(const attention_options& options) noexcept {
  return !options.alibi_slopes.empty() || options.alibi_slopes.data() != nullptr;
}

// One finite slope per query head; the values are read only where they live in host memory.
inline void check_alibi_slopes(const char* function, const attention_options& options,
                               index_t q_heads, argument_memory memory = argument_memory::host) {
  check_extent(function, "alibi_slopes extent 0", options.alibi_slopes.extent(0), "q_heads",
               q_heads);
  check_view_data(function, "alibi_slopes", options.alibi_slopes);
  if (memory == argument_memory::host)
    for (index_t h = 0; h < q_heads; ++h)
      require(std::isfinite(options.alibi_slopes(h)), function, ": alibi_slopes[", h, "] is ",
              options.alibi_slopes(h), ", slopes must be finite");
}

inline void check_attention_options(const char* function, const attention_options& options,
                                    attention_params& p,
                                    argument_memory memory = argument_memory::host) {
  const logit_transform logits = check_logit_transform(function, options, p.head_dim);
  p.scale = logits.scale;
  p.softcap = logits.softcap;

  if (has_alibi(options)) {
    check_alibi_slopes(function, options, p.q_heads, memory);
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
}

template <class TQ, class TK, class TV, class TO>
attention_params check_attention_arguments(const char* function, const tensor_view<TQ, 3>& q,
                                           const tensor_view<TK, 3>& k, const tensor_view<TV, 3>& v,
                                           const tensor_view<TO, 3>& out,
                                           const attention_options& options,
                                           argument_memory memory = argument_memory::host) {
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
  p.group_size = check_head_counts(function, p.q_heads, p.kv_heads);
  check_out_extents(function, out, p.q_tokens, p.q_heads, "out head_dim (extent 2)", "q head_dim",
                    p.head_dim);
  check_view_data(function, "q", q);
  check_view_data(function, "k", k);
  check_view_data(function, "v", v);
  check_view_data(function, "out", out);
  check_attention_options(function, options, p, memory);
  return p;
}

// A paged cache layer's scalar fields (core/paged_kv_view.hpp): page_size >= 1, non-negative
// head count and strides. Reads no memory the view points to.
template <class TKV>
void check_paged_kv_fields(const char* function, const paged_kv_view<TKV>& kv) {
  require(kv.kv_heads >= 0, function, ": kv.kv_heads is ", kv.kv_heads, ", it must be >= 0");
  require(kv.page_size >= 1, function, ": kv.page_size is ", kv.page_size, ", it must be >= 1");
  require(kv.page_table_stride >= 0, function, ": kv.page_table_stride is ", kv.page_table_stride,
          ", it must be >= 0");
  require(kv.row_stride >= 0 && kv.page_stride >= 0 && kv.head_stride >= 0, function,
          ": kv strides (row_stride ", kv.row_stride, ", page_stride ", kv.page_stride,
          ", head_stride ", kv.head_stride, ") must be >= 0");
}

// The pools and page table must exist when `tokens` (the longest head, or the capacity when the
// lengths cannot be read) is positive.
template <class TKV>
void check_paged_kv_pointers(const char* function, const paged_kv_view<TKV>& kv, index_t tokens,
                             const char* tokens_what) {
  if (tokens <= 0) return;
  require(kv.keys != nullptr, function, ": kv.keys is null but ", tokens_what, " ", tokens,
          " tokens");
  require(kv.values != nullptr, function, ": kv.values is null but ", tokens_what, " ", tokens,
          " tokens");
  require(kv.page_table != nullptr, function, ": kv.page_table is null but ", tokens_what, " ",
          tokens, " tokens");
}

// A paged cache layer in host memory: its fields, a length >= 0 per head that fits its page-table
// row (page_table_stride · page_size slots), non-null pools and page table when any head holds
// tokens, and the page ids of every slot in use >= 0 (the pool's size is not known here, so an id
// past its end cannot be caught). Returns the longest head's length.
template <class TKV>
index_t check_paged_kv_view(const char* function, const paged_kv_view<TKV>& kv) {
  check_paged_kv_fields(function, kv);
  require(kv.lengths != nullptr || kv.kv_heads == 0, function, ": kv.lengths is null (",
          kv.kv_heads, " KV heads need a length each)");
  index_t longest = 0;
  for (index_t h = 0; h < kv.kv_heads; ++h) {
    const index_t length = kv.lengths[h];
    require(length >= 0, function, ": kv.lengths[", h, "] is ", length, ", it must be >= 0");
    require(length <= kv.page_table_stride * kv.page_size, function, ": kv.lengths[", h, "] is ",
            length, " but a page-table row holds kv.page_table_stride (", kv.page_table_stride,
            ") x kv.page_size (", kv.page_size, ") = ", kv.page_table_stride * kv.page_size,
            " slots");
    longest = length > longest ? length : longest;
  }
  check_paged_kv_pointers(function, kv, longest, "kv.lengths holds up to");
  if (longest > 0) {
    for (index_t h = 0; h < kv.kv_heads; ++h) {
      const index_t pages = (kv.lengths[h] + kv.page_size - 1) / kv.page_size;
      for (index_t i = 0; i < pages; ++i) {
        const page_id page = kv.page_table[h * kv.page_table_stride + i];
        require(page >= 0, function, ": kv.page_table[", h, " * ", kv.page_table_stride, " + ", i,
                "] (head ", h, ", page ", i, ") is ", page, ", page ids must be >= 0");
      }
    }
  }
  return longest;
}

// Each head's merged key (core/paged_kv_view.hpp), when the view has them: a slot the head holds,
// or -1, with a finite count > 0.
template <class TKV>
void check_merged_keys(const char* function, const paged_kv_view<TKV>& kv) {
  if (kv.merged_keys == nullptr) return;
  for (index_t h = 0; h < kv.kv_heads; ++h) {
    const merged_key key = kv.merged_keys[h];
    if (key.slot == -1) continue;
    require(key.slot >= 0 && key.slot < kv.lengths[h], function, ": kv.merged_keys[", h,
            "].slot is ", key.slot, " but head ", h, " holds ", kv.lengths[h],
            " slots (-1: no merged key)");
    require(std::isfinite(key.count) && key.count > 0.0f, function, ": kv.merged_keys[", h,
            "].count is ", key.count, ", it must be finite and > 0");
  }
}

// A paged cache layer in device memory: the fields and pointers only (the lengths and page table
// stay unread; the device kernels clamp each length to the page-table row). Returns the capacity
// of a head, page_table_stride · page_size, which stands in for the longest head. The device
// kernels do not weigh merged keys yet, so a view with them is refused rather than misread.
template <class TKV>
index_t check_device_paged_kv_view(const char* function, const paged_kv_view<TKV>& kv) {
  check_paged_kv_fields(function, kv);
  require(kv.merged_keys == nullptr, function,
          ": kv.merged_keys is set, but the CUDA backend does not weigh merged keys yet");
  const index_t capacity = kv.page_table_stride * kv.page_size;
  require(kv.lengths != nullptr || kv.kv_heads == 0, function, ": kv.lengths is null (",
          kv.kv_heads, " KV heads need a length each)");
  if (kv.kv_heads > 0) check_paged_kv_pointers(function, kv, capacity, "a head can hold");
  return capacity;
}

// A paged cache layer (core/paged_kv_view.hpp) with queries and output. The returned params have
// kv_tokens = the longest head (kv.max_length()), or for device memory the capacity of a head:
// the shape masks and observers are checked against, and the stride of the kernels' observed
// rows.
template <class TQ, class TKV, class TO>
attention_params check_paged_attention_arguments(const char* function, const tensor_view<TQ, 3>& q,
                                                 const paged_kv_view<TKV>& kv,
                                                 const tensor_view<TO, 3>& out,
                                                 const attention_options& options,
                                                 argument_memory memory = argument_memory::host) {
  static_assert(is_storage_type_v<std::remove_cv_t<TQ>>, "q must hold float, half or bfloat16");
  static_assert(is_storage_type_v<std::remove_cv_t<TKV>>,
                "the paged cache must hold float, half or bfloat16");
  static_assert(is_storage_type_v<TO>, "out must be a mutable view of float, half or bfloat16");

  attention_params p;
  p.q_tokens = q.extent(0);
  p.q_heads = q.extent(1);
  p.head_dim = q.extent(2);
  p.kv_heads = kv.kv_heads;

  require(p.head_dim >= 1 && p.head_dim <= max_head_dim, function, ": head_dim (q extent 2) is ",
          p.head_dim, ", supported head dims are 1..", max_head_dim);
  check_extent(function, "kv.head_dim", kv.head_dim, "q head_dim", p.head_dim);
  p.group_size = check_head_counts(function, p.q_heads, p.kv_heads, "kv.kv_heads", "");
  check_out_extents(function, out, p.q_tokens, p.q_heads, "out head_dim (extent 2)", "q head_dim",
                    p.head_dim);
  check_view_data(function, "q", q);
  check_view_data(function, "out", out);

  p.kv_tokens = memory == argument_memory::host ? check_paged_kv_view(function, kv)
                                                : check_device_paged_kv_view(function, kv);
  if (memory == argument_memory::host) {
    check_merged_keys(function, kv);
    p.merged_keys = kv.merged_keys;
  }
  check_attention_options(function, options, p, memory);
  return p;
}

}  // namespace detail
}  // namespace attnkit
