// attnkit — merging partial attention results of all ranks with one MPI reduction.
//
// Part of <attnkit/distributed/mpi.hpp>.
//
// Each rank's attention over its own keys is a set of records, one per (query token, query
// head): [lse, o_0, ..., o_{D-1}] in fp32. The log-sum-exp merge (core/softmax_state.hpp) is an
// associative and commutative operation on such records (up to rounding), so MPI_Allreduce with
// it as a user-defined operator merges all ranks' partials in one collective: O(log P) steps of
// n_q · q_heads · (head_dim + 1) floats, whatever the length of the cache.
//
// The operator is registered as non-commutative: MPI then combines the partials in rank order,
// the same on every rank, so the result does not depend on the reduction tree's operand order
// (and, with Open MPI, is bitwise the same on every rank).
#pragma once

#include <mpi.h>

#include <cstddef>

#include "attnkit/core/softmax_state.hpp"
#include "attnkit/distributed/detail/mpi_handles.hpp"

namespace attnkit {
namespace mpi {
namespace detail {

// MPI_User_function: inout = in ∘ inout for `count` records of the datatype's width.
inline void merge_attention_records(void* in, void* inout, int* count, MPI_Datatype* type) {
  int bytes = 0;
  MPI_Type_size(*type, &bytes);
  const std::size_t width = static_cast<std::size_t>(bytes) / sizeof(float);  // 1 + head_dim
  const float* a = static_cast<const float*>(in);
  float* b = static_cast<float*>(inout);
  for (int r = 0; r < *count; ++r, a += width, b += width) {
    const merge_weights w = merge_log_sum_exp(a[0], b[0]);
    for (std::size_t c = 1; c < width; ++c) b[c] = w.weight_a * a[c] + w.weight_b * b[c];
    b[0] = w.log_sum_exp;
  }
}

// Merges `count` records of 1 + head_dim floats in place across every rank of comm.
inline void allreduce_attention_records(MPI_Comm comm, float* records, int count,
                                        index_t head_dim) {
  const row_datatype record(static_cast<std::size_t>(head_dim + 1) * sizeof(float));
  const reduction_op merge(&merge_attention_records, /*commutative=*/false);
  MPI_Allreduce(MPI_IN_PLACE, records, count, record.get(), merge.get(), comm);
}

}  // namespace detail
}  // namespace mpi
}  // namespace attnkit
