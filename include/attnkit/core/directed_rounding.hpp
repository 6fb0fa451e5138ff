// attnkit — float -> storage type conversions that round toward -inf or +inf, and the neighbouring
// representable values of a storage type.
//
// Anything that stores a *bound* in a narrower type needs these: a minimum rounded to nearest may
// land above the value it bounds, a maximum below. round_down<T>(x) is the largest T <= x and
// round_up<T>(x) the smallest T >= x, so a bound stays a bound after narrowing (Quest's page
// bounds: attention/quest.hpp). IEEE semantics throughout: past the largest finite T, round_up
// gives +inf and round_down the largest finite T (and symmetrically below); ±0 and subnormals are
// exact where representable; NaN stays a quiet NaN (with the sign and top payload bits, as
// from_float does); infinities map to themselves.
//
// How: the RNE conversion from float16.hpp (bit-identical on every path) is within half a unit in
// the last place of x, and the widened result compares exactly with x, so when it lands on the
// wrong side of x the answer is its neighbour one step further out. Every function here is
// constexpr and usable from device code.
#pragma once

#include <cstdint>
#include <type_traits>

#include "attnkit/core/config.hpp"
#include "attnkit/core/float16.hpp"

namespace attnkit {
namespace detail {

// The sign-magnitude bits of a storage type and the representation it is built from.
template <class T>
struct directed_rounding_traits;

template <>
struct directed_rounding_traits<float> {
  using bits_type = std::uint32_t;
  static constexpr bits_type sign = 0x80000000u;
};

template <>
struct directed_rounding_traits<half> {
  using bits_type = std::uint16_t;
  static constexpr bits_type sign = 0x8000u;
};

template <>
struct directed_rounding_traits<bfloat16> {
  using bits_type = std::uint16_t;
  static constexpr bits_type sign = 0x8000u;
};

template <class T>
ATTNKIT_HOST_DEVICE constexpr typename directed_rounding_traits<T>::bits_type storage_bits(T x) {
  if constexpr (std::is_same_v<T, float>) {
    return bits_as<std::uint32_t>(x);
  } else {
    return x.bits;
  }
}

template <class T>
ATTNKIT_HOST_DEVICE constexpr T storage_from_bits(
    typename directed_rounding_traits<T>::bits_type b) {
  if constexpr (std::is_same_v<T, float>) {
    return bits_as<float>(b);
  } else {
    return T::from_bits(b);
  }
}

// The next representable T above x (toward +inf): +inf stays +inf, -0 and +0 both step to the
// smallest positive subnormal. x must not be NaN.
template <class T>
ATTNKIT_HOST_DEVICE constexpr T next_up(T x) {
  static_assert(is_storage_type_v<T>,
                "attnkit::detail::next_up: T must be float, half or bfloat16");
  using traits = directed_rounding_traits<T>;
  using bits_type = typename traits::bits_type;
  const bits_type b = storage_bits(x);
  // Sign-magnitude: a larger value is a larger magnitude when positive, a smaller one when
  // negative. The largest finite value + 1 is the +inf encoding; -0 has no negative neighbour.
  if ((b & traits::sign) == 0) {
    const bool positive_inf = to_float(x) == __builtin_huge_valf();
    return positive_inf ? x : storage_from_bits<T>(static_cast<bits_type>(b + 1u));
  }
  if (b == traits::sign) return storage_from_bits<T>(bits_type{1});
  return storage_from_bits<T>(static_cast<bits_type>(b - 1u));
}

// The next representable T below x (toward -inf); the mirror image of next_up.
template <class T>
ATTNKIT_HOST_DEVICE constexpr T next_down(T x) {
  static_assert(is_storage_type_v<T>,
                "attnkit::detail::next_down: T must be float, half or bfloat16");
  using traits = directed_rounding_traits<T>;
  using bits_type = typename traits::bits_type;
  const bits_type b = storage_bits(x);
  if ((b & traits::sign) != 0) {
    const bool negative_inf = to_float(x) == -__builtin_huge_valf();
    return negative_inf ? x : storage_from_bits<T>(static_cast<bits_type>(b + 1u));
  }
  if (b == 0) return storage_from_bits<T>(static_cast<bits_type>(traits::sign | 1u));
  return storage_from_bits<T>(static_cast<bits_type>(b - 1u));
}

// The largest T <= x (NaN -> NaN).
template <class T>
ATTNKIT_HOST_DEVICE constexpr T round_down(float x) {
  static_assert(is_storage_type_v<T>,
                "attnkit::detail::round_down: T must be float, half or bfloat16");
  if constexpr (std::is_same_v<T, float>) {
    return x;
  } else {
    const T nearest = from_float<T>(x);
    // NaN compares false and passes through as from_float's quiet NaN.
    return to_float(nearest) > x ? next_down(nearest) : nearest;
  }
}

// The smallest T >= x (NaN -> NaN).
template <class T>
ATTNKIT_HOST_DEVICE constexpr T round_up(float x) {
  static_assert(is_storage_type_v<T>,
                "attnkit::detail::round_up: T must be float, half or bfloat16");
  if constexpr (std::is_same_v<T, float>) {
    return x;
  } else {
    const T nearest = from_float<T>(x);
    return to_float(nearest) < x ? next_up(nearest) : nearest;
  }
}

}  // namespace detail
}  // namespace attnkit
