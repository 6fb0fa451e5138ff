// attnkit tests — attnkit::cpu with any mask, behind one type-erased call instantiated once.
//
// Why: the masked tests run a dozen mask types through the CPU kernel. Instantiated per mask type
// and per test file, the kernel's driver would be compiled dozens of times (the tile kernels are
// compiled once per K/V type whatever the mask, support/cpu_tile_kernels.hpp). Here the mask is
// erased to any_mask (support/any_mask.hpp), the views and the executor as in
// support/cpu_kernel.hpp, and the kernel is instantiated once, in test_cpu_kernel_masked.cpp, for
// the dtype combinations below only. Those are the combinations that change what the masked code
// paths do: fp32 queries over each K/V type (the staging and converting loads of the partial spans
// differ per K/V type) and one all-16-bit combination (16-bit query staging and output rounding).
// Every other combination of q × kv × out is already covered, mask-independently, by
// test_attention_dtypes_*.cpp; adding them here would multiply the compile time without reaching
// new masked code.
#pragma once

#include <type_traits>

#include "attnkit/attnkit.hpp"
#include "support/any_mask.hpp"
#include "support/cpu_kernel.hpp"

namespace attnkit_test {

// True for the (q, K/V, out) combinations cpu_attention_masked is instantiated for.
template <class TQ, class TKV, class TO>
inline constexpr bool masked_kernel_instantiated_v = (std::is_same_v<TQ, float> &&
                                                      std::is_same_v<TO, float>) ||
                                                     (std::is_same_v<TQ, attnkit::bfloat16> &&
                                                      std::is_same_v<TKV, attnkit::bfloat16> &&
                                                      std::is_same_v<TO, attnkit::bfloat16>);

// attnkit::attention(attnkit::cpu, q, k, v, out, mask, options, executor) for the combinations
// of masked_kernel_instantiated_v (others throw std::invalid_argument; k and v must share a type);
// `executor` null means attnkit::parallel::default_thread_pool(). Throws what attention throws.
// Defined in test_cpu_kernel_masked.cpp.
void cpu_attention_masked(erased_view3 q, erased_view3 k, erased_view3 v, erased_view3 out,
                          const any_mask& mask, const attnkit::attention_options& options,
                          const any_executor* executor = nullptr);

}  // namespace attnkit_test
