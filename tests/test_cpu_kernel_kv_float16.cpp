// Not a test: the one instantiation of attnkit::cpu for float16 K/V that every test executable
// links (library attnkit_test_cpu_kernels, see support/cpu_kernel.hpp): both masks, every query and
// output type, executor erased to any_executor. Also the suite's one instantiation of the tile
// kernels for float16 K/V, which every other test translation unit declares extern (see
// support/cpu_tile_kernels.hpp).
#include "support/cpu_kernel.hpp"
#include "support/cpu_tile_kernels.hpp"

ATTNKIT_TEST_CPU_TILE_KERNELS(, attnkit::half);

namespace attnkit_test {

void cpu_attention_kv_float16(erased_view3 q, erased_view3 k, erased_view3 v, erased_view3 out,
                              builtin_mask mask, const attnkit::attention_options& options,
                              const any_executor* executor) {
  detail::cpu_attention_for_kv<attnkit::half>(q, k, v, out, mask, options, executor);
}

}  // namespace attnkit_test
