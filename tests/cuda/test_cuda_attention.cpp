// attnkit CUDA tests — backend::cuda against the fp64 reference (compiled by the host compiler;
// the kernels are behind cuda/cuda_runner.hpp).
//
// Without a CUDA device the executable prints why and exits with 77, which CTest reports as
// skipped (SKIP_RETURN_CODE): CI compiles every kernel and stays honest about not running them.
//
// Tolerances (|got - ref| <= abs + rel·|ref|, ref from backend::reference in fp64):
//   - the tensor-core path rounds the probabilities P to the K/V type before P·V, an error of at
//     most u_kv·Σ p·|v| <= u_kv·max|v| per output (u = 2^-11 for half, 2^-8 for bfloat16), and
//     the split-KV path keeps P in fp32; both accumulate in fp32 (~1e-6 relative over 4k keys);
//   - the output is rounded once to its type (u_out relative);
// so abs = 2·u_kv·max|v| + 1e-5 and rel = u_out + 1e-5, with a factor 2 of headroom on the
// rounding terms. The log-sum-exp is fp32 over the same logits: abs 1e-4 + rel 1e-5.
#define CATCH_CONFIG_RUNNER
#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdio>
#include <numeric>
#include <string>
#include <vector>

#include "attnkit/attnkit.hpp"
#include "cuda/cuda_runner.hpp"
#include "support/compare.hpp"
#include "support/random.hpp"
#include "support/tensor.hpp"

using namespace attnkit_test;
using attnkit::bfloat16;
using attnkit::half;
using attnkit::position;

namespace {

constexpr attnkit::backend::reference reference{};

struct shape {
  index_t q_tokens, kv_tokens, q_heads, kv_heads, dim;
};

template <class TKV, class TO>
tolerance output_tolerance(double max_v) {
  return {4.0 * unit_roundoff<TKV>() * max_v + 1e-5, 2.0 * unit_roundoff<TO>() + 1e-5};
}
constexpr tolerance lse_tolerance{1e-4, 1e-5};

struct variant {
  const char* name = "plain";
  float softcap = 0.0f;
  bool alibi = false;
  float scale = 0.0f;  // 0: default 1/sqrt(d)
  layout q_layout = layout::contiguous;
  layout kv_layout = layout::contiguous;
};

// Runs one contiguous call on both backends and compares output and log-sum-exp.
template <class TQ, class TKV, class TO, class Mask>
void check_contiguous(const shape& s, const Mask& mask, const variant& var, std::uint64_t seed) {
  INFO("q_tokens " << s.q_tokens << ", kv_tokens " << s.kv_tokens << ", heads " << s.q_heads << "/"
                   << s.kv_heads << ", dim " << s.dim << ", types " << dtype_name<TQ> << "/"
                   << dtype_name<TKV> << "/" << dtype_name<TO> << ", variant " << var.name
                   << ", layouts " << layout_name(var.q_layout) << "/"
                   << layout_name(var.kv_layout));
  auto q = make_tensor3<TQ>(s.q_tokens, s.q_heads, s.dim, var.q_layout);
  auto k = make_tensor3<TKV>(s.kv_tokens, s.kv_heads, s.dim, var.kv_layout);
  auto v = make_tensor3<TKV>(s.kv_tokens, s.kv_heads, s.dim, var.kv_layout);
  fill_normal(q, seed);
  fill_normal(k, seed + 1);
  fill_normal(v, seed + 2);
  auto out = make_tensor3<TO>(s.q_tokens, s.q_heads, s.dim, var.q_layout);
  auto ref = make_tensor3<float>(s.q_tokens, s.q_heads, s.dim);
  auto lse = make_lse(s.q_heads, s.q_tokens, true);
  auto ref_lse = make_lse(s.q_heads, s.q_tokens);
  std::vector<float> slopes(static_cast<std::size_t>(s.q_heads));
  for (index_t h = 0; h < s.q_heads; ++h) slopes[h] = 0.5f / static_cast<float>(h + 1);

  attnkit::attention_options options;
  options.softcap = var.softcap;
  if (var.scale > 0.0f) options.scale = var.scale;
  if (var.alibi) options.alibi_slopes = tensor_view<const float, 1>(slopes.data(), {s.q_heads});
  options.log_sum_exp = ref_lse.view();
  attnkit::attention(reference, q.cview(), k.cview(), v.cview(), ref.view(), mask, options);
  options.log_sum_exp = lse.view();
  cuda::attention(q.cview(), k.cview(), v.cview(), out.view(), mask, options);

  const comparison c = compare_output(out.cview(), ref.cview(),
                                      output_tolerance<TKV, TO>(max_abs(v)), "cuda output");
  INFO(c.describe());
  CHECK(c.ok());
  CHECK(out.clobbered_outside() == 0);
  const comparison l = compare_lse(lse.cview(), ref_lse.cview(), lse_tolerance, "cuda lse");
  INFO(l.describe());
  CHECK(l.ok());
  CHECK(lse.clobbered_outside() == 0);
}

const std::vector<shape>& dense_shapes() {
  static const std::vector<shape> shapes = {
      {1, 1, 8, 8, 64},                             // one key
      {1, 0, 4, 2, 64},                             // no key: zeros and -inf
      {1, 4099, 32, 8, 128},                        // decode, split across the keys, GQA 4
      {1, 300, 16, 1, 80},                          // MQA
      {1, 777, 12, 3, 7},                           // odd head dim
      {3, 500, 8, 2, 256},                          // speculative decode
      {17, 17, 8, 8, 80},                           // shortest tensor-core prefill
      {100, 100, 8, 2, 64},                         // prefill, GQA 4
      {257, 257, 4, 4, 96},                         // odd length
      {64, 1000, 16, 1, 128},                       // a prompt chunk after a cache, MQA
      {33, 33, 8, 8, 112},                          // no tensor-core kernel for 112
      {200, 200, 4, 2, 256},  {40, 40, 32, 2, 32},  // GQA 16
  };
  return shapes;
}

template <class TQ, class TKV, class TO, class Mask>
void dense_grid(const Mask& mask, std::uint64_t seed) {
  for (const shape& s : dense_shapes()) check_contiguous<TQ, TKV, TO>(s, mask, {}, seed++);
}

// ---------------------------------------------------------------------------------------------
// A paged cache on the host: per-head pages [page_size, head_dim] in shuffled order.
// ---------------------------------------------------------------------------------------------
template <class T>
struct paged_host {
  std::vector<T> keys, values;
  std::vector<attnkit::page_id> table;
  std::vector<index_t> lengths;
  index_t pages = 0, table_stride = 0, page_size = 1, dim = 0;
  attnkit::paged_kv_view<const T> view() const {
    return {keys.data(),  values.data(),   nullptr,
            table.data(), lengths.data(),  static_cast<index_t>(lengths.size()),
            dim,          page_size,       table_stride,
            dim,          page_size * dim, 0};
  }
};

template <class T>
paged_host<T> make_paged(std::vector<index_t> lengths, index_t page_size, index_t dim,
                         std::uint64_t seed) {
  paged_host<T> c;
  c.lengths = std::move(lengths);
  c.page_size = page_size;
  c.dim = dim;
  const index_t longest = *std::max_element(c.lengths.begin(), c.lengths.end());
  c.table_stride = (longest + page_size - 1) / page_size + 1;  // one spare entry per row
  const auto heads = static_cast<index_t>(c.lengths.size());
  c.pages = heads * c.table_stride;
  std::vector<attnkit::page_id> order(static_cast<std::size_t>(c.pages));
  std::iota(order.begin(), order.end(), 0);
  rng r(seed);
  for (std::size_t i = order.size(); i > 1; --i)
    std::swap(order[i - 1], order[static_cast<std::size_t>(r.integer(0, i - 1))]);
  c.table.assign(order.begin(), order.end());
  c.keys.resize(static_cast<std::size_t>(c.pages * page_size * dim));
  c.values.resize(c.keys.size());
  for (std::size_t i = 0; i < c.keys.size(); ++i) {
    c.keys[i] = attnkit::from_float<T>(static_cast<float>(r.normal()));
    c.values[i] = attnkit::from_float<T>(static_cast<float>(r.normal()));
  }
  return c;
}

template <class TQ, class TKV, class TO, class Mask>
void check_paged(std::vector<index_t> lengths, index_t page_size, index_t q_tokens, index_t q_heads,
                 index_t dim, const Mask& mask, std::uint64_t seed) {
  const auto kv_heads = static_cast<index_t>(lengths.size());
  INFO("paged: page_size " << page_size << ", q_tokens " << q_tokens << ", heads " << q_heads << "/"
                           << kv_heads << ", dim " << dim << ", types " << dtype_name<TQ> << "/"
                           << dtype_name<TKV> << "/" << dtype_name<TO>);
  const paged_host<TKV> cache = make_paged<TKV>(std::move(lengths), page_size, dim, seed);
  auto q = make_tensor3<TQ>(q_tokens, q_heads, dim);
  fill_normal(q, seed + 5);
  auto out = make_tensor3<TO>(q_tokens, q_heads, dim);
  auto ref = make_tensor3<float>(q_tokens, q_heads, dim);
  auto lse = make_lse(q_heads, q_tokens);
  auto ref_lse = make_lse(q_heads, q_tokens);
  attnkit::attention_options options;
  options.log_sum_exp = ref_lse.view();
  attnkit::attention(reference, q.cview(), cache.view(), ref.view(), mask, options);
  options.log_sum_exp = lse.view();
  cuda::attention_paged(q.cview(), cache.view(), cache.pages, out.view(), mask, options);
  double max_v = 0.0;
  for (const TKV& x : cache.values)
    max_v = std::max(max_v, std::fabs(static_cast<double>(attnkit::to_float(x))));
  const comparison c = compare_output(out.cview(), ref.cview(), output_tolerance<TKV, TO>(max_v),
                                      "cuda paged output");
  INFO(c.describe());
  CHECK(c.ok());
  const comparison l = compare_lse(lse.cview(), ref_lse.cview(), lse_tolerance, "cuda paged lse");
  INFO(l.describe());
  CHECK(l.ok());
}

}  // namespace

TEST_CASE("cuda: dense attention against the reference, every dtype combination", "[cuda]") {
  SECTION("full") {
    dense_grid<half, half, half>(attnkit::full{}, 100);
    dense_grid<bfloat16, bfloat16, bfloat16>(attnkit::full{}, 200);
    dense_grid<half, half, float>(attnkit::full{}, 300);
    dense_grid<float, float, float>(attnkit::full{}, 400);
    dense_grid<float, half, float>(attnkit::full{}, 500);
  }
  SECTION("causal") {
    dense_grid<half, half, half>(attnkit::causal{}, 600);
    dense_grid<bfloat16, bfloat16, bfloat16>(attnkit::causal{}, 700);
    dense_grid<half, half, float>(attnkit::causal{}, 800);
    dense_grid<float, float, float>(attnkit::causal{}, 900);
    dense_grid<float, half, float>(attnkit::causal{}, 1000);
  }
}

TEST_CASE("cuda: options, layouts and extreme logits", "[cuda]") {
  const std::vector<variant> variants = {
      {"softcap 30 + alibi", 30.0f, true},
      {"scale 60 (logits ~ 1e3)", 0.0f, false, 60.0f},
      {"padded q/out, bhsd k/v", 0.0f, false, 0.0f, layout::padded, layout::bhsd},
      {"packed q/out", 0.0f, false, 0.0f, layout::packed, layout::contiguous},
  };
  std::uint64_t seed = 2000;
  for (const variant& var : variants) {
    for (const shape& s :
         {shape{1, 2000, 8, 2, 128}, shape{130, 130, 8, 2, 64}, shape{48, 300, 4, 4, 96}}) {
      check_contiguous<half, half, half>(s, attnkit::causal{}, var, seed++);
      check_contiguous<bfloat16, bfloat16, bfloat16>(s, attnkit::full{}, var, seed++);
      check_contiguous<float, half, float>(s, attnkit::causal{}, var, seed++);
    }
  }
}

TEST_CASE("cuda: sliding windows, block-sparse, custom and composed masks", "[cuda]") {
  const std::vector<shape> shapes = {
      {130, 130, 8, 2, 64}, {1, 1000, 8, 2, 128}, {40, 300, 4, 4, 96}, {200, 200, 4, 1, 256}};
  std::uint64_t seed = 3000;
  for (const shape& s : shapes) {
    const std::vector<attnkit::sliding_window> windows = {
        {31, 0, 4, 1}, {64, 0, 2, 3}, {7, 7, 0, 1}, {200, 0, 0, 1}};
    for (const auto& w : windows) {
      check_contiguous<half, half, half>(s, w, {}, seed++);
      check_contiguous<float, half, float>(s, w, {}, seed++);
    }
    std::vector<attnkit::sliding_window> per_head(static_cast<std::size_t>(s.q_heads));
    for (index_t h = 0; h < s.q_heads; ++h) per_head[h] = {8 + 16 * h, 0, h % 3, 1};
    const attnkit::sliding_window_per_head mswa(per_head);
    check_contiguous<half, half, half>(s, mswa, {}, seed++);
    check_contiguous<float, half, float>(s, mswa, {}, seed++);

    const attnkit::block_layout layout = attnkit::strided_layout(s.kv_tokens, 32, 2, 3);
    const attnkit::block_sparse sparse(layout);
    check_contiguous<half, half, half>(s, sparse, {}, seed++);
    check_contiguous<float, half, float>(s, sparse, {}, seed++);

    rng r(seed++);
    const position first = s.kv_tokens - s.q_tokens;
    const attnkit::custom_bits bits = attnkit::custom_bits::from_predicate(
        s.q_tokens, s.kv_tokens, 2, s.q_heads / 2, first,
        [&](position, position, index_t) { return r.uniform() < 0.3; });
    check_contiguous<half, half, half>(s, bits.mask(), {}, seed++);
    check_contiguous<float, half, float>(s, bits.mask(), {}, seed++);

    const auto composed = attnkit::causal{} & attnkit::sliding_window{50, 50, 1, 1};
    check_contiguous<half, half, half>(s, composed, {}, seed++);
  }
}

TEST_CASE("cuda: paged KV cache with per-head lengths equals the reference", "[cuda]") {
  std::uint64_t seed = 4000;
  for (index_t page_size : {1, 16, 256}) {
    check_paged<half, half, half>({1000, 5, 0, 4097}, page_size, 1, 16, 128, attnkit::causal{},
                                  seed++);
    check_paged<float, bfloat16, float>({300, 301, 17, 1}, page_size, 1, 8, 64, attnkit::full{},
                                        seed++);
    check_paged<half, half, half>({700, 650, 690, 700}, page_size, 20, 8, 96, attnkit::causal{},
                                  seed++);
    check_paged<half, half, half>({2000, 1500}, page_size, 1, 8, 128,
                                  attnkit::sliding_window{256, 0, 4, 1}, seed++);
  }
}

TEST_CASE("cuda: invalid calls throw attnkit::error naming the problem", "[cuda]") {
  CHECK_THROWS_WITH(cuda::attention_with_host_query(),
                    Catch::Contains("'q'") && Catch::Contains("host memory"));
  CHECK_THROWS_WITH(cuda::attention_with_observer(), Catch::Contains("observers"));
  CHECK_THROWS_WITH(cuda::attention_with_strided_keys(), Catch::Contains("head_dim stride 2"));
  // One decode call of 300 keys over 2 KV heads splits across the keys on any GPU with more
  // than one multiprocessor, so it needs more scratch than 16 bytes.
  CHECK_THROWS_WITH(cuda::attention_with_small_workspace(), Catch::Contains("cuda_workspace"));
}

int main(int argc, char* argv[]) {
  if (cuda::device_count() == 0) {
    std::printf(
        "attnkit CUDA tests: no CUDA device on this machine, so the kernels (compiled for sm_80 "
        "and sm_90) were not run: SKIPPED\n");
    return 77;
  }
  std::printf("attnkit CUDA tests on %s\n", cuda::device_name().c_str());
  return Catch::Session().run(argc, argv);
}
