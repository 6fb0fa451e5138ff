// attnkit — sharded_decode(): queries against a key/value cache sharded across MPI processes.
//
// Part of <attnkit/distributed/mpi.hpp>; needs MPI.
#pragma once

#include <mpi.h>

#include <concepts>

#include "attnkit/distributed/detail/sharded_attention.hpp"
#include "attnkit/parallel/thread_pool.hpp"

namespace attnkit {
namespace mpi {

// Exact attention of the same queries, given on every rank, to a cache whose keys are split
// across the ranks of `comm`; the result lands on every rank.
//
//   q    [n_q, q_heads, head_dim]     identical on every rank (decode: n_q = 1)
//   k, v [n_r, kv_heads, head_dim]    this rank's slice of the cache; slices in rank order make
//                                     the sequence of N = Σ n_r keys (any n_r, including 0)
//   out  [n_q, q_heads, head_dim]     written on every rank
//   mask attnkit::full{} or attnkit::causal{}: positions are global and bottom-right aligned to
//        the whole cache (query i sits at N - n_q + i), so decode and chunked prefill over a
//        sharded cache behave exactly as attention() over the concatenated cache
//
// Each rank attends to its slice (on `executor`), then one MPI_Allreduce of n_q · q_heads
// records of (lse, output row) merges the partials exactly. options.log_sum_exp ([q_heads, n_q])
// receives the global log-sum-exp on the ranks that pass one. Agreement, errors and threading as
// in ring_attention: every rank throws the same attnkit::error before any data moves if any
// rank's arguments are bad or the ranks' shapes, types, masks, scale or softcap differ.
template <class Backend, class TQ, class TK, class TV, class TO, class Mask,
          parallel::executor Executor>
requires(std::same_as<Mask, full> || std::same_as<Mask, causal>) void sharded_decode(
    MPI_Comm comm, const Backend& backend, tensor_view<TQ, 3> q, tensor_view<TK, 3> k,
    tensor_view<TV, 3> v, tensor_view<TO, 3> out, const Mask&, const attention_options& options,
    Executor&& executor) {
  detail::sharded_attention("attnkit::mpi::sharded_decode", comm, backend, q, k, v, out,
                            std::same_as<Mask, causal>, options, executor);
}

template <class Backend, class TQ, class TK, class TV, class TO, class Mask>
requires(std::same_as<Mask, full> ||
         std::same_as<Mask, causal>) void sharded_decode(MPI_Comm comm, const Backend& backend,
                                                         tensor_view<TQ, 3> q, tensor_view<TK, 3> k,
                                                         tensor_view<TV, 3> v,
                                                         tensor_view<TO, 3> out, const Mask& mask,
                                                         const attention_options& options = {}) {
  sharded_decode(comm, backend, q, k, v, out, mask, options, parallel::default_thread_pool());
}

}  // namespace mpi
}  // namespace attnkit
