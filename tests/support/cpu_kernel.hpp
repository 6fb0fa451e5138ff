// attnkit tests — attnkit::cpu behind a type-erased call, instantiated once for the whole suite.
//
// Why: every (KV type, mask) instantiation of the CPU kernel is expensive to compile (several
// head-dim fast paths of two tile kernels), and under the ASan+UBSan preset it takes more than a
// minute of CPU each. Instantiated implicitly in every test file that needs it, the suite would
// compile the same kernels dozens of times. Instead the numerical tests call cpu_attention()
// below, whose definitions live in test_cpu_kernel_kv_{float32,float16,bfloat16}.cpp (one KV type
// each, both masks, every query and output type, one executor type) and are linked into every
// test executable as the static library attnkit_test_cpu_kernels. Those three files also hold
// the suite's one copy of the tile kernels per K/V type, the bulk of that compile time, which
// every other test translation unit (direct attnkit::attention calls included) declares extern:
// support/cpu_tile_kernels.hpp.
//
// The erasure is exact: the views keep their data pointer, extents and strides, the options pass
// unchanged, and any_executor forwards the contract (items, threads, concurrency()) of the
// executor it wraps. Tests of the front door's own template plumbing (executor types, const and
// mutable views, the overload without an executor, custom masks) call attnkit::attention directly.
#pragma once

#include <array>
#include <cstddef>
#include <type_traits>

#include "attnkit/attnkit.hpp"

namespace attnkit_test {

using attnkit::index_t;

enum class dtype : int { float32, float16, bfloat16 };

template <class T>
constexpr dtype dtype_of() {
  using U = std::remove_cv_t<T>;
  if constexpr (std::is_same_v<U, float>) {
    return dtype::float32;
  } else if constexpr (std::is_same_v<U, attnkit::half>) {
    return dtype::float16;
  } else {
    static_assert(std::is_same_v<U, attnkit::bfloat16>);
    return dtype::bfloat16;
  }
}

// A tensor_view<T, 3> (T const or not) with the element type as a run-time tag.
struct erased_view3 {
  void* data = nullptr;
  dtype type = dtype::float32;
  std::array<index_t, 3> extents{};
  std::array<index_t, 3> strides{};

  template <class T>
  attnkit::tensor_view<T, 3> as() const {
    return {static_cast<T*>(data), extents, strides};
  }
};

template <class T>
erased_view3 erase(attnkit::tensor_view<T, 3> v) {
  return {const_cast<std::remove_cv_t<T>*>(v.data()), dtype_of<T>(), v.extents(), v.strides()};
}

// Any executor behind one concrete type: executor(n, item) and concurrency() are forwarded.
class any_executor {
 public:
  template <class E>
  explicit any_executor(E& e)
      : target_(&e), concurrency_(attnkit::parallel::concurrency_of(e)), run_(&run<E>) {}

  std::size_t concurrency() const noexcept { return concurrency_; }

  template <class Item>
  void operator()(std::size_t n, Item&& item) const {
    run_(target_, n, &call<std::remove_reference_t<Item>>,
         const_cast<void*>(static_cast<const void*>(&item)));
  }

 private:
  using call_fn = void (*)(void*, std::size_t);

  template <class Item>
  static void call(void* item, std::size_t i) {
    (*static_cast<Item*>(item))(i);
  }
  template <class E>
  static void run(void* target, std::size_t n, call_fn fn, void* item) {
    (*static_cast<E*>(target))(n, [fn, item](std::size_t i) { fn(item, i); });
  }

  void* target_;
  std::size_t concurrency_;
  void (*run_)(void*, std::size_t, call_fn, void*);
};

// attnkit::parallel::default_thread_pool() behind any_executor.
inline const any_executor& default_executor() {
  static const any_executor executor(attnkit::parallel::default_thread_pool());
  return executor;
}

// One thread, whatever the machine: a decode over 4 or more KV heads then has one work item per
// KV head and no split, so a key-mass observer's rows are added by the item that computed them
// (the SIMD backend's in-item pass), deterministically.
inline const any_executor* serial_executor() {
  static attnkit::parallel::serial executor;
  static const any_executor erased(executor);
  return &erased;
}

enum class builtin_mask { full, causal };

// attnkit::attention(attnkit::cpu, q, k, v, out, mask, options, executor) with the given element
// types; `executor` null means attnkit::parallel::default_thread_pool(). Throws what attention
// throws. Defined (per KV type) in test_cpu_kernel_kv_*.cpp.
void cpu_attention_kv_float32(erased_view3 q, erased_view3 k, erased_view3 v, erased_view3 out,
                              builtin_mask mask, const attnkit::attention_options& options,
                              const any_executor* executor);
void cpu_attention_kv_float16(erased_view3 q, erased_view3 k, erased_view3 v, erased_view3 out,
                              builtin_mask mask, const attnkit::attention_options& options,
                              const any_executor* executor);
void cpu_attention_kv_bfloat16(erased_view3 q, erased_view3 k, erased_view3 v, erased_view3 out,
                               builtin_mask mask, const attnkit::attention_options& options,
                               const any_executor* executor);

inline void cpu_attention(erased_view3 q, erased_view3 k, erased_view3 v, erased_view3 out,
                          builtin_mask mask, const attnkit::attention_options& options,
                          const any_executor* executor = nullptr) {
  switch (k.type) {
    case dtype::float32:
      return cpu_attention_kv_float32(q, k, v, out, mask, options, executor);
    case dtype::float16:
      return cpu_attention_kv_float16(q, k, v, out, mask, options, executor);
    case dtype::bfloat16:
      return cpu_attention_kv_bfloat16(q, k, v, out, mask, options, executor);
  }
}

namespace detail {

// The body of the three definitions: dispatch on the query and output types and the mask.
template <class TKV>
void cpu_attention_for_kv(erased_view3 q, erased_view3 k, erased_view3 v, erased_view3 out,
                          builtin_mask mask, const attnkit::attention_options& options,
                          const any_executor* executor) {
  auto with_executor = [&](const auto& kernel_mask, auto q_tag, auto out_tag) {
    using TQ = typename decltype(q_tag)::type;
    using TO = typename decltype(out_tag)::type;
    const any_executor& ex = executor != nullptr ? *executor : default_executor();
    attnkit::attention(attnkit::cpu, q.as<const TQ>(), k.as<const TKV>(), v.as<const TKV>(),
                       out.as<TO>(), kernel_mask, options, ex);
  };
  auto with_out = [&](const auto& kernel_mask, auto q_tag) {
    switch (out.type) {
      case dtype::float32:
        return with_executor(kernel_mask, q_tag, std::type_identity<float>{});
      case dtype::float16:
        return with_executor(kernel_mask, q_tag, std::type_identity<attnkit::half>{});
      case dtype::bfloat16:
        return with_executor(kernel_mask, q_tag, std::type_identity<attnkit::bfloat16>{});
    }
  };
  auto with_q = [&](const auto& kernel_mask) {
    switch (q.type) {
      case dtype::float32:
        return with_out(kernel_mask, std::type_identity<float>{});
      case dtype::float16:
        return with_out(kernel_mask, std::type_identity<attnkit::half>{});
      case dtype::bfloat16:
        return with_out(kernel_mask, std::type_identity<attnkit::bfloat16>{});
    }
  };
  if (mask == builtin_mask::full) {
    with_q(attnkit::full{});
  } else {
    with_q(attnkit::causal{});
  }
}

}  // namespace detail
}  // namespace attnkit_test
