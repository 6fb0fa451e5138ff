// attnkit tests — the dtype grid shared by test_attention_dtypes_kv_*.cpp: for one KV type, every
// query type × output type (3 × 3), on a few shapes; the three files together cover all 27
// combinations of q × kv × out.
#pragma once

#include <catch2/catch.hpp>

#include "support/harness.hpp"

namespace attnkit_test {

template <class TQ, class TKV, class TO>
void dtype_combo(std::uint64_t seed) {
  // Causal prefill with GQA and a partial tile at a non-power-of-two head dim; full-mask decode
  // over a longer cache at head dim 128; causal cross-attention (17 queries over 70 keys, bottom-
  // right aligned) with a SIMD remainder in head_dim; full-mask decode at a head dim with a SIMD
  // remainder (100 = 6 x 16 + 4), which in the CPU kernel is the decode (row) kernel's
  // converting loads with a tail.
  for (attention_case c :
       {shape(65, 65, 4, 2, 80, mask_kind::causal), shape(1, 257, 8, 2, 128, mask_kind::full),
        shape(17, 70, 2, 1, 40, mask_kind::causal), shape(1, 300, 4, 2, 100, mask_kind::full)}) {
    c.seed = seed++;
    check_attention<TQ, TKV, TO>(c);
  }
}

template <class TQ, class TKV>
void dtype_row(std::uint64_t seed) {
  dtype_combo<TQ, TKV, float>(seed);
  dtype_combo<TQ, TKV, attnkit::half>(seed + 10);
  dtype_combo<TQ, TKV, attnkit::bfloat16>(seed + 20);
}

}  // namespace attnkit_test
