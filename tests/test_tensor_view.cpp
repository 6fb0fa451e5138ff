// tensor_view: contiguous and explicit strides, element and row access, size/empty, the const
// conversion (and its absence the other way), and the test helpers' layouts built on it.
#include <algorithm>
#include <array>
#include <catch2/catch.hpp>
#include <type_traits>
#include <vector>

#include "support/tensor.hpp"

using attnkit::index_t;
using attnkit::tensor_view;

static_assert(std::is_convertible_v<tensor_view<float, 3>, tensor_view<const float, 3>>);
static_assert(!std::is_convertible_v<tensor_view<const float, 3>, tensor_view<float, 3>>);
static_assert(!std::is_convertible_v<tensor_view<float, 3>, tensor_view<const attnkit::half, 3>>);
static_assert(!std::is_convertible_v<tensor_view<float, 3>, tensor_view<float, 2>>);
static_assert(std::is_trivially_copyable_v<tensor_view<float, 3>>);
static_assert(tensor_view<float, 3>::rank == 3);
static_assert(std::is_same_v<tensor_view<const float, 2>::value_type, float>);
static_assert(std::is_same_v<tensor_view<const float, 2>::element_type, const float>);

// The parts that are usable in constant expressions. (The constructors taking extents are
// declared constexpr but call the non-constexpr detail::require, so they can never be constant-
// evaluated; see the report.)
static_assert(tensor_view<float, 3>::contiguous_strides({2, 3, 4}) ==
              std::array<index_t, 3>{12, 4, 1});
static_assert(tensor_view<float, 2>{}.empty() && tensor_view<float, 2>{}.data() == nullptr);

TEST_CASE("tensor_view: contiguous strides are row-major", "[tensor_view]") {
  std::vector<float> data(2 * 3 * 4);
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<float>(i);
  tensor_view<float, 3> v(data.data(), {2, 3, 4});
  CHECK(v.stride(0) == 12);
  CHECK(v.stride(1) == 4);
  CHECK(v.stride(2) == 1);
  CHECK(v.extent(0) == 2);
  CHECK(v.extent(1) == 3);
  CHECK(v.extent(2) == 4);
  CHECK(v.size() == 24);
  CHECK_FALSE(v.empty());
  CHECK(v.data() == data.data());
  for (index_t i = 0; i < 2; ++i)
    for (index_t j = 0; j < 3; ++j)
      for (index_t k = 0; k < 4; ++k) CHECK(v(i, j, k) == static_cast<float>(i * 12 + j * 4 + k));
  CHECK(v.row(1, 2) == data.data() + 20);
  CHECK(tensor_view<float, 3>::contiguous_strides({5, 6, 7}) == std::array<index_t, 3>{42, 7, 1});
  CHECK(tensor_view<float, 1>::contiguous_strides({9}) == std::array<index_t, 1>{1});
}

TEST_CASE("tensor_view: explicit strides address BHSD memory and padded rows", "[tensor_view]") {
  // [H=2, T=3, D=4] memory seen as [T, H, D].
  std::vector<float> bhsd(2 * 3 * 4);
  for (std::size_t i = 0; i < bhsd.size(); ++i) bhsd[i] = static_cast<float>(i);
  tensor_view<float, 3> v(bhsd.data(), {3, 2, 4}, {4, 12, 1});
  for (index_t t = 0; t < 3; ++t)
    for (index_t h = 0; h < 2; ++h)
      for (index_t d = 0; d < 4; ++d) CHECK(v(t, h, d) == static_cast<float>(h * 12 + t * 4 + d));
  CHECK(v.row(2, 1) == bhsd.data() + 12 + 8);

  // Writes go through to the right element.
  v(1, 1, 3) = -1.0f;
  CHECK(bhsd[12 + 4 + 3] == -1.0f);

  // A stride of 0 broadcasts.
  float one_row[4] = {1, 2, 3, 4};
  tensor_view<const float, 2> b(one_row, {5, 4}, {0, 1});
  CHECK(b(4, 2) == 3.0f);
  CHECK(b.size() == 20);

  // head_dim stride != 1.
  tensor_view<float, 3> every_other(bhsd.data(), {2, 2, 3}, {12, 6, 2});
  CHECK(every_other(1, 1, 2) == bhsd[12 + 6 + 4]);
}

TEST_CASE("tensor_view: const conversion keeps data extents and strides", "[tensor_view]") {
  std::vector<attnkit::half> data(30);
  tensor_view<attnkit::half, 3> v(data.data() + 2, {2, 3, 4}, {14, 4, 1});
  const tensor_view<const attnkit::half, 3> c = v;
  CHECK(c.data() == v.data());
  CHECK(c.extents() == v.extents());
  CHECK(c.strides() == v.strides());
  v(1, 2, 3) = attnkit::half(2.5f);
  CHECK(static_cast<float>(c(1, 2, 3)) == 2.5f);
}

TEST_CASE("tensor_view: slice keeps strides and addresses the same elements", "[tensor_view]") {
  // [H=2, T=3, D=4] memory seen as [T, H, D]; tokens 1..2 of it.
  std::vector<float> bhsd(2 * 3 * 4);
  for (std::size_t i = 0; i < bhsd.size(); ++i) bhsd[i] = static_cast<float>(i);
  const tensor_view<float, 3> v(bhsd.data(), {3, 2, 4}, {4, 12, 1});
  const tensor_view<float, 3> tail = v.slice(1, 3);
  CHECK(tail.extents() == std::array<index_t, 3>{2, 2, 4});
  CHECK(tail.strides() == v.strides());
  for (index_t t = 0; t < 2; ++t)
    for (index_t h = 0; h < 2; ++h)
      for (index_t d = 0; d < 4; ++d) CHECK(&tail(t, h, d) == &v(t + 1, h, d));
  const tensor_view<float, 3> none = v.slice(3, 3);
  CHECK(none.empty());
  CHECK(none.extent(1) == 2);
}

TEST_CASE("tensor_view: empty views", "[tensor_view]") {
  tensor_view<float, 2> none;
  CHECK(none.data() == nullptr);
  CHECK(none.empty());
  CHECK(none.size() == 0);
  CHECK(none.extent(0) == 0);
  float x = 0;
  tensor_view<float, 3> zero_tokens(&x, {0, 4, 8});
  CHECK(zero_tokens.empty());
  CHECK(zero_tokens.size() == 0);
  CHECK(zero_tokens.stride(0) == 32);
}

TEST_CASE("tensor_view: test layouts cover exactly the view", "[tensor_view][support]") {
  // The helpers in support/tensor.hpp build every strided layout the attention tests use; each
  // view element must map to a distinct storage element (except broadcast), inside the buffer.
  using namespace attnkit_test;
  for (layout l : {layout::contiguous, layout::padded, layout::packed, layout::bhsd,
                   layout::dim_strided, layout::tokens_innermost}) {
    auto t = make_tensor3<float>(5, 3, 7, l);
    std::vector<int> hits(t.storage.size(), 0);
    bool inside = true;
    t.for_each([&](const auto&, index_t pos) {
      if (pos < 0 || pos >= static_cast<index_t>(hits.size())) {
        inside = false;
        return;
      }
      ++hits[static_cast<std::size_t>(pos)];
    });
    CAPTURE(layout_name(l));
    CHECK(inside);
    CHECK(std::count(hits.begin(), hits.end(), 1) == 5 * 3 * 7);
    CHECK(std::count(hits.begin(), hits.end(), 0) + 5 * 3 * 7 == static_cast<long>(hits.size()));
    CHECK(t.clobbered_outside() == 0);
    fill_normal(t, 1);
    CHECK(t.clobbered_outside() == 0);
  }
  auto b = make_tensor3<float>(5, 3, 7, layout::broadcast_heads);
  CHECK(b.storage.size() == 5 * 7);
}
