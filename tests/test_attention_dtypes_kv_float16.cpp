// attnkit::cpu against the reference for a float16 KV cache with every query type and every output
// type (see support/dtype_grid.hpp). Inputs are N(0,1) rounded to their type and the reference
// sees the same rounded values, so only the output rounding (half an ulp: 2^-24, 2^-11, 2^-8
// relative for fp32, fp16, bf16 outputs) comes on top of the fp32 error model of harness.hpp.
#include <catch2/catch.hpp>

#include "support/dtype_grid.hpp"

using namespace attnkit_test;

TEST_CASE("cpu: float32 queries over float16 kv into every output type", "[cpu][dtype]") {
  dtype_row<float, attnkit::half>(8200);
}

TEST_CASE("cpu: float16 queries over float16 kv into every output type", "[cpu][dtype]") {
  dtype_row<attnkit::half, attnkit::half>(8230);
}

TEST_CASE("cpu: bfloat16 queries over float16 kv into every output type", "[cpu][dtype]") {
  dtype_row<attnkit::bfloat16, attnkit::half>(8260);
}

TEST_CASE("cpu: float32 queries over a float16 kv cache", "[cpu][dtype]") {
  // The common serving configuration: activations in fp32, the KV cache in fp16. Prefill and
  // decode over long caches, head dims with and without fast paths, GQA 4 and 8.
  std::uint64_t seed = 7000;
  for (attention_case c :
       {shape(257, 257, 8, 2, 128, mask_kind::causal), shape(1, 1000, 16, 2, 128, mask_kind::full),
        shape(1, 4099, 8, 1, 64, mask_kind::causal), shape(100, 1000, 4, 1, 96, mask_kind::causal),
        shape(63, 63, 8, 2, 256, mask_kind::causal), shape(65, 300, 4, 4, 112, mask_kind::full)}) {
    c.seed = ++seed;
    check_attention<float, attnkit::half, float>(c);
  }
  // The same with a bf16 output and with a fp16 output.
  attention_case c = shape(129, 129, 4, 2, 64, mask_kind::causal);
  c.seed = ++seed;
  check_attention<float, attnkit::half, attnkit::bfloat16>(c);
  c.seed = ++seed;
  check_attention<float, attnkit::half, attnkit::half>(c);
}
