// attnkit tests — element-wise comparison against the fp64 reference, with a report.
//
// An element passes when |got - ref| <= tol.abs + tol.rel * |ref| and got is finite. The report
// keeps the largest absolute error, the largest error/allowed ratio and where it happened, so a
// failure prints "worst at [token, head, dim]: got x, ref y, allowed z" instead of a bare false.
#pragma once

#include <array>
#include <cmath>
#include <limits>
#include <sstream>
#include <string>
#include <type_traits>

#include "attnkit/core/float16.hpp"
#include "attnkit/core/tensor_view.hpp"

namespace attnkit_test {

using attnkit::index_t;
using attnkit::tensor_view;

struct tolerance {
  double abs = 0.0;
  double rel = 0.0;
  double allowed(double ref) const { return abs + rel * std::fabs(ref); }
};

struct comparison {
  const char* what = "";
  index_t checked = 0;
  index_t violations = 0;
  index_t non_finite = 0;  // NaN/inf where the reference is finite (or NaN anywhere)
  double max_abs_err = 0.0;
  double worst_ratio = 0.0;  // max over elements of error / allowed
  std::array<index_t, 3> worst_at{};
  double worst_got = 0.0, worst_ref = 0.0, worst_allowed = 0.0;
  tolerance tol{};

  bool ok() const { return checked > 0 ? violations == 0 : true; }

  std::string describe() const {
    std::ostringstream s;
    s.precision(9);
    s << what << ": " << violations << " of " << checked << " elements out of tolerance ("
      << non_finite << " non-finite); max abs error " << max_abs_err << ", worst error/allowed "
      << worst_ratio << " at [" << worst_at[0] << ", " << worst_at[1];
    if (worst_at[2] >= 0) s << ", " << worst_at[2];
    s << "]: got " << worst_got << ", ref " << worst_ref << ", allowed " << worst_allowed
      << "  (tol abs " << tol.abs << ", rel " << tol.rel << ")";
    return s.str();
  }

  // Folds one element in. `exact_neg_inf`: the reference is -inf and got must be exactly -inf.
  void add(double got, double ref, std::array<index_t, 3> at) {
    ++checked;
    double err, allowed, ratio;
    if (std::isnan(ref)) {
      // The reference never produces NaN; if it does, everything is suspect.
      ++violations;
      ++non_finite;
      err = ratio = std::numeric_limits<double>::infinity();
      allowed = 0.0;
    } else if (std::isinf(ref)) {
      allowed = 0.0;
      err = (got == ref) ? 0.0 : std::numeric_limits<double>::infinity();
      ratio = err;
      if (got != ref) {
        ++violations;
        if (!std::isfinite(got)) ++non_finite;
      }
    } else if (!std::isfinite(got)) {
      ++violations;
      ++non_finite;
      err = ratio = std::numeric_limits<double>::infinity();
      allowed = tol.allowed(ref);
    } else {
      err = std::fabs(got - ref);
      allowed = tol.allowed(ref);
      ratio = allowed > 0.0 ? err / allowed
                            : (err > 0.0 ? std::numeric_limits<double>::infinity() : 0.0);
      if (err > allowed) ++violations;
    }
    if (std::isfinite(err) && err > max_abs_err) max_abs_err = err;
    if (!std::isfinite(err)) max_abs_err = err;
    if (ratio > worst_ratio || checked == 1) {
      worst_ratio = ratio;
      worst_at = at;
      worst_got = got;
      worst_ref = ref;
      worst_allowed = allowed;
    }
  }
};

// Output [tokens, heads, dim] of any storage type against the reference in float.
template <class TO>
comparison compare_output(tensor_view<const TO, 3> got, tensor_view<const float, 3> ref,
                          tolerance tol, const char* what = "output") {
  comparison c;
  c.what = what;
  c.tol = tol;
  for (index_t i = 0; i < ref.extent(0); ++i)
    for (index_t h = 0; h < ref.extent(1); ++h)
      for (index_t d = 0; d < ref.extent(2); ++d)
        c.add(attnkit::to_float(got(i, h, d)), ref(i, h, d), {i, h, d});
  return c;
}

// Log-sum-exp [heads, tokens]: -inf must match exactly, finite values within tolerance.
inline comparison compare_lse(tensor_view<const float, 2> got, tensor_view<const float, 2> ref,
                              tolerance tol, const char* what = "log_sum_exp") {
  comparison c;
  c.what = what;
  c.tol = tol;
  for (index_t h = 0; h < ref.extent(0); ++h)
    for (index_t i = 0; i < ref.extent(1); ++i) c.add(got(h, i), ref(h, i), {h, i, -1});
  return c;
}

// Units in the last place / unit roundoff of the storage types (round to nearest: the rounding
// error of one conversion is at most u * |x| for normal results).
template <class T>
constexpr double unit_roundoff() {
  if constexpr (std::is_same_v<T, float>) {
    return 0x1p-24;  // 24-bit significand
  } else if constexpr (std::is_same_v<T, attnkit::half>) {
    return 0x1p-11;  // 11-bit significand
  } else {
    return 0x1p-8;  // bfloat16: 8-bit significand
  }
}

// Half the spacing of the subnormals of T: the absolute rounding error below the normal range.
template <class T>
constexpr double subnormal_half_spacing() {
  if constexpr (std::is_same_v<T, float>) {
    return 0x1p-150;
  } else if constexpr (std::is_same_v<T, attnkit::half>) {
    return 0x1p-25;
  } else {
    return 0x1p-134;
  }
}

}  // namespace attnkit_test
