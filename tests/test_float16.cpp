// Tests for attnkit/core/float16.hpp. Every expected value comes from a model computed
// independently in double arithmetic (ldexp / frexp / nearbyint), never from the code under test.
#include <algorithm>
#include <bit>
#include <catch2/catch.hpp>
#include <cfenv>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <type_traits>

#include "attnkit/core/float16.hpp"

namespace {

using attnkit::bfloat16;
using attnkit::half;
namespace detail = attnkit::detail;

// Collects mismatches from an exhaustive loop: reports the first few through Catch and the
// total at the end, instead of making ~10^5 assertions.
struct Mismatches {
  int count = 0;
  template <class Msg>
  void add(bool ok, const Msg& msg) {
    if (ok) return;
    if (++count <= 8) FAIL_CHECK(msg());
  }
};

std::uint32_t fbits(float x) { return std::bit_cast<std::uint32_t>(x); }
float bits_f(std::uint32_t b) { return std::bit_cast<float>(b); }

// ---- Independent models. ----

// Value of a binary16 / bfloat16 bit pattern. NaN patterns return NaN.
double model_value(std::uint16_t b, int mant_bits, int exp_bits) {
  const int bias = (1 << (exp_bits - 1)) - 1;
  const int emax_field = (1 << exp_bits) - 1;
  const bool neg = (b >> (mant_bits + exp_bits)) & 1;
  const int e = (b >> mant_bits) & emax_field;
  const int m = b & ((1 << mant_bits) - 1);
  double v;
  if (e == emax_field) {
    v = m == 0 ? std::numeric_limits<double>::infinity() : std::numeric_limits<double>::quiet_NaN();
  } else if (e == 0) {
    v = std::ldexp(static_cast<double>(m), 1 - bias - mant_bits);
  } else {
    v = std::ldexp(static_cast<double>((1 << mant_bits) + m), e - bias - mant_bits);
  }
  return neg ? -v : v;
}
double half_value(std::uint16_t b) { return model_value(b, 10, 5); }
double bf16_value(std::uint16_t b) { return model_value(b, 7, 8); }

// Round finite x to a format with `mant_bits` stored mantissa bits, minimum normal exponent
// `emin` and overflow threshold 2^(emax+1), by RNE in double; returns the rounded value
// (possibly +-inf). Exact: scaling by a power of two and nearbyint are exact in double.
double model_round(double x, int mant_bits, int emin, int emax) {
  if (x == 0) return x;
  int e;
  std::frexp(std::fabs(x), &e);  // |x| = f * 2^e, f in [0.5, 1)
  const int exp = std::max(e - 1, emin);
  const double ulp = std::ldexp(1.0, exp - mant_bits);
  const double r = std::nearbyint(std::fabs(x) / ulp) * ulp;  // FE_TONEAREST: ties to even
  const double out = r >= std::ldexp(1.0, emax + 1) ? std::numeric_limits<double>::infinity() : r;
  return std::signbit(x) ? -out : out;
}
double half_round(double x) { return model_round(x, 10, -14, 15); }
double bf16_round(double x) { return model_round(x, 7, -126, 127); }

bool same_value(double got, double want) {
  if (std::isnan(want)) return std::isnan(got);
  return got == want && std::signbit(got) == std::signbit(want);
}

// Checks that a 16-bit NaN result is quiet and kept the input's sign.
bool quiet_nan16(std::uint16_t b, int mant_bits, bool neg) {
  const std::uint16_t exp_mask = static_cast<std::uint16_t>(0x7FFF & ~((1u << mant_bits) - 1));
  const std::uint16_t quiet = static_cast<std::uint16_t>(1u << (mant_bits - 1));
  return (b & exp_mask) == exp_mask && (b & quiet) != 0 && ((b >> 15) != 0) == neg;
}

// A spread of float bit patterns covering every exponent (incl. subnormals, inf, NaN).
template <class F>
void for_sampled_floats(F&& f) {
  for (std::uint64_t b = 0; b <= 0xFFFFFFFFull; b += 65521) f(static_cast<std::uint32_t>(b));
  for (std::uint32_t e = 0; e < 256; ++e) {
    for (std::uint32_t low : {0u, 1u, 0xFFFu, 0x1000u, 0x1001u, 0x7FFFu, 0x8000u, 0x8001u, 0x18000u,
                              0x3FFFFFu, 0x400000u, 0x7FFFFFu}) {
      f((e << 23) | low);
      f(0x80000000u | (e << 23) | low);
    }
  }
}

// ---- Compile-time usage. ----

static_assert(sizeof(half) == 2 && sizeof(bfloat16) == 2);
static_assert(std::is_trivially_copyable_v<half> && std::is_standard_layout_v<bfloat16>);
static_assert(detail::float_to_half_bits(1.0f) == 0x3C00);
static_assert(detail::float_to_half_bits(-2.0f) == 0xC000);
static_assert(detail::float_to_half_bits(65520.0f) == 0x7C00);
static_assert(detail::float_to_half_bits(0x1p-24f) == 0x0001);
static_assert(detail::half_bits_to_float(0x7BFF) == 65504.0f);
static_assert(detail::half_bits_to_float(0x0001) == 0x1p-24f);
static_assert(detail::float_to_bfloat16_bits(1.0f) == 0x3F80);
static_assert(detail::bfloat16_bits_to_float(0x4049) == 3.140625f);
static_assert(static_cast<float>(half(0.5f)) == 0.5f);
static_assert(half::from_bits(0x3555).to_bits() == 0x3555);
static_assert(bfloat16(1.5f).to_bits() == 0x3FC0);
static_assert(attnkit::to_float(half::from_bits(0x4000)) == 2.0f);
static_assert(attnkit::from_float<bfloat16>(-1.0f).to_bits() == 0xBF80);
static_assert(attnkit::from_float<float>(0.25f) == 0.25f);
static_assert(attnkit::is_storage_type_v<float> && attnkit::is_storage_type_v<half> &&
              attnkit::is_storage_type_v<bfloat16>);
static_assert(!attnkit::is_storage_type_v<double> && !attnkit::is_storage_type_v<const half>);
static_assert(std::string_view(attnkit::type_name<float>()) == "float32" &&
              std::string_view(attnkit::type_name<half>()) == "float16" &&
              std::string_view(attnkit::type_name<bfloat16>()) == "bfloat16");

// ---- Widening and round trips, exhaustive. ----

TEST_CASE("half: widening matches model for all 65536 patterns", "[float16]") {
  Mismatches bad;
  int nans = 0, infs = 0;
  for (std::uint32_t i = 0; i < 65536; ++i) {
    const auto b = static_cast<std::uint16_t>(i);
    const double want = half_value(b);
    const float got = static_cast<float>(half::from_bits(b));
    bad.add(same_value(got, want), [&] { return "half bits " + std::to_string(i); });
    bad.add(attnkit::to_float(half::from_bits(b)) == got || std::isnan(got),
            [&] { return "to_float(half) bits " + std::to_string(i); });
    nans += std::isnan(got);
    infs += std::isinf(got);
  }
  CHECK(bad.count == 0);
  CHECK(nans == 2 * 1023);
  CHECK(infs == 2);
}

TEST_CASE("half: round trip half -> float -> half is exact", "[float16]") {
  Mismatches bad;
  for (std::uint32_t i = 0; i < 65536; ++i) {
    const auto b = static_cast<std::uint16_t>(i);
    const std::uint16_t back = half(static_cast<float>(half::from_bits(b))).to_bits();
    if (std::isnan(half_value(b))) {
      bad.add(quiet_nan16(back, 10, i >> 15), [&] { return "half NaN bits " + std::to_string(i); });
    } else {
      bad.add(back == b, [&] { return "half bits " + std::to_string(i); });
    }
  }
  CHECK(bad.count == 0);
}

TEST_CASE("bfloat16: widening matches model for all 65536 patterns", "[float16]") {
  Mismatches bad;
  int nans = 0, infs = 0;
  for (std::uint32_t i = 0; i < 65536; ++i) {
    const auto b = static_cast<std::uint16_t>(i);
    const double want = bf16_value(b);
    const float got = static_cast<float>(bfloat16::from_bits(b));
    bad.add(same_value(got, want), [&] { return "bf16 bits " + std::to_string(i); });
    bad.add(attnkit::to_float(bfloat16::from_bits(b)) == got || std::isnan(got),
            [&] { return "to_float(bf16) bits " + std::to_string(i); });
    nans += std::isnan(got);
    infs += std::isinf(got);
  }
  CHECK(bad.count == 0);
  CHECK(nans == 2 * 127);
  CHECK(infs == 2);
}

TEST_CASE("bfloat16: round trip bf16 -> float -> bf16 is exact", "[float16]") {
  Mismatches bad;
  for (std::uint32_t i = 0; i < 65536; ++i) {
    const auto b = static_cast<std::uint16_t>(i);
    const std::uint16_t back = bfloat16(static_cast<float>(bfloat16::from_bits(b))).to_bits();
    if (std::isnan(bf16_value(b))) {
      bad.add(quiet_nan16(back, 7, i >> 15), [&] { return "bf16 NaN bits " + std::to_string(i); });
    } else {
      bad.add(back == b, [&] { return "bf16 bits " + std::to_string(i); });
    }
  }
  CHECK(bad.count == 0);
}

// ---- Narrowing: round to nearest, ties to even. ----

// For every adjacent pair (lo, hi) of finite values of one sign, including the pair from the
// largest finite value to the next power of two (which encodes as inf), checks that the exact
// midpoint goes to the even pattern and its float neighbours go to the nearer value.
template <class Narrow>
void check_midpoints(Narrow narrow, double (*value)(std::uint16_t), std::uint16_t max_finite,
                     double overflow_value, Mismatches& bad) {
  for (std::uint16_t sign : {std::uint16_t{0}, std::uint16_t{0x8000}}) {
    for (std::uint32_t i = 0; i <= max_finite; ++i) {
      const auto lo = static_cast<std::uint16_t>(sign | i);
      const auto hi = static_cast<std::uint16_t>(sign | (i + 1));  // == inf for i == max_finite
      const double vlo = value(lo);
      const double vhi = i == max_finite ? (sign ? -overflow_value : overflow_value) : value(hi);
      const double mid = (vlo + vhi) / 2;
      const auto fmid = static_cast<float>(mid);
      const auto msg = [&] { return "pair starting at bits " + std::to_string(lo); };
      bad.add(static_cast<double>(fmid) == mid, msg);  // midpoint must be exact in float
      const std::uint16_t even = (lo & 1) ? hi : lo;
      const float towards_zero = std::nextafter(fmid, 0.0f);
      const float away = std::nextafter(fmid, sign ? -INFINITY : INFINITY);
      bad.add(narrow(fmid) == even, msg);
      bad.add(narrow(towards_zero) == lo, msg);
      bad.add(narrow(away) == hi, msg);
    }
  }
}

TEST_CASE("half: narrowing midpoints round to even, neighbours to nearest", "[float16]") {
  REQUIRE(std::fegetround() == FE_TONEAREST);
  Mismatches bad;
  check_midpoints([](float x) { return half(x).to_bits(); }, half_value, 0x7BFF, 65536.0, bad);
  CHECK(bad.count == 0);
}

TEST_CASE("half: narrowing special cases", "[float16]") {
  const auto h = [](float x) { return half(x).to_bits(); };
  // Overflow per IEEE: the midpoint 65520 between 65504 and 2^16 ties to even (inf).
  CHECK(h(65504.0f) == 0x7BFF);
  CHECK(h(65519.99f) == 0x7BFF);
  CHECK(h(65520.0f) == 0x7C00);
  CHECK(h(-65520.0f) == 0xFC00);
  CHECK(h(1e10f) == 0x7C00);
  CHECK(h(std::numeric_limits<float>::max()) == 0x7C00);
  CHECK(h(-std::numeric_limits<float>::max()) == 0xFC00);
  CHECK(h(INFINITY) == 0x7C00);
  CHECK(h(-INFINITY) == 0xFC00);
  // Subnormals and underflow.
  CHECK(h(0x1p-24f) == 0x0001);
  CHECK(h(0x1p-25f) == 0x0000);  // tie between 0 and 2^-24 -> even 0
  CHECK(h(std::nextafter(0x1p-25f, 1.0f)) == 0x0001);
  CHECK(h(0x3p-25f) == 0x0002);  // tie between 1 and 2 ulps -> even
  CHECK(h(0x5p-25f) == 0x0002);  // tie between 2 and 3 ulps -> even
  CHECK(h(0x3FFp-24f) == 0x03FF);
  CHECK(h(0x7FFp-25f) == 0x0400);  // rounds up into the smallest normal
  CHECK(h(0x1p-14f) == 0x0400);
  CHECK(h(-0x1p-24f) == 0x8001);
  CHECK(h(std::numeric_limits<float>::denorm_min()) == 0x0000);
  CHECK(h(-std::numeric_limits<float>::denorm_min()) == 0x8000);
  CHECK(h(-1e-30f) == 0x8000);
  // Signed zero.
  CHECK(h(0.0f) == 0x0000);
  CHECK(h(-0.0f) == 0x8000);
  // NaN stays a quiet NaN with its sign, even when the payload is only in the dropped bits.
  for (std::uint32_t nan : {0x7FC00000u, 0x7F800001u, 0x7F801FFFu, 0x7FA00000u, 0x7FFFFFFFu}) {
    INFO("float NaN bits " << nan);
    CHECK(quiet_nan16(h(bits_f(nan)), 10, false));
    CHECK(quiet_nan16(h(bits_f(nan | 0x80000000u)), 10, true));
  }
}

TEST_CASE("half: narrowing matches the double model on sampled floats", "[float16]") {
  Mismatches bad;
  for_sampled_floats([&](std::uint32_t fb) {
    const float x = bits_f(fb);
    const std::uint16_t got = half(x).to_bits();
    const auto msg = [&] { return "float bits " + std::to_string(fb); };
    if (std::isnan(x)) {
      bad.add(quiet_nan16(got, 10, fb >> 31), msg);
    } else {
      bad.add(same_value(half_value(got), half_round(x)), msg);
    }
  });
  CHECK(bad.count == 0);
}

TEST_CASE("bfloat16: narrowing midpoints round to even, neighbours to nearest", "[float16]") {
  REQUIRE(std::fegetround() == FE_TONEAREST);
  Mismatches bad;
  check_midpoints([](float x) { return bfloat16(x).to_bits(); }, bf16_value, 0x7F7F,
                  std::ldexp(1.0, 128), bad);
  CHECK(bad.count == 0);
}

TEST_CASE("bfloat16: narrowing special cases", "[float16]") {
  const auto b = [](float x) { return bfloat16(x).to_bits(); };
  const float max_bf16 = bits_f(0x7F7F0000u);
  const float overflow_mid = bits_f(0x7F7F8000u);  // midpoint between max and 2^128
  CHECK(b(max_bf16) == 0x7F7F);
  CHECK(b(std::nextafter(overflow_mid, 0.0f)) == 0x7F7F);
  CHECK(b(overflow_mid) == 0x7F80);
  CHECK(b(std::numeric_limits<float>::max()) == 0x7F80);
  CHECK(b(-std::numeric_limits<float>::max()) == 0xFF80);
  CHECK(b(INFINITY) == 0x7F80);
  CHECK(b(-INFINITY) == 0xFF80);
  // fp32 subnormals round into bf16 subnormals (not flushed).
  CHECK(b(bits_f(0x00010000u)) == 0x0001);
  CHECK(b(bits_f(0x00008000u)) == 0x0000);  // tie between 0 and smallest subnormal -> 0
  CHECK(b(bits_f(0x00008001u)) == 0x0001);
  CHECK(b(bits_f(0x00018000u)) == 0x0002);  // tie between 1 and 2 -> even
  CHECK(b(bits_f(0x007FFFFFu)) == 0x0080);  // rounds up into the smallest normal
  CHECK(b(-std::numeric_limits<float>::denorm_min()) == 0x8000);
  CHECK(b(0.0f) == 0x0000);
  CHECK(b(-0.0f) == 0x8000);
  CHECK(b(1.00390625f) == 0x3F80);  // 1 + 2^-8: tie -> even (1.0)
  CHECK(b(1.01171875f) == 0x3F82);  // 1 + 3*2^-8: tie -> even (1 + 2^-6)
  // NaN must not round up into inf (0x7FFFFFFF + bias would carry) nor truncate to inf.
  for (std::uint32_t nan : {0x7FC00000u, 0x7F800001u, 0x7F80FFFFu, 0x7FFFFFFFu, 0x7FBFFFFFu}) {
    INFO("float NaN bits " << nan);
    CHECK(quiet_nan16(b(bits_f(nan)), 7, false));
    CHECK(quiet_nan16(b(bits_f(nan | 0x80000000u)), 7, true));
  }
}

TEST_CASE("bfloat16: narrowing matches the double model on sampled floats", "[float16]") {
  Mismatches bad;
  for_sampled_floats([&](std::uint32_t fb) {
    const float x = bits_f(fb);
    const std::uint16_t got = bfloat16(x).to_bits();
    const auto msg = [&] { return "float bits " + std::to_string(fb); };
    if (std::isnan(x)) {
      bad.add(quiet_nan16(got, 7, fb >> 31), msg);
    } else {
      bad.add(same_value(bf16_value(got), bf16_round(x)), msg);
    }
  });
  CHECK(bad.count == 0);
}

// ---- The portable path against the same models, and bit-identical to the F16C path. ----

TEST_CASE("half: portable (soft) conversions match the models", "[float16]") {
  Mismatches bad;
  for (std::uint32_t i = 0; i < 65536; ++i) {
    const auto b = static_cast<std::uint16_t>(i);
    const float w = detail::half_bits_to_float_soft(b);
    bad.add(same_value(w, half_value(b)), [&] { return "soft widen " + std::to_string(i); });
    bad.add(detail::half_bits_to_float(b) == w || std::isnan(w),
            [&] { return "widen paths differ " + std::to_string(i); });
    // Bit-identical, NaN payloads included.
    bad.add(fbits(detail::half_bits_to_float(b)) == fbits(w),
            [&] { return "widen bits differ " + std::to_string(i); });
  }
  check_midpoints([](float x) { return detail::float_to_half_bits_soft(x); }, half_value, 0x7BFF,
                  65536.0, bad);
  for_sampled_floats([&](std::uint32_t fb) {
    const float x = bits_f(fb);
    const std::uint16_t got = detail::float_to_half_bits_soft(x);
    const auto msg = [&] { return "soft narrow " + std::to_string(fb); };
    bad.add(
        std::isnan(x) ? quiet_nan16(got, 10, fb >> 31) : same_value(half_value(got), half_round(x)),
        msg);
    bad.add(detail::float_to_half_bits(x) == got, msg);  // runtime (F16C if built) == soft
  });
  CHECK(bad.count == 0);
}

}  // namespace
