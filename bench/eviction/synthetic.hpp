// attnkit eviction harness — synthetic long-context workloads with known structure.
//
// Without a model, a KV-cache policy is judged on attention patterns whose right answer is known
// (kvpress and the papers do the same, see ../shared/algorithms.md section D). Every logit here
// is built from designated coordinates of q and k, so each pattern is a term we control:
//
//   logit(q_p, k_j) =  sink · [j < sinks]                                    attention sinks
//                   +  heavy · [j is a heavy hitter]                          heavy hitters
//                   +  local · mean_m cos(ω_m (p - j))                        locality
//                        (random Fourier features, ω ~ N(0, 1/width²): ≈ exp(-(p-j)²/2width²))
//                   +  needle · [j is needle i and the query asks for i]      retrieval
//                   +  N(0, 1) noise                                          everything else
//
// (the kernel's 1/sqrt(head_dim) scale is folded into q). Heads have roles, as in real models
// (DuoAttention, RazorAttention): a few *retrieval* heads weight needles; *streaming* heads put
// their mass on sinks and the recent window; *heavy-hitter* heads on a few frequent tokens. The
// prompt ends with a question (the last `question_tokens` queries), whose retrieval heads look for
// every needle — so the needles receive attention during prefill, where SnapKV's observation
// window and H2O's accumulated mass can see them. After the prompt come the probes: decode queries
// that ask for one needle each (needle recall), and generic ones (output error).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "attnkit/core/config.hpp"
#include "attnkit/core/error.hpp"

namespace attnkit::harness {

enum class head_role { retrieval, streaming, heavy_hitter };

inline const char* role_name(head_role role) {
  switch (role) {
    case head_role::retrieval:
      return "retrieval";
    case head_role::streaming:
      return "streaming";
    case head_role::heavy_hitter:
      return "heavy_hitter";
  }
  return "?";
}

struct workload_config {
  index_t layers = 4;
  index_t q_heads = 8;
  index_t kv_heads = 8;  // q_heads == kv_heads: an MHA-like head mix (DuoAttention's 2.55x case)
  index_t head_dim = 64;
  index_t prompt_tokens = 4096;
  index_t sinks = 4;
  index_t needles = 4;             // planted at depths (i + 0.5) / needles of the prompt
  index_t generic_probes = 4;      // decode queries that ask for no needle
  index_t question_tokens = 32;    // the prompt's last queries, which ask for every needle
  double locality_width = 16.0;    // tokens: the scale of the locality kernel
  double heavy_fraction = 0.01;    // share of prompt tokens that are heavy hitters
  double retrieval_heads = 0.125;  // share of KV heads per layer with the retrieval role
  std::uint64_t seed = 1;
};

// One layer's tensors, NHD and contiguous, float32.
struct layer_workload {
  std::vector<float> prompt_q;   // [prompt_tokens, q_heads, head_dim]
  std::vector<float> keys;       // [prompt_tokens, kv_heads, head_dim]
  std::vector<float> values;     // [prompt_tokens, kv_heads, head_dim]
  std::vector<float> probe_q;    // [probes, q_heads, head_dim], each at position prompt_tokens
  std::vector<head_role> roles;  // [kv_heads]
};

struct workload {
  workload_config config;
  std::vector<layer_workload> layers;
  std::vector<index_t> needle_positions;  // [needles]
  // probe_needle[p]: the needle probe p asks for, or -1 for a generic probe.
  std::vector<index_t> probe_needle;
  std::vector<index_t> heavy_positions;

  index_t probes() const { return static_cast<index_t>(probe_needle.size()); }
};

namespace detail {

// Frequencies of the locality code. Random (Fourier features of a Gaussian kernel) rather than
// a fixed ladder of periods: a ladder realigns at distant keys and gives them recent-token logits.
inline constexpr index_t locality_frequencies = 12;
inline constexpr index_t locality_dims = 2 * locality_frequencies;

// Per-role weights of each logit term (natural units).
struct role_weights {
  double sink, heavy, local, needle;
};
inline role_weights weights_of(head_role role) {
  switch (role) {
    case head_role::retrieval:
      return {3.0, 1.0, 3.0, 14.0};
    case head_role::streaming:
      return {7.0, 1.0, 8.0, 0.0};
    case head_role::heavy_hitter:
      return {4.0, 6.0, 3.0, 0.0};
  }
  return {};
}

}  // namespace detail

inline workload make_synthetic_workload(const workload_config& c) {
  using attnkit::detail::require;
  const index_t fixed_dims = 2 + detail::locality_dims + c.needles;
  require(c.head_dim >= fixed_dims + 8, "make_synthetic_workload: head_dim is ", c.head_dim,
          ", it must be at least ", fixed_dims + 8, " for ", c.needles, " needles");
  require(c.kv_heads >= 1 && c.q_heads % c.kv_heads == 0, "make_synthetic_workload: q_heads ",
          c.q_heads, " is not a multiple of kv_heads ", c.kv_heads);
  require(c.prompt_tokens > c.sinks + c.question_tokens + c.needles,
          "make_synthetic_workload: prompt_tokens ", c.prompt_tokens, " is too short");

  workload w;
  w.config = c;
  std::mt19937_64 rng(c.seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);

  const index_t n = c.prompt_tokens, d = c.head_dim, group = c.q_heads / c.kv_heads;
  const index_t needle_dim0 = 2 + detail::locality_dims, noise_dim0 = fixed_dims;
  const float noise_q = 1.0f / std::sqrt(static_cast<float>(d - noise_dim0));
  const float fold_scale = std::sqrt(static_cast<float>(d));  // undoes the kernel's 1/sqrt(d)

  for (index_t i = 0; i < c.needles; ++i)
    w.needle_positions.push_back(
        static_cast<index_t>((static_cast<double>(i) + 0.5) / c.needles * (n - c.question_tokens)));
  std::vector<char> special(static_cast<std::size_t>(n), 0);
  for (index_t j = 0; j < c.sinks; ++j) special[std::size_t(j)] = 1;
  for (index_t p : w.needle_positions) special[std::size_t(p)] = 1;
  const index_t heavy_count = std::max<index_t>(1, index_t(c.heavy_fraction * double(n)));
  std::uniform_int_distribution<index_t> any_token(c.sinks, n - c.question_tokens - 1);
  while (static_cast<index_t>(w.heavy_positions.size()) < heavy_count) {
    const index_t j = any_token(rng);
    if (special[std::size_t(j)]) continue;
    special[std::size_t(j)] = 1;
    w.heavy_positions.push_back(j);
  }
  std::sort(w.heavy_positions.begin(), w.heavy_positions.end());
  std::vector<char> is_heavy(static_cast<std::size_t>(n), 0);
  for (index_t j : w.heavy_positions) is_heavy[std::size_t(j)] = 1;

  for (index_t i = 0; i < c.needles; ++i) w.probe_needle.push_back(i);
  for (index_t i = 0; i < c.generic_probes; ++i) w.probe_needle.push_back(-1);
  const index_t probes = w.probes();

  std::vector<double> frequencies(detail::locality_frequencies);
  for (double& f : frequencies) f = normal(rng) / c.locality_width;
  auto locality_code = [&](index_t pos, float* out, float weight) {
    const float per_term = weight / static_cast<float>(detail::locality_frequencies);
    for (std::size_t m = 0; m < frequencies.size(); ++m) {
      const double angle = frequencies[m] * double(pos);
      out[2 * m] = per_term * static_cast<float>(std::cos(angle));
      out[2 * m + 1] = per_term * static_cast<float>(std::sin(angle));
    }
  };
  // A query of a head with the given role at position pos; `needle` >= 0 asks for that needle,
  // -2 asks for every needle (the question), -1 for none.
  auto make_query = [&](float* q, head_role role, index_t pos, index_t needle) {
    const detail::role_weights r = detail::weights_of(role);
    std::fill(q, q + d, 0.0f);
    q[0] = float(r.sink);
    q[1] = float(r.heavy);
    locality_code(pos, q + 2, float(r.local));
    if (role == head_role::retrieval) {
      for (index_t i = 0; i < c.needles; ++i)
        if (needle == i || needle == -2)
          q[needle_dim0 + i] = float(r.needle) * (needle == -2 ? 0.7f : 1.0f);
    }
    for (index_t e = noise_dim0; e < d; ++e) q[e] = noise_q * normal(rng);
    for (index_t e = 0; e < d; ++e) q[e] *= fold_scale;
  };

  const index_t retrieval_per_layer = std::max<index_t>(
      1, static_cast<index_t>(std::lround(c.retrieval_heads * double(c.kv_heads))));
  for (index_t layer = 0; layer < c.layers; ++layer) {
    layer_workload L;
    L.roles.assign(static_cast<std::size_t>(c.kv_heads), head_role::streaming);
    std::vector<index_t> order(static_cast<std::size_t>(c.kv_heads));
    for (index_t h = 0; h < c.kv_heads; ++h) order[std::size_t(h)] = h;
    std::shuffle(order.begin(), order.end(), rng);
    for (index_t i = 0; i < c.kv_heads; ++i) {
      const index_t h = order[std::size_t(i)];
      L.roles[std::size_t(h)] = i < retrieval_per_layer              ? head_role::retrieval
                                : (i - retrieval_per_layer) % 2 == 0 ? head_role::streaming
                                                                     : head_role::heavy_hitter;
    }

    L.keys.resize(static_cast<std::size_t>(n * c.kv_heads * d));
    L.values.resize(L.keys.size());
    for (index_t j = 0; j < n; ++j) {
      for (index_t h = 0; h < c.kv_heads; ++h) {
        float* k = L.keys.data() + (j * c.kv_heads + h) * d;
        float* v = L.values.data() + (j * c.kv_heads + h) * d;
        std::fill(k, k + d, 0.0f);
        k[0] = j < c.sinks ? 1.0f : 0.0f;
        k[1] = is_heavy[std::size_t(j)] ? 1.0f : 0.0f;
        locality_code(j, k + 2, float(detail::locality_frequencies));
        for (index_t i = 0; i < c.needles; ++i)
          k[needle_dim0 + i] = j == w.needle_positions[std::size_t(i)] ? 1.0f : 0.0f;
        // Keys that draw attention have small norms in trained models (the observation behind
        // Knorm, Devoto et al. 2024): their noise part is shrunk so their norm is below average.
        const float noise_k = special[std::size_t(j)] ? 0.5f : 1.0f;
        for (index_t e = noise_dim0; e < d; ++e) k[e] = noise_k * normal(rng);
        for (index_t e = 0; e < d; ++e) v[e] = normal(rng);
      }
    }
    L.prompt_q.resize(static_cast<std::size_t>(n * c.q_heads * d));
    for (index_t p = 0; p < n; ++p)
      for (index_t h = 0; h < c.q_heads; ++h)
        make_query(L.prompt_q.data() + (p * c.q_heads + h) * d, L.roles[std::size_t(h / group)], p,
                   p >= n - c.question_tokens ? -2 : -1);
    L.probe_q.resize(static_cast<std::size_t>(probes * c.q_heads * d));
    for (index_t i = 0; i < probes; ++i)
      for (index_t h = 0; h < c.q_heads; ++h)
        make_query(L.probe_q.data() + (i * c.q_heads + h) * d, L.roles[std::size_t(h / group)], n,
                   w.probe_needle[std::size_t(i)]);
    w.layers.push_back(std::move(L));
  }
  return w;
}

// The head table that describes the workload's roles (retrieval heads keep everything), in the
// text format of kvcache/head_table.hpp: one "layer head role" line per head.
inline std::string head_table_text(const workload& w) {
  std::string text = "# attnkit head table: synthetic workload roles (layer head role)\n";
  for (index_t layer = 0; layer < static_cast<index_t>(w.layers.size()); ++layer)
    for (index_t h = 0; h < w.config.kv_heads; ++h)
      text += std::to_string(layer) + " " + std::to_string(h) + " " +
              (w.layers[std::size_t(layer)].roles[std::size_t(h)] == head_role::retrieval
                   ? "retrieval"
                   : "streaming") +
              "\n";
  return text;
}

}  // namespace attnkit::harness
