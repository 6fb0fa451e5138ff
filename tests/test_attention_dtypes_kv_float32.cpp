// attnkit::cpu against the reference for a float32 KV cache with every query type and every output
// type (see support/dtype_grid.hpp). Inputs are N(0,1) rounded to their type and the reference
// sees the same rounded values, so only the output rounding (half an ulp: 2^-24, 2^-11, 2^-8
// relative for fp32, fp16, bf16 outputs) comes on top of the fp32 error model of harness.hpp.
#include <catch2/catch.hpp>

#include "support/dtype_grid.hpp"

using namespace attnkit_test;

TEST_CASE("cpu: float32 queries over float32 kv into every output type", "[cpu][dtype]") {
  dtype_row<float, float>(8100);
}

TEST_CASE("cpu: float16 queries over float32 kv into every output type", "[cpu][dtype]") {
  dtype_row<attnkit::half, float>(8130);
}

TEST_CASE("cpu: bfloat16 queries over float32 kv into every output type", "[cpu][dtype]") {
  dtype_row<attnkit::bfloat16, float>(8160);
}
