// How an engine wires a KV-cache eviction policy into its decode loop (README: "KV cache and
// eviction policies"). One layer, random weights standing in for a model's projections:
//
//   1. prefill: append the prompt's K/V to a paged cache, run attention on the cache with the
//      policy's observer attached, and compress the cache to the budget;
//   2. decode: per step append the new token's K/V, attend (again observed), and compress when
//      the cache has grown `slack` tokens past the budget — amortising the compaction, which
//      moves rows, over `slack` steps instead of paying it every step.
//
// The scores a policy ranks by come from the kernel that computes the attention anyway (the
// observer); there is never a second attention pass. Output: per-phase lengths and bytes, and
// the error of each decode step against attention over the uncompressed history.
#include <attnkit/attnkit.hpp>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

int main() {
  using attnkit::index_t;
  constexpr index_t q_heads = 8, kv_heads = 2, head_dim = 64;
  constexpr index_t prompt = 2048, steps = 256, budget_tokens = 512, slack = 64;

  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  auto random_tokens = [&](index_t tokens, index_t heads) {
    std::vector<float> data(static_cast<std::size_t>(tokens * heads * head_dim));
    for (float& x : data) x = normal(rng);
    return data;
  };
  // The whole history, kept only to measure the error of the compressed cache.
  std::vector<float> all_k = random_tokens(prompt, kv_heads),
                     all_v = random_tokens(prompt, kv_heads);
  std::vector<float> q = random_tokens(prompt, q_heads);

  // One layer, pages of 16 tokens; capacity for the full history so the error can be compared.
  attnkit::kv_cache<attnkit::half> cache(
      {.layers = 1,
       .kv_heads = kv_heads,
       .head_dim = head_dim,
       .page_size = 16,
       .capacity_pages = kv_heads * ((prompt + steps) / 16 + 2)});
  attnkit::h2o_policy policy(/*layers=*/1, {.observed_queries = 64});
  attnkit::keep_list keep;  // reused every compression: no allocation once warm
  const attnkit::budget budget = attnkit::budget::tokens(budget_tokens);

  using view3 = attnkit::tensor_view<const float, 3>;
  cache.append(0, view3(all_k.data(), {prompt, kv_heads, head_dim}),
               view3(all_v.data(), {prompt, kv_heads, head_dim}));

  // Prefill, observed: H2O accumulates the attention of the observed queries.
  std::vector<float> out(static_cast<std::size_t>(prompt * q_heads * head_dim));
  attnkit::attention_options options;
  options.observer = policy.observer(0);
  attnkit::attention(attnkit::cpu, view3(q.data(), {prompt, q_heads, head_dim}), cache.view(0),
                     attnkit::tensor_view<float, 3>(out.data(), {prompt, q_heads, head_dim}),
                     attnkit::causal{}, options);
  const std::size_t full_bytes = cache.bytes_used();
  attnkit::compress(cache, 0, policy, budget, keep);
  std::printf("prefill %lld tokens: %.2f MiB -> compressed to %lld tokens per head: %.2f MiB\n",
              static_cast<long long>(prompt), double(full_bytes) / (1 << 20),
              static_cast<long long>(cache.length(0, 0)), double(cache.bytes_used()) / (1 << 20));

  // Decode loop.
  std::vector<float> step_out(q_heads * head_dim), exact_out(q_heads * head_dim);
  double worst_error = 0.0;
  index_t compressions = 0;
  for (index_t step = 0; step < steps; ++step) {
    std::vector<float> k = random_tokens(1, kv_heads), v = random_tokens(1, kv_heads);
    std::vector<float> q_step = random_tokens(1, q_heads);
    all_k.insert(all_k.end(), k.begin(), k.end());
    all_v.insert(all_v.end(), v.begin(), v.end());
    cache.append(0, view3(k.data(), {1, kv_heads, head_dim}),
                 view3(v.data(), {1, kv_heads, head_dim}));

    attnkit::attention(attnkit::cpu, view3(q_step.data(), {1, q_heads, head_dim}), cache.view(0),
                       attnkit::tensor_view<float, 3>(step_out.data(), {1, q_heads, head_dim}),
                       attnkit::full{}, options);  // decode: the one query sees the whole cache
    if (cache.length(0, 0) >= budget_tokens + slack) {
      attnkit::compress(cache, 0, policy, budget, keep);
      ++compressions;
    }

    // What the step would have produced with the whole history (for this example only).
    const index_t n = prompt + step + 1;
    attnkit::attention(
        attnkit::cpu, view3(q_step.data(), {1, q_heads, head_dim}),
        view3(all_k.data(), {n, kv_heads, head_dim}), view3(all_v.data(), {n, kv_heads, head_dim}),
        attnkit::tensor_view<float, 3>(exact_out.data(), {1, q_heads, head_dim}), attnkit::full{});
    double diff = 0.0, norm = 0.0;
    for (std::size_t i = 0; i < step_out.size(); ++i) {
      diff += (step_out[i] - exact_out[i]) * (step_out[i] - exact_out[i]);
      norm += exact_out[i] * exact_out[i];
    }
    worst_error = std::max(worst_error, std::sqrt(diff / norm));
  }
  std::printf(
      "decode %lld steps: %lld compressions, cache %lld tokens per head, %.2f MiB; "
      "worst relative error vs. the full history %.3f\n",
      static_cast<long long>(steps), static_cast<long long>(compressions),
      static_cast<long long>(cache.length(0, 0)), double(cache.bytes_used()) / (1 << 20),
      worst_error);
  std::printf(
      "(random data has no heavy hitters or locality, so this error is the worst case: "
      "see attnkit-eviction-harness for structured workloads)\n");
  return 0;
}
