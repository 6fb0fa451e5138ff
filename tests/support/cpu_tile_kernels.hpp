// attnkit tests — the CPU kernel's tile functions compiled once for the whole suite.
//
// Why: every call of attnkit::cpu with K/V element type TKV reaches the tile kernels through
// detail::simd::run_tile<Arch, TKV> (backend/simd/attention.hpp), which instantiates row_tile
// and column_tile for six head dims. Those twelve functions are most of the kernel's compile
// time: about 50 s of CPU per K/V type under the ASan preset (register allocation of the
// unrolled loops), about 8 s in Release. They depend only on the architecture and on TKV: not on
// the query or output type, the mask, the observer, the executor, or whether K/V come from a
// contiguous tensor or a paged cache (both are a row_source). Instantiated implicitly, every test
// translation unit that reaches attnkit::cpu — directly, or through ring attention, Quest, the
// hybrids, the paged cache — compiled them again: 15 times for the suite where 3 suffice.
//
// So this header, force-included into every test translation unit (tests/CMakeLists.txt,
// `-include`), declares run_tile for the three K/V types as explicit instantiations made elsewhere
// (extern template): the compiler then compiles the drivers around it (per mask, executor, dtypes)
// but not the tile kernels. The definitions are in
// test_cpu_kernel_kv_{float32,float16,bfloat16}.cpp (library attnkit_test_cpu_kernels, linked by
// every test executable), one K/V type each.
//
// The examples that do not time the kernels, and the eviction harness, link this copy as well when
// built beside the tests (CMakeLists.txt, attnkit_reuse_test_tile_kernels).
//
// Nothing changes in what runs: the same templates, compiled with the same flags (every test
// target links attnkit_project_flags and gets the same sanitizer options), are called exactly as
// before; only the translation unit that compiles them changed. A TU compiled for another
// architecture (backend::simd<xsimd::avx2>{}) still instantiates its own.
//
// If run_tile's signature changes in backend/simd/attention.hpp, update the declarations below:
// the test build stops here with "template-id 'run_tile<...>' ... does not match any template
// declaration". If the kernels stop being reached through run_tile, the declarations merely go
// unused: every test still builds and runs the same, only the compile time comes back (each test
// object then defines row_tile / column_tile symbols again: `nm -C`).
#pragma once

#include "attnkit/backend/simd/attention.hpp"
#include "attnkit/core/float16.hpp"

// ATTNKIT_TEST_CPU_TILE_KERNELS(extern, T) declares, ATTNKIT_TEST_CPU_TILE_KERNELS(, T) defines
// the instantiation of run_tile for K/V type T at the default architecture (attnkit::cpu's).
#define ATTNKIT_TEST_CPU_TILE_KERNELS(EXTERN, T)                                                   \
  EXTERN template void attnkit::detail::simd::run_tile<xsimd::default_arch, T>(                    \
      bool, const attnkit::detail::simd::tile_context<T>&, const attnkit::detail::simd::tile_job&, \
      const float*, float*, float*, float*, float*)

ATTNKIT_TEST_CPU_TILE_KERNELS(extern, float);
ATTNKIT_TEST_CPU_TILE_KERNELS(extern, attnkit::half);
ATTNKIT_TEST_CPU_TILE_KERNELS(extern, attnkit::bfloat16);
