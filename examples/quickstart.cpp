// attnkit quickstart — the whole API in one page.
//
//   1. wrap your own buffers in tensor_views, [tokens, heads, head_dim] (NHD), no copies;
//   2. call attnkit::attention(backend, q, k, v, out, mask): grouped-query attention follows
//      from the shapes, the scale defaults to 1/sqrt(head_dim);
//   3. ask for the log-sum-exp, and partial results over disjoint key sets merge exactly
//      (split-KV decode, cascade or ring attention) with attnkit::merge_states;
//   4. store K/V (or q, or out) as attnkit::half / attnkit::bfloat16, accumulation stays fp32;
//   5. run on the default pool, your own thread_pool, serially, or any executor of yours.
#include <algorithm>
#include <attnkit/attnkit.hpp>
#include <cmath>
#include <cstdio>
#include <vector>

int main() {
  using attnkit::index_t;
  // A small GQA layer: 8 query heads share 2 KV heads (4 per group), head_dim 64, 16 tokens.
  constexpr index_t tokens = 16, q_heads = 8, kv_heads = 2, dim = 64;

  auto make = [](index_t size, float phase) {
    std::vector<float> x(static_cast<std::size_t>(size));
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.37f * float(i) + phase);
    return x;
  };
  const std::vector<float> q = make(tokens * q_heads * dim, 0.0f);
  const std::vector<float> k = make(tokens * kv_heads * dim, 1.0f);
  const std::vector<float> v = make(tokens * kv_heads * dim, 2.0f);
  std::vector<float> out(q.size());

  // 1. Contiguous views over the caller's memory.
  const attnkit::tensor_view<const float, 3> q_view(q.data(), {tokens, q_heads, dim});
  const attnkit::tensor_view<const float, 3> k_view(k.data(), {tokens, kv_heads, dim});
  const attnkit::tensor_view<const float, 3> v_view(v.data(), {tokens, kv_heads, dim});
  const attnkit::tensor_view<float, 3> out_view(out.data(), {tokens, q_heads, dim});

  // 2. Causal prefill over the whole sequence (query head h reads KV head h / 4).
  attnkit::attention(attnkit::cpu, q_view, k_view, v_view, out_view, attnkit::causal{});
  std::printf("prefill: out[last token, head 0, 0..3] = %.5f %.5f %.5f %.5f\n",
              out_view(tokens - 1, 0, 0), out_view(tokens - 1, 0, 1), out_view(tokens - 1, 0, 2),
              out_view(tokens - 1, 0, 3));

  // 3. Decode the last token against a cache split in two halves, each call returning its
  //    log-sum-exp ([q_heads, q_tokens]); merge_states combines them into attention over the
  //    whole cache, which must equal the last row of the prefill above.
  constexpr index_t split = tokens / 2;
  const attnkit::tensor_view<const float, 3> q_last(q.data() + (tokens - 1) * q_heads * dim,
                                                    {1, q_heads, dim});
  const attnkit::tensor_view<const float, 3> k_a(k.data(), {split, kv_heads, dim});
  const attnkit::tensor_view<const float, 3> v_a(v.data(), {split, kv_heads, dim});
  const attnkit::tensor_view<const float, 3> k_b(k.data() + split * kv_heads * dim,
                                                 {tokens - split, kv_heads, dim});
  const attnkit::tensor_view<const float, 3> v_b(v.data() + split * kv_heads * dim,
                                                 {tokens - split, kv_heads, dim});
  std::vector<float> o_a(q_heads * dim), o_b(q_heads * dim), merged(q_heads * dim);
  std::vector<float> lse_a(q_heads), lse_b(q_heads);
  const attnkit::tensor_view<float, 3> o_a_view(o_a.data(), {1, q_heads, dim});
  const attnkit::tensor_view<float, 3> o_b_view(o_b.data(), {1, q_heads, dim});
  const attnkit::tensor_view<float, 3> merged_view(merged.data(), {1, q_heads, dim});

  attnkit::attention_options options_a;
  options_a.log_sum_exp = attnkit::tensor_view<float, 2>(lse_a.data(), {q_heads, 1});
  attnkit::attention_options options_b;
  options_b.log_sum_exp = attnkit::tensor_view<float, 2>(lse_b.data(), {q_heads, 1});
  // The last token sees every cached key: mask full (causal, bottom-right aligned, is the same).
  attnkit::attention(attnkit::cpu, q_last, k_a, v_a, o_a_view, attnkit::full{}, options_a);
  attnkit::attention(attnkit::cpu, q_last, k_b, v_b, o_b_view, attnkit::full{}, options_b);
  attnkit::merge_states(o_a_view, attnkit::tensor_view<const float, 2>(lse_a.data(), {q_heads, 1}),
                        o_b_view, attnkit::tensor_view<const float, 2>(lse_b.data(), {q_heads, 1}),
                        merged_view);

  float merge_error = 0.0f;
  for (index_t h = 0; h < q_heads; ++h)
    for (index_t c = 0; c < dim; ++c)
      merge_error =
          std::max(merge_error, std::fabs(merged_view(0, h, c) - out_view(tokens - 1, h, c)));
  std::printf("split-KV decode + merge_states vs. one prefill call: max |diff| = %.2e\n",
              merge_error);

  // 4. A 16-bit KV cache (fp16 here; attnkit::bfloat16 works alike), fp32 query and output.
  std::vector<attnkit::half> k16(k.size()), v16(v.size());
  std::transform(k.begin(), k.end(), k16.begin(), [](float x) { return attnkit::half(x); });
  std::transform(v.begin(), v.end(), v16.begin(), [](float x) { return attnkit::half(x); });
  std::vector<float> o16(q_heads * dim);
  const attnkit::tensor_view<float, 3> o16_view(o16.data(), {1, q_heads, dim});

  // 5. Any executor: here a private two-thread pool (attnkit::parallel::serial{} runs inline).
  attnkit::parallel::thread_pool pool(2);
  attnkit::attention(
      attnkit::cpu, q_last,
      attnkit::tensor_view<const attnkit::half, 3>(k16.data(), {tokens, kv_heads, dim}),
      attnkit::tensor_view<const attnkit::half, 3>(v16.data(), {tokens, kv_heads, dim}), o16_view,
      attnkit::causal{}, {}, pool);

  float fp16_error = 0.0f;
  for (index_t h = 0; h < q_heads; ++h)
    for (index_t c = 0; c < dim; ++c)
      fp16_error = std::max(fp16_error, std::fabs(o16_view(0, h, c) - out_view(tokens - 1, h, c)));
  std::printf("fp16 KV cache vs. fp32 KV cache: max |diff| = %.2e\n", fp16_error);

  const bool ok = merge_error < 1e-5f && fp16_error < 5e-3f;
  std::printf("%s\n", ok ? "ok" : "MISMATCH");
  return ok ? 0 : 1;
}
