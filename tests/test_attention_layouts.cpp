// attnkit::cpu on strided, non-contiguous views: padded tokens and heads, heads taken from a fused
// QKV buffer, BHSD memory (token stride < head stride), head_dim strides != 1, tokens innermost,
// KV heads broadcast with a zero stride, a padded log-sum-exp, and outputs in each of those
// layouts. Padding is NaN: a kernel that reads outside an input view poisons its output, and one
// that writes outside its output view changes sentinel bits (both fail).
#include <catch2/catch.hpp>

#include "support/harness.hpp"

using namespace attnkit_test;

namespace {

const layout strided_layouts[] = {layout::padded, layout::packed, layout::bhsd, layout::dim_strided,
                                  layout::tokens_innermost};

}  // namespace

TEST_CASE("cpu: q k v all in one strided layout", "[cpu][layouts]") {
  std::uint64_t seed = 1000;
  for (layout l : strided_layouts) {
    for (attention_case c :
         {shape(65, 130, 4, 2, 64, mask_kind::causal), shape(7, 100, 4, 1, 80, mask_kind::full),
          shape(1, 257, 8, 2, 128, mask_kind::full)}) {
      c.q_layout = c.k_layout = c.v_layout = l;
      c.seed = ++seed;
      check_attention<float, float, float>(c);
    }
  }
}

TEST_CASE("cpu: output and lse in strided layouts", "[cpu][layouts]") {
  std::uint64_t seed = 1100;
  for (layout l : strided_layouts) {
    for (attention_case c :
         {shape(65, 65, 4, 2, 96, mask_kind::causal), shape(1, 200, 8, 1, 64, mask_kind::full)}) {
      c.out_layout = l;
      c.lse_padded = true;
      c.seed = ++seed;
      check_attention<float, float, float>(c);
    }
  }
}

TEST_CASE("cpu: every tensor in a different layout", "[cpu][layouts]") {
  std::uint64_t seed = 1200;
  {
    attention_case c = shape(70, 140, 4, 2, 64, mask_kind::causal);
    c.q_layout = layout::bhsd;
    c.k_layout = layout::packed;
    c.v_layout = layout::tokens_innermost;
    c.out_layout = layout::padded;
    c.lse_padded = true;
    c.seed = ++seed;
    check_attention<float, float, float>(c);
  }
  {
    attention_case c = shape(1, 300, 8, 2, 128, mask_kind::full);
    c.q_layout = layout::dim_strided;
    c.k_layout = layout::bhsd;
    c.v_layout = layout::padded;
    c.out_layout = layout::packed;
    c.seed = ++seed;
    check_attention<float, float, float>(c);
  }
  {
    attention_case c = shape(33, 33, 6, 3, 200, mask_kind::causal);
    c.q_layout = layout::packed;
    c.k_layout = layout::dim_strided;
    c.v_layout = layout::bhsd;
    c.out_layout = layout::tokens_innermost;
    c.lse_padded = true;
    c.seed = ++seed;
    check_attention<float, float, float>(c);
  }
}

TEST_CASE("cpu: 16-bit tensors in strided layouts", "[cpu][layouts][dtype]") {
  // The 16-bit load and store paths with strides (including a head_dim stride of 2).
  std::uint64_t seed = 1300;
  {
    attention_case c = shape(65, 100, 4, 2, 64, mask_kind::causal);
    c.q_layout = layout::padded;
    c.k_layout = layout::packed;
    c.v_layout = layout::bhsd;
    c.out_layout = layout::dim_strided;
    c.lse_padded = true;
    c.seed = ++seed;
    check_attention<attnkit::half, attnkit::half, attnkit::half>(c);
    c.seed = ++seed;
    check_attention<attnkit::bfloat16, attnkit::bfloat16, attnkit::bfloat16>(c);
  }
  {
    attention_case c = shape(1, 257, 8, 1, 128, mask_kind::full);
    c.k_layout = layout::tokens_innermost;
    c.v_layout = layout::dim_strided;
    c.out_layout = layout::padded;
    c.seed = ++seed;
    check_attention<float, attnkit::half, float>(c);
  }
}

TEST_CASE("cpu: kv heads broadcast through a zero head stride", "[cpu][layouts]") {
  // A stride of 0 is legal for inputs: every KV head reads the same memory. The result must equal
  // the reference on the same view (which then equals MQA).
  std::uint64_t seed = 1400;
  for (attention_case c :
       {shape(65, 65, 4, 2, 64, mask_kind::causal), shape(1, 130, 8, 4, 128, mask_kind::full)}) {
    c.k_layout = c.v_layout = layout::broadcast_heads;
    c.seed = ++seed;
    check_attention<float, float, float>(c);
  }
}
