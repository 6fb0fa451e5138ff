// Continuous batching: how an engine serves several sequences at once (README: "Batches of
// sequences"). Random weights stand in for a model's projections; two layers.
//
// Every sequence owns a kv_cache over one shared page pool (pages one sequence frees serve
// another) and an H2O policy. Each engine step makes one batch of whatever the sequences need —
// a whole prompt for a sequence that just arrived (its prefill), one token for the others — and
// per layer: appends each sequence's new K/V, runs ONE attention_batch call over all of them,
// each with its own policy's observer, and compresses the caches that outgrew their budget.
// Sequences finish (their pages return to the pool) and new ones join the running batch.
//
// Output: the batch of some steps and the pool's pages in use, and at step 45 a check of the batch
// against the same attention computed one sequence at a time.
#include <algorithm>
#include <attnkit/attnkit.hpp>
#include <cmath>
#include <cstdio>
#include <iterator>
#include <memory>
#include <random>
#include <vector>

namespace {

using attnkit::index_t;
constexpr index_t layers = 2, q_heads = 8, kv_heads = 2, head_dim = 64;
constexpr index_t budget_tokens = 256, slack = 32;

struct sequence {
  int id = 0;
  index_t prompt = 0;      // tokens of the prompt, prefilled by the sequence's first step
  index_t steps_left = 0;  // decode steps after the prompt
  bool prefilled = false;
  attnkit::kv_cache<attnkit::half> cache;
  attnkit::h2o_policy policy{layers, {.observed_queries = 32}};

  sequence(int id_, index_t prompt_, index_t steps,
           const std::shared_ptr<attnkit::kv_page_pool<attnkit::half>>& pool)
      : id(id_),
        prompt(prompt_),
        steps_left(steps),
        cache({.layers = layers, .kv_heads = kv_heads, .head_dim = head_dim, .page_size = 16},
              pool) {}
  index_t new_tokens() const { return prefilled ? 1 : prompt; }
};

}  // namespace

int main() {
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  auto random_rows = [&](index_t tokens, index_t heads) {
    std::vector<float> data(static_cast<std::size_t>(tokens * heads * head_dim));
    for (float& x : data) x = normal(rng);
    return data;
  };

  // One pool for every sequence, reserved up front (views never move).
  auto pool = std::make_shared<attnkit::kv_page_pool<attnkit::half>>(
      attnkit::kv_page_pool_config{.capacity_pages = 4096, .page_size = 16, .head_dim = head_dim});
  std::vector<std::unique_ptr<sequence>> running;
  const index_t arrivals[][3] = {// step, prompt tokens, decode steps
                                 {0, 300, 40}, {0, 1200, 60}, {0, 40, 20},    {0, 700, 70},
                                 {0, 90, 30},  {10, 500, 40}, {25, 2000, 30}, {30, 64, 20}};
  int next_id = 0;

  attnkit::keep_list keep;  // reused: no allocation once warm
  using view3 = attnkit::tensor_view<const float, 3>;
  std::vector<index_t> q_indptr;
  std::vector<attnkit::paged_kv_view<const attnkit::half>> views;
  std::vector<attnkit::attention_observer> observers;
  std::vector<float> q, out;

  // The batch just computed, again one sequence at a time (as without attention_batch): the same
  // rows, since the batch is exactly attention() per sequence.
  auto check_against_single_calls = [&] {
    std::vector<float> alone(out.size());
    const index_t tokens = q_indptr.back();
    const view3 all_q(q.data(), {tokens, q_heads, head_dim});
    const attnkit::tensor_view<float, 3> all_alone(alone.data(), {tokens, q_heads, head_dim});
    for (std::size_t i = 0; i < views.size(); ++i)  // sequence i: rows q_indptr[i] .. [i + 1]
      attnkit::attention(attnkit::cpu, all_q.slice(q_indptr[i], q_indptr[i + 1]), views[i],
                         all_alone.slice(q_indptr[i], q_indptr[i + 1]), attnkit::causal{});
    double worst = 0.0;
    for (std::size_t j = 0; j < out.size(); ++j)
      worst = std::max(worst, static_cast<double>(std::fabs(out[j] - alone[j])));
    std::printf("checked against one attention() call per sequence: max |difference| %.3g\n",
                worst);
    return worst < 1e-5;  // the same kernel; only a different split of the keys can differ
  };

  for (index_t step = 0; step <= arrivals[std::size(arrivals) - 1][0] || !running.empty(); ++step) {
    for (const auto& a : arrivals)
      if (a[0] == step) running.push_back(std::make_unique<sequence>(next_id++, a[1], a[2], pool));
    if (running.empty()) continue;

    // This step's batch: the new tokens of every running sequence, packed.
    q_indptr.assign(1, 0);
    for (const auto& s : running) q_indptr.push_back(q_indptr.back() + s->new_tokens());
    const index_t tokens = q_indptr.back();
    out.resize(static_cast<std::size_t>(tokens * q_heads * head_dim));

    for (index_t layer = 0; layer < layers; ++layer) {
      views.clear();
      observers.clear();
      for (const auto& s : running) {
        const std::vector<float> k = random_rows(s->new_tokens(), kv_heads);
        const std::vector<float> v = random_rows(s->new_tokens(), kv_heads);
        s->cache.append(layer, view3(k.data(), {s->new_tokens(), kv_heads, head_dim}),
                        view3(v.data(), {s->new_tokens(), kv_heads, head_dim}));
        views.push_back(s->cache.view(layer));
        observers.emplace_back(s->policy.observer(layer));  // each sequence its own scores
      }
      q = random_rows(tokens, q_heads);  // stands in for this layer's query projection
      attnkit::attention_batch(
          attnkit::cpu, view3(q.data(), {tokens, q_heads, head_dim}), views,
          attnkit::tensor_view<float, 3>(out.data(), {tokens, q_heads, head_dim}),
          attnkit::batch_layout{.q_indptr = q_indptr, .observers = observers}, attnkit::causal{});
      if (step == 45 && layer == layers - 1 && !check_against_single_calls()) return 1;
      // Evict where a budget is exceeded: after a prefill at once, during decode every `slack`
      // tokens (amortising the compaction, which moves rows).
      for (const auto& s : running)
        if (s->cache.length(layer, 0) >= budget_tokens + (s->prefilled ? slack : 0))
          attnkit::compress(s->cache, layer, s->policy, attnkit::budget::tokens(budget_tokens),
                            keep);
    }

    if (step % 10 == 0 || step == 25) {
      std::printf("step %2lld: %zu sequences, %4lld new tokens (", static_cast<long long>(step),
                  running.size(), static_cast<long long>(tokens));
      for (const auto& s : running)
        std::printf(" #%d:%lld", s->id, static_cast<long long>(s->new_tokens()));
      std::printf(" ), pool pages in use %lld of %lld\n",
                  static_cast<long long>(pool->pages_in_use()),
                  static_cast<long long>(pool->capacity_pages()));
    }

    // Advance: prompts are done, decode steps counted, finished sequences free their pages.
    for (auto& s : running) {
      if (s->prefilled) --s->steps_left;
      s->prefilled = true;
    }
    std::erase_if(running, [](const std::unique_ptr<sequence>& s) { return s->steps_left <= 0; });
  }
  std::printf("all sequences finished; pool pages in use %lld\n",
              static_cast<long long>(pool->pages_in_use()));
  return pool->pages_in_use() == 0 ? 0 : 1;
}
