// attnkit — the one place xsimd is included: after the intrinsics headers, which
// intrinsics.hpp includes with GCC 12's false -Wmaybe-uninitialized silenced.
#pragma once

#include <xsimd/xsimd.hpp>

#include "attnkit/core/intrinsics.hpp"
