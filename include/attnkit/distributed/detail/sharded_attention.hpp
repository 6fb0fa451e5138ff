// attnkit — attention of replicated queries to a key/value cache sharded across ranks.
//
// Part of <attnkit/distributed/mpi.hpp>. The engine of sharded_decode and of Star Attention's
// second phase (star_attend_query).
//
// Every rank holds the same queries and its own slice of the keys (slices in rank order make
// the sequence). Each rank attends to its slice alone, keeping the log-sum-exp, and one
// MPI_Allreduce merges the (output, lse) pairs exactly (state_reduction.hpp); every rank ends
// with the result. Under a causal mask positions are global and bottom-right aligned against the
// whole cache: the rank's kernel gets shifted_causal with the number of keys after its slice.
#pragma once

#include <mpi.h>

#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "attnkit/attention/attention.hpp"
#include "attnkit/distributed/detail/agreement.hpp"
#include "attnkit/distributed/detail/call_checks.hpp"
#include "attnkit/distributed/detail/shifted_causal.hpp"
#include "attnkit/distributed/detail/state_reduction.hpp"
#include "attnkit/mask/causal.hpp"
#include "attnkit/mask/full.hpp"

namespace attnkit {
namespace mpi {
namespace detail {

template <class Backend, class TQ, class TK, class TV, class TO, class Executor>
void sharded_attention(const char* function, MPI_Comm comm, const Backend& backend,
                       tensor_view<TQ, 3> q, tensor_view<TK, 3> k, tensor_view<TV, 3> v,
                       tensor_view<TO, 3> out, bool is_causal, const attention_options& options,
                       Executor&& executor) {
  const index_t q_tokens = q.extent(0), q_heads = q.extent(1), dim = q.extent(2);
  const index_t width = dim + 1;  // one record: lse, then the output row of one head

  // Buffers depend only on this rank's shapes, so they are allocated inside the local
  // validation: a rank that cannot allocate fails the agreement like a bad shape.
  std::vector<float> records, partial, partial_lse;
  const std::string local_error = capture_local_error([&] {
    attnkit::detail::check_attention_arguments(function, q, k, v, out, options);
    check_distributed_options(function, options);
    check_row_fits(function, "merge record", width, sizeof(float));
    check_count_fits(function, "q tokens · q_heads", q_tokens * q_heads);
    records.resize(static_cast<std::size_t>(q_tokens * q_heads * width));
    partial.resize(static_cast<std::size_t>(q_tokens * q_heads * dim));
    partial_lse.resize(static_cast<std::size_t>(q_heads * q_tokens));
  });
  const call_table table =
      agree_on_call(comm, function, local_error,
                    attention_agreed_values<TQ, TK, TO>(q_heads, k.extent(1), dim, is_causal,
                                                        options, {{"q tokens", q_tokens}}),
                    {k.extent(0)});
  if (q_tokens == 0) return;  // the same on every rank

  int rank = 0;
  MPI_Comm_rank(comm, &rank);
  index_t keys_after = 0;  // keys of the ranks after this one: the causal shift
  for (int r = rank + 1; r < table.ranks(); ++r) keys_after += table.per_rank(r, 0);

  const tensor_view<float, 3> partial_view(partial.data(), {q_tokens, q_heads, dim});
  const tensor_view<float, 2> partial_lse_view(partial_lse.data(), {q_heads, q_tokens});
  if (k.extent(0) > 0) {
    attention_options local = options;
    local.log_sum_exp = partial_lse_view;
    if (!is_causal)
      attention(backend, q, k, v, partial_view, full{}, local, executor);
    else if (keys_after == 0)
      attention(backend, q, k, v, partial_view, causal{}, local, executor);
    else
      attention(backend, q, k, v, partial_view, shifted_causal{keys_after}, local, executor);
  } else {
    // No keys here: the identity of the merge (weight 0).
    std::fill(partial.begin(), partial.end(), 0.0f);
    std::fill(partial_lse.begin(), partial_lse.end(), -std::numeric_limits<float>::infinity());
  }

  for (index_t t = 0; t < q_tokens; ++t)
    for (index_t h = 0; h < q_heads; ++h) {
      float* record = records.data() + (t * q_heads + h) * width;
      record[0] = partial_lse_view(h, t);
      for (index_t d = 0; d < dim; ++d) record[1 + d] = partial_view(t, h, d);
    }
  allreduce_attention_records(comm, records.data(), static_cast<int>(q_tokens * q_heads), dim);

  const bool want_lse = log_sum_exp_requested(options);
  for (index_t t = 0; t < q_tokens; ++t)
    for (index_t h = 0; h < q_heads; ++h) {
      const float* record = records.data() + (t * q_heads + h) * width;
      if (want_lse) options.log_sum_exp(h, t) = record[0];
      for (index_t d = 0; d < dim; ++d) out(t, h, d) = from_float<TO>(record[1 + d]);
    }
}

}  // namespace detail
}  // namespace mpi
}  // namespace attnkit
