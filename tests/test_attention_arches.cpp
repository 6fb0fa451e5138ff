// backend::simd at an architecture narrower than the build's default against the fp64 reference.
//
// The CPU kernels choose their register blocking by vector width (gemm_shape, row_shape): 32
// registers with AVX-512, 16 with AVX2 and SSE. The rest of the suite runs attnkit::cpu, the
// default architecture only, so on an AVX-512 build the 16-register blockings would go untested
// (and on an AVX2 build the 4-lane ones). An engine can pick any of them with the tag
// (backend::simd<xsimd::avx2>{}), so each build also checks the next narrower x86 architecture
// it can run: AVX2 under AVX-512, SSE4.2 under AVX/AVX2. The shapes are the ones the blockings
// change: decode and short prefill over the GQA groups (rows per KV head 1-16, which row_shape
// splits into row blocks with remainders), head dims with and without fast paths, fp32 and fp16
// K/V. Tolerances: the error model of support/harness.hpp, as for attnkit::cpu.
#include <catch2/catch.hpp>
#include <cstdio>

#include "support/harness.hpp"

using namespace attnkit_test;

namespace {

#if XSIMD_WITH_AVX512F && XSIMD_WITH_AVX2
#define ATTNKIT_TEST_NARROWER_ARCH xsimd::avx2
#elif XSIMD_WITH_AVX && XSIMD_WITH_SSE4_2
#define ATTNKIT_TEST_NARROWER_ARCH xsimd::sse4_2
#endif

template <class Arch>
struct simd_at {
  template <class Q, class K, class V, class O, class Mask>
  void operator()(Q q, K k, V v, O out, const Mask& mask,
                  const attnkit::attention_options& o) const {
    attnkit::attention(attnkit::backend::simd<Arch>{}, q, k, v, out, mask, o);
  }
};

template <class Arch, class TKV>
void check_shapes() {
  struct heads {
    index_t q, kv;
  };
  std::uint64_t seed = 900;
  for (const heads h : {heads{8, 8}, heads{6, 2}, heads{12, 4}, heads{32, 8}, heads{16, 1}})
    for (index_t d : {32, 80, 100, 128})
      for (attention_case c : {shape(1, 257, h.q, h.kv, d, mask_kind::causal),
                               shape(3, 130, h.q, h.kv, d, mask_kind::causal),
                               shape(33, 33, h.q, h.kv, d, mask_kind::full)}) {
        c.seed = ++seed;
        check_attention<float, TKV, float>(c, simd_at<Arch>{});
      }
}

}  // namespace

TEST_CASE("simd at a narrower architecture than the default: fp32 and fp16 K/V", "[cpu][arch]") {
#if defined(ATTNKIT_TEST_NARROWER_ARCH)
  using arch = ATTNKIT_TEST_NARROWER_ARCH;
  INFO("architecture " << arch::name() << " (default " << xsimd::default_arch::name() << ")");
  check_shapes<arch, float>();
  check_shapes<arch, attnkit::half>();
#else
  std::printf("skipped: this build has no narrower x86 architecture to check (default %s)\n",
              xsimd::default_arch::name());
  SUCCEED("no narrower architecture in this build");
#endif
}
