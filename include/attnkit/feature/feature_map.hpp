// attnkit — feature maps: the φ of linear attention, and how to plug in your own.
//
// Linear attention replaces exp(q·k) by a kernel φ(q)·φ(k), so that the sum over keys can be
// carried as a state  S = Σ φ(k) vᵀ  (linear/linear_attention.hpp). A feature map is any type
// with these two const members:
//
//   index_t feature_dim(index_t input_dim) const;
//       the length F of φ(x) for an input row of `input_dim` elements (F >= 1);
//   void apply(index_t input_dim, const float* in, float* out) const;
//       out[0, F) = φ(in[0, input_dim)): one row, a pure function of that row (the kernels call
//       it once per query and key row, on any thread, in any order).
//
// and, optionally,
//
//   void apply(index_t input_dim, const double* in, double* out) const;
//       the same in fp64: backend::reference uses it when present (otherwise it calls the float
//       overload and widens), so the oracle's φ is not limited by fp32. A member template
//       `template <std::floating_point T> void apply(index_t, const T*, T*) const` gives both.
//   template <class Arch> void apply_simd(index_t input_dim, const float* in, float* out) const;
//       a vectorised version for the CPU backend (xsimd architecture Arch). Here `in` and `out`
//       are 64-byte aligned, `in` is zero-padded up to a multiple of xsimd::batch<float,
//       Arch>::size and `out` has room for feature_dim rounded up to that multiple: whole vectors
//       may be loaded and stored, and whatever lands beyond feature_dim is overwritten with
//       zeros afterwards. Worth writing when φ needs a transcendental function (elu_plus_one's
//       exp), which compilers do not vectorise on their own; plain arithmetic loops (identity,
//       relu) vectorise from `apply` already.
//
// A user map is then passed like the built-in ones:
//
//   struct squared_relu {   // φ(x) = relu(x)², elementwise
//     attnkit::index_t feature_dim(attnkit::index_t d) const { return d; }
//     template <std::floating_point T>
//     void apply(attnkit::index_t d, const T* in, T* out) const {
//       for (attnkit::index_t i = 0; i < d; ++i) out[i] = in[i] > 0 ? in[i] * in[i] : T(0);
//     }
//   };
//   attnkit::linear_attention(attnkit::cpu, q, k, v, out, squared_relu{}, state);
//
// The same map is applied to queries and keys. Maps whose query and key features differ (e.g.
// learned projections, Hedgehog) are applied by the caller: pass the mapped rows as q and k with
// feature::identity.
#pragma once

#include <concepts>
#include <type_traits>

#include "attnkit/core/config.hpp"

namespace attnkit {

template <class Map>
concept feature_map = std::copy_constructible<Map> &&
    requires(const Map& map, index_t input_dim, const float* in, float* out) {
  { map.feature_dim(input_dim) } -> std::convertible_to<index_t>;
  map.apply(input_dim, in, out);
};

namespace detail {

// The map has an fp64 `apply` (used by backend::reference).
template <class Map>
concept feature_map_fp64 = requires(const Map& map, index_t d, const double* in, double* out) {
  map.apply(d, in, out);
};

// The map has a vectorised `apply_simd<Arch>` (used by backend::simd<Arch>).
template <class Map, class Arch>
concept feature_map_simd = requires(const Map& map, index_t d, const float* in, float* out) {
  map.template apply_simd<Arch>(d, in, out);
};

}  // namespace detail
}  // namespace attnkit
