// attnkit — executors: who runs the independent work items a kernel splits itself into.
//
// A kernel cuts its work into n independent items (a head group × a query tile, or a KV split)
// and hands them to an executor: any object callable as  executor(n, item)  that calls
// item(i) exactly once for every i in [0, n), on any threads, and returns when all are done.
// That is the whole contract, so an engine plugs in its own pool with a lambda:
//
//   auto on_my_pool = [&](std::size_t n, auto&& item) { my_pool.parallel_for(n, item); };
//   attnkit::attention(attnkit::cpu, q, k, v, out, attnkit::causal{}, {}, on_my_pool);
//
// An executor may also say how many items it runs at once (`concurrency()`); kernels use that to
// decide how finely to split (flash-decoding splits the KV range only when heads are too few).
// Without it, std::thread::hardware_concurrency() is assumed.
#pragma once

#include <cstddef>
#include <thread>

namespace attnkit {
namespace parallel {

namespace detail {
struct probe_item {
  void operator()(std::size_t) const noexcept {}
};
}  // namespace detail

template <class E>
concept executor = requires(E& e, std::size_t n) {
  e(n, detail::probe_item{});
};

// Runs every item on the calling thread, in order.
struct serial {
  template <class Item>
  void operator()(std::size_t n, Item&& item) const {
    for (std::size_t i = 0; i < n; ++i) item(i);
  }
  static constexpr std::size_t concurrency() noexcept { return 1; }
};

template <class E>
std::size_t concurrency_of(const E& e) {
  if constexpr (requires { e.concurrency(); }) {
    const std::size_t c = static_cast<std::size_t>(e.concurrency());
    return c > 0 ? c : 1;
  } else {
    const unsigned c = std::thread::hardware_concurrency();
    return c > 0 ? c : 1;
  }
}

}  // namespace parallel
}  // namespace attnkit
