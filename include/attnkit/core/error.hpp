// attnkit — the one exception type the library throws, and the helpers that build its messages.
#pragma once

#include <exception>
#include <sstream>
#include <string>
#include <utility>

namespace attnkit {

// Thrown for every invalid argument. Front doors validate everything before they write anything,
// so when this is thrown the caller's outputs (and caches, and states) are exactly as they were.
// The message names the function, the argument and the offending values.
class error : public std::exception {
 public:
  explicit error(std::string message) : message_(std::move(message)) {}
  const char* what() const noexcept override { return message_.c_str(); }

 private:
  std::string message_;
};

namespace detail {

// Streams every argument into one message: fail("attention: 'k' has ", n, " tokens").
template <class... Parts>
[[noreturn]] void fail(const Parts&... parts) {
  std::ostringstream message;
  (message << ... << parts);
  throw error(message.str());
}

// constexpr so that constexpr functions (tensor_view's constructors) can check arguments; it
// only throws, and so only leaves constant evaluation, when the condition fails.
template <class... Parts>
constexpr void require(bool condition, const Parts&... parts) {
  if (!condition) fail(parts...);
}

}  // namespace detail
}  // namespace attnkit
