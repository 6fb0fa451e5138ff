// attnkit — backend tags: the first argument of every front door picks the hardware at compile
// time.
//
//   attnkit::attention(attnkit::backend::reference{}, q, k, v, out, mask);   // the oracle
//   attnkit::attention(attnkit::cpu, q, k, v, out, mask);                    // xsimd, best arch
//   attnkit::attention(attnkit::backend::simd<xsimd::avx2>{}, ...);          // a chosen arch
//   attnkit::attention(attnkit::backend::cuda{stream}, ...);                 // nvcc builds only
//
// Overload resolution on the tag selects the implementation: no virtual call, no registry.
// simd<xsimd::avx2> and simd<xsimd::avx512bw> can live in one binary (compile that translation
// unit with the ISA enabled), so an engine can still dispatch at run time if it wants to.
#pragma once

#include "attnkit/backend/cuda_tag.hpp"
#include "attnkit/core/simd_include.hpp"

namespace attnkit {
namespace backend {

// Plain loops with fp64 accumulation and a two-pass softmax: slow, obviously right, the oracle
// every other backend is tested against.
struct reference {};

// FlashAttention-2-style tiles on xsimd micro-kernels for the given architecture.
template <class Arch = xsimd::default_arch>
struct simd {
  using arch_type = Arch;
};

}  // namespace backend

// The default CPU backend: xsimd at the best architecture this translation unit was compiled for.
inline constexpr backend::simd<> cpu{};

}  // namespace attnkit
