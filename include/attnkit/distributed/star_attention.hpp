// attnkit — Star Attention's two phases across MPI processes.
//
// Part of <attnkit/distributed/mpi.hpp>; needs MPI.
//
// Star Attention (Acharya et al. 2024) serves a long context on P hosts in two phases, separated
// by whole model passes (which is why they are two calls: an engine runs phase 1 through every
// layer for the context, then phase 2 through every layer for the query):
//
// Phase 1, context encoding — star_encode_context: the context is cut into blocks, block r on
// rank r. Every block but the first attends to [anchor ; own block], the anchor being the first
// block (rank 0's), so each block sees the sequence start the model was trained with; rank 0
// attends to its block alone. This is Star Attention's approximation BY DESIGN: a block does not
// see the blocks between the anchor and itself. What attnkit computes is exact for that
// definition: rank r's output equals attention(q_r, [k_0 ; k_r], [v_0 ; v_r], mask) (bottom-
// right aligned, so under causal every anchor key is visible and the block is causal in itself).
// Each rank keeps its own block's keys and values as its slice of the cache; the anchor's are
// dropped after the call.
//
// Phase 2, query encoding — star_attend_query: the query tokens (given on every rank; Star
// Attention broadcasts them) attend to the whole distributed cache, each rank to its slice, and
// the partial (output, lse) are merged across ranks. This phase is EXACT global attention over
// the cache (up to fp32 merge rounding): it equals attention() over the concatenation of every
// rank's slice, with a causal mask bottom-right aligned to the whole cache. The query tokens'
// own keys and values belong at the end of the cache, on the last rank (Star Attention's "query
// host"): append them to that rank's slice before the call so the query sees itself causally.
#pragma once

#include <mpi.h>

#include <concepts>
#include <cstring>
#include <string>
#include <type_traits>

#include "attnkit/attention/attention.hpp"
#include "attnkit/distributed/detail/agreement.hpp"
#include "attnkit/distributed/detail/call_checks.hpp"
#include "attnkit/distributed/detail/mpi_handles.hpp"
#include "attnkit/distributed/detail/scratch_buffer.hpp"
#include "attnkit/distributed/detail/sharded_attention.hpp"
#include "attnkit/distributed/detail/token_rows.hpp"
#include "attnkit/mask/causal.hpp"
#include "attnkit/mask/full.hpp"
#include "attnkit/parallel/thread_pool.hpp"

namespace attnkit {
namespace mpi {

// Phase 1. q, k, v, out: this rank's context block, [n_r, heads, head_dim] (the block's queries
// and keys are the same tokens: q and k have n_r tokens each). mask: causal{} (decoders) or
// full{}. options.log_sum_exp ([q_heads, n_r]) receives each row's lse over [anchor ; block].
// Rank 0 broadcasts its keys and values (the anchor: n_0 tokens, kv_heads · head_dim each, in
// their own element type) once. Collective; agreement and errors as in ring_attention.
template <class Backend, class TQ, class TK, class TV, class TO, class Mask,
          parallel::executor Executor>
requires(std::same_as<Mask, full> || std::same_as<Mask, causal>) void star_encode_context(
    MPI_Comm comm, const Backend& backend, tensor_view<TQ, 3> q, tensor_view<TK, 3> k,
    tensor_view<TV, 3> v, tensor_view<TO, 3> out, const Mask& mask,
    const attention_options& options, Executor&& executor) {
  constexpr const char* function = "attnkit::mpi::star_encode_context";
  using KV = std::remove_cv_t<TK>;
  const std::string local_error = detail::capture_local_error([&] {
    attnkit::detail::check_attention_arguments(function, q, k, v, out, options);
    attnkit::detail::require(q.extent(0) == k.extent(0), function, ": q has ", q.extent(0),
                             " tokens but k and v have ", k.extent(0),
                             "; a context block's queries and keys are the same tokens");
    detail::check_distributed_options(function, options);
    detail::check_row_fits(function, "key/value", 2 * k.extent(1) * k.extent(2), sizeof(KV));
  });
  const detail::call_table table = detail::agree_on_call(
      comm, function, local_error,
      detail::attention_agreed_values<TQ, TK, TO>(q.extent(1), k.extent(1), q.extent(2),
                                                  std::same_as<Mask, causal>, options),
      {k.extent(0)});
  int rank = 0;
  MPI_Comm_rank(comm, &rank);
  const index_t anchor = table.per_rank(0, 0);
  detail::check_count_fits(function, "the anchor's token count", anchor);  // same everywhere
  const index_t kv_heads = k.extent(1), dim = k.extent(2), kv_row = 2 * kv_heads * dim;
  // Rank 0 needs no copy of its own block; with one rank there is no anchor to send.
  const bool alone = table.ranks() == 1;
  const index_t own = rank == 0 ? 0 : k.extent(0), packed_anchor = alone ? 0 : anchor;

  // [anchor ; own block] as packed [token][k row | v row]; rank 0 packs only the anchor.
  detail::scratch_buffer<KV> keys;
  const bool allocated = detail::capture_local_error([&] {
                           keys.allocate(static_cast<std::size_t>((packed_anchor + own) * kv_row));
                         }).empty();
  detail::require_all_ranks(comm, function, allocated, "allocating the anchor buffer");
  auto pack = [&](index_t t, index_t row) {
    KV* dst = keys.data() + row * kv_row;
    detail::pack_token(k, t, dst);
    detail::pack_token(v, t, dst + kv_heads * dim);
  };
  if (rank == 0)
    for (index_t t = 0; t < packed_anchor; ++t) pack(t, t);
  if (packed_anchor > 0) {
    const detail::row_datatype row(static_cast<std::size_t>(kv_row) * sizeof(KV));
    MPI_Bcast(keys.data(), static_cast<int>(anchor), row.get(), 0, comm);
  }
  if (rank == 0) {
    attention(backend, q, k, v, out, mask, options, executor);
    return;
  }
  for (index_t t = 0; t < own; ++t) pack(t, anchor + t);
  const tensor_view<const KV, 3> k_view(keys.data(), {anchor + own, kv_heads, dim},
                                        {kv_row, dim, 1});
  const tensor_view<const KV, 3> v_view(keys.data() + kv_heads * dim, {anchor + own, kv_heads, dim},
                                        {kv_row, dim, 1});
  attention(backend, q, k_view, v_view, out, mask, options, executor);
}

template <class Backend, class TQ, class TK, class TV, class TO, class Mask>
requires(std::same_as<Mask, full> || std::same_as<Mask, causal>) void star_encode_context(
    MPI_Comm comm, const Backend& backend, tensor_view<TQ, 3> q, tensor_view<TK, 3> k,
    tensor_view<TV, 3> v, tensor_view<TO, 3> out, const Mask& mask,
    const attention_options& options = {}) {
  star_encode_context(comm, backend, q, k, v, out, mask, options, parallel::default_thread_pool());
}

// Phase 2. q [n_q, q_heads, head_dim]: the query tokens, identical on every rank. k, v: this
// rank's slice of the cache (its context block from phase 1; on the last rank followed by the
// query tokens' own keys and values). out [n_q, q_heads, head_dim] and the optional
// options.log_sum_exp are written on every rank. Causal, global positions: exactly
// sharded_decode(comm, backend, q, k, v, out, causal{}, options).
template <class Backend, class TQ, class TK, class TV, class TO, parallel::executor Executor>
void star_attend_query(MPI_Comm comm, const Backend& backend, tensor_view<TQ, 3> q,
                       tensor_view<TK, 3> k, tensor_view<TV, 3> v, tensor_view<TO, 3> out,
                       const attention_options& options, Executor&& executor) {
  detail::sharded_attention("attnkit::mpi::star_attend_query", comm, backend, q, k, v, out,
                            /*is_causal=*/true, options, executor);
}

template <class Backend, class TQ, class TK, class TV, class TO>
void star_attend_query(MPI_Comm comm, const Backend& backend, tensor_view<TQ, 3> q,
                       tensor_view<TK, 3> k, tensor_view<TV, 3> v, tensor_view<TO, 3> out,
                       const attention_options& options = {}) {
  star_attend_query(comm, backend, q, k, v, out, options, parallel::default_thread_pool());
}

}  // namespace mpi
}  // namespace attnkit
