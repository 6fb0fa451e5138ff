// attnkit — the one place xsimd is included (after the intrinsics, see intrinsics.hpp).
//
// GCC 12 reports -Wmaybe-uninitialized inside the AVX-512 intrinsics that start from
// _mm512_undefined_ps()/_si512() (GCC bug 105593, fixed in GCC 13) once they are inlined into
// kernels, and xsimd 8.1 uses those intrinsics throughout. GCC decides by the location of the
// warning, which is inside the intrinsics headers, so silencing it for exactly those headers is
// enough: the diagnostic state is restored right after, for our code and the user's.
#pragma once

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include "attnkit/core/intrinsics.hpp"
#include <xsimd/xsimd.hpp>

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
