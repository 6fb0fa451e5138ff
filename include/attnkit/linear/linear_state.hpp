// attnkit — linear_state: the recurrent state linear_attention() carries between calls.
//
// Per KV head h (fp32, whatever the input types):
//   S[h]  [feature_dim, value_dim]   Σ_s γ^(t-s) φ(k_s) v_sᵀ  over every token seen so far
//   z[h]  [feature_dim]              Σ_s γ^(t-s) φ(k_s)
// A default-constructed state is the start of a sequence: the first call fixes its shape
// (kv_heads, feature_dim, value_dim) and allocates it, zeroed; every later call continues the
// same sequence and must have that shape. The storage is allocated once per shape, never per
// call, so decode steps allocate nothing. reset() starts a new sequence in the same storage.
// Copying a state copies the sequence (a fork: beam search, a shared prompt).
//
// S's rows are padded to a multiple of 16 floats (64 bytes) so the CPU kernels update it in place
// with aligned vector loads; s() therefore has strides {feature_dim · padded, padded, 1}.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>

#include "attnkit/core/aligned_memory.hpp"
#include "attnkit/core/config.hpp"
#include "attnkit/core/error.hpp"
#include "attnkit/core/tensor_view.hpp"

namespace attnkit {

class linear_state {
 public:
  // The start of a sequence; the shape is fixed by the first linear_attention call.
  linear_state() = default;

  // The start of a sequence of this shape, allocated now (zeros).
  linear_state(index_t kv_heads, index_t feature_dim, index_t value_dim) {
    detail::require(kv_heads >= 1 && feature_dim >= 1 && value_dim >= 1,
                    "attnkit::linear_state: shape is (kv_heads ", kv_heads, ", feature_dim ",
                    feature_dim, ", value_dim ", value_dim, "), every extent must be >= 1");
    allocate(kv_heads, feature_dim, value_dim);
  }

  linear_state(const linear_state& other) { *this = other; }
  linear_state& operator=(const linear_state& other) {
    if (this == &other) return *this;
    if (!other.has_shape()) {
      *this = linear_state();
      return *this;
    }
    if (!has_shape() || kv_heads_ != other.kv_heads_ || feature_dim_ != other.feature_dim_ ||
        value_dim_ != other.value_dim_)
      allocate(other.kv_heads_, other.feature_dim_, other.value_dim_);
    std::memcpy(storage_.get(), other.storage_.get(), storage_floats() * sizeof(float));
    tokens_ = other.tokens_;
    known_zero_ = other.known_zero_;
    return *this;
  }
  linear_state(linear_state&&) noexcept = default;
  linear_state& operator=(linear_state&&) noexcept = default;

  // Whether a shape has been fixed (by the constructor with extents or a first call).
  bool has_shape() const noexcept { return storage_ != nullptr; }
  index_t kv_heads() const noexcept { return kv_heads_; }
  index_t feature_dim() const noexcept { return feature_dim_; }
  index_t value_dim() const noexcept { return value_dim_; }
  // Tokens consumed since the start of the sequence: the absolute position of the next token.
  index_t tokens() const noexcept { return tokens_; }

  // S [kv_heads, feature_dim, value_dim] and z [kv_heads, feature_dim]; empty views before a
  // shape is fixed. Writable, so that an engine can save, restore or initialise a state (the
  // writable views make the kernels stop assuming the state is zero; tokens() is not changed).
  tensor_view<float, 3> s() noexcept {
    known_zero_ = false;
    return s_view<float>();
  }
  tensor_view<const float, 3> s() const noexcept { return s_view<const float>(); }
  tensor_view<float, 2> z() noexcept {
    known_zero_ = false;
    return z_view<float>();
  }
  tensor_view<const float, 2> z() const noexcept { return z_view<const float>(); }

  // Starts a new sequence in the same storage: zeros, tokens() = 0, shape kept.
  void reset() noexcept {
    if (has_shape()) std::memset(storage_.get(), 0, storage_floats() * sizeof(float));
    tokens_ = 0;
    known_zero_ = true;
  }

  // True while S and z are certainly all zeros (fresh or reset, never handed out writable): the
  // kernels then skip the products with the carried state.
  bool known_zero() const noexcept { return known_zero_; }

  // Padded row length of S (a multiple of 16) and head strides, for the kernels.
  index_t padded_value_dim() const noexcept { return padded_value_dim_; }
  index_t s_head_stride() const noexcept { return feature_dim_ * padded_value_dim_; }
  index_t z_head_stride() const noexcept { return padded_feature_dim_; }

  // For the front door, after validation: fixes the shape of an unshaped state, counts tokens.
  void adopt_shape(index_t kv_heads, index_t feature_dim, index_t value_dim) {
    if (!has_shape()) allocate(kv_heads, feature_dim, value_dim);
  }
  void advance(index_t tokens) noexcept {
    tokens_ += tokens;
    known_zero_ = false;
  }

 private:
  static constexpr index_t row_alignment = 16;  // floats: 64 bytes, any xsimd float width

  static constexpr index_t round_up(index_t value) {
    return (value + row_alignment - 1) / row_alignment * row_alignment;
  }

  std::size_t storage_floats() const noexcept {
    return static_cast<std::size_t>(kv_heads_ * (s_head_stride() + z_head_stride()));
  }

  void allocate(index_t kv_heads, index_t feature_dim, index_t value_dim) {
    kv_heads_ = kv_heads;
    feature_dim_ = feature_dim;
    value_dim_ = value_dim;
    padded_value_dim_ = round_up(value_dim);
    padded_feature_dim_ = round_up(feature_dim);
    storage_ = detail::allocate_aligned<float>(storage_floats());  // a multiple of 16 floats
    std::memset(storage_.get(), 0, storage_floats() * sizeof(float));
    tokens_ = 0;
    known_zero_ = true;
  }

  template <class T>
  tensor_view<T, 3> s_view() const noexcept {
    if (!has_shape()) return {};
    return tensor_view<T, 3>(storage_.get(), {kv_heads_, feature_dim_, value_dim_},
                             {s_head_stride(), padded_value_dim_, 1});
  }
  template <class T>
  tensor_view<T, 2> z_view() const noexcept {
    if (!has_shape()) return {};
    return tensor_view<T, 2>(storage_.get() + kv_heads_ * s_head_stride(),
                             {kv_heads_, feature_dim_}, {z_head_stride(), 1});
  }

  detail::aligned_array<float> storage_;
  index_t kv_heads_ = 0;
  index_t feature_dim_ = 0;
  index_t value_dim_ = 0;
  index_t padded_value_dim_ = 0;
  index_t padded_feature_dim_ = 0;
  index_t tokens_ = 0;
  bool known_zero_ = true;
};

}  // namespace attnkit
