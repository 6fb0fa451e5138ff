// attnkit — the vectorised exp2 the softmax uses, and small reductions.
//
// Softmax works in base 2: logits are pre-multiplied by log2(e) (folded into the query scale),
// so every exponential is 2^x with x <= 0. 2^x = 2^n · 2^f with n = round(x), f in [-1/2, 1/2];
// 2^f is its degree-7 Taylor polynomial (truncation error < 6e-9 relative, below fp32 rounding),
// so the result is within ~2 ulp of the exact value — about as accurate as xsimd::exp2 and
// several times cheaper. Inputs below -126 give exactly 0 (no subnormal results, which would be
// slow and which matter to nothing: the row maximum contributes 1 to the sum), so a masked
// logit (-inf) contributes exactly nothing.
#pragma once

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "attnkit/backend/simd/convert.hpp"
#include "attnkit/core/config.hpp"
#include "attnkit/core/simd_include.hpp"

namespace attnkit {
namespace detail {
namespace simd {

template <class A>
ATTNKIT_ALWAYS_INLINE xsimd::batch<float, A> exp2(xsimd::batch<float, A> x) {
  using batch = xsimd::batch<float, A>;
  using int_batch = xsimd::batch<std::int32_t, A>;
  const auto underflow = x < batch(-126.0f);
  x = xsimd::min(xsimd::max(x, batch(-126.0f)), batch(126.0f));
  const batch n = xsimd::nearbyint(x);
  const batch f = x - n;
  batch p(1.525273380405984e-05f);
  p = xsimd::fma(p, f, batch(1.5403530393381608e-04f));
  p = xsimd::fma(p, f, batch(1.3333558146428443e-03f));
  p = xsimd::fma(p, f, batch(9.618129107628477e-03f));
  p = xsimd::fma(p, f, batch(5.550410866482158e-02f));
  p = xsimd::fma(p, f, batch(2.402265069591007e-01f));
  p = xsimd::fma(p, f, batch(6.931471805599453e-01f));
  p = xsimd::fma(p, f, batch(1.0f));
  const int_batch exponent = (xsimd::batch_cast<std::int32_t>(n) + int_batch(127)) << 23;
  const batch result = p * xsimd::bitwise_cast<batch>(exponent);
  return xsimd::select(underflow, batch(0.0f), result);
}

// tanh through the same exp2: tanh|x| = (1 - e) / (1 + e) with e = 2^(-2|x| log2 e) in (0, 1],
// sign restored after. Absolute error stays below ~2e-7 everywhere (relative error grows only
// where tanh itself is tiny), which is what a logit soft-cap needs: softmax is sensitive to
// absolute logit error, and cap · 2e-7 is far below fp32 rounding of the logits themselves.
template <class A>
ATTNKIT_ALWAYS_INLINE xsimd::batch<float, A> tanh(xsimd::batch<float, A> x) {
  using batch = xsimd::batch<float, A>;
  const batch e = exp2<A>(xsimd::abs(x) * batch(-2.0f * 1.4426950408889634f));
  const batch magnitude = (batch(1.0f) - e) / (batch(1.0f) + e);
  return xsimd::copysign(magnitude, x);
}

// The transposing reduction that turns `width` dot-product accumulators into one vector of
// `width` sums (sums[i] = Σ_lanes rows[i]), in two halves so that a kernel can fold every four
// accumulators as soon as they are complete and keep one vector instead of four (row_tile):
//   fold_quads(a, b, c, d): lane 4L + k is the sum of lanes 4L..4L+3 of the k-th argument;
//   fold_lanes(quads):      lane 4i + k sums every lane 4L + k of quads[i] (width / 4 quads);
// so fold_lanes over fold_quads of rows 4i..4i+3 gives sums[4i + k] = Σ_lanes rows[4i + k].
// (xsimd 8.1's haddp returns the AVX-512 lanes permuted, so it is not used.)
template <class A>
ATTNKIT_ALWAYS_INLINE xsimd::batch<float, A> fold_quads(
    xsimd::batch<float, A> a, xsimd::batch<float, A> b, xsimd::batch<float, A> c,
    xsimd::batch<float, A> d, xsimd::kernel::requires_arch<xsimd::generic>) {
  constexpr std::size_t width = xsimd::batch<float, A>::size;
  static_assert(width % 4 == 0, "the folds work on groups of four lanes");
  alignas(64) float in[4][width];
  alignas(64) float out[width];
  a.store_aligned(in[0]);
  b.store_aligned(in[1]);
  c.store_aligned(in[2]);
  d.store_aligned(in[3]);
  for (std::size_t lane = 0; lane < width; lane += 4)
    for (std::size_t k = 0; k < 4; ++k)
      out[lane + k] = (in[k][lane] + in[k][lane + 2]) + (in[k][lane + 1] + in[k][lane + 3]);
  return xsimd::batch<float, A>::load_aligned(out);
}

template <class A>
ATTNKIT_ALWAYS_INLINE xsimd::batch<float, A> fold_lanes(
    const xsimd::batch<float, A>* quads, xsimd::kernel::requires_arch<xsimd::generic>) {
  constexpr std::size_t width = xsimd::batch<float, A>::size;
  alignas(64) float in[width];
  alignas(64) float out[width];
  for (std::size_t i = 0; i < width / 4; ++i) {
    quads[i].store_aligned(in);
    for (std::size_t k = 0; k < 4; ++k) {
      float sum = 0.0f;
      for (std::size_t lane = 0; lane < width; lane += 4) sum += in[lane + k];
      out[4 * i + k] = sum;
    }
  }
  return xsimd::batch<float, A>::load_aligned(out);
}

#if defined(__AVX512F__)
// Unpack pairs within 128-bit lanes, then shuffle quads within lanes.
template <class A>
ATTNKIT_ALWAYS_INLINE xsimd::batch<float, A> fold_quads(
    xsimd::batch<float, A> a, xsimd::batch<float, A> b, xsimd::batch<float, A> c,
    xsimd::batch<float, A> d, xsimd::kernel::requires_arch<xsimd::avx512f>) {
  const __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
  const __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
  return _mm512_add_ps(_mm512_shuffle_ps(ab, cd, _MM_SHUFFLE(1, 0, 1, 0)),
                       _mm512_shuffle_ps(ab, cd, _MM_SHUFFLE(3, 2, 3, 2)));
}

// Fold 128-bit lanes across the four quads twice.
template <class A>
ATTNKIT_ALWAYS_INLINE xsimd::batch<float, A> fold_lanes(
    const xsimd::batch<float, A>* quads, xsimd::kernel::requires_arch<xsimd::avx512f>) {
  __m512 halves[2];
  for (int i = 0; i < 2; ++i) {
    const __m512 a = quads[2 * i], b = quads[2 * i + 1];
    halves[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(2, 0, 2, 0)),
                              _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
  }
  return _mm512_add_ps(_mm512_shuffle_f32x4(halves[0], halves[1], _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_f32x4(halves[0], halves[1], _MM_SHUFFLE(3, 1, 3, 1)));
}
#endif

template <class A>
ATTNKIT_ALWAYS_INLINE xsimd::batch<float, A> fold_quads(xsimd::batch<float, A> a,
                                                        xsimd::batch<float, A> b,
                                                        xsimd::batch<float, A> c,
                                                        xsimd::batch<float, A> d) {
  return fold_quads<A>(a, b, c, d, A{});
}

template <class A>
ATTNKIT_ALWAYS_INLINE xsimd::batch<float, A> fold_lanes(const xsimd::batch<float, A>* quads) {
  return fold_lanes<A>(quads, A{});
}

// Makes the compiler hold x in a vector register from here on. GCC folds a vector that several
// FMAs share into each FMA as a memory operand when it can be reloaded; on cores that load at
// most one 512-bit vector per cycle (AMD Zen 4), the decode kernel's 4 x 4 dot-product step then
// issues 20 loads per 16 FMAs and runs at ~75 % of the FMA rate instead of at it.
template <class A>
ATTNKIT_ALWAYS_INLINE void pin_to_register(xsimd::batch<float, A>& x) {
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
  asm("" : "+v"(x.data));
#elif (defined(__GNUC__) || defined(__clang__)) && defined(__aarch64__)
  asm("" : "+w"(x.data));
#else
  (void)x;
#endif
}

template <class A>
ATTNKIT_ALWAYS_INLINE float horizontal_max(xsimd::batch<float, A> x) {
  alignas(64) float lanes[xsimd::batch<float, A>::size];
  x.store_aligned(lanes);
  float result = lanes[0];
  for (std::size_t i = 1; i < xsimd::batch<float, A>::size; ++i)
    result = lanes[i] > result ? lanes[i] : result;
  return result;
}

// sum[j] += row[j] for j in [0, count).
template <class A>
void add_rows(const float* row, float* sum, index_t count) {
  using batch = xsimd::batch<float, A>;
  constexpr index_t width = batch::size;
  index_t j = 0;
  for (; j + width <= count; j += width)
    (batch::load_unaligned(sum + j) + batch::load_unaligned(row + j)).store_unaligned(sum + j);
  for (; j < count; ++j) sum[j] += row[j];
}

// x · 2^exponent for |x| below 2^64 and any exponent <= 64 down to -inf. Results below the
// smallest normal float become exactly 0, as exp2 above gives them, and no multiply sees or makes
// a subnormal (slow on x86 without flush-to-zero): an exponent under -126, whose power is itself
// subnormal, is applied as two normal factors, and inputs too small to give a normal result are
// zeroed before multiplying. One scaler serves a whole row (its factors computed once).
struct exp2_scaler {
  exp2_scaler() = default;
  explicit exp2_scaler(float exponent) {
    constexpr float input_bound = 64.0f;          // log2 of the largest |x|
    zero = !(exponent >= -126.0f - input_bound);  // also -inf and NaN-free -inf - x
    if (zero) return;
    const bool two_steps = exponent < -125.0f;
    first = std::exp2(two_steps ? exponent + input_bound : exponent);
    second = two_steps ? std::exp2(-input_bound) : 1.0f;
    // |x| >= 2^(-125 - exponent) gives a result of at least 2^-125 (normal, with a rounding step
    // of margin); below it the result would be subnormal or 0.
    cutoff = std::exp2(-125.0f - exponent);
  }

  template <class A>
  ATTNKIT_ALWAYS_INLINE xsimd::batch<float, A> operator()(xsimd::batch<float, A> x) const {
    using batch = xsimd::batch<float, A>;
    const batch kept = xsimd::select(xsimd::abs(x) < batch(cutoff), batch(0.0f), x);
    return kept * batch(first) * batch(second);
  }
  float operator()(float x) const {
    const float kept = std::fabs(x) < cutoff ? 0.0f : x;
    return kept * first * second;
  }

  // Whether, for inputs that are 0 or at least smallest_input in magnitude, the scaler is
  // exactly x · first: one factor, and no input below the cutoff.
  bool is_single_multiply_for(float smallest_input) const {
    return !zero && second == 1.0f && cutoff <= smallest_input;
  }

  bool zero = false;  // every result is 0
  float first = 0.0f, second = 0.0f, cutoff = 0.0f;
};

// out[j] = in[j] · 2^exponent for j in [0, count) (in: float or half; in == out allowed), as
// exp2_scaler scales.
template <class A, class T = float>
void scale_by_exp2(const T* in, float* out, index_t count, float exponent) {
  using batch = xsimd::batch<float, A>;
  constexpr index_t width = batch::size;
  const exp2_scaler scale(exponent);
  if (scale.zero) {
    std::fill(out, out + count, 0.0f);
    return;
  }
  index_t j = 0;
  for (; j + width <= count; j += width) scale(load_float<A>(in + j)).store_unaligned(out + j);
  for (; j < count; ++j) out[j] = scale(to_float(in[j]));
}

}  // namespace simd
}  // namespace detail
}  // namespace attnkit
