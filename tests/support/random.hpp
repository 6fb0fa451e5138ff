// attnkit tests — deterministic random numbers.
//
// SplitMix64 + Box-Muller, written out here instead of <random>'s distributions: the standard
// fixes mt19937's sequence but not normal_distribution's algorithm, so with std:: the inputs (and
// every measured error) would change between standard libraries. With this generator a seed
// means the same tensor everywhere.
#pragma once

#include <cmath>
#include <cstdint>

#include "attnkit/core/float16.hpp"

namespace attnkit_test {

class rng {
 public:
  explicit rng(std::uint64_t seed) : state_(seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull) {}

  std::uint64_t next_u64() {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }

  // Uniform in [0, 1).
  double uniform() { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }

  // Uniform in [lo, hi).
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }

  // Uniform integer in [lo, hi] (hi - lo small; the modulo bias is irrelevant for tests).
  std::int64_t integer(std::int64_t lo, std::int64_t hi) {
    return lo + static_cast<std::int64_t>(next_u64() % static_cast<std::uint64_t>(hi - lo + 1));
  }

  // Standard normal N(0, 1).
  double normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    double u1 = uniform();
    while (u1 <= 0.0) u1 = uniform();
    const double u2 = uniform();
    const double r = std::sqrt(-2.0 * std::log(u1));
    constexpr double two_pi = 6.283185307179586476925286766559;
    spare_ = r * std::sin(two_pi * u2);
    has_spare_ = true;
    return r * std::cos(two_pi * u2);
  }

 private:
  std::uint64_t state_;
  double spare_ = 0.0;
  bool has_spare_ = false;
};

// x rounded to the storage type T (float, half or bfloat16), round-to-nearest-even.
template <class T>
T round_to(double x) {
  return attnkit::from_float<T>(static_cast<float>(x));
}

}  // namespace attnkit_test
