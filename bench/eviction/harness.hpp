// attnkit eviction harness — how much of attention each KV-cache policy keeps, without a model.
//
// For every policy of kvcache/policies/ and every compression ratio (kvpress reports 0.25, 0.5,
// 0.75 and 0.875; ../shared/algorithms.md section D), the harness runs what an engine runs:
//
//   1. a kv_cache<T> (float or half) holds the prompt's keys and values of every layer;
//   2. the observation pass the policy needs goes through the real kernels on the paged cache,
//      with `options.observer = policy.observer(layer)`:
//        SnapKV, PyramidKV, AdaKV   the last `observation_window` prompt queries (causal)
//        FastGen                    its last observed_queries (64) prompt queries (profiling)
//        TOVA                       the last prompt query
//        H2O                        the whole prompt, prefilled in causal chunks appended to the
//                                   cache one by one, each chunk observed whole (every query's
//                                   attention is accumulated, as the paper's H2O does)
//      (full, random, streaming, Knorm, DuoAttention and RazorAttention observe nothing);
//   3. attnkit::compress(cache, layer, policy, budget, keep) on every layer;
//   4. the probes (decode queries after the prompt) attend with the full mask to the compressed
//      cache, through the kernel, with an observer capturing their probabilities; the same
//      probes attended to the uncompressed cache once (the reference output and probabilities).
//
// Metrics per (policy, compression), over every layer:
//   rel_error      ‖out - out_full‖_F / ‖out_full‖_F over probes, query heads and layers
//   mass_kept      the full-attention probability mass of each probe on the tokens the compressed
//                  cache still holds (slots mapped to positions with position_of; a compensation
//                  token is not an original token and counts nothing), averaged over probes,
//                  query heads and layers
//   needle_recall  for each needle probe and each query head of a retrieval-role KV head: 1 when
//                  the compressed attention's most probable slot is the needle's position;
//                  averaged (NaN for inputs without needles, e.g. real traces)
//   kv_bytes       kv_cache::bytes_used() after compression (every layer: one cache)
//
// Budgets: budget::ratio(c) for the token-level policies (PyramidKV turns it into per-layer
// budgets that average to it; FastGen uses it for its frequent and local sets and keeps what its
// per-head choice keeps, so its bytes are its own). DuoAttention and RazorAttention take a head
// table (retrieval heads keep everything); their streaming heads get the per-head token budget
// that meets the target compression of the layer when it can, and never less than
// `min_streaming_budget` — so with many retrieval heads the achieved compression is capped, which
// the `achieved` column and kv_bytes show. DuoAttention's streaming heads keep min(64, budget / 4)
// sinks, RazorAttention's 4 sinks and one compensation token. FastGen's special tokens are the
// first `sinks` positions (there is no tokenizer, so no punctuation class).
//
// Quest (attention/quest.hpp) runs beside the policies as the reference point for selection at
// read time: nothing is evicted, each probe reads the top pages of its own Quest ranking, as many
// as the compression leaves (run_quest). Its kv_bytes are the full cache's plus its page bounds':
// it trades no memory, only the K/V a decode step reads.
//
// A wrong head table (each layer's roles moved one head on) is run for DuoAttention at 0.75 and
// reported in a footer note: with the budget unchanged, recall falls to what its streaming heads
// see — the table, not the budget, is what keeps the needles.
//
// Usage (examples/demo.cpp does the same on a smaller workload):
//   auto input = harness::from_workload(harness::make_synthetic_workload({}));
//   const harness::eviction_report report = harness::run_eviction_harness(input);
//   std::cout << harness::format_table(report);
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <limits>
#include <ostream>
#include <span>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "attnkit/attnkit.hpp"
#include "npy.hpp"
#include "synthetic.hpp"

namespace attnkit::harness {

// ---------------------------------------------------------------------------------------------
// What the harness evaluates: a prompt and probes per layer (synthetic or a real trace).
// ---------------------------------------------------------------------------------------------

struct eviction_layer {
  std::vector<float> prompt_q;  // [prompt_tokens, q_heads, head_dim]
  std::vector<float> keys;      // [prompt_tokens, kv_heads, head_dim]
  std::vector<float> values;    // [prompt_tokens, kv_heads, head_dim]
  std::vector<float> probe_q;   // [probes, q_heads, head_dim]
  // [kv_heads]: 1 for the heads whose needle recall is measured (retrieval role); empty: none.
  std::vector<unsigned char> retrieval;
};

struct eviction_input {
  std::string description;
  index_t q_heads = 0;
  index_t kv_heads = 0;
  index_t head_dim = 0;
  index_t prompt_tokens = 0;
  index_t probes = 0;
  index_t sinks = 4;                // special tokens at the start (sinks; FastGen's special class)
  index_t observation_window = 32;  // SnapKV's window: the prompt's last queries that vote
  std::vector<eviction_layer> layers;
  std::vector<index_t> needle_positions;
  std::vector<index_t> probe_needle;  // [probes]: the needle each probe asks for, -1 for none
  // DuoAttention / RazorAttention head table (kvcache/head_table.hpp's text format). Empty: the
  // harness estimates one from the prompt's attention (estimate_head_table).
  std::string head_table;
  std::string head_table_source = "head table";

  index_t layer_count() const noexcept { return static_cast<index_t>(layers.size()); }
  bool has_needles() const noexcept {
    return std::any_of(probe_needle.begin(), probe_needle.end(), [](index_t n) { return n >= 0; });
  }
};

// The synthetic workload of synthetic.hpp, with its right head table.
inline eviction_input from_workload(workload w) {
  eviction_input in;
  const workload_config& c = w.config;
  std::ostringstream text;
  text << "synthetic: " << c.layers << " layers, " << c.q_heads << " q heads / " << c.kv_heads
       << " kv heads, head_dim " << c.head_dim << ", " << c.prompt_tokens << " prompt tokens, "
       << c.needles << " needles, " << w.probes() << " probes, seed " << c.seed;
  in.description = text.str();
  in.q_heads = c.q_heads;
  in.kv_heads = c.kv_heads;
  in.head_dim = c.head_dim;
  in.prompt_tokens = c.prompt_tokens;
  in.probes = w.probes();
  in.sinks = c.sinks;
  in.observation_window = c.question_tokens;
  in.needle_positions = w.needle_positions;
  in.probe_needle = w.probe_needle;
  in.head_table = head_table_text(w);
  in.head_table_source = "synthetic workload roles";
  for (layer_workload& l : w.layers) {
    eviction_layer e;
    e.retrieval.resize(l.roles.size());
    for (std::size_t h = 0; h < l.roles.size(); ++h)
      e.retrieval[h] = l.roles[h] == head_role::retrieval ? 1 : 0;
    e.prompt_q = std::move(l.prompt_q);
    e.keys = std::move(l.keys);
    e.values = std::move(l.values);
    e.probe_q = std::move(l.probe_q);
    in.layers.push_back(std::move(e));
  }
  return in;
}

// ---------------------------------------------------------------------------------------------
// Traces: Q/K/V dumped from a model as .npy, one file per layer and tensor.
//
//   DIR/layer{l}_q.npy   [tokens, q_heads, head_dim]    l = 0, 1, ... until a file is missing
//   DIR/layer{l}_k.npy   [kv_tokens, kv_heads, head_dim]
//   DIR/layer{l}_v.npy   [kv_tokens, kv_heads, head_dim]
//
// float32, float16 or bfloat16 stored as uint16 (npy.hpp). The last `probes` rows of q are the
// probes (decode queries), the rows before them the prompt. kv_tokens is either tokens (the
// probes' own keys and values, which the harness does not use, are dropped) or tokens - probes.
// Needle recall is NaN: a trace has no planted needles.
// ---------------------------------------------------------------------------------------------

inline std::string trace_file(const std::string& dir, index_t layer, const char* tensor) {
  return (std::filesystem::path(dir) / ("layer" + std::to_string(layer) + "_" + tensor + ".npy"))
      .string();
}

inline eviction_input load_trace(const std::string& dir, index_t probes, index_t window,
                                 index_t sinks = 4) {
  using attnkit::detail::require;
  constexpr const char* fn = "load_trace";
  require(probes >= 1, fn, ": probes is ", probes, ", it must be >= 1");
  eviction_input in;
  in.probes = probes;
  in.sinks = sinks;
  in.observation_window = window;
  for (index_t l = 0; std::filesystem::exists(trace_file(dir, l, "q")); ++l) {
    npy_array q = read_npy(trace_file(dir, l, "q"));
    npy_array k = read_npy(trace_file(dir, l, "k"));
    npy_array v = read_npy(trace_file(dir, l, "v"));
    require(q.shape.size() == 3 && k.shape.size() == 3 && v.shape.size() == 3, fn, ": ", dir,
            " layer ", l, ": q, k and v must be [tokens, heads, head_dim]");
    require(k.shape == v.shape, fn, ": ", dir, " layer ", l, ": k and v shapes differ");
    const index_t tokens = q.shape[0], q_heads = q.shape[1], head_dim = q.shape[2];
    const index_t kv_tokens = k.shape[0], kv_heads = k.shape[1];
    const index_t prompt = tokens - probes;
    require(prompt > window && prompt > sinks, fn, ": ", dir, " layer ", l, ": q has ", tokens,
            " tokens, too few for ", probes, " probes and an observation window of ", window);
    require(k.shape[2] == head_dim, fn, ": ", dir, " layer ", l, ": k head_dim is ", k.shape[2],
            " but q head_dim is ", head_dim);
    require(kv_heads >= 1 && q_heads % kv_heads == 0, fn, ": ", dir, " layer ", l, ": q_heads ",
            q_heads, " is not a multiple of kv_heads ", kv_heads);
    require(kv_tokens == tokens || kv_tokens == prompt, fn, ": ", dir, " layer ", l, ": k has ",
            kv_tokens, " tokens, expected ", tokens, " (as q) or ", prompt, " (q less the ", probes,
            " probes)");
    if (l == 0) {
      in.q_heads = q_heads;
      in.kv_heads = kv_heads;
      in.head_dim = head_dim;
      in.prompt_tokens = prompt;
    }
    require(q_heads == in.q_heads && kv_heads == in.kv_heads && head_dim == in.head_dim &&
                prompt == in.prompt_tokens,
            fn, ": ", dir, " layer ", l, " has another shape than layer 0");
    eviction_layer e;
    const auto q_split = static_cast<std::ptrdiff_t>(prompt * q_heads * head_dim);
    const auto kv_size = static_cast<std::ptrdiff_t>(prompt * kv_heads * head_dim);
    e.prompt_q.assign(q.data.begin(), q.data.begin() + q_split);
    e.probe_q.assign(q.data.begin() + q_split, q.data.end());
    e.keys.assign(k.data.begin(), k.data.begin() + kv_size);
    e.values.assign(v.data.begin(), v.data.begin() + kv_size);
    in.layers.push_back(std::move(e));
  }
  require(!in.layers.empty(), fn, ": ", trace_file(dir, 0, "q"), " does not exist");
  in.probe_needle.assign(static_cast<std::size_t>(probes), -1);
  std::ostringstream text;
  text << "trace " << dir << ": " << in.layer_count() << " layers, " << in.q_heads << " q heads / "
       << in.kv_heads << " kv heads, head_dim " << in.head_dim << ", " << in.prompt_tokens
       << " prompt tokens, " << probes << " probes";
  in.description = text.str();
  return in;
}

// Writes a synthetic workload in the trace layout above (q holds the prompt queries, then the
// probes; k and v hold the prompt only), so the trace path can be tested on known data.
inline void write_trace(const std::string& dir, const workload& w) {
  std::filesystem::create_directories(dir);
  const workload_config& c = w.config;
  for (index_t l = 0; l < static_cast<index_t>(w.layers.size()); ++l) {
    const layer_workload& L = w.layers[static_cast<std::size_t>(l)];
    std::vector<float> q(L.prompt_q);
    q.insert(q.end(), L.probe_q.begin(), L.probe_q.end());
    write_npy(trace_file(dir, l, "q"), {c.prompt_tokens + w.probes(), c.q_heads, c.head_dim},
              q.data());
    write_npy(trace_file(dir, l, "k"), {c.prompt_tokens, c.kv_heads, c.head_dim}, L.keys.data());
    write_npy(trace_file(dir, l, "v"), {c.prompt_tokens, c.kv_heads, c.head_dim}, L.values.data());
  }
}

// ---------------------------------------------------------------------------------------------
// Options and results.
// ---------------------------------------------------------------------------------------------

enum class kv_dtype { float32, float16 };

inline const std::vector<std::string>& all_policy_names() {
  static const std::vector<std::string> names = {
      "full",  "random",  "streaming", "h2o",   "tova",  "snapkv", "pyramidkv",
      "knorm", "fastgen", "duo",       "razor", "adakv", "quest"};
  return names;
}

struct harness_options {
  std::vector<double> compressions = {0.25, 0.5, 0.75, 0.875};
  std::vector<std::string> policies = all_policy_names();
  kv_dtype dtype = kv_dtype::float32;
  index_t page_size = 16;
  index_t prefill_chunk = 256;     // H2O's causal prefill chunk (each observed whole)
  double fastgen_recovery = 0.95;  // FastGen's T, fixed
  index_t fastgen_observed = 64;   // FastGen profiles the last 64 prompt queries (its default)
  // DuoAttention's released configs keep 64 sink tokens; the harness keeps at most a quarter of
  // a streaming head's budget as sinks, so a small budget still holds a recent window.
  index_t duo_sinks = 64;
  index_t razor_sinks = 4;  // RazorAttention's N0
  // A streaming head of DuoAttention / RazorAttention keeps at least this many tokens (sinks and a
  // short window), whatever the target compression.
  index_t min_streaming_budget = 64;
  // Without a head table in the input: the share of KV heads the estimate calls retrieval.
  double estimated_retrieval_fraction = 0.25;
  // Also run DuoAttention at compression 0.75 with a wrong head table (each layer's roles moved
  // one head on) and report its recall in a note: the table, not the budget, is what saves needles.
  bool wrong_table_check = true;
  std::uint64_t seed = 1;
  std::ostream* progress = nullptr;  // one line per run when set
};

struct eviction_result {
  std::string policy;
  double compression = 0.0;  // target: fraction of the KV cache removed
  double achieved = 0.0;     // 1 - kv_bytes / kv_bytes of the full cache
  double rel_error = 0.0;
  double mass_kept = 0.0;
  double needle_recall = std::numeric_limits<double>::quiet_NaN();
  std::size_t kv_bytes = 0;
  double seconds = 0.0;  // observation + compression + probes
};

struct eviction_report {
  std::string description;
  std::string dtype;
  std::vector<eviction_result> rows;
  std::vector<std::string> notes;
  std::size_t full_bytes = 0;
  double seconds = 0.0;
};

// ---------------------------------------------------------------------------------------------
// Internals.
// ---------------------------------------------------------------------------------------------

namespace detail {

using attnkit::detail::require;

// The probabilities an attention call hands its observer, kept per (observed query, query head):
// row r of KV head g covers that head's own slots.
struct probability_capture {
  index_t queries = 1;  // last query tokens observed
  index_t q_heads = 0;
  index_t stride = 0;  // floats per row: the call's kv_tokens (the longest head)
  index_t first = 0;   // q row of the first observed query
  std::vector<float> data;
  std::vector<index_t> lengths;  // [queries, q_heads]: keys in each row

  void begin(const attention_shape& shape) {
    q_heads = shape.q_heads;
    stride = shape.kv_tokens;
    first = std::max<index_t>(0, shape.q_tokens - queries);
    data.assign(static_cast<std::size_t>(queries * q_heads * stride), 0.0f);
    lengths.assign(static_cast<std::size_t>(queries * q_heads), 0);
  }
  // Rows of different KV heads arrive concurrently; each writes its own (query, head) row.
  void add(const observed_row& row) {
    const index_t r = row.q_token - first;
    if (r < 0 || r >= queries || row.q_head < 0 || row.q_head >= q_heads) return;
    const index_t n = std::min<index_t>(static_cast<index_t>(row.probabilities.size()), stride);
    std::copy_n(row.probabilities.data(), n, data.data() + (r * q_heads + row.q_head) * stride);
    lengths[static_cast<std::size_t>(r * q_heads + row.q_head)] = n;
  }
  std::span<const float> row(index_t query, index_t head) const {
    return {data.data() + (query * q_heads + head) * stride,
            static_cast<std::size_t>(lengths[static_cast<std::size_t>(query * q_heads + head)])};
  }
};

// What goes in attention_options::observer (check() must be const: a handle on the capture).
struct capture_observer {
  probability_capture* capture;
  index_t observed_queries() const noexcept { return capture->queries; }
  void check(const attention_shape& shape) const { capture->begin(shape); }
  void operator()(const observed_row& row) const { capture->add(row); }
};

inline tensor_view<const float, 3> rows_of(const std::vector<float>& q, index_t first,
                                           index_t count, index_t heads, index_t head_dim) {
  return {q.data() + first * heads * head_dim, {count, heads, head_dim}};
}

template <class T>
kv_cache<T> make_cache(const eviction_input& in, const harness_options& o) {
  const index_t pages = (in.prompt_tokens + o.page_size - 1) / o.page_size;
  // + 1 page per head: room for a RazorAttention compensation token appended to a full page.
  return kv_cache<T>(kv_cache_config{in.layer_count(), in.kv_heads, in.head_dim, o.page_size,
                                     in.layer_count() * in.kv_heads * (pages + 1)});
}

template <class T>
void append_prompt(kv_cache<T>& cache, const eviction_input& in, index_t layer, index_t begin,
                   index_t end) {
  const eviction_layer& L = in.layers[static_cast<std::size_t>(layer)];
  cache.append(layer, rows_of(L.keys, begin, end - begin, in.kv_heads, in.head_dim),
               rows_of(L.values, begin, end - begin, in.kv_heads, in.head_dim));
}

// The last `queries` prompt queries of a layer attend causally to the cache (which holds the
// whole prompt), observed by `observer`; the output is scratch.
template <class T>
void observe_last_queries(const kv_cache<T>& cache, const eviction_input& in, index_t layer,
                          index_t queries, attention_observer observer,
                          std::vector<float>& scratch) {
  queries = std::min(queries, in.prompt_tokens);
  const eviction_layer& L = in.layers[static_cast<std::size_t>(layer)];
  scratch.resize(static_cast<std::size_t>(queries * in.q_heads * in.head_dim));
  attention_options options;
  options.observer = observer;
  attention(cpu, rows_of(L.prompt_q, in.prompt_tokens - queries, queries, in.q_heads, in.head_dim),
            cache.view(layer),
            tensor_view<float, 3>(scratch.data(), {queries, in.q_heads, in.head_dim}), causal{},
            options);
}

// How a policy observes the prompt before it compresses.
enum class observation { none, last_queries, chunked_prefill };

struct observation_plan {
  observation kind = observation::none;
  index_t queries = 0;  // last_queries: how many; chunked_prefill: the chunk
};

// The reference: the probes over the uncompressed cache.
struct layer_reference {
  std::vector<float> out;     // [probes, q_heads, head_dim]
  probability_capture probs;  // rows over every prompt position (slot j holds position j)
};

template <class T>
void probe(const kv_cache<T>& cache, const eviction_input& in, index_t layer,
           std::vector<float>& out, probability_capture& capture) {
  const eviction_layer& L = in.layers[static_cast<std::size_t>(layer)];
  out.assign(static_cast<std::size_t>(in.probes * in.q_heads * in.head_dim), 0.0f);
  capture.queries = in.probes;
  capture_observer observer{&capture};
  attention_options options;
  options.observer = observer;
  attention(cpu, rows_of(L.probe_q, 0, in.probes, in.q_heads, in.head_dim), cache.view(layer),
            tensor_view<float, 3>(out.data(), {in.probes, in.q_heads, in.head_dim}), full{},
            options);
}

template <class T>
std::vector<layer_reference> make_reference(const eviction_input& in, const harness_options& o) {
  kv_cache<T> cache = make_cache<T>(in, o);
  std::vector<layer_reference> ref(static_cast<std::size_t>(in.layer_count()));
  for (index_t l = 0; l < in.layer_count(); ++l) {
    append_prompt(cache, in, l, 0, in.prompt_tokens);
    probe(cache, in, l, ref[static_cast<std::size_t>(l)].out,
          ref[static_cast<std::size_t>(l)].probs);
  }
  return ref;
}

// The metrics' running sums over layers, probes and query heads.
struct metric_sums {
  double error2 = 0.0, norm2 = 0.0, mass = 0.0, hits = 0.0;
  index_t mass_rows = 0, recall_rows = 0;

  void add_output(std::span<const float> out, std::span<const float> reference) {
    for (std::size_t i = 0; i < out.size(); ++i) {
      const double d = double(out[i]) - double(reference[i]);
      error2 += d * d;
      norm2 += double(reference[i]) * double(reference[i]);
    }
  }
  void add_mass(double kept) {
    mass += kept;
    ++mass_rows;
  }
  // A recall row: whether the compressed attention's most probable of the `real` (original-token)
  // slots of `row` holds the needle's position, slot s being at position_of(s).
  template <class PositionOf>
  void add_recall(std::span<const float> row, index_t real, PositionOf position_of,
                  position needle) {
    const auto best = std::max_element(row.begin(), row.end()) - row.begin();
    const bool hit =
        !row.empty() && best < real && position_of(static_cast<index_t>(best)) == needle;
    hits += hit ? 1.0 : 0.0;
    ++recall_rows;
  }
  void finish(eviction_result& r) const {
    r.rel_error = norm2 > 0.0 ? std::sqrt(error2 / norm2) : 0.0;
    r.mass_kept = mass_rows > 0 ? mass / double(mass_rows) : 0.0;
    if (recall_rows > 0) r.needle_recall = hits / double(recall_rows);
  }
};

// The needle probe p asks for, when its recall is measured on KV head g of layer L (a retrieval
// head of a needle probe); -1 otherwise.
inline position measured_needle(const eviction_input& in, const eviction_layer& L, index_t p,
                                index_t g) {
  const index_t needle = in.probe_needle[static_cast<std::size_t>(p)];
  if (needle < 0 || L.retrieval.empty() || !L.retrieval[static_cast<std::size_t>(g)]) return -1;
  return in.needle_positions[static_cast<std::size_t>(needle)];
}

inline void report_progress(const harness_options& o, const eviction_result& r) {
  if (o.progress != nullptr)
    *o.progress << "  " << std::left << std::setw(10) << r.policy << " c=" << r.compression << "  "
                << std::fixed << std::setprecision(2) << r.seconds << " s\n"
                << std::defaultfloat;
}

// One (policy, compression) run: build, observe, compress, probe, measure.
template <class T, class Policy, class BudgetOf>
eviction_result run_policy(const eviction_input& in, const std::vector<layer_reference>& ref,
                           const harness_options& o, const std::string& name, double compression,
                           Policy& policy, observation_plan plan, BudgetOf budget_of,
                           std::size_t full_bytes) {
  const auto start = std::chrono::steady_clock::now();
  const index_t layers = in.layer_count(), group = in.q_heads / in.kv_heads;
  kv_cache<T> cache = make_cache<T>(in, o);
  std::vector<float> scratch;
  keep_list keep;
  // [layer][kv head]: slots below this are original tokens (a compensation token sits after).
  std::vector<std::vector<index_t>> real_slots(static_cast<std::size_t>(layers));

  for (index_t l = 0; l < layers; ++l) {
    if constexpr (observing_policy<Policy>) {
      if (plan.kind == observation::chunked_prefill) {
        // Causal prefill chunk by chunk: chunk [a, b) attends to keys [0, b), bottom-right
        // aligned, as an engine prefills a long prompt; every query of the chunk is observed.
        const eviction_layer& L = in.layers[static_cast<std::size_t>(l)];
        for (index_t a = 0; a < in.prompt_tokens; a += plan.queries) {
          const index_t b = std::min(in.prompt_tokens, a + plan.queries);
          append_prompt(cache, in, l, a, b);
          scratch.resize(static_cast<std::size_t>((b - a) * in.q_heads * in.head_dim));
          attention_options options;
          options.observer = policy.observer(l);
          attention(cpu, rows_of(L.prompt_q, a, b - a, in.q_heads, in.head_dim), cache.view(l),
                    tensor_view<float, 3>(scratch.data(), {b - a, in.q_heads, in.head_dim}),
                    causal{}, options);
        }
      } else {
        append_prompt(cache, in, l, 0, in.prompt_tokens);
        if (plan.kind == observation::last_queries)
          observe_last_queries(cache, in, l, plan.queries, policy.observer(l), scratch);
      }
    } else {
      append_prompt(cache, in, l, 0, in.prompt_tokens);
    }
    compress(cache, l, policy, budget_of(l), keep);
    real_slots[static_cast<std::size_t>(l)].resize(static_cast<std::size_t>(in.kv_heads));
    for (index_t h = 0; h < in.kv_heads; ++h)
      real_slots[static_cast<std::size_t>(l)][static_cast<std::size_t>(h)] = keep.kept(h);
  }

  eviction_result r;
  r.policy = name;
  r.compression = compression;
  r.kv_bytes = cache.bytes_used();
  r.achieved = full_bytes > 0 ? 1.0 - double(r.kv_bytes) / double(full_bytes) : 0.0;

  metric_sums sums;
  std::vector<float> out;
  probability_capture capture;
  for (index_t l = 0; l < layers; ++l) {
    const layer_reference& R = ref[static_cast<std::size_t>(l)];
    const eviction_layer& L = in.layers[static_cast<std::size_t>(l)];
    probe(cache, in, l, out, capture);
    sums.add_output(out, R.out);
    const paged_kv_view<const T> view = cache.view(l);
    for (index_t p = 0; p < in.probes; ++p) {
      for (index_t h = 0; h < in.q_heads; ++h) {
        const index_t g = h / group;
        const index_t real = real_slots[static_cast<std::size_t>(l)][static_cast<std::size_t>(g)];
        const std::span<const float> full_row = R.probs.row(p, h);
        double kept = 0.0;
        for (index_t s = 0; s < real; ++s) {
          const position pos = view.position_of(g, s);
          if (pos >= 0 && pos < static_cast<position>(full_row.size()))
            kept += full_row[static_cast<std::size_t>(pos)];
        }
        sums.add_mass(kept);
        const position needle = measured_needle(in, L, p, g);
        if (needle >= 0)
          sums.add_recall(
              capture.row(p, h), real, [&](index_t s) { return view.position_of(g, s); }, needle);
      }
    }
  }
  sums.finish(r);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  report_progress(o, r);
  return r;
}

// Quest (attention/quest.hpp), the reference point for selection at read time: the cache keeps
// the whole prompt, and each probe, one decode query at a time, reads only the pages of
// page_size tokens whose Quest bound is largest for it: top_pages = the pages left after removing
// the compression's fraction (the last page among them). Nothing is evicted, so kv_bytes is the
// full cache's plus the page bounds' (fp32, one min and one max row per page and KV head); what
// the compression saves is the K/V each decode step reads.
template <class T>
eviction_result run_quest(const eviction_input& in, const std::vector<layer_reference>& ref,
                          const harness_options& o, double compression, std::size_t full_bytes) {
  const auto start = std::chrono::steady_clock::now();
  const index_t layers = in.layer_count(), group = in.q_heads / in.kv_heads;
  const index_t pages = (in.prompt_tokens + o.page_size - 1) / o.page_size;
  const index_t top_pages =
      std::max<index_t>(1, static_cast<index_t>(std::llround((1.0 - compression) * double(pages))));
  kv_cache<T> cache = make_cache<T>(in, o);
  page_bounds<float> bounds(o.page_size, in.kv_heads, in.head_dim, in.prompt_tokens);
  block_layout layout;
  probability_capture capture;
  capture.queries = 1;
  std::vector<float> out(static_cast<std::size_t>(in.q_heads * in.head_dim));
  metric_sums sums;
  for (index_t l = 0; l < layers; ++l) {
    const layer_reference& R = ref[static_cast<std::size_t>(l)];
    const eviction_layer& L = in.layers[static_cast<std::size_t>(l)];
    append_prompt(cache, in, l, 0, in.prompt_tokens);
    bounds.update(cpu, cache.view(l));
    for (index_t p = 0; p < in.probes; ++p) {
      const tensor_view<const float, 3> q = rows_of(L.probe_q, p, 1, in.q_heads, in.head_dim);
      quest_select(cpu, q, bounds, top_pages, layout);
      capture_observer observer{&capture};
      attention_options options;
      options.observer = observer;
      attention(cpu, q, cache.view(l),
                tensor_view<float, 3>(out.data(), {1, in.q_heads, in.head_dim}),
                block_sparse{layout}, options);
      const std::size_t row_floats = out.size();
      sums.add_output(out, std::span<const float>(R.out).subspan(
                               static_cast<std::size_t>(p) * row_floats, row_floats));
      for (index_t h = 0; h < in.q_heads; ++h) {
        const index_t g = h / group;
        const std::span<const float> full_row = R.probs.row(p, h);
        double kept = 0.0;
        for (const index_t page : layout.row(g, 0))
          for (index_t s = page * o.page_size;
               s < std::min((page + 1) * o.page_size, static_cast<index_t>(full_row.size())); ++s)
            kept += full_row[static_cast<std::size_t>(s)];
        sums.add_mass(kept);
        const position needle = measured_needle(in, L, p, g);
        if (needle >= 0)
          sums.add_recall(
              capture.row(0, h), in.prompt_tokens,
              [](index_t s) { return static_cast<position>(s); }, needle);
      }
    }
  }
  eviction_result r;
  r.policy = "quest";
  r.compression = compression;
  const std::size_t bounds_bytes =
      static_cast<std::size_t>(layers * in.kv_heads * pages * 2 * bounds.padded_head_dim()) *
      sizeof(float);
  r.kv_bytes = cache.bytes_used() + bounds_bytes;
  r.achieved = full_bytes > 0 ? 1.0 - double(r.kv_bytes) / double(full_bytes) : 0.0;
  sums.finish(r);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  report_progress(o, r);
  return r;
}

// A head table estimated from the prompt (for traces without one): a KV head's retrieval score is
// the attention mass the last observation-window queries put beyond the sinks and the recent
// `window` tokens — far context, what streaming heads never read; the top fraction of all heads
// (over every layer, as DuoAttention ranks its gates) become retrieval heads.
template <class T>
head_table estimate_head_table(const eviction_input& in, const harness_options& o) {
  const index_t layers = in.layer_count(), group = in.q_heads / in.kv_heads;
  const index_t window = std::max<index_t>(in.observation_window, 64);
  head_table table(layers, in.kv_heads);
  kv_cache<T> cache = make_cache<T>(in, o);
  std::vector<float> scratch;
  probability_capture capture;
  capture.queries = in.observation_window;
  capture_observer observer{&capture};
  for (index_t l = 0; l < layers; ++l) {
    append_prompt(cache, in, l, 0, in.prompt_tokens);
    observe_last_queries(cache, in, l, in.observation_window, observer, scratch);
    for (index_t g = 0; g < in.kv_heads; ++g) {
      double far = 0.0;
      for (index_t q = 0; q < capture.queries; ++q)
        for (index_t h = g * group; h < (g + 1) * group; ++h) {
          const std::span<const float> row = capture.row(q, h);
          const index_t position_of_query = in.prompt_tokens - capture.queries + q;
          const index_t end =
              std::min<index_t>(static_cast<index_t>(row.size()), position_of_query - window + 1);
          for (index_t j = in.sinks; j < end; ++j) far += row[static_cast<std::size_t>(j)];
        }
      table.set(l, g, attnkit::head_role::retrieval, far);
    }
  }
  table.assign_streaming_by_score(1.0 - o.estimated_retrieval_fraction);
  return table;
}

// DuoAttention / RazorAttention streaming-head budget: the tokens each streaming head of the
// layer may keep so that the layer keeps (1 - compression) of its tokens, retrieval heads whole.
inline index_t streaming_budget(const head_table& table, index_t layer, index_t prompt,
                                double compression, index_t minimum) {
  index_t retrieval = 0;
  for (index_t h = 0; h < table.kv_heads(); ++h)
    retrieval += table.role(layer, h) == attnkit::head_role::retrieval ? 1 : 0;
  const index_t streaming = table.kv_heads() - retrieval;
  if (streaming == 0) return prompt;
  const double total = (1.0 - compression) * double(table.kv_heads()) * double(prompt);
  const double per_head = (total - double(retrieval) * double(prompt)) / double(streaming);
  const auto tokens = static_cast<index_t>(std::floor(per_head));
  return std::clamp<index_t>(tokens, std::min(minimum, prompt), prompt);
}

inline std::string format_fixed(double x, int precision) {
  if (std::isnan(x)) return "-";
  std::ostringstream s;
  s << std::fixed << std::setprecision(precision) << x;
  return s.str();
}

template <class T>
eviction_report run_typed(const eviction_input& in, const harness_options& o) {
  const auto start = std::chrono::steady_clock::now();
  const index_t layers = in.layer_count();
  eviction_report report;
  report.description = in.description;
  report.dtype = std::is_same_v<T, float> ? "float32" : "float16";

  const std::vector<layer_reference> ref = make_reference<T>(in, o);
  {
    kv_cache<T> cache = make_cache<T>(in, o);
    for (index_t l = 0; l < layers; ++l) append_prompt(cache, in, l, 0, in.prompt_tokens);
    report.full_bytes = cache.bytes_used();
  }

  const bool estimated = in.head_table.empty();
  const head_table table =
      estimated ? estimate_head_table<T>(in, o)
                : head_table::parse(in.head_table, in.head_table_source, layers, in.kv_heads);
  if (estimated) {
    std::ostringstream note;
    note << "duo/razor head table estimated from the prompt's far attention (top "
         << o.estimated_retrieval_fraction * 100.0 << "% of heads retrieval)";
    report.notes.push_back(note.str());
  }

  // FastGen's token classes: the sinks are the special tokens (BOS); no punctuation is known.
  std::vector<std::uint8_t> classes(static_cast<std::size_t>(std::min(in.sinks, in.prompt_tokens)),
                                    token_class::special);

  // DuoAttention's sinks for a compression: at most a quarter of the smallest streaming budget.
  const auto duo_sinks = [&](const head_table& heads, double c) {
    index_t smallest = in.prompt_tokens;
    for (index_t l = 0; l < layers; ++l)
      smallest = std::min(smallest,
                          streaming_budget(heads, l, in.prompt_tokens, c, o.min_streaming_budget));
    return std::min(o.duo_sinks, smallest / 4);
  };

  const snapkv_options snap{in.observation_window, 5, snapkv_pooling::average};
  const observation_plan none{observation::none, 0};
  const observation_plan window{observation::last_queries, in.observation_window};

  auto wants = [&](const std::string& name) {
    return std::find(o.policies.begin(), o.policies.end(), name) != o.policies.end();
  };
  auto add = [&](eviction_result r) { report.rows.push_back(std::move(r)); };
  auto run = [&](const std::string& name, double c, auto& policy, observation_plan plan,
                 auto budget_of) {
    return run_policy<T>(in, ref, o, name, c, policy, plan, budget_of, report.full_bytes);
  };

  if (wants("full")) {
    full_policy policy;
    add(run("full", 0.0, policy, none, [](index_t) { return budget::ratio(0.0); }));
  }
  for (const double c : o.compressions) {
    const auto ratio = [c](index_t) { return budget::ratio(c); };
    if (wants("random")) {
      random_policy policy(o.seed);
      add(run("random", c, policy, none, ratio));
    }
    if (wants("streaming")) {
      streaming_policy policy(in.sinks);
      add(run("streaming", c, policy, none, ratio));
    }
    if (wants("h2o")) {
      h2o_policy policy(layers, h2o_options{0.5, o.prefill_chunk});
      add(run("h2o", c, policy, observation_plan{observation::chunked_prefill, o.prefill_chunk},
              ratio));
    }
    if (wants("tova")) {
      tova_policy policy(layers);
      add(run("tova", c, policy, observation_plan{observation::last_queries, 1}, ratio));
    }
    if (wants("snapkv")) {
      snapkv_policy policy(layers, snap);
      add(run("snapkv", c, policy, window, ratio));
    }
    if (wants("pyramidkv")) {
      pyramidkv_policy policy(layers, pyramidkv_options{snap, 20.0});
      add(run("pyramidkv", c, policy, window, ratio));
    }
    if (wants("knorm")) {
      knorm_policy policy;
      add(run("knorm", c, policy, none, ratio));
    }
    if (wants("fastgen")) {
      fastgen_policy policy(layers, fastgen_options{o.fastgen_recovery, o.fastgen_observed});
      policy.set_token_classes(classes);
      add(run("fastgen", c, policy, observation_plan{observation::last_queries, o.fastgen_observed},
              ratio));
    }
    const auto streaming_tokens = [&, c](index_t l) {
      return budget::tokens(
          streaming_budget(table, l, in.prompt_tokens, c, o.min_streaming_budget));
    };
    if (wants("duo")) {
      duo_policy policy(table, duo_sinks(table, c));
      add(run("duo", c, policy, none, streaming_tokens));
    }
    if (wants("razor")) {
      razor_policy policy(table, razor_options{o.razor_sinks, 0});
      add(run("razor", c, policy, none, streaming_tokens));
    }
    if (wants("adakv")) {
      adakv_policy<snapkv_policy> policy(snapkv_policy(layers, snap));
      add(run("adakv", c, policy, window, ratio));
    }
    if (wants("quest")) add(run_quest<T>(in, ref, o, c, report.full_bytes));
  }

  // DuoAttention with a wrong table: each layer's roles moved one head on (same budgets), so the
  // retrieval heads of the workload become streaming heads.
  if (o.wrong_table_check && wants("duo") && in.has_needles() && in.kv_heads > 1) {
    const double c = 0.75;
    head_table wrong(layers, in.kv_heads);
    for (index_t l = 0; l < layers; ++l)
      for (index_t h = 0; h < in.kv_heads; ++h)
        wrong.set(l, (h + 1) % in.kv_heads, table.role(l, h));
    duo_policy policy(wrong, duo_sinks(wrong, c));
    const eviction_result r = run("duo", c, policy, none, [&](index_t l) {
      return budget::tokens(
          streaming_budget(wrong, l, in.prompt_tokens, c, o.min_streaming_budget));
    });
    std::ostringstream note;
    note << "duo with a WRONG head table (roles moved one head on) at 0.75: needle recall "
         << format_fixed(r.needle_recall, 3) << ", rel_error " << format_fixed(r.rel_error, 3)
         << ", mass_kept " << format_fixed(r.mass_kept, 3);
    report.notes.push_back(note.str());
  }
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

}  // namespace detail

// ---------------------------------------------------------------------------------------------
// Front door.
// ---------------------------------------------------------------------------------------------

inline eviction_report run_eviction_harness(const eviction_input& in,
                                            const harness_options& o = {}) {
  using attnkit::detail::require;
  constexpr const char* fn = "run_eviction_harness";
  require(in.layer_count() >= 1, fn, ": the input has no layers");
  require(in.probes >= 1 && static_cast<index_t>(in.probe_needle.size()) == in.probes, fn,
          ": probes is ", in.probes, " with ", in.probe_needle.size(), " probe_needle entries");
  require(in.kv_heads >= 1 && in.q_heads % in.kv_heads == 0, fn, ": q_heads ", in.q_heads,
          " is not a multiple of kv_heads ", in.kv_heads);
  require(o.prefill_chunk >= 1 && o.page_size >= 1, fn, ": prefill_chunk (", o.prefill_chunk,
          ") and page_size (", o.page_size, ") must be >= 1");
  for (const double c : o.compressions)
    require(c >= 0.0 && c < 1.0, fn, ": compression ", c, " is not in [0, 1)");
  for (const std::string& name : o.policies)
    require(std::find(all_policy_names().begin(), all_policy_names().end(), name) !=
                all_policy_names().end(),
            fn, ": unknown policy '", name, "'");
  return o.dtype == kv_dtype::float32 ? detail::run_typed<float>(in, o)
                                      : detail::run_typed<half>(in, o);
}

// The table: one row per (policy, compression).
inline std::string format_table(const eviction_report& report) {
  std::ostringstream s;
  s << report.description << "; KV cache " << report.dtype << ", full cache "
    << detail::format_fixed(double(report.full_bytes) / double(1 << 20), 2) << " MiB\n";
  s << std::left << std::setw(11) << "policy" << std::right << std::setw(8) << "target"
    << std::setw(10) << "achieved" << std::setw(11) << "rel_error" << std::setw(11) << "mass_kept"
    << std::setw(9) << "recall" << std::setw(10) << "KV MiB" << std::setw(8) << "memory"
    << std::setw(9) << "time s"
    << "\n";
  for (const eviction_result& r : report.rows) {
    const double factor = r.kv_bytes > 0 ? double(report.full_bytes) / double(r.kv_bytes) : 0.0;
    s << std::left << std::setw(11) << r.policy << std::right << std::setw(8)
      << detail::format_fixed(r.compression, 3) << std::setw(10)
      << detail::format_fixed(r.achieved, 3) << std::setw(11)
      << detail::format_fixed(r.rel_error, 4) << std::setw(11)
      << detail::format_fixed(r.mass_kept, 4) << std::setw(9)
      << detail::format_fixed(r.needle_recall, 3) << std::setw(10)
      << detail::format_fixed(double(r.kv_bytes) / double(1 << 20), 2) << std::setw(7)
      << detail::format_fixed(factor, 2) << "x" << std::setw(9)
      << detail::format_fixed(r.seconds, 2) << "\n";
  }
  s << "target: fraction of the KV cache to remove (quest: of the pages each probe reads; it "
       "evicts nothing and adds its page bounds); achieved: 1 - KV bytes / full bytes (duo, "
       "razor and fastgen size their heads themselves); recall '-': no needles\n";
  for (const std::string& note : report.notes) s << "note: " << note << "\n";
  s << "total " << detail::format_fixed(report.seconds, 1) << " s\n";
  return s.str();
}

// The CSV the plot script reads: exactly policy,compression,rel_error,mass_kept,needle_recall,
// kv_bytes (compression: the target fraction removed; needle_recall "nan" without needles).
inline void write_csv(const std::string& path, const eviction_report& report) {
  std::ofstream out(path);
  attnkit::detail::require(bool(out), "write_csv: cannot open ", path, " for writing");
  out << "policy,compression,rel_error,mass_kept,needle_recall,kv_bytes\n";
  out << std::setprecision(9);
  for (const eviction_result& r : report.rows) {
    out << r.policy << ',' << r.compression << ',' << r.rel_error << ',' << r.mass_kept << ',';
    if (std::isnan(r.needle_recall))
      out << "nan";
    else
      out << r.needle_recall;
    out << ',' << r.kv_bytes << '\n';
  }
  attnkit::detail::require(bool(out), "write_csv: writing ", path, " failed");
}

}  // namespace attnkit::harness
