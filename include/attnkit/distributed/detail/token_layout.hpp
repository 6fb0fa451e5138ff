// attnkit — which global token positions each rank holds, and moving token rows between two
// such layouts.
//
// Part of <attnkit/distributed/mpi.hpp>.
//
// A rank holds a token_set: at most two disjoint, ascending ranges of global positions, stored
// packed in that order (row k of the rank's buffer is the k-th position of the set). Two layouts
// matter:
//   - the caller's: rank r holds one contiguous shard, the shards in rank order;
//   - zig-zag (striped ring attention): the sequence is cut into 2P near-equal chunks and rank r
//     holds chunks r and 2P-1-r, so under a causal mask every rank has the same number of
//     (query, key) pairs to compute (an early chunk with little past, a late one with much).
// redistribute_rows moves rows from one layout to the other with a single MPI_Alltoallv.
#pragma once

#include <mpi.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cstddef>
#include <utility>
#include <vector>

#include "attnkit/core/error.hpp"
#include "attnkit/distributed/detail/mpi_handles.hpp"
#include "attnkit/mask/tile.hpp"

namespace attnkit {
namespace mpi {
namespace detail {

struct token_set {
  std::array<position_range, 2> parts{};  // ascending, disjoint; empty parts come last

  static token_set of(position_range a, position_range b) {
    // Normalise: drop empty parts and join touching ones, so equal sets compare equal.
    token_set s;
    int n = 0;
    for (position_range p : {a, b}) {
      if (p.begin >= p.end) continue;
      if (n > 0 && s.parts[n - 1].end == p.begin)
        s.parts[n - 1].end = p.end;
      else
        s.parts[n++] = p;
    }
    return s;
  }

  index_t size() const noexcept {
    return (parts[0].end - parts[0].begin) + (parts[1].end - parts[1].begin);
  }
  // How many positions of the set lie below p.
  index_t count_below(position p) const noexcept {
    index_t n = 0;
    for (const position_range& r : parts) n += std::clamp<index_t>(p - r.begin, 0, r.end - r.begin);
    return n;
  }
  // Row of position p (which must be in the set) in the packed buffer.
  index_t local_index(position p) const noexcept { return count_below(p); }

  friend bool operator==(const token_set& a, const token_set& b) noexcept {
    for (std::size_t i = 0; i < 2; ++i)
      if (a.parts[i].begin != b.parts[i].begin || a.parts[i].end != b.parts[i].end) return false;
    return true;
  }
};

// Ascending list of the (at most four) ranges in a ∩ b.
struct range_list {
  std::array<position_range, 4> ranges{};
  int count = 0;
  index_t tokens() const noexcept {
    index_t n = 0;
    for (int i = 0; i < count; ++i) n += ranges[i].end - ranges[i].begin;
    return n;
  }
};

inline range_list intersect(const token_set& a, const token_set& b) {
  range_list out;
  for (const position_range& x : a.parts)
    for (const position_range& y : b.parts) {
      const position begin = std::max(x.begin, y.begin), end = std::min(x.end, y.end);
      if (begin < end) out.ranges[out.count++] = {begin, end};
    }
  // Insertion sort of at most four disjoint ranges (std::sort trips GCC 12's -Warray-bounds).
  for (int i = 1; i < out.count; ++i)
    for (int j = i; j > 0 && out.ranges[j].begin < out.ranges[j - 1].begin; --j)
      std::swap(out.ranges[j], out.ranges[j - 1]);
  return out;
}

// The caller's layout: shard r is [sum of lengths before r, + length r).
inline std::vector<token_set> contiguous_layout(const std::vector<index_t>& lengths) {
  std::vector<token_set> sets(lengths.size());
  position begin = 0;
  for (std::size_t r = 0; r < lengths.size(); ++r) {
    sets[r] = token_set::of({begin, begin + lengths[r]}, {});
    begin += lengths[r];
  }
  return sets;
}

// Zig-zag over `ranks` ranks for a sequence of `total` tokens: chunk c of 2P is
// [c·total/2P, (c+1)·total/2P) (sizes differ by at most one); rank r holds chunks r and 2P-1-r.
inline std::vector<token_set> zigzag_layout(index_t total, int ranks) {
  const index_t chunks = 2 * static_cast<index_t>(ranks);
  auto chunk = [&](index_t c) -> position_range {
    return {c * total / chunks, (c + 1) * total / chunks};
  };
  std::vector<token_set> sets(static_cast<std::size_t>(ranks));
  for (int r = 0; r < ranks; ++r) sets[r] = token_set::of(chunk(r), chunk(chunks - 1 - r));
  return sets;
}

// Moves token rows of `row_bytes` bytes from layout `from` to layout `to` (both over the same
// positions). pack(k, dst) writes row k of this rank's `from` set to dst; unpack(k, src) reads
// row k of this rank's `to` set from src. Collective over comm (one MPI_Alltoallv), except when
// the layouts are equal: then rows are copied locally and no message is sent (every rank takes
// the same branch, since every rank holds both layouts). send and recv are scratch the caller
// allocated (see staging_bytes) before the agreement that precedes any data movement.
struct staging_bytes {
  std::size_t send = 0, recv = 0;
};

inline staging_bytes redistribution_staging(const std::vector<token_set>& from,
                                            const std::vector<token_set>& to, int rank,
                                            std::size_t row_bytes) {
  if (from == to) return {row_bytes, 0};
  return {static_cast<std::size_t>(from[rank].size()) * row_bytes,
          static_cast<std::size_t>(to[rank].size()) * row_bytes};
}

template <class Pack, class Unpack>
void redistribute_rows(MPI_Comm comm, const std::vector<token_set>& from,
                       const std::vector<token_set>& to, std::size_t row_bytes, Pack&& pack,
                       Unpack&& unpack, std::byte* send, std::byte* recv) {
  int ranks = 0, rank = 0;
  MPI_Comm_size(comm, &ranks);
  MPI_Comm_rank(comm, &rank);
  if (from == to) {
    // One row of staging: the rows may change type or strides between the two sides.
    for (index_t k = 0; k < from[rank].size(); ++k) {
      pack(k, send);
      unpack(k, send);
    }
    return;
  }

  std::vector<int> send_counts(ranks), send_offsets(ranks), recv_counts(ranks), recv_offsets(ranks);
  int sent = 0, received = 0;
  for (int peer = 0; peer < ranks; ++peer) {
    // Rows for `peer`: my positions that `peer` holds in the target layout, ascending.
    const range_list outgoing = intersect(from[rank], to[peer]);
    send_offsets[peer] = sent;
    for (int i = 0; i < outgoing.count; ++i)
      for (position p = outgoing.ranges[i].begin; p < outgoing.ranges[i].end; ++p, ++sent)
        pack(from[rank].local_index(p), send + static_cast<std::size_t>(sent) * row_bytes);
    send_counts[peer] = sent - send_offsets[peer];
    recv_offsets[peer] = received;
    recv_counts[peer] = static_cast<int>(intersect(from[peer], to[rank]).tokens());
    received += recv_counts[peer];
  }
  const row_datatype row(row_bytes);
  MPI_Alltoallv(send, send_counts.data(), send_offsets.data(), row.get(), recv, recv_counts.data(),
                recv_offsets.data(), row.get(), comm);
  // Rows from `peer` arrive in ascending position order; place each at its row in my target set.
  for (int peer = 0; peer < ranks; ++peer) {
    const range_list incoming = intersect(from[peer], to[rank]);
    std::size_t at = static_cast<std::size_t>(recv_offsets[peer]);
    for (int i = 0; i < incoming.count; ++i)
      for (position p = incoming.ranges[i].begin; p < incoming.ranges[i].end; ++p, ++at)
        unpack(to[rank].local_index(p), recv + at * row_bytes);
  }
}

}  // namespace detail
}  // namespace mpi
}  // namespace attnkit
