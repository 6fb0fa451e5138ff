// attnkit — shifted_causal: causal attention for a slice of the keys.
//
// Part of <attnkit/distributed/mpi.hpp> (it needs no MPI itself).
//
// A rank that holds keys [o, o + n) of a sequence of N keys runs the kernel on its n keys alone.
// The kernel aligns queries bottom-right against those n keys, but causality is global: the
// query at global position g sees global key o + j iff o + j <= g. With the kernel's local
// positions (query row i of n_q at n - n_q + i, key j at j) and the queries' global positions
// N - n_q + i, that is  j <= local_query_position + shift  with shift = N - (o + n), the number
// of keys after the slice. shift = 0 is attnkit::causal; shift >= n_q makes every key visible.
#pragma once

#include "attnkit/mask/tile.hpp"

namespace attnkit {
namespace mpi {
namespace detail {

struct shifted_causal {
  index_t shift = 0;  // >= 0

  ATTNKIT_HOST_DEVICE constexpr tile_kind classify(position_range q, position_range kv,
                                                   head_index) const noexcept {
    if (kv.begin > q.end - 1 + shift) return tile_kind::empty;
    if (kv.end - 1 <= q.begin + shift) return tile_kind::full;
    return tile_kind::partial;
  }
  ATTNKIT_HOST_DEVICE constexpr bool allows(position q, position kv, head_index) const noexcept {
    return kv <= q + shift;
  }
  template <class F>
  ATTNKIT_HOST_DEVICE constexpr void for_each_visible_run(position q, head_index, position_range kv,
                                                          F&& visit) const {
    const position end = kv.end < q + shift + 1 ? kv.end : q + shift + 1;
    if (kv.begin < end) visit(kv.begin, end);
  }
  ATTNKIT_HOST_DEVICE constexpr bool varies_by_head() const noexcept { return false; }
  template <class F>
  ATTNKIT_HOST_DEVICE constexpr void for_each_key_range(position_range q, head_index, index_t,
                                                        position_range kv, F&& visit) const {
    const position end = kv.end < q.end + shift ? kv.end : q.end + shift;
    if (kv.begin < end) visit(kv.begin, end);
  }
};

}  // namespace detail
}  // namespace mpi
}  // namespace attnkit
