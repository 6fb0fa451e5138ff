// attnkit — attention_scores: per-slot attention mass per (layer, KV head), fed by the kernels.
//
// H2O ranks slots by the attention they accumulated over every query so far, TOVA by the
// current query's attention, SnapKV and FastGen by an observation window of the last prompt
// queries. All of them read one table per layer, mass[kv_head][slot] = Σ p over the observed
// rows of the KV head's query heads (the query heads of a GQA group are summed, as kvpress and
// SnapKV's GQA fix average them — the same ranking), which this component fills from the
// probabilities the attention kernel already computed (core/observer.hpp):
//
//   options.observer = scores.observer(layer);      // a member: outlives the attention call
//   attnkit::attention(cpu, q, k, v, out, causal{}, options);
//
// Two update rules:
// * accumulate: rows add to the table; decode steps sum up (H2O, FastGen's frequency);
// * replace: each attention call's rows replace the previous call's (TOVA: the current query;
//   SnapKV: the last prefill chunk's observation window). The observer's check(), which the
//   attention front door calls once per call before the kernel runs, starts the new observation:
//   it marks every head's row stale, and a stale row is cleared when the kernel first asks for it
//   (on the thread that then adds that head's rows, so the clearing runs in parallel and leaves
//   the row in that core's cache) or before any host-side read.
//
// Slot renumbering: after a keep list is applied, compact(layer, keep) moves each kept slot's
// mass down to its new slot and zeroes the rest, so new tokens start from zero mass.
//
// Rows are delivered concurrently for different KV heads and in order for one head; each row
// writes only its head's table, so no lock is needed. The table grows (geometrically) only in
// check() or from the host-side calls, never inside a row: rows that reach beyond what check()
// prepared are clipped, so feed rows by hand only after calling the observer's check(shape), as
// the front door does.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <memory>
#include <span>
#include <vector>

#include "attnkit/core/config.hpp"
#include "attnkit/core/error.hpp"
#include "attnkit/core/observer.hpp"
#include "attnkit/core/shape.hpp"
#include "attnkit/kvcache/policy.hpp"

namespace attnkit {

enum class score_update { accumulate, replace };

class attention_scores {
  struct layer_state;

 public:
  // What goes in attention_options::observer: a handle on one layer's table.
  class observer_type {
   public:
    index_t observed_queries() const noexcept { return state_->observed_queries; }
    // Runs before the kernel (attention's front door calls it): sizes the table for the call
    // and, under score_update::replace, clears the previous observation.
    void check(const attention_shape& shape) const { state_->begin_call(shape); }
    void operator()(const observed_row& row) const { state_->add(row); }
    // The kernels add rows here directly (core/observer.hpp), as add() does.
    key_mass_target key_mass_row(index_t kv_head) const noexcept {
      return state_->mass_row(kv_head);
    }
    observed_precision key_mass_precision() const noexcept { return state_->precision; }

   private:
    friend class attention_scores;
    explicit observer_type(layer_state* state) : state_(state) {}
    layer_state* state_;
  };

  // One table per layer; observed_queries: how many of the last query tokens of a prefill call
  // the kernel hands over (decode has one).
  attention_scores(index_t layers, score_update update, index_t observed_queries) {
    detail::require(layers >= 1, "attnkit::attention_scores: layers is ", layers,
                    ", it must be >= 1");
    detail::require(observed_queries >= 1, "attnkit::attention_scores: observed_queries is ",
                    observed_queries, ", it must be >= 1");
    layers_.reserve(static_cast<std::size_t>(layers));
    for (index_t l = 0; l < layers; ++l)
      layers_.push_back(std::make_unique<layer_state>(update, observed_queries));
  }

  // Whether the kernels may round the observed probabilities to fp16 before adding them
  // (core/observer.hpp): half by default, which takes a 32K decode step's observing cost from
  // about 6 % of the step to about 4 % (bench/RESULTS.md) at a relative error of 2^-11 per
  // probability, far below what changes a ranking; single gives the exact fp32 sums.
  void set_precision(observed_precision precision) noexcept {
    for (auto& s : layers_) s->precision = precision;
  }
  observed_precision precision() const noexcept { return layers_.front()->precision; }

  index_t layers() const noexcept { return static_cast<index_t>(layers_.size()); }
  score_update update() const noexcept { return layers_.front()->update; }

  observer_type& observer(index_t layer) {
    detail::check_layer_index("attnkit::attention_scores::observer", layer, layers());
    return layers_[static_cast<std::size_t>(layer)]->handle;
  }

  // The mass of slots [0, length) of one head (zeros where nothing was observed). Host side:
  // grows the table if length exceeds it. Throws if kv_heads disagrees with what was observed.
  std::span<const float> head(const char* function, index_t layer, index_t kv_heads,
                              index_t kv_head, index_t length) {
    layer_state& s = *layers_[static_cast<std::size_t>(layer)];
    s.settle();
    s.ensure(function, kv_heads, length);
    return {s.data.data() + kv_head * s.capacity, static_cast<std::size_t>(length)};
  }

  // Query heads of the last observed call of a layer (0 before any).
  index_t q_heads(index_t layer) const noexcept {
    return layers_[static_cast<std::size_t>(layer)]->q_heads;
  }

  // Throws unless `layer` may be read with kv_heads heads (before anything changes).
  void check(const char* function, index_t layer, index_t kv_heads) const {
    detail::check_layer_index(function, layer, layers());
    const layer_state& s = *layers_[static_cast<std::size_t>(layer)];
    detail::require(s.kv_heads == 0 || s.kv_heads == kv_heads, function, ": the layer has ",
                    kv_heads, " KV heads but its attention was observed with ", s.kv_heads);
  }

  // Slot renumbering after `keep` was applied to the layer (see the header comment).
  void compact(index_t layer, const keep_list& keep) {
    layer_state& s = *layers_[static_cast<std::size_t>(layer)];
    if (s.kv_heads == 0) return;
    s.settle();
    index_t extent = 0;
    const index_t heads = std::min(s.kv_heads, keep.kv_heads());
    for (index_t h = 0; h < heads; ++h) {
      float* row = s.data.data() + h * s.capacity;
      // Run by run: a run's first slot is at or after where it lands (ascending, no overlap), so
      // moving runs down in order never overwrites a source. Slots past the table score 0.
      index_t kept = 0;
      for (const slot_run& run : keep.runs(h)) {
        const index_t count = std::min(run.size(), s.capacity - kept);
        if (count <= 0) break;
        const index_t present = std::clamp<index_t>(s.capacity - run.begin, 0, count);
        std::memmove(row + kept, row + run.begin,
                     static_cast<std::size_t>(present) * sizeof(float));
        std::fill(row + kept + present, row + kept + count, 0.0f);
        kept += count;
      }
      for (index_t j = kept; j < s.extent; ++j) row[j] = 0.0f;
      extent = std::max(extent, kept);
    }
    s.extent = extent;
  }

  // Forgets every observation (a new sequence).
  void reset() {
    for (auto& s : layers_) {
      std::fill(s->data.begin(), s->data.end(), 0.0f);
      std::fill(s->stale.begin(), s->stale.end(), char{0});
      s->extent = 0;
    }
  }

 private:
  struct layer_state {
    layer_state(score_update u, index_t observed) : update(u), observed_queries(observed) {}

    void ensure(const char* function, index_t heads, index_t tokens) {
      detail::require(kv_heads == 0 || kv_heads == heads, function, ": the layer has ", heads,
                      " KV heads but its attention was observed with ", kv_heads);
      if (kv_heads == heads && tokens <= capacity) return;
      const index_t new_capacity = std::max({tokens, 2 * capacity, index_t{64}});
      std::vector<float> grown(static_cast<std::size_t>(heads * new_capacity), 0.0f);
      for (index_t h = 0; h < kv_heads; ++h)
        std::copy_n(data.data() + h * capacity, extent, grown.data() + h * new_capacity);
      data.swap(grown);
      capacity = new_capacity;
      kv_heads = heads;
      stale.assign(static_cast<std::size_t>(heads), char{0});
    }

    void begin_call(const attention_shape& shape) {
      settle();  // rows a failed call never asked for
      ensure("attnkit::attention_scores (observer)", shape.kv_heads, shape.kv_tokens);
      q_heads = shape.q_heads;
      if (update == score_update::replace) {
        std::fill(stale.begin(), stale.end(), char{1});
        stale_extent = extent;
        extent = 0;
      }
      extent = std::max(extent, shape.kv_tokens);
    }

    // Clears a stale row (see the header comment); rows of different heads may be cleared
    // concurrently (each its own flag and row).
    void clear_if_stale(index_t kv_head) noexcept {
      char& flag = stale[static_cast<std::size_t>(kv_head)];
      if (flag == 0) return;
      std::fill_n(data.data() + kv_head * capacity, stale_extent, 0.0f);
      flag = 0;
    }
    void settle() noexcept {
      for (index_t h = 0; h < static_cast<index_t>(stale.size()); ++h) clear_if_stale(h);
    }

    attnkit::key_mass_target mass_row(index_t kv_head) noexcept {
      if (kv_head < 0 || kv_head >= kv_heads) return {};  // check() was not called
      clear_if_stale(kv_head);
      return {data.data() + kv_head * capacity, 1, extent};
    }

    void add(const observed_row& row) { add_key_mass(mass_row(row.kv_head), row.probabilities); }

    score_update update;
    index_t observed_queries;
    observed_precision precision = observed_precision::half;
    index_t q_heads = 0;   // of the last observed call
    index_t kv_heads = 0;  // 0 until the first call or host-side read
    index_t capacity = 0;  // slots per head in data
    index_t extent = 0;    // slots at or past extent hold 0 in every head that is not stale
    index_t stale_extent = 0;  // a stale row's slots at or past it hold 0
    std::vector<char> stale;   // per head: the row still holds the previous call's observation
    std::vector<float> data;
    observer_type handle{this};
  };

  std::vector<std::unique_ptr<layer_state>> layers_;
};

}  // namespace attnkit
