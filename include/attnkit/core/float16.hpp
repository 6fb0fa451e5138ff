// attnkit — 16-bit storage types: IEEE binary16 (`half`) and bfloat16.
//
// These are storage formats only. Every kernel widens to fp32, accumulates in fp32 and narrows
// once on store, so the only rounding a 16-bit tensor ever sees is the single float->16-bit
// conversion defined here. That conversion is therefore exact IEEE round-to-nearest-even (RNE):
// plain truncation biases sums downwards, and ad-hoc rounding would make results depend on the
// build. NaN stays a quiet NaN with its sign and top payload bits: naive mantissa truncation
// can turn a NaN whose payload lies in the dropped low bits into infinity, and a NaN silently
// becoming inf (or a finite value) would hide the bug that produced it.
#pragma once

#include <bit>
#include <cstdint>
#include <type_traits>

#include "attnkit/core/config.hpp"

#if defined(__F16C__) && !defined(__CUDA_ARCH__)
#include "attnkit/core/intrinsics.hpp"
#define ATTNKIT_HAS_F16C 1
#endif

namespace attnkit {
namespace detail {

// std::bit_cast and std::countl_zero are host-only constexpr functions to nvcc; these two are
// usable from device code too (__builtin_bit_cast is supported by GCC, Clang and nvcc's front end).
template <class To, class From>
ATTNKIT_HOST_DEVICE constexpr To bits_as(const From& from) noexcept {
  static_assert(sizeof(To) == sizeof(From));
  return __builtin_bit_cast(To, from);
}

ATTNKIT_HOST_DEVICE constexpr int leading_zeros(std::uint32_t x) noexcept {
  int n = 0;
  for (std::uint32_t bit = 0x80000000u; bit != 0 && (x & bit) == 0; bit >>= 1) ++n;
  return n;
}

// ---- Portable bit-manipulation conversions (constant-evaluable, device-safe). ----

ATTNKIT_HOST_DEVICE constexpr float half_bits_to_float_soft(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1Fu;
  const std::uint32_t mant = h & 0x3FFu;
  std::uint32_t f;
  if (exp == 0x1F) {
    // Inf, or NaN made quiet (as vcvtph2ps does) with its payload kept.
    f = sign | 0x7F800000u | (mant != 0 ? 0x00400000u : 0u) | (mant << 13);
  } else if (exp != 0) {
    f = sign | ((exp + (127 - 15)) << 23) | (mant << 13);
  } else if (mant == 0) {
    f = sign;
  } else {
    // Subnormal mant * 2^-24: normalise so the leading one at bit p becomes the hidden bit.
    const int p = 31 - detail::leading_zeros(mant);
    f = sign | (static_cast<std::uint32_t>(p + 127 - 24) << 23) | ((mant << (23 - p)) & 0x7FFFFFu);
  }
  return detail::bits_as<float>(f);
}

ATTNKIT_HOST_DEVICE constexpr std::uint16_t float_to_half_bits_soft(float x) {
  const std::uint32_t f = detail::bits_as<std::uint32_t>(x);
  const std::uint32_t sign = (f >> 16) & 0x8000u;
  const std::uint32_t a = f & 0x7FFFFFFFu;
  std::uint32_t h;
  if (a > 0x7F800000u) {
    // NaN: set the quiet bit (guarantees a non-zero mantissa) and keep the top payload bits.
    h = 0x7E00u | ((a >> 13) & 0x3FFu);
  } else if (a >= 0x38800000u) {
    // |x| >= 2^-14: normal half (or overflow). Rebias, then RNE on the 13 dropped bits; a carry
    // out of the mantissa correctly bumps the exponent, and anything that lands at or past the
    // inf encoding (|x| >= 65520, i.e. the midpoint above 65504 and beyond) becomes inf.
    h = (a >> 13) - ((127u - 15u) << 10);
    const std::uint32_t rest = a & 0x1FFFu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
    if (h > 0x7C00u) h = 0x7C00u;
  } else if (a > 0x33000000u) {
    // 2^-25 < |x| < 2^-14: subnormal result mant * 2^-24. Shift the full significand right by
    // 126 - exp (14..24) with RNE; rounding up into 0x400 yields the smallest normal, as it should.
    const std::uint32_t shift = 126u - (a >> 23);
    const std::uint32_t sig = (a & 0x7FFFFFu) | 0x800000u;
    h = sig >> shift;
    const std::uint32_t rest = sig & ((1u << shift) - 1u);
    const std::uint32_t halfway = 1u << (shift - 1u);
    if (rest > halfway || (rest == halfway && (h & 1u))) ++h;
  } else {
    // |x| <= 2^-25 (the midpoint to the smallest subnormal ties to even zero); sign kept.
    h = 0;
  }
  return static_cast<std::uint16_t>(sign | h);
}

// ---- Public conversions: F16C on x86 hosts at run time, bit-identical to the soft path. ----
// (F16C conversions take the rounding mode from the immediate, ignore FTZ, and quiet NaNs the
// same way as above; the tests compare both paths bit for bit.)

ATTNKIT_HOST_DEVICE constexpr float half_bits_to_float(std::uint16_t h) {
#if defined(ATTNKIT_HAS_F16C)
  if (!std::is_constant_evaluated()) return _cvtsh_ss(h);
#endif
  return half_bits_to_float_soft(h);
}

ATTNKIT_HOST_DEVICE constexpr std::uint16_t float_to_half_bits(float x) {
#if defined(ATTNKIT_HAS_F16C)
  if (!std::is_constant_evaluated()) {
    return static_cast<std::uint16_t>(_cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT));
  }
#endif
  return float_to_half_bits_soft(x);
}

// bfloat16 is the top half of a float, so widening is a shift (NaNs pass through unchanged).
ATTNKIT_HOST_DEVICE constexpr float bfloat16_bits_to_float(std::uint16_t b) {
  return detail::bits_as<float>(static_cast<std::uint32_t>(b) << 16);
}

// Narrowing is RNE via the add-bias trick; overflow carries into the exponent and yields inf
// exactly when IEEE says so. NaN is handled first, or rounding could carry it into inf. No
// AVX512_BF16 path: vcvtneps2bf16 flushes fp32 subnormals to zero, so it is not bit-identical.
ATTNKIT_HOST_DEVICE constexpr std::uint16_t float_to_bfloat16_bits(float x) {
  const std::uint32_t f = detail::bits_as<std::uint32_t>(x);
  if ((f & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<std::uint16_t>((f >> 16) | 0x0040u);
  return static_cast<std::uint16_t>((f + 0x7FFFu + ((f >> 16) & 1u)) >> 16);
}

}  // namespace detail

// Plain 2-byte PODs (trivially copyable, standard layout) so tensors of them can be memcpy'd,
// mapped from files and shared with device code. No arithmetic operators on purpose: the
// implicit widening to float makes any expression compute in fp32.
struct half {
  std::uint16_t bits;

  half() = default;
  ATTNKIT_HOST_DEVICE constexpr explicit half(float x) : bits(detail::float_to_half_bits(x)) {}
  ATTNKIT_HOST_DEVICE constexpr operator float() const { return detail::half_bits_to_float(bits); }

  ATTNKIT_HOST_DEVICE static constexpr half from_bits(std::uint16_t b) {
    half h{};
    h.bits = b;
    return h;
  }
  ATTNKIT_HOST_DEVICE constexpr std::uint16_t to_bits() const { return bits; }
};

struct bfloat16 {
  std::uint16_t bits;

  bfloat16() = default;
  ATTNKIT_HOST_DEVICE constexpr explicit bfloat16(float x)
      : bits(detail::float_to_bfloat16_bits(x)) {}
  ATTNKIT_HOST_DEVICE constexpr operator float() const {
    return detail::bfloat16_bits_to_float(bits);
  }

  ATTNKIT_HOST_DEVICE static constexpr bfloat16 from_bits(std::uint16_t b) {
    bfloat16 v{};
    v.bits = b;
    return v;
  }
  ATTNKIT_HOST_DEVICE constexpr std::uint16_t to_bits() const { return bits; }
};

static_assert(sizeof(half) == 2 && alignof(half) == 2);
static_assert(sizeof(bfloat16) == 2 && alignof(bfloat16) == 2);
static_assert(std::is_trivially_copyable_v<half> && std::is_standard_layout_v<half>);
static_assert(std::is_trivially_copyable_v<bfloat16> && std::is_standard_layout_v<bfloat16>);

// Element types a tensor may be stored in. Exact types only: callers strip cv-qualifiers.
template <class T>
inline constexpr bool is_storage_type_v =
    std::is_same_v<T, float> || std::is_same_v<T, half> || std::is_same_v<T, bfloat16>;

template <class T>
ATTNKIT_HOST_DEVICE constexpr float to_float(T x) {
  static_assert(is_storage_type_v<T>, "to_float: T must be float, half or bfloat16");
  if constexpr (std::is_same_v<T, float>) {
    return x;
  } else if constexpr (std::is_same_v<T, half>) {
    return detail::half_bits_to_float(x.bits);
  } else {
    return detail::bfloat16_bits_to_float(x.bits);
  }
}

template <class T>
ATTNKIT_HOST_DEVICE constexpr T from_float(float x) {
  static_assert(is_storage_type_v<T>, "from_float: T must be float, half or bfloat16");
  if constexpr (std::is_same_v<T, float>) {
    return x;
  } else {
    return T(x);
  }
}

// Name used in error messages and benchmark labels.
template <class T>
constexpr const char* type_name() {
  static_assert(is_storage_type_v<T>, "type_name: T must be float, half or bfloat16");
  if constexpr (std::is_same_v<T, float>) {
    return "float32";
  } else if constexpr (std::is_same_v<T, half>) {
    return "float16";
  } else {
    return "bfloat16";
  }
}

}  // namespace attnkit
