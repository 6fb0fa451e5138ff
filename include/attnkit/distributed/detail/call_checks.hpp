// attnkit — local argument checks shared by the distributed entry points.
//
// Part of <attnkit/distributed/mpi.hpp> (it needs no MPI itself).
#pragma once

#include <bit>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "attnkit/core/error.hpp"
#include "attnkit/core/options.hpp"

namespace attnkit {
namespace mpi {
namespace detail {

// ALiBi biases and observers depend on positions and rows the local kernels do not see as the
// caller does (a rank's kernel sees its block of keys at local positions), so the distributed
// entry points reject them instead of computing something subtly different.
inline void check_distributed_options(const char* function, const attention_options& options) {
  attnkit::detail::require(options.alibi_slopes.empty() && options.alibi_slopes.data() == nullptr,
                           function,
                           ": alibi_slopes are not supported (ALiBi biases need global "
                           "positions that the per-rank kernels do not see)");
  attnkit::detail::require(!options.observer, function,
                           ": observers are not supported by the distributed entry points");
}

// A token row travels as one MPI element and a count of rows as an int.
inline void check_row_fits(const char* function, const char* what, index_t elements,
                           std::size_t element_bytes) {
  const auto bytes = static_cast<unsigned long long>(elements) * element_bytes;
  attnkit::detail::require(bytes <= static_cast<unsigned long long>(INT_MAX), function, ": a ",
                           what, " row of ", bytes, " bytes exceeds what MPI can count (", INT_MAX,
                           ")");
}

inline void check_count_fits(const char* function, const char* what, index_t count) {
  attnkit::detail::require(count <= static_cast<index_t>(INT_MAX), function, ": ", what, " (",
                           count, ") exceeds what MPI can count (", INT_MAX, ")");
}

inline bool log_sum_exp_requested(const attention_options& options) {
  return !options.log_sum_exp.empty() || options.log_sum_exp.data() != nullptr;
}

// The scale as bits: ranks must agree on it exactly (the default is derived from head_dim).
inline std::int64_t scale_bits(const attention_options& options, index_t head_dim) {
  const float scale =
      options.scale ? *options.scale : 1.0f / std::sqrt(static_cast<float>(head_dim));
  return static_cast<std::int64_t>(std::bit_cast<std::uint32_t>(scale));
}
inline std::int64_t softcap_bits(const attention_options& options) {
  return static_cast<std::int64_t>(std::bit_cast<std::uint32_t>(options.softcap));
}

}  // namespace detail
}  // namespace mpi
}  // namespace attnkit
