// attnkit::cpu against the fp64 reference over the shape grid: sequence lengths, head dims, GQA
// ratios, decode, causal with more queries than keys, empty sequences. fp32 everywhere here (the
// dtype combinations are in test_attention_dtypes_*.cpp, strided layouts in
// test_attention_layouts.cpp). Every check also compares the log-sum-exp, verifies that rows which
// see no key are exact zeros with lse -inf, and that nothing outside the output views was written;
// the tolerances are the error model documented in support/harness.hpp.
//
// The grid covers each axis but pairs the big ones sparingly (the fp64 reference is slow):
// lengths {1, 2, 7, 63, 64, 65, 257, 1000} are crossed with each other at head_dim 32, head dims
// are swept at moderate lengths, and 1000 x 1000 runs with two head dims only.
#include <catch2/catch.hpp>

#include "support/harness.hpp"

using namespace attnkit_test;

namespace {

const index_t lengths[] = {1, 2, 7, 63, 64, 65, 257, 1000};

void length_grid(mask_kind mask) {
  std::uint64_t seed = 100;
  for (index_t nq : lengths)
    for (index_t nkv : lengths) {
      // 1000 x 1000 is covered below with bigger heads; keep this grid cheap.
      if (nq == 1000 && nkv == 1000) continue;
      attention_case c = shape(nq, nkv, 2, 1, 32, mask);
      c.seed = ++seed;
      check_attention<float, float, float>(c);
    }
}

}  // namespace

TEST_CASE("cpu: every q and kv length pair with the full mask", "[cpu][shapes]") {
  length_grid(mask_kind::full);
}

TEST_CASE("cpu: every q and kv length pair with the causal mask", "[cpu][shapes]") {
  length_grid(mask_kind::causal);
}

TEST_CASE("cpu: head dims from 1 to 256", "[cpu][shapes]") {
  // The fast-path dims (64, 80, 96, 128, 256), the other listed dims (1, 32, 112, 200) and a few
  // that leave a SIMD remainder in every vector width (3, 17, 100, 255).
  const index_t dims[] = {1, 3, 17, 32, 64, 80, 96, 100, 112, 128, 200, 255, 256};
  std::uint64_t seed = 200;
  for (index_t d : dims) {
    // Square causal prefill with a partial last tile, a full-mask cross-attention shape with more
    // keys than queries, and decode.
    for (attention_case c :
         {shape(65, 65, 4, 2, d, mask_kind::causal), shape(63, 130, 2, 2, d, mask_kind::full),
          shape(1, 257, 4, 1, d, mask_kind::full)}) {
      c.seed = ++seed;
      check_attention<float, float, float>(c);
    }
  }
}

TEST_CASE("cpu: 1000 tokens causal head_dim 128", "[cpu][shapes][large]") {
  attention_case c = shape(1000, 1000, 2, 1, 128, mask_kind::causal);
  c.seed = 301;
  check_attention<float, float, float>(c);
}

TEST_CASE("cpu: 1000 tokens full head_dim 64", "[cpu][shapes][large]") {
  attention_case c = shape(1000, 1000, 2, 2, 64, mask_kind::full);
  c.seed = 302;
  check_attention<float, float, float>(c);
  // Long and short sides mixed, at a head dim without a fast path.
  attention_case d = shape(1000, 130, 2, 1, 80, mask_kind::causal);
  d.seed = 303;
  check_attention<float, float, float>(d);
}

TEST_CASE("cpu: grouped query heads GQA 1 2 4 8 16 and MQA", "[cpu][shapes][gqa]") {
  struct heads {
    index_t q, kv;
  };
  // Ratios 1, 2, 4, 8, 16 with several KV heads (a mapping bug such as h % kv_heads instead of
  // h / ratio shows up only when kv_heads > 1), MQA (kv_heads = 1), and odd head counts.
  const heads grid[] = {{4, 4},  {4, 2},  {8, 2}, {16, 2}, {32, 2},
                        {48, 3}, {16, 1}, {5, 1}, {6, 3},  {3, 3}};
  std::uint64_t seed = 400;
  for (const heads& h : grid) {
    for (attention_case c : {shape(65, 65, h.q, h.kv, 64, mask_kind::causal),
                             shape(33, 100, h.q, h.kv, 32, mask_kind::full),
                             shape(1, 257, h.q, h.kv, 128, mask_kind::full)}) {
      c.seed = ++seed;
      check_attention<float, float, float>(c);
    }
  }
}

TEST_CASE("cpu: decode with one query over caches of every length", "[cpu][shapes][decode]") {
  // Few KV heads is where kernels split the KV range across threads (flash-decoding); many heads
  // is where they do not. Causal and full must agree for one query (it sits at the last key).
  std::uint64_t seed = 500;
  for (index_t nkv : {1, 2, 7, 63, 64, 65, 257, 1000, 4099}) {
    for (mask_kind m : {mask_kind::full, mask_kind::causal}) {
      attention_case few = shape(1, nkv, 8, 1, 128, m);
      few.seed = ++seed;
      check_attention<float, float, float>(few);
      if (nkv <= 1000) {
        attention_case many = shape(1, nkv, 32, 8, 64, m);
        many.seed = ++seed;
        check_attention<float, float, float>(many);
      }
    }
  }
}

TEST_CASE("cpu: causal with more queries than keys masks the leading rows",
          "[cpu][shapes][masked]") {
  struct lens {
    index_t q, kv;
  };
  // Query row i sits at position n_kv - n_q + i: the first n_q - n_kv rows see no key and must
  // come out as exact zeros with log-sum-exp exactly -inf (never NaN).
  const lens grid[] = {{2, 1}, {7, 2}, {65, 63}, {64, 1}, {257, 64}, {100, 37}, {130, 65}};
  std::uint64_t seed = 600;
  for (const lens& l : grid) {
    attention_case c = shape(l.q, l.kv, 4, 2, 64, mask_kind::causal);
    c.seed = ++seed;
    const evaluation e = check_attention<float, float, float>(c);
    INFO(e.label);
    CHECK(e.masked_rows == (l.q - l.kv) * c.q_heads);
  }
}

TEST_CASE("cpu: no keys at all gives zeros and lse -inf", "[cpu][shapes][masked]") {
  // kv_tokens = 0 (the K/V buffers are empty, their data pointer may be null): every row sees
  // nothing, under either mask.
  for (mask_kind m : {mask_kind::full, mask_kind::causal}) {
    for (index_t nq : {1, 5, 70}) {
      attention_case c = shape(nq, 0, 4, 2, 64, m);
      const evaluation e = check_attention<float, float, float>(c);
      INFO(e.label);
      CHECK(e.masked_rows == nq * 4);
    }
  }
}

TEST_CASE("cpu: no queries writes nothing", "[cpu][shapes]") {
  for (mask_kind m : {mask_kind::full, mask_kind::causal}) {
    attention_case c = shape(0, 10, 4, 2, 64, m);
    const evaluation e = check_attention<float, float, float>(c);
    CHECK(e.out.checked == 0);
  }
}

namespace {

// Runs items serially but claims 64 threads: kernels that split the KV range for parallelism
// (flash-decoding) then split as they would on a big machine, so the split and merge path is
// tested whatever the core count of the machine running the tests.
struct wide_serial {
  static constexpr std::size_t concurrency() { return 64; }
  template <class Item>
  void operator()(std::size_t n, Item&& item) const {
    for (std::size_t i = 0; i < n; ++i) item(i);
  }
};

}  // namespace

TEST_CASE("cpu: split-kv decode on a wide executor", "[cpu][shapes][split]") {
  wide_serial wide;
  const cpu_with<wide_serial> runner{&wide};
  std::uint64_t seed = 650;
  for (index_t nkv : {511, 512, 513, 1000, 4099}) {
    for (mask_kind m : {mask_kind::full, mask_kind::causal}) {
      attention_case c = shape(1, nkv, 8, 1, 128, m);
      c.seed = ++seed;
      check_attention<float, float, float>(c, runner);
    }
  }
  // Several query tokens (speculative decode), MHA, an odd head dim.
  for (attention_case c :
       {shape(3, 2000, 4, 1, 64, mask_kind::causal), shape(2, 1500, 4, 4, 80, mask_kind::causal),
        shape(1, 5000, 4, 4, 100, mask_kind::full)}) {
    c.seed = ++seed;
    check_attention<float, float, float>(c, runner);
  }
}

TEST_CASE("cpu: split-kv prefill tiles on a wide executor", "[cpu][shapes][split]") {
  // Few query tiles over many keys: the KV range is split for the tile kernel too. The causal
  // cases have rows that see nothing in the later splits (their lse -inf must merge as weight 0)
  // and, with n_q > n_kv, rows that see nothing in any split (zeros, -inf).
  wide_serial wide;
  const cpu_with<wide_serial> runner{&wide};
  std::uint64_t seed = 680;
  for (attention_case c :
       {shape(16, 2048, 4, 1, 64, mask_kind::causal), shape(65, 2048, 8, 1, 80, mask_kind::full),
        shape(600, 1024, 1, 1, 32, mask_kind::causal),
        shape(1100, 1024, 1, 1, 32, mask_kind::causal)}) {
    c.seed = ++seed;
    check_attention<float, float, float>(c, runner);
  }
}

TEST_CASE("cpu: split-kv with options dtypes and strides", "[cpu][shapes][split]") {
  // The split path must apply ALiBi and the causal mask at absolute key positions (not relative
  // to the split), convert 16-bit K/V, and honour strides.
  wide_serial wide;
  const cpu_with<wide_serial> runner{&wide};
  std::uint64_t seed = 700;
  {
    attention_case c = shape(3, 2000, 4, 2, 64, mask_kind::causal);
    c.alibi = alibi_slopes(4);
    c.softcap = 30.0f;
    c.q_sd = c.k_sd = 4.0;
    c.seed = ++seed;
    check_attention<float, float, float>(c, runner);
    c.mask = mask_kind::full;
    c.seed = ++seed;
    check_attention<float, float, float>(c, runner);
  }
  {
    attention_case c = shape(1, 3000, 8, 1, 128, mask_kind::causal);
    c.seed = ++seed;
    check_attention<float, attnkit::half, attnkit::bfloat16>(c, runner);
    c.seed = ++seed;
    check_attention<attnkit::bfloat16, attnkit::bfloat16, attnkit::half>(c, runner);
  }
  {
    attention_case c = shape(20, 2500, 4, 1, 64, mask_kind::causal);
    c.q_layout = layout::dim_strided;
    c.k_layout = layout::bhsd;
    c.v_layout = layout::packed;
    c.out_layout = layout::padded;
    c.lse_padded = true;
    c.seed = ++seed;
    check_attention<float, float, float>(c, runner);
  }
}
