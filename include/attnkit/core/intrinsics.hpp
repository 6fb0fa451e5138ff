// attnkit — the x86 intrinsics headers, included once, with GCC 12's false positive silenced.
//
// GCC 12 reports -Wmaybe-uninitialized (and, at -O3, -Wuninitialized) inside the AVX-512
// intrinsics that start from _mm512_undefined_ps()/_si512() (GCC bug 105593, fixed in GCC 13)
// wherever they are inlined.
// GCC judges the warning by its location, which is inside these headers, so silencing it for
// exactly their text is enough; the diagnostic state is restored right after.
#pragma once

#if (defined(__x86_64__) || defined(__i386__)) && !defined(__CUDA_ARCH__)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <immintrin.h>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif
