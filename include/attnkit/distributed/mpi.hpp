// attnkit — exact attention across processes on MPI. Optional: include it only where an MPI
// implementation is available (it includes <mpi.h>; link MPI::MPI_CXX). Nothing else in attnkit
// includes it.
//
//   #include <attnkit/distributed/mpi.hpp>
//
//   // Prefill of a sequence sharded over the ranks (rank r holds a contiguous shard, in rank
//   // order): exact attention over the whole sequence, causal work balanced across ranks.
//   attnkit::mpi::ring_attention(MPI_COMM_WORLD, attnkit::cpu, q, k, v, out, attnkit::causal{});
//
//   // Decode against a KV cache sharded over the ranks: same query on every rank, result on
//   // every rank, one MPI_Allreduce of (output, log-sum-exp).
//   attnkit::mpi::sharded_decode(MPI_COMM_WORLD, attnkit::cpu, q, k_shard, v_shard, out,
//                                attnkit::causal{});
//
//   // Star Attention: phase 1 (blockwise context encoding with the anchor block, approximate
//   // by design), phase 2 (the query against the whole distributed cache, exact).
//   attnkit::mpi::star_encode_context(MPI_COMM_WORLD, attnkit::cpu, q_blk, k_blk, v_blk, out_blk,
//                                     attnkit::causal{});
//   attnkit::mpi::star_attend_query(MPI_COMM_WORLD, attnkit::cpu, q_query, k_blk, v_blk, out_q);
//
// All three are collective over the communicator, run the local attention on the CPU backends
// (any backend tag and executor, as attention()), and merge partial results with the exact
// log-sum-exp merge. Each first agrees on the call with one collective, so a rank with bad or
// mismatched arguments makes EVERY rank throw the same attnkit::error before any data moves —
// no hang, no output written, no request left outstanding.
#pragma once

#include "attnkit/distributed/ring_attention.hpp"
#include "attnkit/distributed/sharded_decode.hpp"
#include "attnkit/distributed/star_attention.hpp"
