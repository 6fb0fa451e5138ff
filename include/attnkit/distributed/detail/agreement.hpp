// attnkit — agreeing on a distributed call before any data moves.
//
// Part of <attnkit/distributed/mpi.hpp>.
//
// A rank that throws on its own (a bad shape, say) while its peers go on to send it data leaves
// them blocked forever. So every distributed entry point first validates locally, catching
// instead of throwing, and then runs one collective (agree_on_call) in which each rank
// contributes its status and a summary of its arguments. Every rank sees the same table and
// therefore reaches the same verdict: either all ranks continue, or all throw attnkit::error
// with the same message — the failing rank's own message, or which argument the ranks disagree
// on. Only after that do point-to-point messages start.
#pragma once

#include <mpi.h>

#include <bit>
#include <cstdint>
#include <exception>
#include <initializer_list>
#include <ostream>
#include <sstream>
#include <string>
#include <vector>

#include "attnkit/core/error.hpp"
#include "attnkit/core/options.hpp"
#include "attnkit/distributed/detail/call_checks.hpp"
#include "attnkit/distributed/detail/mpi_handles.hpp"

namespace attnkit {
namespace mpi {
namespace detail {

// A value every rank must pass identically (a head count, an element type, the scale...).
enum class shown_as : unsigned char { integer, element_type, float_bits };

struct agreed_value {
  const char* name;
  std::int64_t value;
  shown_as show = shown_as::integer;  // how a disagreement prints it
};

inline void print_agreed_value(std::ostream& s, shown_as show, std::int64_t value) {
  if (show == shown_as::element_type)
    s << element_type_name(value);
  else if (show == shown_as::float_bits)
    s << std::bit_cast<float>(static_cast<std::uint32_t>(value));
  else
    s << value;
}

// What every rank contributed: status, the agreed values, then values that may differ per rank
// (shard lengths).
class call_table {
 public:
  call_table(int ranks, int agreed, int per_rank)
      : ranks_(ranks),
        agreed_(agreed),
        columns_(1 + agreed + per_rank),
        values_(static_cast<std::size_t>(ranks) * static_cast<std::size_t>(columns_)) {}

  int ranks() const noexcept { return ranks_; }
  // The agreed value `i` (the same on every rank once the call is agreed).
  std::int64_t agreed(int i) const { return at(0, 1 + i); }
  // The per-rank value `i` of `rank`.
  std::int64_t per_rank(int rank, int i) const { return at(rank, 1 + agreed_ + i); }

  std::int64_t* data() noexcept { return values_.data(); }
  int columns() const noexcept { return columns_; }
  std::int64_t at(int rank, int column) const {
    return values_[static_cast<std::size_t>(rank) * static_cast<std::size_t>(columns_) +
                   static_cast<std::size_t>(column)];
  }

 private:
  int ranks_, agreed_, columns_;
  std::vector<std::int64_t> values_;
};

// Runs `validate` (which throws attnkit::error, or anything else, on a bad argument) without
// letting it escape: the message is returned, empty when the arguments are valid.
template <class F>
std::string capture_local_error(F&& validate) {
  try {
    validate();
  } catch (const std::exception& e) {
    return e.what()[0] != '\0' ? std::string(e.what()) : std::string("unknown error");
  } catch (...) {
    return "unknown exception";
  }
  return {};
}

// Collective over comm: gathers every rank's status and summary, then throws the same
// attnkit::error on every rank if any rank's local validation failed or the agreed values
// differ. Returns the gathered table otherwise.
inline call_table agree_on_call(MPI_Comm comm, const char* function, const std::string& local_error,
                                const std::vector<agreed_value>& agreed,
                                std::initializer_list<std::int64_t> per_rank) {
  int ranks = 0, rank = 0;
  MPI_Comm_size(comm, &ranks);
  MPI_Comm_rank(comm, &rank);
  call_table table(ranks, static_cast<int>(agreed.size()), static_cast<int>(per_rank.size()));

  std::vector<std::int64_t> mine;
  mine.reserve(static_cast<std::size_t>(table.columns()));
  mine.push_back(local_error.empty() ? 0 : 1);
  for (const agreed_value& a : agreed) mine.push_back(a.value);
  for (std::int64_t v : per_rank) mine.push_back(v);
  MPI_Allgather(mine.data(), table.columns(), MPI_INT64_T, table.data(), table.columns(),
                MPI_INT64_T, comm);

  // 1. A rank whose arguments are invalid: its message, broadcast, becomes every rank's error.
  int failing = -1;
  for (int r = 0; r < ranks && failing < 0; ++r)
    if (table.at(r, 0) != 0) failing = r;
  if (failing >= 0) {
    std::string message = rank == failing ? local_error : std::string();
    std::int64_t length = static_cast<std::int64_t>(message.size());
    MPI_Bcast(&length, 1, MPI_INT64_T, failing, comm);
    message.resize(static_cast<std::size_t>(length));
    MPI_Bcast(message.data(), static_cast<int>(length), MPI_CHAR, failing, comm);
    std::ostringstream s;
    s << message << " (on rank " << failing << " of " << ranks
      << "; every rank of the call throws this error)";
    throw error(s.str());
  }

  // 2. Arguments every rank must share.
  int column = 1;
  for (const agreed_value& a : agreed) {
    for (int r = 1; r < ranks; ++r) {
      if (table.at(r, column) == table.at(0, column)) continue;
      std::ostringstream s;
      s << function << ": the ranks disagree on " << a.name << ": rank 0 passed ";
      print_agreed_value(s, a.show, table.at(0, column));
      s << ", rank " << r << " passed ";
      print_agreed_value(s, a.show, table.at(r, column));
      s << "; every rank must pass the same " << a.name;
      throw error(s.str());
    }
    ++column;
  }
  return table;
}

// What every rank of a distributed attention call must pass identically: head counts, head_dim,
// element types, the mask, scale and softcap, with the entry point's own values `before` and
// `after` them (a disagreement is reported for the first value in this order).
template <class TQ, class TK, class TO>
std::vector<agreed_value> attention_agreed_values(index_t q_heads, index_t kv_heads,
                                                  index_t head_dim, bool is_causal,
                                                  const attention_options& options,
                                                  std::initializer_list<agreed_value> before = {},
                                                  std::initializer_list<agreed_value> after = {}) {
  std::vector<agreed_value> values(before);
  values.insert(values.end(),
                {{"q_heads", q_heads},
                 {"kv_heads", kv_heads},
                 {"head_dim", head_dim},
                 {"query element type", element_type_code<TQ>(), shown_as::element_type},
                 {"key/value element type", element_type_code<TK>(), shown_as::element_type},
                 {"output element type", element_type_code<TO>(), shown_as::element_type},
                 {"mask (0 = full, 1 = causal)", is_causal ? 1 : 0},
                 {"scale", scale_bits(options, head_dim), shown_as::float_bits},
                 {"softcap", softcap_bits(options), shown_as::float_bits}});
  values.insert(values.end(), after);
  return values;
}

// Collective over comm: true on every rank when `ok` is true on every rank. Used after the
// allocations that depend on the agreed table, so that a rank that ran out of memory does not
// leave its peers waiting for data it will never send.
inline void require_all_ranks(MPI_Comm comm, const char* function, bool ok, const char* what) {
  int local = ok ? 1 : 0, all = 0;
  MPI_Allreduce(&local, &all, 1, MPI_INT, MPI_MIN, comm);
  attnkit::detail::require(all == 1, function, ": ", what, " failed on at least one rank");
}

}  // namespace detail
}  // namespace mpi
}  // namespace attnkit
