// attnkit — tensor_view: a non-owning, strided view of an engine's memory.
//
// Kernels take views, never containers, so an engine passes its own buffers (pinned, paged,
// mmapped, device). The layout convention is NHD, [tokens, heads, head_dim], with strides in
// elements; explicit strides let callers pass BHSD memory or a slice of a larger batch.
#pragma once

#include <array>
#include <cstddef>
#include <type_traits>

#include "attnkit/core/config.hpp"
#include "attnkit/core/error.hpp"

namespace attnkit {

template <class T, std::size_t Rank>
class tensor_view {
  static_assert(Rank >= 1, "tensor_view needs at least one dimension");

 public:
  using element_type = T;
  using value_type = std::remove_cv_t<T>;
  using extents_type = std::array<index_t, Rank>;
  static constexpr std::size_t rank = Rank;

  // An empty view: null data, every extent 0. Optional outputs use it to mean "not requested".
  constexpr tensor_view() = default;

  // Contiguous, row-major (the last dimension has stride 1).
  constexpr tensor_view(T* data, const extents_type& extents)
      : tensor_view(data, extents, contiguous_strides(extents)) {}

  // Explicit strides, in elements. Strides are not checked for overlap: a stride of 0 that
  // broadcasts one row is legal for inputs.
  constexpr tensor_view(T* data, const extents_type& extents, const extents_type& strides)
      : data_(data), extents_(extents), strides_(strides) {
    for (std::size_t d = 0; d < Rank; ++d)
      detail::require(extents_[d] >= 0, "attnkit::tensor_view: extent ", d, " is ", extents_[d],
                      ", extents must be non-negative");
  }

  // A view of T converts to a view of const T (never the other way).
  template <class U>
  requires(!std::is_same_v<U, T> && std::is_convertible_v<U (*)[], T (*)[]>) constexpr tensor_view(
      const tensor_view<U, Rank>& other)  // NOLINT: implicit on purpose
      : data_(other.data()), extents_(other.extents()), strides_(other.strides()) {}

  constexpr T* data() const noexcept { return data_; }
  constexpr index_t extent(std::size_t d) const noexcept { return extents_[d]; }
  constexpr index_t stride(std::size_t d) const noexcept { return strides_[d]; }
  constexpr const extents_type& extents() const noexcept { return extents_; }
  constexpr const extents_type& strides() const noexcept { return strides_; }

  constexpr index_t size() const noexcept {
    index_t n = 1;
    for (index_t e : extents_) n *= e;
    return n;
  }
  constexpr bool empty() const noexcept { return size() == 0; }

  template <class... Indices>
  requires(sizeof...(Indices) == Rank &&
           (std::is_convertible_v<Indices, index_t> && ...)) constexpr T&
  operator()(Indices... indices) const noexcept {
    const std::array<index_t, Rank> at{static_cast<index_t>(indices)...};
    index_t offset = 0;
    for (std::size_t d = 0; d < Rank; ++d) offset += at[d] * strides_[d];
    return data_[offset];
  }

  // Pointer to the start of the innermost row at the given leading indices.
  template <class... Indices>
  requires(sizeof...(Indices) == Rank - 1) constexpr T* row(Indices... indices) const noexcept {
    const std::array<index_t, Rank - 1> at{static_cast<index_t>(indices)...};
    index_t offset = 0;
    for (std::size_t d = 0; d + 1 < Rank; ++d) offset += at[d] * strides_[d];
    return data_ + offset;
  }

  // Indices [begin, end) of the first dimension (the tokens of an NHD tensor), same strides, no
  // copy: a sequence's rows of a packed batch, or the newest tokens of a cache. Like indexing, it
  // trusts its arguments (0 <= begin <= end <= extent(0)); the front doors check extents first.
  constexpr tensor_view slice(index_t begin, index_t end) const {
    extents_type extents = extents_;
    extents[0] = end - begin;
    return tensor_view(data_ + begin * strides_[0], extents, strides_);
  }

  static constexpr extents_type contiguous_strides(const extents_type& extents) noexcept {
    extents_type strides{};
    index_t s = 1;
    for (std::size_t d = Rank; d-- > 0;) {
      strides[d] = s;
      s *= extents[d];
    }
    return strides;
  }

 private:
  T* data_ = nullptr;
  extents_type extents_{};
  extents_type strides_{};
};

}  // namespace attnkit
