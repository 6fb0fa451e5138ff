// attnkit tests — owning test tensors that hand out strided views in several memory layouts.
//
// Every buffer is first filled with a sentinel (NaN) and only the elements the view covers get
// data. For inputs that makes any read outside the view poison the result (NaN propagates into
// the output, which the comparisons reject); for outputs the sentinel is checked afterwards, so
// a kernel that writes outside its view, or forgets to write an element inside it, is caught.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "attnkit/core/float16.hpp"
#include "attnkit/core/tensor_view.hpp"
#include "support/random.hpp"

namespace attnkit_test {

using attnkit::bfloat16;
using attnkit::half;
using attnkit::index_t;
using attnkit::tensor_view;

// Memory layouts of a [tokens, heads, head_dim] tensor (strides in elements).
enum class layout {
  contiguous,        // NHD, strides {H*D, D, 1}
  padded,            // NHD with padding after every head row and every token, and a base offset
  packed,            // heads H..2H-1 of a fused [T, 3H, D] QKV buffer (heads interleaved)
  bhsd,              // [H, T(+2 padding tokens), D]: strides {D, (T+2)*D, 1}
  dim_strided,       // every other element: strides {2*H*D+1, 2*D, 2}; head_dim stride 2
  tokens_innermost,  // [H, D, T]: strides {1, D*T, T}; head_dim stride T, token stride 1
  broadcast_heads,   // one head's memory seen as every head: strides {D, 0, 1} (inputs only)
};

inline const char* layout_name(layout l) {
  switch (l) {
    case layout::contiguous:
      return "contiguous";
    case layout::padded:
      return "padded";
    case layout::packed:
      return "packed-qkv";
    case layout::bhsd:
      return "bhsd";
    case layout::dim_strided:
      return "dim-stride-2";
    case layout::tokens_innermost:
      return "tokens-innermost";
    case layout::broadcast_heads:
      return "broadcast-heads";
  }
  return "?";
}

template <class T>
inline constexpr const char* dtype_name = attnkit::type_name<T>();

// A quiet NaN in T (its bits survive the float -> T conversion).
template <class T>
T nan_sentinel() {
  return attnkit::from_float<T>(std::numeric_limits<float>::quiet_NaN());
}

template <class T>
bool same_bits(const T& a, const T& b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

template <class T, std::size_t Rank>
struct owned_tensor {
  std::vector<T> storage;
  index_t offset = 0;
  std::array<index_t, Rank> extents{};
  std::array<index_t, Rank> strides{};
  std::vector<std::uint8_t> covered;  // 1 where the view reaches the storage element
  T sentinel{};
  std::string layout_label = "contiguous";

  tensor_view<T, Rank> view() { return {storage.data() + offset, extents, strides}; }
  tensor_view<const T, Rank> cview() const { return {storage.data() + offset, extents, strides}; }

  // Calls f(index array, storage position) for every element of the view.
  template <class F>
  void for_each(F&& f) const {
    index_t total = 1;
    for (index_t e : extents) total *= e;
    std::array<index_t, Rank> at{};
    for (index_t n = 0; n < total; ++n) {
      index_t rest = n, pos = offset;
      for (std::size_t d = Rank; d-- > 0;) {
        at[d] = rest % extents[d];
        rest /= extents[d];
        pos += at[d] * strides[d];
      }
      f(at, pos);
    }
  }

  // Number of storage elements outside the view whose bits changed from the sentinel.
  index_t clobbered_outside() const {
    index_t bad = 0;
    for (std::size_t i = 0; i < storage.size(); ++i)
      if (!covered[i] && !same_bits(storage[i], sentinel)) ++bad;
    return bad;
  }

  // Bit-exact snapshot, for "nothing was written" checks.
  std::vector<T> snapshot() const { return storage; }
  bool unchanged_since(const std::vector<T>& before) const {
    if (before.size() != storage.size()) return false;
    // (memcmp with an empty vector's null data() is undefined, even for 0 bytes)
    return storage.empty() ||
           std::memcmp(before.data(), storage.data(), storage.size() * sizeof(T)) == 0;
  }
};

template <class T>
using tensor3 = owned_tensor<T, 3>;
template <class T>
using tensor2 = owned_tensor<T, 2>;

namespace detail {

template <class T, std::size_t Rank>
void finish_layout(owned_tensor<T, Rank>& t, index_t trailing_pad) {
  index_t span = 0;
  bool any_empty = false;
  for (std::size_t d = 0; d < Rank; ++d) {
    if (t.extents[d] == 0) any_empty = true;
    span += (t.extents[d] - 1) * t.strides[d];
  }
  const index_t size = t.offset + (any_empty ? 0 : span + 1) + trailing_pad;
  t.storage.assign(static_cast<std::size_t>(size), t.sentinel);
  t.covered.assign(static_cast<std::size_t>(size), 0);
  t.for_each([&](const auto&, index_t pos) { t.covered[static_cast<std::size_t>(pos)] = 1; });
}

}  // namespace detail

// A [tokens, heads, head_dim] tensor in the given layout, every element the sentinel (NaN).
template <class T>
tensor3<T> make_tensor3(index_t tokens, index_t heads, index_t dim, layout l = layout::contiguous) {
  tensor3<T> t;
  t.sentinel = nan_sentinel<T>();
  t.extents = {tokens, heads, dim};
  t.layout_label = layout_name(l);
  const index_t T_ = tokens, H = heads, D = dim;
  index_t trailing = 0;
  switch (l) {
    case layout::contiguous:
      t.strides = {H * D, D, 1};
      break;
    case layout::padded:
      t.offset = 7;
      t.strides = {H * (D + 3) + 5, D + 3, 1};
      trailing = 11;
      break;
    case layout::packed:
      t.offset = H * D;
      t.strides = {3 * H * D, D, 1};
      trailing = H * D;
      break;
    case layout::bhsd:
      t.strides = {D, (T_ + 2) * D, 1};
      trailing = 2 * D;
      break;
    case layout::dim_strided:
      t.offset = 1;
      t.strides = {2 * H * D + 1, 2 * D, 2};
      trailing = 3;
      break;
    case layout::tokens_innermost:
      t.strides = {1, D * T_, T_};
      break;
    case layout::broadcast_heads:
      t.strides = {D, 0, 1};
      break;
  }
  detail::finish_layout(t, trailing);
  return t;
}

// A [heads, tokens] float tensor (log-sum-exp), contiguous or with padded rows and an offset.
inline tensor2<float> make_lse(index_t heads, index_t tokens, bool padded = false) {
  tensor2<float> t;
  t.sentinel = nan_sentinel<float>();
  t.extents = {heads, tokens};
  if (padded) {
    t.offset = 3;
    t.strides = {tokens + 5, 1};
    t.layout_label = "padded";
  } else {
    t.strides = {tokens, 1};
  }
  detail::finish_layout(t, padded ? 4 : 0);
  return t;
}

// Fills the view with N(mean, sd^2) samples rounded to T, drawn from `seed`.
template <class T, std::size_t Rank>
void fill_normal(owned_tensor<T, Rank>& t, std::uint64_t seed, double sd = 1.0, double mean = 0.0) {
  rng r(seed);
  t.for_each([&](const auto&, index_t pos) {
    t.storage[static_cast<std::size_t>(pos)] = round_to<T>(mean + sd * r.normal());
  });
}

// Sets every element of the view from f(indices) (a double, rounded to T).
template <class T, std::size_t Rank, class F>
void fill_with(owned_tensor<T, Rank>& t, F&& f) {
  t.for_each([&](const auto& at, index_t pos) {
    t.storage[static_cast<std::size_t>(pos)] = round_to<T>(static_cast<double>(f(at)));
  });
}

// Largest |element| of the view, as double.
template <class T, std::size_t Rank>
double max_abs(const owned_tensor<T, Rank>& t) {
  double m = 0.0;
  t.for_each([&](const auto&, index_t pos) {
    m = std::fmax(m, std::fabs(static_cast<double>(
                         attnkit::to_float(t.storage[static_cast<std::size_t>(pos)]))));
  });
  return m;
}

// Root mean square of the view's elements, as double.
template <class T, std::size_t Rank>
double rms(const owned_tensor<T, Rank>& t) {
  double s = 0.0;
  index_t n = 0;
  t.for_each([&](const auto&, index_t pos) {
    const double x = attnkit::to_float(t.storage[static_cast<std::size_t>(pos)]);
    s += x * x;
    ++n;
  });
  return n > 0 ? std::sqrt(s / static_cast<double>(n)) : 0.0;
}

// Largest Euclidean norm of a [token, head, :] row of the view.
template <class T>
double max_row_norm(const tensor3<T>& t) {
  double m = 0.0;
  auto v = t.cview();
  for (index_t i = 0; i < t.extents[0]; ++i)
    for (index_t h = 0; h < t.extents[1]; ++h) {
      double s = 0.0;
      for (index_t c = 0; c < t.extents[2]; ++c) {
        const double x = attnkit::to_float(v(i, h, c));
        s += x * x;
      }
      m = std::fmax(m, std::sqrt(s));
    }
  return m;
}

}  // namespace attnkit_test
