// attnkit — copying one token's [heads, head_dim] row between a caller's (possibly strided)
// tensor_view and a packed buffer.
//
// Part of <attnkit/distributed/mpi.hpp> (it needs no MPI itself).
//
// Distributed attention moves whole tokens: a packed row is heads · head_dim elements, head-major,
// in the element type that travels (the caller's input type, so fp16/bf16 inputs move half the
// bytes of fp32).
#pragma once

#include <cstddef>
#include <cstring>
#include <type_traits>

#include "attnkit/core/float16.hpp"
#include "attnkit/core/tensor_view.hpp"

namespace attnkit {
namespace mpi {
namespace detail {

// dst[h · D + d] = view(t, h, d), converted to Packed.
template <class Packed, class T>
void pack_token(const tensor_view<T, 3>& view, index_t t, Packed* dst) {
  const index_t heads = view.extent(1), dim = view.extent(2);
  if constexpr (std::is_same_v<std::remove_cv_t<T>, Packed>) {
    if (view.stride(2) == 1) {  // rows of head_dim elements: copy them whole
      for (index_t h = 0; h < heads; ++h)
        std::memcpy(dst + h * dim, view.row(t, h), static_cast<std::size_t>(dim) * sizeof(Packed));
      return;
    }
  }
  for (index_t h = 0; h < heads; ++h)
    for (index_t d = 0; d < dim; ++d) {
      if constexpr (std::is_same_v<std::remove_cv_t<T>, Packed>)
        dst[h * dim + d] = view(t, h, d);
      else
        dst[h * dim + d] = from_float<Packed>(to_float(view(t, h, d)));
    }
}

// view(t, h, d) = src[h · D + d], converted to the view's type.
template <class Packed, class T>
void unpack_token(const Packed* src, const tensor_view<T, 3>& view, index_t t) {
  const index_t heads = view.extent(1), dim = view.extent(2);
  if constexpr (std::is_same_v<T, Packed>) {
    if (view.stride(2) == 1) {
      for (index_t h = 0; h < heads; ++h)
        std::memcpy(view.row(t, h), src + h * dim, static_cast<std::size_t>(dim) * sizeof(Packed));
      return;
    }
  }
  for (index_t h = 0; h < heads; ++h)
    for (index_t d = 0; d < dim; ++d) {
      if constexpr (std::is_same_v<T, Packed>)
        view(t, h, d) = src[h * dim + d];
      else
        view(t, h, d) = from_float<T>(to_float(src[h * dim + d]));
    }
}

}  // namespace detail
}  // namespace mpi
}  // namespace attnkit
