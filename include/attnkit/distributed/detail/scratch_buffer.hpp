// attnkit — scratch_buffer: heap memory for a distributed call, left uninitialised.
//
// Part of <attnkit/distributed/mpi.hpp> (it needs no MPI itself).
//
// The ring's buffers (packed queries, two key/value blocks, partial outputs, staging for the
// redistribution) are O(n) and are written in full before they are read; std::vector would zero
// them first, an extra pass over tens of megabytes per call at long context.
#pragma once

#include <cstddef>
#include <memory>
#include <type_traits>

namespace attnkit {
namespace mpi {
namespace detail {

template <class T>
class scratch_buffer {
  static_assert(std::is_trivially_default_constructible_v<T>);

 public:
  // Throws std::bad_alloc like any allocation; callers allocate before exchanging data.
  void allocate(std::size_t count) {
    data_.reset(count > 0 ? new T[count] : nullptr);
    size_ = count;
  }
  T* data() noexcept { return data_.get(); }
  const T* data() const noexcept { return data_.get(); }
  std::size_t size() const noexcept { return size_; }

 private:
  std::unique_ptr<T[]> data_;
  std::size_t size_ = 0;
};

}  // namespace detail
}  // namespace mpi
}  // namespace attnkit
