// attnkit — the attention of a rank's queries to one block of keys, merged into a running result.
//
// Part of <attnkit/distributed/mpi.hpp> (it needs no MPI itself).
//
// Ring attention visits the keys block by block. For a block, every query range of the rank
// (a token_set: at most two ranges of global positions) sees, under a causal mask, a prefix of
// the block's packed keys: all keys before the range, and the keys inside it up to its own
// position. plan_block_calls turns that into at most four kernel calls over contiguous rows of
// the packed buffers, each with a mask the kernel understands in its local, bottom-right-aligned
// coordinates (full, causal, or shifted_causal when the block's keys inside the range stop
// before the range does). Calls that are all-visible over the same key prefix and adjacent rows
// are fused into one. The results merge into the running (output, log-sum-exp) exactly: the
// merge of attention over disjoint key sets (core/softmax_state.hpp).
#pragma once

#include <algorithm>
#include <array>

#include "attnkit/distributed/detail/shifted_causal.hpp"
#include "attnkit/distributed/detail/token_layout.hpp"

namespace attnkit {
namespace mpi {
namespace detail {

enum class block_mask : unsigned char { full, causal, shifted };

// Query rows [q_begin, q_begin + q_count) of the rank's packed queries against the first
// kv_count packed keys of the block.
struct block_call {
  index_t q_begin = 0;
  index_t q_count = 0;
  index_t kv_count = 0;
  block_mask mask = block_mask::full;
  index_t shift = 0;  // for block_mask::shifted

  // (query, key) pairs the call computes per query head: its share of the FLOPs.
  index_t visible_pairs() const noexcept {
    if (mask == block_mask::full) return q_count * kv_count;
    index_t pairs = 0;
    for (index_t i = 0; i < q_count; ++i)
      pairs += std::clamp<index_t>(kv_count - q_count + i + 1 + shift, 0, kv_count);
    return pairs;
  }
};

struct block_plan {
  std::array<block_call, 4> calls{};
  int count = 0;
};

inline block_plan plan_block_calls(const token_set& queries, const token_set& keys, bool causal) {
  block_plan plan;
  if (queries.size() == 0 || keys.size() == 0) return plan;
  if (!causal) {
    plan.calls[plan.count++] = {0, queries.size(), keys.size(), block_mask::full, 0};
    return plan;
  }
  auto add = [&](const block_call& call) {
    if (call.kv_count == 0) return;  // no key visible to any row of the piece
    if (plan.count > 0) {
      block_call& last = plan.calls[plan.count - 1];
      if (last.mask == block_mask::full && call.mask == block_mask::full &&
          last.kv_count == call.kv_count && last.q_begin + last.q_count == call.q_begin) {
        last.q_count += call.q_count;
        return;
      }
    }
    plan.calls[plan.count++] = call;
  };
  for (const position_range& range : queries.parts) {
    if (range.begin >= range.end) continue;
    // Cut the range where a key part begins inside it: each piece then meets at most one key
    // part, so its keys inside the piece are one contiguous run [run_begin, run_end).
    std::array<position, 4> cuts{range.begin, range.end, range.end, range.end};
    int n = 1;
    for (const position_range& kp : keys.parts)
      if (kp.begin < kp.end && kp.begin > range.begin && kp.begin < range.end) cuts[n++] = kp.begin;
    cuts[n] = range.end;
    for (int i = 0; i < n; ++i) {
      const position begin = cuts[i], end = cuts[i + 1];
      if (begin >= end) continue;
      const index_t before = keys.count_below(begin);
      const index_t inside = keys.count_below(end) - before;
      block_call call{queries.local_index(begin), end - begin, before + inside, block_mask::full,
                      0};
      if (inside > 0) {
        position run_end = begin;
        for (const position_range& kp : keys.parts)
          if (kp.begin < end && kp.end > begin) run_end = std::min(kp.end, end);
        // Key j of the prefix (local) is visible to query row r iff its global position is
        // <= begin + r; the kernel puts row r at local position kv_count - q_count + r.
        call.shift = end - run_end;
        call.mask = call.shift == 0 ? block_mask::causal : block_mask::shifted;
      }
      add(call);
    }
  }
  return plan;
}

}  // namespace detail
}  // namespace mpi
}  // namespace attnkit
