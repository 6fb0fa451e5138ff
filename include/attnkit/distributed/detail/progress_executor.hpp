// attnkit — an executor that lets MPI move the next block while the kernel computes this one.
//
// Part of <attnkit/distributed/mpi.hpp>.
//
// Many MPI implementations move a large message only while some MPI call runs on the receiving
// (or sending) process: Open MPI's shared-memory and TCP transports have no progress thread by
// default, so an MPI_Irecv posted before a long computation may not start until MPI_Wait.
// progress_executor wraps the caller's executor and runs the kernel's work items in a few
// slices, calling MPI_Testall on the ring step's requests between slices from the calling
// thread. That is the thread that called ring_attention (the one allowed to call MPI: the
// kernel's worker threads never do), so MPI_THREAD_FUNNELED is enough.
#pragma once

#include <algorithm>
#include <cstddef>

#include "attnkit/distributed/detail/mpi_handles.hpp"
#include "attnkit/parallel/executor.hpp"

namespace attnkit {
namespace mpi {
namespace detail {

template <class Inner>
class progress_executor {
 public:
  // About this many MPI progress calls per kernel call; each slice still holds several items
  // per thread so the slicing costs little balance.
  static constexpr std::size_t slices = 16;

  progress_executor(Inner& inner, request_set& requests) : inner_(inner), requests_(requests) {}

  std::size_t concurrency() const { return parallel::concurrency_of(inner_); }

  template <class Item>
  void operator()(std::size_t n, Item&& item) {
    const std::size_t threads = concurrency();
    const std::size_t slice = std::max((n + slices - 1) / slices, 4 * threads);
    for (std::size_t begin = 0; begin < n; begin += slice) {
      const std::size_t count = std::min(slice, n - begin);
      inner_(count, [&item, begin](std::size_t i) { item(begin + i); });
      if (!done_) done_ = requests_.test();
    }
  }

 private:
  Inner& inner_;
  request_set& requests_;
  bool done_ = false;
};

}  // namespace detail
}  // namespace mpi
}  // namespace attnkit
