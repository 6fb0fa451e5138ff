// Hybrid layers — BASED (linear + sliding-window softmax) and Infini-attention (local softmax +
// compressive ELU+1 memory) — against a reference composed from the reference kernels.
//
// The composition is the definition: run each branch with backend::reference, mix in fp32 with
// the same weights. based_attention / infini_attention on backend::reference must reproduce it
// bit for bit (same branch kernels, same fp32 mix); on attnkit::cpu within the branches' own
// tolerances. Those are the fast kernels' accumulated fp32 error against fp64: softmax rows
// ~1e-6 relative, chunked linear attention ~5e-7 of max|out| (tests/support/linear_harness.hpp),
// both far below the 2e-5 · max|ref| + 2e-5 · |ref| used here, which still catches any wrong
// weight, window edge or state hand-over (those move outputs by O(1e-2) or more).
#include <attnkit/attnkit.hpp>
#include <attnkit/linear/based.hpp>
#include <attnkit/linear/infini_attention.hpp>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

using attnkit::index_t;
template <class T, std::size_t R>
using view = attnkit::tensor_view<T, R>;

namespace {

std::vector<float> random_values(std::size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> x(n);
  for (float& e : x) e = normal(rng);
  return x;
}

view<const float, 3> const_view(const std::vector<float>& data, index_t t, index_t h, index_t d) {
  return view<const float, 3>(data.data(), {t, h, d});
}
view<float, 3> mutable_view(std::vector<float>& data, index_t t, index_t h, index_t d) {
  return view<float, 3>(data.data(), {t, h, d});
}

void require_close(const std::vector<float>& got, const std::vector<float>& want) {
  REQUIRE(got.size() == want.size());
  float max_ref = 0.0f;
  for (float x : want) max_ref = std::max(max_ref, std::fabs(x));
  for (std::size_t i = 0; i < got.size(); ++i) {
    INFO("element " << i << ": got " << got[i] << ", want " << want[i]);
    REQUIRE(std::isfinite(got[i]));
    REQUIRE(std::fabs(got[i] - want[i]) <= 2e-5f * max_ref + 2e-5f * std::fabs(want[i]));
  }
}

// BASED's definition from the reference kernels: a · linear + b · window, mixed in fp32.
std::vector<float> based_composed(const std::vector<float>& ql, const std::vector<float>& kl,
                                  const std::vector<float>& q, const std::vector<float>& k,
                                  const std::vector<float>& v, index_t tokens, index_t kv_tokens,
                                  index_t q_heads, index_t kv_heads, index_t dl, index_t d,
                                  attnkit::linear_state& state,
                                  const attnkit::based_options& options) {
  const attnkit::backend::reference ref;
  std::vector<float> lin(static_cast<std::size_t>(tokens * q_heads * d));
  std::vector<float> win(lin.size()), out(lin.size());
  attnkit::linear_attention(
      ref, const_view(ql, tokens, q_heads, dl), const_view(kl, tokens, kv_heads, dl),
      view<const float, 3>(v.data() + (kv_tokens - tokens) * kv_heads * d, {tokens, kv_heads, d}),
      mutable_view(lin, tokens, q_heads, d), options.feature_map, state, options.linear);
  attnkit::attention(ref, const_view(q, tokens, q_heads, d), const_view(k, kv_tokens, kv_heads, d),
                     const_view(v, kv_tokens, kv_heads, d), mutable_view(win, tokens, q_heads, d),
                     attnkit::sliding_window{options.window - 1, 0}, options.softmax);
  for (std::size_t i = 0; i < out.size(); ++i)
    out[i] = options.linear_weight * lin[i] + options.window_weight * win[i];
  return out;
}

struct based_case {
  index_t tokens, q_heads, kv_heads, linear_dim, head_dim, window;
};

}  // namespace

TEST_CASE("BASED equals linear + sliding-window attention composed from the reference",
          "[hybrid][based]") {
  std::mt19937 rng(11);
  for (const based_case c :
       {based_case{1, 2, 1, 8, 32, 1}, based_case{37, 4, 2, 16, 64, 8},
        based_case{130, 4, 1, 16, 64, 64}, based_case{200, 2, 2, 8, 80, 300}}) {
    INFO("tokens " << c.tokens << " heads " << c.q_heads << "/" << c.kv_heads << " linear_dim "
                   << c.linear_dim << " head_dim " << c.head_dim << " window " << c.window);
    const index_t n = c.tokens, d = c.head_dim, dl = c.linear_dim;
    const auto ql = random_values(n * c.q_heads * dl, rng, 0.5f);
    const auto kl = random_values(n * c.kv_heads * dl, rng, 0.5f);
    const auto q = random_values(n * c.q_heads * d, rng);
    const auto k = random_values(n * c.kv_heads * d, rng);
    const auto v = random_values(n * c.kv_heads * d, rng);
    attnkit::based_options options;
    options.window = c.window;
    options.linear_weight = 0.75f;
    options.window_weight = 1.5f;
    options.feature_map = attnkit::feature::taylor2::approximating(1.0f / std::sqrt(float(dl)));

    attnkit::linear_state composed_state;
    const auto want = based_composed(ql, kl, q, k, v, n, n, c.q_heads, c.kv_heads, dl, d,
                                     composed_state, options);

    attnkit::hybrid_workspace workspace;
    for (const bool use_cpu : {false, true}) {
      INFO((use_cpu ? "attnkit::cpu" : "backend::reference"));
      attnkit::linear_state state;
      std::vector<float> out(want.size(), -1.0f);
      auto run = [&](const auto& backend) {
        attnkit::based_attention(backend, const_view(ql, n, c.q_heads, dl),
                                 const_view(kl, n, c.kv_heads, dl), const_view(q, n, c.q_heads, d),
                                 const_view(k, n, c.kv_heads, d), const_view(v, n, c.kv_heads, d),
                                 mutable_view(out, n, c.q_heads, d), state, workspace, options);
      };
      if (use_cpu) {
        run(attnkit::cpu);
        require_close(out, want);
      } else {
        run(attnkit::backend::reference{});
        REQUIRE(std::memcmp(out.data(), want.data(), out.size() * sizeof(float)) == 0);
      }
      REQUIRE(state.tokens() == n);
    }
  }
}

TEST_CASE("BASED: a prompt in one call equals a prompt then token-by-token decode",
          "[hybrid][based]") {
  std::mt19937 rng(12);
  const index_t prompt = 90, steps = 12, n = prompt + steps, q_heads = 4, kv_heads = 2, d = 64,
                dl = 16;
  const auto ql = random_values(n * q_heads * dl, rng, 0.5f);
  const auto kl = random_values(n * kv_heads * dl, rng, 0.5f);
  const auto q = random_values(n * q_heads * d, rng);
  const auto k = random_values(n * kv_heads * d, rng);
  const auto v = random_values(n * kv_heads * d, rng);
  attnkit::based_options options;
  options.window = 16;

  attnkit::hybrid_workspace workspace;
  attnkit::linear_state whole_state;
  std::vector<float> whole(static_cast<std::size_t>(n * q_heads * d));
  attnkit::based_attention(attnkit::cpu, const_view(ql, n, q_heads, dl),
                           const_view(kl, n, kv_heads, dl), const_view(q, n, q_heads, d),
                           const_view(k, n, kv_heads, d), const_view(v, n, kv_heads, d),
                           mutable_view(whole, n, q_heads, d), whole_state, workspace, options);

  attnkit::linear_state state;
  std::vector<float> pieces(whole.size());
  attnkit::based_attention(attnkit::cpu, const_view(ql, prompt, q_heads, dl),
                           const_view(kl, prompt, kv_heads, dl), const_view(q, prompt, q_heads, d),
                           const_view(k, prompt, kv_heads, d), const_view(v, prompt, kv_heads, d),
                           mutable_view(pieces, prompt, q_heads, d), state, workspace, options);
  for (index_t t = prompt; t < n; ++t) {
    // One new token: its projections, and the cache k/v[0, t + 1) ending with it.
    attnkit::based_attention(attnkit::cpu,
                             view<const float, 3>(ql.data() + t * q_heads * dl, {1, q_heads, dl}),
                             view<const float, 3>(kl.data() + t * kv_heads * dl, {1, kv_heads, dl}),
                             view<const float, 3>(q.data() + t * q_heads * d, {1, q_heads, d}),
                             const_view(k, t + 1, kv_heads, d), const_view(v, t + 1, kv_heads, d),
                             view<float, 3>(pieces.data() + t * q_heads * d, {1, q_heads, d}),
                             state, workspace, options);
  }
  require_close(pieces, whole);
  REQUIRE(state.tokens() == whole_state.tokens());
}

TEST_CASE("Infini-attention equals memory retrieval + local attention composed from the reference",
          "[hybrid][infini]") {
  std::mt19937 rng(13);
  const index_t segment = 48, segments = 3, q_heads = 4, kv_heads = 2, d = 32;
  std::vector<float> gate = {-1.0f, 0.0f, 0.5f, 2.0f};
  attnkit::infini_options options;
  options.gate = view<const float, 1>(gate.data(), {q_heads});

  const attnkit::backend::reference ref;
  const attnkit::feature::elu_plus_one sigma;
  attnkit::linear_state composed_memory(kv_heads, d, d), memory_ref, memory_cpu;
  attnkit::hybrid_workspace workspace;
  for (index_t s = 0; s < segments; ++s) {
    INFO("segment " << s);
    const auto q = random_values(segment * q_heads * d, rng);
    const auto k = random_values(segment * kv_heads * d, rng);
    const auto v = random_values(segment * kv_heads * d, rng);
    const std::size_t size = static_cast<std::size_t>(segment * q_heads * d);
    std::vector<float> memory_out(size), local(size), want(size);
    attnkit::linear_read(ref, const_view(q, segment, q_heads, d),
                         mutable_view(memory_out, segment, q_heads, d), sigma, composed_memory);
    attnkit::attention(ref, const_view(q, segment, q_heads, d), const_view(k, segment, kv_heads, d),
                       const_view(v, segment, kv_heads, d),
                       mutable_view(local, segment, q_heads, d), attnkit::causal{});
    attnkit::linear_append(ref, const_view(k, segment, kv_heads, d),
                           const_view(v, segment, kv_heads, d), sigma, composed_memory);
    for (index_t t = 0; t < segment; ++t)
      for (index_t h = 0; h < q_heads; ++h) {
        const float g = 1.0f / (1.0f + std::exp(-gate[std::size_t(h)]));
        for (index_t c = 0; c < d; ++c) {
          const std::size_t i = static_cast<std::size_t>((t * q_heads + h) * d + c);
          want[i] = g * memory_out[i] + (1.0f - g) * local[i];
          // The first segment retrieves from an empty memory: zeros, never NaN.
          if (s == 0) REQUIRE(memory_out[i] == 0.0f);
        }
      }

    std::vector<float> out_ref(size), out_cpu(size);
    attnkit::infini_attention(
        ref, const_view(q, segment, q_heads, d), const_view(k, segment, kv_heads, d),
        const_view(v, segment, kv_heads, d), mutable_view(out_ref, segment, q_heads, d), memory_ref,
        workspace, options);
    REQUIRE(std::memcmp(out_ref.data(), want.data(), size * sizeof(float)) == 0);
    attnkit::infini_attention(
        attnkit::cpu, const_view(q, segment, q_heads, d), const_view(k, segment, kv_heads, d),
        const_view(v, segment, kv_heads, d), mutable_view(out_cpu, segment, q_heads, d), memory_cpu,
        workspace, options);
    require_close(out_cpu, want);
  }
  REQUIRE(memory_cpu.tokens() == segment * segments);
}

TEST_CASE("Hybrids: invalid arguments throw and change neither state nor output",
          "[hybrid][errors]") {
  std::mt19937 rng(14);
  const index_t n = 8, h = 2, d = 32, dl = 8;
  const auto ql = random_values(n * h * dl, rng), kl = random_values(n * h * dl, rng);
  const auto q = random_values(n * h * d, rng), k = random_values(n * h * d, rng),
             v = random_values(n * h * d, rng);
  std::vector<float> out(static_cast<std::size_t>(n * h * d), 7.0f);
  attnkit::hybrid_workspace workspace;

  // A state that has seen tokens; its bytes must survive every failed call.
  attnkit::linear_state state;
  attnkit::based_attention(attnkit::cpu, const_view(ql, n, h, dl), const_view(kl, n, h, dl),
                           const_view(q, n, h, d), const_view(k, n, h, d), const_view(v, n, h, d),
                           mutable_view(out, n, h, d), state, workspace);
  std::fill(out.begin(), out.end(), 7.0f);
  const attnkit::linear_state before = state;
  auto unchanged = [&] {
    const attnkit::linear_state& now = state;  // const access: the writable views mark it dirty
    REQUIRE(now.tokens() == before.tokens());
    for (index_t i = 0; i < h; ++i)
      for (index_t f = 0; f < state.feature_dim(); ++f) {
        REQUIRE(now.z()(i, f) == before.z()(i, f));
        for (index_t c = 0; c < d; ++c) REQUIRE(now.s()(i, f, c) == before.s()(i, f, c));
      }
    for (float x : out) REQUIRE(x == 7.0f);
  };
  auto based = [&](index_t window, index_t cache_tokens, index_t linear_dim) {
    attnkit::based_options options;
    options.window = window;
    attnkit::based_attention(attnkit::cpu, const_view(ql, n, h, linear_dim),
                             const_view(kl, n, h, linear_dim), const_view(q, n, h, d),
                             const_view(k, cache_tokens, h, d), const_view(v, cache_tokens, h, d),
                             mutable_view(out, n, h, d), state, workspace, options);
  };
  CHECK_THROWS_WITH(based(0, n, dl), Catch::Contains("options.window is 0"));
  unchanged();
  CHECK_THROWS_WITH(based(4, n - 1, dl), Catch::Contains("the cache must end with the new tokens"));
  unchanged();
  CHECK_THROWS_WITH(based(4, n, dl / 2), Catch::Contains("feature_dim"));  // another map width
  unchanged();

  std::vector<float> gate = {0.0f, std::nanf("")};
  attnkit::infini_options options;
  options.gate = view<const float, 1>(gate.data(), {h});
  attnkit::linear_state memory;
  CHECK_THROWS_WITH(
      attnkit::infini_attention(attnkit::cpu, const_view(q, n, h, d), const_view(k, n, h, d),
                                const_view(v, n, h, d), mutable_view(out, n, h, d), memory,
                                workspace, options),
      Catch::Contains("options.gate[1] is nan"));
  REQUIRE_FALSE(memory.has_shape());
  options.gate = view<const float, 1>(gate.data(), {1});
  CHECK_THROWS_WITH(
      attnkit::infini_attention(attnkit::cpu, const_view(q, n, h, d), const_view(k, n, h, d),
                                const_view(v, n, h, d), mutable_view(out, n, h, d), memory,
                                workspace, options),
      Catch::Contains("options.gate extent 0"));
  gate[1] = 0.0f;
  options.gate = view<const float, 1>(gate.data(), {h});
  attnkit::linear_state wrong(h, d + 1, d);
  CHECK_THROWS_WITH(
      attnkit::infini_attention(attnkit::cpu, const_view(q, n, h, d), const_view(k, n, h, d),
                                const_view(v, n, h, d), mutable_view(out, n, h, d), wrong,
                                workspace, options),
      Catch::Contains("memory feature_dim"));
  for (float x : out) REQUIRE(x == 7.0f);
}
