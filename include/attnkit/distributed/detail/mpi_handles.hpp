// attnkit — small RAII owners of MPI objects, and what MPI needs to know about attnkit's types.
//
// Part of <attnkit/distributed/mpi.hpp>; needs an MPI implementation (mpi.h).
//
// Every object a distributed entry point creates (a duplicated communicator, a row datatype, a
// reduction operator, non-blocking requests) is owned here, so an exception never leaves one
// behind. Requests in particular are completed, not abandoned: a request_set waits for what is
// still outstanding when it is destroyed, so no send or receive into a freed buffer survives a
// throw.
#pragma once

#include <mpi.h>

#include <array>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "attnkit/core/error.hpp"
#include "attnkit/core/float16.hpp"

namespace attnkit {
namespace mpi {
namespace detail {

// A stable code per storage type, exchanged between ranks so that a rank compiled with other
// element types than its peers is caught before any data moves.
template <class T>
constexpr std::int64_t element_type_code() {
  using U = std::remove_cv_t<T>;
  if constexpr (std::is_same_v<U, float>) return 1;
  if constexpr (std::is_same_v<U, half>) return 2;
  if constexpr (std::is_same_v<U, bfloat16>) return 3;
  return 0;
}

inline const char* element_type_name(std::int64_t code) {
  switch (code) {
    case 1:
      return "float";
    case 2:
      return "half";
    case 3:
      return "bfloat16";
    default:
      return "unknown";
  }
}

// An MPI datatype of `bytes` contiguous bytes: one token row of some tensor. Counts in MPI
// calls are int, so counting rows instead of bytes or elements keeps realistic messages (a
// million tokens of 32 heads × 128 dims in fp16 is 8 GiB) inside the int range.
class row_datatype {
 public:
  row_datatype() = default;
  explicit row_datatype(std::size_t bytes) {
    attnkit::detail::require(bytes <= static_cast<std::size_t>(INT_MAX),
                             "attnkit::mpi: a token row of ", bytes,
                             " bytes does not fit an MPI count");
    MPI_Type_contiguous(static_cast<int>(bytes), MPI_BYTE, &type_);
    MPI_Type_commit(&type_);
  }
  row_datatype(const row_datatype&) = delete;
  row_datatype& operator=(const row_datatype&) = delete;
  ~row_datatype() {
    if (type_ != MPI_DATATYPE_NULL) MPI_Type_free(&type_);
  }
  MPI_Datatype get() const noexcept { return type_; }

 private:
  MPI_Datatype type_ = MPI_DATATYPE_NULL;
};

// A private duplicate of the caller's communicator: ring attention's point-to-point messages
// then cannot match (or be matched by) messages the caller has in flight on the same
// communicator with the same tag.
class duplicated_comm {
 public:
  explicit duplicated_comm(MPI_Comm comm) { MPI_Comm_dup(comm, &comm_); }
  duplicated_comm(const duplicated_comm&) = delete;
  duplicated_comm& operator=(const duplicated_comm&) = delete;
  ~duplicated_comm() {
    if (comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
  }
  MPI_Comm get() const noexcept { return comm_; }

 private:
  MPI_Comm comm_ = MPI_COMM_NULL;
};

// A user-defined reduction operator.
class reduction_op {
 public:
  reduction_op(MPI_User_function* function, bool commutative) {
    MPI_Op_create(function, commutative ? 1 : 0, &op_);
  }
  reduction_op(const reduction_op&) = delete;
  reduction_op& operator=(const reduction_op&) = delete;
  ~reduction_op() {
    if (op_ != MPI_OP_NULL) MPI_Op_free(&op_);
  }
  MPI_Op get() const noexcept { return op_; }

 private:
  MPI_Op op_ = MPI_OP_NULL;
};

// The (at most two) requests of one ring step: the send of the block in hand and the receive
// of the next one.
class request_set {
 public:
  request_set() { requests_.fill(MPI_REQUEST_NULL); }
  request_set(const request_set&) = delete;
  request_set& operator=(const request_set&) = delete;
  // Completes whatever is still outstanding (only on an exceptional exit: the normal path waits
  // explicitly). Waiting rather than cancelling: cancelling a send is deprecated and may not
  // take effect, and the peer posted the matching operation in the same step.
  ~request_set() { wait(); }

  MPI_Request* slot(std::size_t i) noexcept { return &requests_[i]; }
  // Lets the MPI library progress the transfers (needed by implementations without an
  // asynchronous progress thread, where a large message moves only inside MPI calls).
  bool test() {
    int done = 0;
    MPI_Testall(static_cast<int>(requests_.size()), requests_.data(), &done, MPI_STATUSES_IGNORE);
    return done != 0;
  }
  void wait() {
    MPI_Waitall(static_cast<int>(requests_.size()), requests_.data(), MPI_STATUSES_IGNORE);
  }

 private:
  std::array<MPI_Request, 2> requests_{};
};

}  // namespace detail
}  // namespace mpi
}  // namespace attnkit
