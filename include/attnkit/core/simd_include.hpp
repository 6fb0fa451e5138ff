// attnkit — the one place xsimd is included: after the intrinsics headers, which
// intrinsics.hpp includes with GCC 12's false -Wmaybe-uninitialized silenced. The order matters
// (xsimd includes <immintrin.h> itself), so clang-format must not sort these two.
#pragma once

// clang-format off
#include "attnkit/core/intrinsics.hpp"
#include <xsimd/xsimd.hpp>
// clang-format on
