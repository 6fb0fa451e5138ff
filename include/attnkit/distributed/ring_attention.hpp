// attnkit — ring_attention(): exact attention over a sequence sharded across MPI processes.
//
// Part of <attnkit/distributed/mpi.hpp>; needs MPI.
//
// Ring Attention (Liu et al. 2023): every rank keeps its queries and passes its key/value block
// around a ring of ranks; after P steps every query has seen every block. Each step computes
// attention of the rank's queries to the block in hand (with its log-sum-exp) and merges it into
// a running result with the exact log-sum-exp merge, while the block moves on to the next rank
// with non-blocking sends into a double buffer. The result is exact attention over the whole
// sequence, up to the rounding of the fp32 merge.
//
// Causal work balance: with contiguous shards, rank r's queries see r + 1/2 blocks, so the last
// rank does 2P - 1 times the work of the first and the ring runs at the pace of the slowest. With
// ring_options::balance_causal (default), the sequence is cut into 2P chunks and rank r computes
// on chunks r and 2P-1-r (zig-zag / striped ring attention): every step then costs every rank
// the same (the all-visible block halves of one step balance the half-visible diagonal of the
// first), and every rank computes exactly the same number of (query, key) pairs when 2P divides
// the sequence length. Queries, keys and values move to that layout with one MPI_Alltoallv each
// way (outputs come back the same way), which is O(n) bytes against O(n²/P) compute.
#pragma once

#include <mpi.h>

#include <algorithm>
#include <concepts>
#include <cstddef>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "attnkit/attention/attention.hpp"
#include "attnkit/attention/merge_states.hpp"
#include "attnkit/distributed/detail/agreement.hpp"
#include "attnkit/distributed/detail/block_attention.hpp"
#include "attnkit/distributed/detail/call_checks.hpp"
#include "attnkit/distributed/detail/mpi_handles.hpp"
#include "attnkit/distributed/detail/progress_executor.hpp"
#include "attnkit/distributed/detail/scratch_buffer.hpp"
#include "attnkit/distributed/detail/token_layout.hpp"
#include "attnkit/distributed/detail/token_rows.hpp"
#include "attnkit/mask/causal.hpp"
#include "attnkit/mask/full.hpp"

namespace attnkit {
namespace mpi {

// Where one rank's time went in a ring_attention call, and how much work it did.
struct ring_statistics {
  double total_seconds = 0.0;
  double redistribute_seconds = 0.0;  // to the zig-zag layout and back (0 without balancing)
  double compute_seconds = 0.0;       // kernel calls and merges, over all ring steps
  double wait_seconds = 0.0;  // in MPI_Waitall after a step's compute: communication not hidden
  // (query, key) pairs this rank computed, per query head. FLOPs = 4 · pairs · q_heads · head_dim.
  index_t visible_pairs = 0;
  index_t bytes_sent = 0;  // ring messages this rank sent (keys and values of the blocks)
};

// How the caller's shards map to the sequence.
enum class ring_layout : unsigned char {
  // Rank r holds tokens [n_0 + ... + n_{r-1}, + n_r): contiguous shards in rank order.
  contiguous,
  // Rank r holds chunks r and 2P-1-r of the sequence, concatenated, where chunk c of a sequence
  // of N = Σ n_r tokens is [c·N/(2P), (c+1)·N/(2P)) (integer division). Engines that keep their
  // activations in this layout across layers skip the redistribution entirely.
  zigzag,
};

struct ring_options {
  ring_layout layout = ring_layout::contiguous;
  // Causal, contiguous layout only: compute on the zig-zag layout so every rank does the same
  // work (see above). false computes on the caller's shards as they are (and is there to
  // measure the imbalance).
  bool balance_causal = true;
  // Filled in when not null.
  ring_statistics* statistics = nullptr;
};

// Exact softmax attention of the whole sequence, sharded across the ranks of `comm`.
//
//   q    [n_r, q_heads, head_dim]    this rank's queries
//   k, v [n_r, kv_heads, head_dim]   this rank's keys and values: the same n_r tokens
//   out  [n_r, q_heads, head_dim]    this rank's outputs
//   mask attnkit::full{} or attnkit::causal{}
//
// Rank r holds tokens [n_0 + ... + n_{r-1}, + n_r) of the sequence: shards in rank order,
// lengths free (uneven, or 0); or, with ring_options::layout = zigzag, chunks r and 2P-1-r.
// Positions are global, so causal means "key position <= query
// position" over the whole sequence. Every rank must call with the same heads, head_dim, element
// types, mask, scale and softcap. options.log_sum_exp ([q_heads, n_r]) receives the log-sum-exp
// over the whole sequence (each rank decides for itself); scale and softcap work as in attention();
// alibi_slopes and observers are rejected. Keys and values travel in their own element type
// (fp16/bf16 move half the bytes); accumulation and merges are fp32.
//
// Collective over comm, and it must be called from a thread allowed to make MPI calls
// (MPI_THREAD_FUNNELED suffices; the executor's worker threads never call MPI). Arguments are
// validated and agreed on by all ranks with one collective before any data moves: if any rank's
// arguments are invalid, or the ranks disagree, every rank throws the same attnkit::error and no
// output is written.
template <class Backend, class TQ, class TK, class TV, class TO, class Mask,
          parallel::executor Executor>
requires(std::same_as<Mask, full> || std::same_as<Mask, causal>) void ring_attention(
    MPI_Comm comm, const Backend& backend, tensor_view<TQ, 3> q, tensor_view<TK, 3> k,
    tensor_view<TV, 3> v, tensor_view<TO, 3> out, const Mask&, const attention_options& options,
    const ring_options& ring, Executor&& executor) {
  constexpr const char* function = "attnkit::mpi::ring_attention";
  constexpr bool is_causal = std::same_as<Mask, causal>;
  using Q = std::remove_cv_t<TQ>;
  using KV = std::remove_cv_t<TK>;
  const double started = MPI_Wtime();
  ring_statistics stats;

  // 1. Validate locally, then agree with every rank before anything moves.
  const std::string local_error = detail::capture_local_error([&] {
    attnkit::detail::check_attention_arguments(function, q, k, v, out, options);
    attnkit::detail::require(q.extent(0) == k.extent(0), function, ": q has ", q.extent(0),
                             " tokens but k and v have ", k.extent(0),
                             "; a rank's query and key/value shards must cover the same tokens");
    detail::check_distributed_options(function, options);
    detail::check_row_fits(function, "query", q.extent(1) * q.extent(2), sizeof(Q));
    detail::check_row_fits(function, "key/value", 2 * k.extent(1) * k.extent(2), sizeof(KV));
    detail::check_row_fits(function, "output", q.extent(1) * q.extent(2), sizeof(float));
  });
  const bool want_lse = detail::log_sum_exp_requested(options);
  const detail::call_table table = detail::agree_on_call(
      comm, function, local_error,
      detail::attention_agreed_values<TQ, TK, TO>(
          q.extent(1), k.extent(1), q.extent(2), is_causal, options, {},
          {{"ring_options::balance_causal (0/1)", ring.balance_causal ? 1 : 0},
           {"ring_options::layout (0 = contiguous, 1 = zigzag)",
            static_cast<std::int64_t>(ring.layout)}}),
      {q.extent(0), want_lse ? 1 : 0});

  const int ranks = table.ranks();
  int rank = 0;
  MPI_Comm_rank(comm, &rank);
  std::vector<index_t> lengths(static_cast<std::size_t>(ranks));
  index_t total = 0;
  // Whether each rank wants the log-sum-exp is its own choice (a rank without tokens may pass
  // no view at all); it travels back when any rank wants it.
  bool any_lse = false;
  for (int r = 0; r < ranks; ++r) {
    total += lengths[r] = table.per_rank(r, 0);
    any_lse = any_lse || table.per_rank(r, 1) != 0;
  }
  detail::check_count_fits(function, "the total number of tokens", total);  // same on every rank
  if (total == 0) {
    if (ring.statistics) *ring.statistics = stats;
    return;
  }

  const index_t q_heads = q.extent(1), kv_heads = k.extent(1), dim = q.extent(2);
  const index_t q_row = q_heads * dim, kv_row = 2 * kv_heads * dim;
  const std::vector<detail::token_set> caller = ring.layout == ring_layout::zigzag
                                                    ? detail::zigzag_layout(total, ranks)
                                                    : detail::contiguous_layout(lengths);
  if (ring.layout == ring_layout::zigzag)  // decided from the shared table: same on every rank
    for (int r = 0; r < ranks; ++r)
      attnkit::detail::require(caller[r].size() == lengths[r], function, ": rank ", r, " passed ",
                               lengths[r], " tokens, but in the zig-zag layout of ", total,
                               " tokens over ", ranks, " ranks it holds ", caller[r].size(),
                               " (chunks ", r, " and ", 2 * ranks - 1 - r, ")");
  const std::vector<detail::token_set> work =
      is_causal && ring.balance_causal ? detail::zigzag_layout(total, ranks) : caller;
  const detail::token_set& mine = work[rank];
  const index_t n = mine.size();
  index_t largest_block = 0;
  for (const detail::token_set& s : work) largest_block = std::max(largest_block, s.size());

  // 2. Every buffer, before any message: a rank that cannot allocate makes all ranks throw.
  const detail::duplicated_comm ring_comm(comm);
  detail::scratch_buffer<Q> queries;
  detail::scratch_buffer<KV> blocks[2];
  detail::scratch_buffer<float> partial, partial_lse;
  detail::scratch_buffer<std::byte> send, recv;
  std::vector<float> running, running_lse;  // merged into from the first block: initialised
  const bool allocated =
      detail::capture_local_error([&] {
        queries.allocate(static_cast<std::size_t>(n * q_row));
        for (int b = 0; b < (ranks > 1 ? 2 : 1); ++b)
          blocks[b].allocate(static_cast<std::size_t>(largest_block * kv_row));
        running.assign(static_cast<std::size_t>(n * q_row), 0.0f);
        running_lse.assign(static_cast<std::size_t>(q_heads * n),
                           -std::numeric_limits<float>::infinity());
        partial.allocate(static_cast<std::size_t>(n * q_row));
        partial_lse.allocate(static_cast<std::size_t>(q_heads * n));
        std::size_t send_bytes = 0, recv_bytes = 0;
        for (std::size_t row_bytes : {q_row * sizeof(Q), kv_row * sizeof(KV), q_row * sizeof(TO),
                                      q_heads * sizeof(float)}) {
          const auto s = detail::redistribution_staging(caller, work, rank, row_bytes);
          const auto b = detail::redistribution_staging(work, caller, rank, row_bytes);
          send_bytes = std::max({send_bytes, s.send, b.send});
          recv_bytes = std::max({recv_bytes, s.recv, b.recv});
        }
        send.allocate(send_bytes);
        recv.allocate(recv_bytes);
      }).empty();
  detail::require_all_ranks(ring_comm.get(), function, allocated, "allocating the work buffers");

  // 3. Queries, keys and values to the work layout (a local copy when it is the caller's).
  double mark = MPI_Wtime();
  detail::redistribute_rows(
      ring_comm.get(), caller, work, q_row * sizeof(Q),
      [&](index_t t, std::byte* dst) { detail::pack_token(q, t, reinterpret_cast<Q*>(dst)); },
      [&](index_t t, const std::byte* src) {
        std::memcpy(queries.data() + t * q_row, src, static_cast<std::size_t>(q_row) * sizeof(Q));
      },
      send.data(), recv.data());
  detail::redistribute_rows(
      ring_comm.get(), caller, work, kv_row * sizeof(KV),
      [&](index_t t, std::byte* dst) {
        detail::pack_token(k, t, reinterpret_cast<KV*>(dst));
        detail::pack_token(v, t, reinterpret_cast<KV*>(dst) + kv_heads * dim);
      },
      [&](index_t t, const std::byte* src) {
        std::memcpy(blocks[0].data() + t * kv_row, src,
                    static_cast<std::size_t>(kv_row) * sizeof(KV));
      },
      send.data(), recv.data());
  if (work != caller) stats.redistribute_seconds += MPI_Wtime() - mark;

  // 4. The ring: at step s this rank holds the block of rank (rank - s) mod P, sends it to the
  // right and receives the next from the left while computing on it.
  const detail::row_datatype kv_type(kv_row * sizeof(KV));
  const int left = (rank + ranks - 1) % ranks, right = (rank + 1) % ranks;
  attention_options block_options;
  block_options.scale = options.scale;
  block_options.softcap = options.softcap;
  for (int step = 0; step < ranks; ++step) {
    const int holder = (rank - step + ranks) % ranks;  // whose keys are in hand
    const KV* block = blocks[step % 2].data();
    detail::request_set requests;
    if (step + 1 < ranks) {
      const int next = (rank - step - 1 + ranks) % ranks;
      MPI_Irecv(blocks[(step + 1) % 2].data(), static_cast<int>(work[next].size()), kv_type.get(),
                left, 0, ring_comm.get(), requests.slot(0));
      MPI_Isend(block, static_cast<int>(work[holder].size()), kv_type.get(), right, 0,
                ring_comm.get(), requests.slot(1));
      stats.bytes_sent += work[holder].size() * kv_row * static_cast<index_t>(sizeof(KV));
    }
    mark = MPI_Wtime();
    detail::progress_executor progress(executor, requests);
    const detail::block_plan plan = detail::plan_block_calls(mine, work[holder], is_causal);
    for (int c = 0; c < plan.count; ++c) {
      const detail::block_call& call = plan.calls[c];
      stats.visible_pairs += call.visible_pairs();
      const tensor_view<const Q, 3> q_view(queries.data() + call.q_begin * q_row,
                                           {call.q_count, q_heads, dim});
      const tensor_view<const KV, 3> k_view(block, {call.kv_count, kv_heads, dim},
                                            {kv_row, dim, 1});
      const tensor_view<const KV, 3> v_view(block + kv_heads * dim, {call.kv_count, kv_heads, dim},
                                            {kv_row, dim, 1});
      const tensor_view<float, 3> partial_view(partial.data(), {call.q_count, q_heads, dim});
      block_options.log_sum_exp =
          tensor_view<float, 2>(partial_lse.data(), {q_heads, call.q_count});
      switch (call.mask) {
        case detail::block_mask::full:
          attention(backend, q_view, k_view, v_view, partial_view, full{}, block_options, progress);
          break;
        case detail::block_mask::causal:
          attention(backend, q_view, k_view, v_view, partial_view, causal{}, block_options,
                    progress);
          break;
        case detail::block_mask::shifted:
          attention(backend, q_view, k_view, v_view, partial_view,
                    detail::shifted_causal{call.shift}, block_options, progress);
          break;
      }
      const tensor_view<float, 3> running_view(running.data() + call.q_begin * q_row,
                                               {call.q_count, q_heads, dim});
      const tensor_view<float, 2> running_lse_view(running_lse.data() + call.q_begin,
                                                   {q_heads, call.q_count}, {n, 1});
      merge_states(running_view, tensor_view<const float, 2>(running_lse_view), partial_view,
                   tensor_view<const float, 2>(block_options.log_sum_exp), running_view,
                   running_lse_view);
    }
    const double computed = MPI_Wtime();
    stats.compute_seconds += computed - mark;
    requests.wait();
    stats.wait_seconds += MPI_Wtime() - computed;
  }

  // 5. Outputs (and log-sum-exp) back to the caller's layout, in the caller's types.
  mark = MPI_Wtime();
  detail::redistribute_rows(
      ring_comm.get(), work, caller, q_row * sizeof(TO),
      [&](index_t t, std::byte* dst) {
        TO* row = reinterpret_cast<TO*>(dst);
        const float* acc = running.data() + t * q_row;
        for (index_t e = 0; e < q_row; ++e) row[e] = from_float<TO>(acc[e]);
      },
      [&](index_t t, const std::byte* src) {
        detail::unpack_token(reinterpret_cast<const TO*>(src), out, t);
      },
      send.data(), recv.data());
  if (any_lse) {
    detail::redistribute_rows(
        ring_comm.get(), work, caller, q_heads * sizeof(float),
        [&](index_t t, std::byte* dst) {
          float* row = reinterpret_cast<float*>(dst);
          for (index_t h = 0; h < q_heads; ++h) row[h] = running_lse[h * n + t];
        },
        [&](index_t t, const std::byte* src) {
          const float* row = reinterpret_cast<const float*>(src);
          if (want_lse)
            for (index_t h = 0; h < q_heads; ++h) options.log_sum_exp(h, t) = row[h];
        },
        send.data(), recv.data());
  }
  if (work != caller) stats.redistribute_seconds += MPI_Wtime() - mark;
  stats.total_seconds = MPI_Wtime() - started;
  if (ring.statistics) *ring.statistics = stats;
}

// The same on parallel::default_thread_pool() within each rank.
template <class Backend, class TQ, class TK, class TV, class TO, class Mask>
requires(std::same_as<Mask, full> || std::same_as<Mask, causal>) void ring_attention(
    MPI_Comm comm, const Backend& backend, tensor_view<TQ, 3> q, tensor_view<TK, 3> k,
    tensor_view<TV, 3> v, tensor_view<TO, 3> out, const Mask& mask,
    const attention_options& options = {}, const ring_options& ring = {}) {
  ring_attention(comm, backend, q, k, v, out, mask, options, ring, parallel::default_thread_pool());
}

}  // namespace mpi
}  // namespace attnkit
