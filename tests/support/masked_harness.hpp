// attnkit tests — the harness of support/harness.hpp for arbitrary masks.
//
//   attnkit::sliding_window window{17, 0, 4};
//   check_masked<float, half, float>(shape(65, 65, 8, 2, 64), any_mask(window, "window 17+4"));
//   check_masked<float, float, float>(c, mask, wide_executor());   // split-KV as on 64 threads
//   check_equivalent<float>(c, inputs, mask_a, {mask_b, mask_c}, equivalence::bit_identical);
//
// The CPU kernel runs through cpu_attention_masked (one instantiation for every mask, see
// support/cpu_kernel_masked.hpp); the fp64 reference runs with the same any_mask, which it applies
// densely through allows() alone (it never calls classify or the run enumeration), so a mask whose
// classify or runs disagree with its predicate makes the kernel disagree with the reference. The
// verdict and the error model are those of support/harness.hpp: every output and log-sum-exp
// element within the model, rows that see no key exactly zero with log-sum-exp -inf, nothing
// written outside the views, inputs untouched.
#pragma once

#include <catch2/catch.hpp>
#include <cstddef>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "support/any_mask.hpp"
#include "support/cpu_kernel_masked.hpp"
#include "support/harness.hpp"

namespace attnkit_test {

// An observer that adds each delivered row into its KV head's row of a [kv_heads][keys] table,
// in delivery order: what a key-mass observer's own sum must equal bit for bit.
struct row_adder {
  attnkit::tensor_view<float, 2> mass;
  void operator()(const attnkit::observed_row& r) const {
    float* destination = mass.data() + r.kv_head * mass.stride(0);
    for (std::size_t j = 0; j < r.probabilities.size(); ++j) destination[j] += r.probabilities[j];
  }
};

// Runs items serially but claims 64 threads: kernels that split the KV range for parallelism
// (flash-decoding) then split as they would on a big machine, whatever the machine running the
// tests, so the split and merge paths with sparse spans are exercised deterministically.
struct wide_serial_executor {
  static constexpr std::size_t concurrency() { return 64; }
  template <class Item>
  void operator()(std::size_t n, Item&& item) const {
    for (std::size_t i = 0; i < n; ++i) item(i);
  }
};

inline const any_executor* wide_executor() {
  static wide_serial_executor executor;
  static const any_executor erased(executor);
  return &erased;
}

// The backend under test for evaluate_with_mask: attnkit::cpu through cpu_attention_masked.
struct cpu_masked {
  const any_executor* executor = nullptr;  // null: the default thread pool

  template <class Q, class K, class V, class O>
  void operator()(Q q, K k, V v, O out, const any_mask& mask,
                  const attnkit::attention_options& options) const {
    cpu_attention_masked(erase(q), erase(k), erase(v), erase(out), mask, options, executor);
  }
};

namespace detail {

// describe_case() names the case's built-in mask; put the erased mask's name there instead.
inline void label_mask(std::string& label, const any_mask& mask, const any_executor* executor) {
  const std::string key = "; mask ";
  const std::size_t at = label.find(key);
  if (at != std::string::npos) {
    const std::size_t end = label.find(';', at + key.size());
    label.replace(at, (end == std::string::npos ? label.size() : end) - at, key + mask.name());
  }
  if (executor == wide_executor()) label += "; wide executor (64 claimed threads)";
}

}  // namespace detail

// Runs attnkit::cpu and the reference under `mask` on the given inputs and checks the result.
template <class TO, class TQ, class TKV>
evaluation check_masked_on(const attention_case& c, const attention_inputs<TQ, TKV>& in,
                           const any_mask& mask, const any_executor* executor = nullptr) {
  static_assert(masked_kernel_instantiated_v<TQ, TKV, TO>,
                "this dtype combination is not instantiated in test_cpu_kernel_masked.cpp");
  evaluation e = evaluate_with_mask<TO>(c, in, cpu_masked{executor}, mask);
  detail::label_mask(e.label, mask, executor);
  require_ok(e);
  return e;
}

// Same, on fresh inputs for the case (fixed seeds, N(0, sd^2) rounded to the types).
template <class TQ, class TKV, class TO>
evaluation check_masked(const attention_case& c, const any_mask& mask,
                        const any_executor* executor = nullptr) {
  const auto in = make_inputs<TQ, TKV>(c);
  return check_masked_on<TO>(c, in, mask, executor);
}

// Calls f.template operator()<TQ, TKV, TO>() for every instantiated dtype combination.
template <class F>
void for_each_masked_dtype(F&& f) {
  f.template operator()<float, float, float>();
  f.template operator()<float, attnkit::half, float>();
  f.template operator()<float, attnkit::bfloat16, float>();
  f.template operator()<attnkit::bfloat16, attnkit::bfloat16, attnkit::bfloat16>();
}

// The CPU kernel's output and log-sum-exp for a case, contiguous.
template <class TO>
struct kernel_result {
  tensor3<TO> out;
  tensor2<float> lse;
};

template <class TO, class TQ, class TKV>
kernel_result<TO> run_masked(const attention_case& c, const attention_inputs<TQ, TKV>& in,
                             const any_mask& mask, const any_executor* executor = nullptr) {
  kernel_result<TO> r{make_tensor3<TO>(c.q_tokens, c.q_heads, c.head_dim),
                      make_lse(c.q_heads, c.q_tokens)};
  std::vector<float> slopes;
  cpu_masked{executor}(in.q.cview(), in.k.cview(), in.v.cview(), r.out.view(), mask,
                       make_options(c, slopes, r.lse.view()));
  return r;
}

// How two masks that describe the same pairs must agree when run through attnkit::cpu.
enum class equivalence {
  // The masks classify every tile identically and enumerate identical runs (and agree on
  // varies_by_head), so the kernel visits the same key spans in the same order with the same
  // work decomposition and masks the same keys: every operation is the same, the bits must be.
  bit_identical,
  // The masks allow the same pairs but the kernel may visit them differently (a conservative
  // classify splits spans elsewhere, per-head jobs change the decode blocking): both results
  // must be within the fp32 error model of the one fp64 reference.
  within_fp32,
};

inline const char* equivalence_name(equivalence kind) {
  return kind == equivalence::bit_identical ? "bit-identical" : "within fp32";
}

template <class T>
bool identical_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

// Each of `others` must describe the same visible pairs as `a`. Checks `a` against the reference,
// each other mask against the same reference output (so its pairs are a's, up to fp32 error), and,
// for bit_identical, that its kernel run produced the same bits as a's in output and log-sum-exp.
template <class TO, class TQ, class TKV>
void check_equivalent(const attention_case& c, const attention_inputs<TQ, TKV>& in,
                      const any_mask& a, const std::vector<any_mask>& others, equivalence kind,
                      const any_executor* executor = nullptr) {
  const evaluation e = check_masked_on<TO>(c, in, a, executor);
  const error_model model = model_for(c, in);
  const tensor_view<const float, 3> ref_out(e.ref_out.data(), {c.q_tokens, c.q_heads, c.head_dim});
  const tensor_view<const float, 2> ref_lse(e.ref_lse.data(), {c.q_heads, c.q_tokens});
  std::optional<kernel_result<TO>> ra;
  if (kind == equivalence::bit_identical) ra = run_masked<TO>(c, in, a, executor);
  for (const any_mask& b : others) {
    const kernel_result<TO> rb = run_masked<TO>(c, in, b, executor);
    const comparison out_b = compare_output<TO>(
        rb.out.cview(), ref_out, model.output_tolerance<TO>(), "output of the second mask");
    const comparison lse_b = compare_lse(rb.lse.cview(), ref_lse, model.lse_tolerance(),
                                         "log_sum_exp of the second mask");
    INFO(e.label);
    INFO("equivalent masks (" << equivalence_name(kind) << "): '" << a.name() << "' and '"
                              << b.name() << "'");
    INFO(out_b.describe());
    INFO(lse_b.describe());
    CHECK(out_b.ok());
    CHECK(lse_b.ok());
    if (ra) {
      index_t differing = 0;
      for (std::size_t i = 0; i < ra->out.storage.size(); ++i)
        if (!same_bits(ra->out.storage[i], rb.out.storage[i])) ++differing;
      CAPTURE(differing);
      CHECK(identical_bits(ra->out.storage, rb.out.storage));
      CHECK(identical_bits(ra->lse.storage, rb.lse.storage));
    }
  }
}

template <class TO, class TQ, class TKV>
void check_equivalent(const attention_case& c, const attention_inputs<TQ, TKV>& in,
                      const any_mask& a, const any_mask& b, equivalence kind,
                      const any_executor* executor = nullptr) {
  check_equivalent<TO>(c, in, a, std::vector<any_mask>{b}, kind, executor);
}

// The index_t that stands for "no limit" in a window: every comparison in sliding_window is on
// differences of positions, so the largest value must not overflow.
inline constexpr index_t unbounded = std::numeric_limits<index_t>::max();

}  // namespace attnkit_test
