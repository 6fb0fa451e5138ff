// attnkit — the CPU (xsimd) backend of attention(): work decomposition, split-KV, results.
//
// A call is cut into work items (KV head × query tile × key split). A query tile holds every
// query head that shares the KV head (GQA packing), so each K/V row is staged once per tile for
// the whole group. Causal tiles are issued from the most expensive (last query tile) to the
// cheapest, so the executor's dynamic scheduling balances them. When heads × query tiles are too
// few to keep every thread busy — decode, above all — the key range is split as well
// (flash-decoding): each split produces a normalised partial output and its log-sum-exp, and
// the splits are merged exactly with the log-sum-exp rule of core/softmax_state.hpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <span>
#include <type_traits>
#include <utility>

#include "attnkit/backend/simd/column_tile.hpp"
#include "attnkit/backend/simd/convert.hpp"
#include "attnkit/backend/simd/key_source.hpp"
#include "attnkit/backend/simd/row_tile.hpp"
#include "attnkit/backend/simd/scratch.hpp"
#include "attnkit/backend/tags.hpp"
#include "attnkit/core/float16.hpp"
#include "attnkit/core/observer.hpp"
#include "attnkit/core/options.hpp"
#include "attnkit/core/paged_kv_view.hpp"
#include "attnkit/core/simd_include.hpp"
#include "attnkit/core/tensor_view.hpp"
#include "attnkit/mask/key_spans.hpp"
#include "attnkit/parallel/executor.hpp"

namespace attnkit {
namespace detail {
namespace simd {

// A split must hold at least this many visited keys: below it, the merge and the per-item setup
// cost more than the parallelism returns.
inline constexpr index_t min_split_keys = 512;

struct work_plan {
  index_t tile_tokens = 1;
  index_t query_tiles = 1;
  index_t splits = 1;
  index_t padded_rows = 0;
  index_t padded_dim = 0;
  index_t kv_heads_per_job = 1;
  index_t max_span_keys = key_block;  // the tile kernel's key block
  bool row_kernel = false;

  index_t base_items(const attention_params& p) const noexcept {
    return p.kv_heads / kv_heads_per_job * query_tiles;
  }
};

// The tile shape and kernel for a call; the number of key splits is decided by the driver, once
// it knows how many keys the mask leaves to visit. `heads_differ`: the mask varies by head or
// the KV heads have their own lengths (a paged cache), so each job must read one head's keys.
template <class A>
work_plan plan_tiles(const attention_params& p, bool heads_differ) {
  constexpr index_t width = xsimd::batch<float, A>::size;
  work_plan plan;
  const index_t group = p.group_size;
  plan.padded_dim = round_up(p.head_dim, width);
  // Fewer rows per KV head than vector lanes (decode with a small GQA group): lay the head
  // dimension across the lanes, parallel over key splits only. One job covers every KV head
  // (their rows of a token are one contiguous run in NHD memory) unless heads see different
  // keys: then each head must read only its own.
  plan.row_kernel = p.q_tokens * group < width;
  if (plan.row_kernel) {
    plan.kv_heads_per_job = heads_differ ? 1 : p.kv_heads;
    plan.tile_tokens = p.q_tokens;
    plan.padded_rows = round_up(plan.kv_heads_per_job * group * p.q_tokens, width);
    plan.max_span_keys = row_key_block(plan.kv_heads_per_job, plan.padded_dim);
  } else {
    // Aim for 4 vectors of rows per tile: the micro-kernel's full panel width.
    const index_t target_rows = 4 * width;
    plan.tile_tokens = std::clamp<index_t>(target_rows / group, 1, p.q_tokens);
    plan.padded_rows = round_up(plan.tile_tokens * group, width);
  }
  plan.query_tiles = (p.q_tokens + plan.tile_tokens - 1) / plan.tile_tokens;
  return plan;
}

// How many ways to split each tile's visited keys: enough items for every thread (4 per thread,
// for dynamic balance), never fewer than min_split_keys keys per split.
inline index_t choose_splits(const work_plan& plan, index_t base_items, index_t max_visited,
                             std::size_t threads) {
  const index_t wanted = 4 * static_cast<index_t>(threads);
  const index_t min_keys = plan.row_kernel ? min_split_keys / 2 : min_split_keys;
  if (base_items >= wanted || max_visited < 2 * min_keys) return 1;
  return std::min((wanted + base_items - 1) / base_items, max_visited / min_keys);
}

// Writes normalised rows of one tile to `out` (and the log-sum-exp, converted from base 2).
// Rows of observed query tokens also leave their base-2 log-sum-exp in observed_lse2
// [(token - first observed token) · q_heads + head], for the observer pass.
template <class TO>
void emit_rows(const attention_params& p, const tile_job& job, index_t padded_dim,
               const float* o_rows, const float* lse2, tensor_view<TO, 3> out,
               float* observed_lse2) {
  const index_t observed_first = p.observed_first_token();
  const index_t group = p.group_size;
  const index_t rows = job.rows(group);
  for (index_t r = 0; r < rows; ++r) {
    const index_t token = job.row_token(r, group);
    const index_t head = job.row_head(r, group);
    TO* destination = out.row(token, head);
    const float* source = o_rows + r * padded_dim;
    const index_t stride = out.stride(2);
    for (index_t c = 0; c < p.head_dim; ++c) destination[c * stride] = from_float<TO>(source[c]);
    if (!p.log_sum_exp.empty()) p.log_sum_exp(head, token) = lse2[r] * ln2;
    if (observed_lse2 != nullptr && token >= observed_first)
      observed_lse2[(token - observed_first) * p.q_heads + head] = lse2[r];
  }
}

// Divides each row by its sum and turns (m, l) into the base-2 log-sum-exp; rows that saw no key
// become zeros with -inf.
inline void normalise_rows(index_t rows, index_t padded_dim, float* o_rows, const float* m,
                           const float* l, float* lse2) {
  for (index_t r = 0; r < rows; ++r) {
    const bool seen = l[r] > 0.0f;
    const float inverse = seen ? 1.0f / l[r] : 0.0f;
    float* o = o_rows + r * padded_dim;
    for (index_t c = 0; c < padded_dim; ++c) o[c] *= inverse;
    lse2[r] = seen ? m[r] + std::log2(l[r]) : -std::numeric_limits<float>::infinity();
  }
}

// Runs one tile kernel with the head dimension as a compile-time constant where it is one of the
// common ones (the kernels' loops over it then unroll), as a run-time value otherwise. Only the
// kernels are instantiated per head dim; the driver around them is not.
template <class A, class TKV>
void run_tile(bool row_kernel, const tile_context<TKV>& context, const tile_job& job,
              const float* q_rows, float* o_rows, float* m, float* l, float* work) {
  auto run = [&]<index_t D>() {
    if (row_kernel)
      row_tile<A, D>(context, job, q_rows, o_rows, m, l, work);
    else
      column_tile<A, D>(context, job, q_rows, o_rows, m, l, work);
  };
  switch (context.params->head_dim) {
    case 64:
      return run.template operator()<64>();
    case 80:
      return run.template operator()<80>();
    case 96:
      return run.template operator()<96>();
    case 128:
      return run.template operator()<128>();
    case 256:
      return run.template operator()<256>();
    default:
      return run.template operator()<0>();
  }
}

// Keys per pass of the observer pass over a key-mass table.
inline constexpr index_t observed_chunk = 1024;

// What one work item kept of one observed row: keys [begin, end) hold 2^(s - reference)
// (tile.hpp, keep_observed). A row has one per key split; reference -inf: nothing visible.
struct observed_segment {
  index_t begin = 0;
  index_t end = 0;
  float reference = -std::numeric_limits<float>::infinity();
};

// One observed row's probabilities over keys [keys.begin, keys.end), into
// probabilities[j - keys.begin]: 2^(s - lse2) = kept · 2^(reference - lse2) on the row's
// visible runs, segment by segment, and 0 everywhere else. kept is indexed by key.
template <class A, class Mask, class Kept>
void observed_probabilities(const Mask& mask, position query, head_index head, position_range keys,
                            const Kept* kept, const observed_segment* segments, index_t splits,
                            float lse2, float* probabilities) {
  const index_t first = keys.begin;
  index_t next = first;  // keys before `next` are written
  auto zero_until = [&](index_t key) {
    if (key > next) std::fill(probabilities + (next - first), probabilities + (key - first), 0.0f);
    next = std::max(next, key);
  };
  if (lse2 != -std::numeric_limits<float>::infinity()) {
    for_each_visible_run(mask, query, head, keys, [&](position begin, position end) {
      // Every visible key lies in some segment; a key in none would stay 0.
      for (index_t s = 0; s < splits; ++s) {
        const index_t from = std::max<index_t>(begin, segments[s].begin);
        const index_t to = std::min<index_t>(end, segments[s].end);
        if (from >= to) continue;
        zero_until(from);
        scale_by_exp2<A>(kept + from, probabilities + (from - first), to - from,
                         segments[s].reference - lse2);
        next = to;
      }
      zero_until(end);
    });
  }
  zero_until(keys.end);
}

// The smallest positive value a kept exponential can hold.
template <class Kept>
inline constexpr float smallest_positive = std::is_same_v<Kept, half>
                                               ? 0x1p-24f  // fp16's smallest subnormal
                                               : std::numeric_limits<float>::denorm_min();

// mass[j] += p_r[j] for every row r in order and keys j in [0, count), where p_r = kept_r ·
// 2^(reference_r - lse2_r) as observed_probabilities computes it: the same operations in the same
// order as adding the rows one by one (the same bits), with the table read and written once for
// all rows instead of once per row, and no probability row in between.
template <class A, class Kept>
void sum_observed_chunk(float* mass, index_t count, const Kept* const* kept,
                        const exp2_scaler* scalers, index_t rows) {
  using batch = xsimd::batch<float, A>;
  constexpr index_t width = batch::size;
  constexpr index_t rows_per_pass = 8;
  for (index_t first = 0; first < rows; first += rows_per_pass) {
    const index_t last = std::min(rows, first + rows_per_pass);
    // Where every row's scaler is a single multiply for all its values (the usual case), the
    // loop says so, which halves its work.
    const bool single_multiply = std::all_of(scalers + first, scalers + last, [](const auto& s) {
      return s.is_single_multiply_for(smallest_positive<Kept>);
    });
    index_t j = 0;
    if (single_multiply) {
      for (; j + width <= count; j += width) {
        batch sum = batch::load_unaligned(mass + j);
        for (index_t r = first; r < last; ++r)
          sum = sum + load_float<A>(kept[r] + j) * batch(scalers[r].first);
        sum.store_unaligned(mass + j);
      }
    } else {
      for (; j + width <= count; j += width) {
        batch sum = batch::load_unaligned(mass + j);
        for (index_t r = first; r < last; ++r) sum = sum + scalers[r](load_float<A>(kept[r] + j));
        sum.store_unaligned(mass + j);
      }
    }
    for (; j < count; ++j)
      for (index_t r = first; r < last; ++r) mass[j] = mass[j] + scalers[r](to_float(kept[r][j]));
  }
}

// Scratch floats deliver_head_rows needs for a head of n keys.
inline index_t delivery_scratch_floats(const attention_params& p, index_t n) {
  return p.observer.sums_key_mass() ? observed_chunk : std::max<index_t>(n, 1);
}

// The observer pass for one KV head, once its rows' log-sum-exps are final: turns each observed
// row's kept exponentials (ctx's layout) into probabilities and hands them over in order, as
// core/observer.hpp promises, in `scratch` (delivery_scratch_floats). The head's rows hold its
// own length's keys (kv.length). An observer that only sums rows into a key-mass table gets them
// added directly, observed_chunk keys at a time for all the head's rows (the range's table
// entries stay in L1; rows added in delivery order, so the same bits): where every row sees the
// whole range, in one pass over the table (sum_observed_chunk), otherwise row by row.
template <class A, class Kept, class TKV, class Mask>
void deliver_kept_rows(const attention_params& p, const tile_context<TKV>& ctx,
                       const kv_source<TKV>& kv, const Mask& mask, const float* observed_lse2,
                       const observed_segment* segments, index_t splits, index_t kv_head,
                       float* scratch) {
  const index_t first = p.observed_first_token();
  const index_t n = kv.length(kv_head, p.kv_tokens);
  const index_t first_position = n - p.q_tokens;  // the head's query_position(0)
  const index_t group = p.group_size;
  const index_t rows = (p.q_tokens - first) * group;  // delivery order: token-major
  auto row_of = [&](index_t r) {
    const index_t token = first + r / group;
    const head_index head = kv_head * group + r % group;
    return std::pair<index_t, head_index>{token, head};
  };
  auto row_probabilities = [&](index_t r, position_range keys, float* destination) {
    const auto [token, head] = row_of(r);
    const index_t slot = ctx.observed_slot(token, head);
    observed_probabilities<A>(mask, first_position + token, head, keys,
                              ctx.template observed_row<Kept>(token, head),
                              segments + slot * splits, splits, observed_lse2[slot], destination);
  };
  if (!p.observer.sums_key_mass()) {
    for (index_t r = 0; r < rows; ++r) {
      row_probabilities(r, {0, n}, scratch);
      const auto [token, head] = row_of(r);
      p.observer(observed_row{token, head, kv_head, std::span<const float>(scratch, n)});
    }
    return;
  }
  const key_mass_target table = p.observer.mass_row(kv_head);
  if (table.mass == nullptr) return;
  // The one-pass sum of a chunk: where every row with a finite log-sum-exp sees all of the
  // chunk's keys and holds them in one segment, its probabilities there are its kept values
  // times one factor. Rows of zeros (nothing visible, or a factor that flushes every value)
  // are left out. Up to max_rows rows (8 a pass of the table); more go row by row.
  constexpr index_t max_rows = 256;
  const Kept* chunk_kept[max_rows];
  exp2_scaler scalers[max_rows];
  auto plan_sum = [&](position_range keys, index_t& summed) {
    summed = 0;
    if (table.stride != 1 || rows > max_rows) return false;
    for (index_t r = 0; r < rows; ++r) {
      const auto [token, head] = row_of(r);
      const index_t slot = ctx.observed_slot(token, head);
      const float lse2 = observed_lse2[slot];
      if (lse2 == -std::numeric_limits<float>::infinity()) continue;
      bool whole = false;
      for_each_visible_run(
          mask, first_position + token, head, keys,
          [&](position begin, position end) { whole = begin == keys.begin && end == keys.end; });
      const observed_segment* row_segments = segments + slot * splits;
      const observed_segment* holder =
          std::find_if(row_segments, row_segments + splits, [&](const observed_segment& segment) {
            return segment.begin <= keys.begin && keys.end <= segment.end;
          });
      if (!whole || holder == row_segments + splits) return false;
      const exp2_scaler scaler(holder->reference - lse2);
      if (scaler.zero) continue;
      chunk_kept[summed] = ctx.template observed_row<Kept>(token, head) + keys.begin;
      scalers[summed++] = scaler;
    }
    return true;
  };
  const index_t keys = std::min(n, table.keys);
  for (index_t begin = 0; begin < keys; begin += observed_chunk) {
    const index_t end = std::min(keys, begin + observed_chunk);
    float* mass = table.mass + begin * table.stride;
    if (index_t summed = 0; plan_sum({begin, end}, summed)) {
      sum_observed_chunk<A>(mass, end - begin, chunk_kept, scalers, summed);
      continue;
    }
    for (index_t r = 0; r < rows; ++r) {
      row_probabilities(r, {begin, end}, scratch);
      if (table.stride == 1)
        add_rows<A>(scratch, mass, end - begin);
      else
        add_key_mass({mass, table.stride, end - begin},
                     std::span<const float>(scratch, end - begin));
    }
  }
}

template <class A, class TKV, class Mask>
void deliver_head_rows(const attention_params& p, const tile_context<TKV>& ctx,
                       const kv_source<TKV>& kv, const Mask& mask, const float* observed_lse2,
                       const observed_segment* segments, index_t splits, index_t kv_head,
                       float* scratch, bool kept_in_half) {
  if (kept_in_half)
    deliver_kept_rows<A, half>(p, ctx, kv, mask, observed_lse2, segments, splits, kv_head, scratch);
  else
    deliver_kept_rows<A, float>(p, ctx, kv, mask, observed_lse2, segments, splits, kv_head,
                                scratch);
}

template <class A, class TQ, class TKV, class TO, class Mask, class Executor>
void run_attention(tensor_view<const TQ, 3> q, const kv_source<TKV>& kv, tensor_view<TO, 3> out,
                   const Mask& mask, const attention_params& p, Executor& executor) {
  const std::size_t threads = parallel::concurrency_of(executor);
  // Per-head lengths (a paged cache): p.kv_tokens is the longest head, and every job runs one KV
  // head with that head's own parameters (its length as kv_tokens, so its queries sit at its own
  // last slots); otherwise every job shares p.
  const bool per_head_lengths = kv.lengths != nullptr;
  work_plan plan = plan_tiles<A>(p, mask_varies_by_head(mask) || per_head_lengths);
  const index_t rp = plan.padded_rows;
  const index_t dp = plan.padded_dim;
  const index_t group = p.group_size;
  const index_t base_items = plan.base_items(p);

  // Base item b: its tile of query tokens and KV heads (spans not yet attached). Items go head
  // by head, so a head's K/V stay in the caches while all its query tiles run, and within a
  // head from the last query tile (under a causal mask the most expensive) to the first, so the
  // cheap items come last and even out the threads at the end.
  auto job_for = [&](index_t base) {
    const index_t tile = plan.query_tiles - 1 - base % plan.query_tiles;
    tile_job job;
    job.kv_head = (base / plan.query_tiles) * plan.kv_heads_per_job;
    job.kv_heads = plan.kv_heads_per_job;
    job.token_begin = tile * plan.tile_tokens;
    job.tokens = std::min(plan.tile_tokens, p.q_tokens - job.token_begin);
    return job;
  };
  // The parameters of a job's KV head: p itself, or (per-head lengths) a copy in `storage` with
  // the head's length.
  auto params_of = [&](const tile_job& job, attention_params& storage) -> const attention_params& {
    if (!per_head_lengths) return p;
    storage = p;
    storage.kv_tokens = kv.lengths[job.kv_head];
    return storage;
  };
  auto visited_keys = [&](const tile_job& job, const attention_params& jp) {
    return count_visited_keys(mask, query_range(jp, job), job.kv_head * group, job.kv_heads * group,
                              0, jp.kv_tokens);
  };

  // Split-KV: only when there are too few tiles for the threads (decode, above all), and by
  // visited keys, so a windowed or sparse decode splits its real work, not the empty range.
  index_t max_visited = 0;
  if (base_items < 4 * static_cast<index_t>(threads))
    for (index_t base = 0; base < base_items; ++base) {
      const tile_job job = job_for(base);
      attention_params storage;
      max_visited = std::max(max_visited, visited_keys(job, params_of(job, storage)));
    }
  plan.splits = choose_splits(plan, base_items, max_visited, threads);

  // Call-lifetime buffers: split partial results, one slot per (tile, split) holding normalised
  // rows and base-2 lse; and the observed rows' kept exponentials (float, or half where the
  // observer allows: observed_precision), lse and segments.
  const index_t slot_floats = rp * dp + rp;
  const index_t partial_floats = plan.splits > 1
                                     ? round_up(base_items * plan.splits * slot_floats, 16)
                                     : 0;  // 64-byte multiple
  const index_t observed_first = p.observed_first_token();
  const index_t observed_rows = (p.q_tokens - observed_first) * p.q_heads;
  const bool observing = observed_rows > 0;
  const bool kept_in_half =
      p.observer.sums_key_mass() && p.observer.key_mass_precision() == observed_precision::half;
  const index_t kept_bytes = kept_in_half ? 2 : 4;
  constexpr index_t segment_floats = sizeof(observed_segment) / sizeof(float);
  const index_t observed_stride = round_up(p.kv_tokens, 64 / kept_bytes);  // rows on cache lines

  // A work item that holds every observed row of its KV heads (the last query tile holds the
  // observed tokens) with nothing left to merge (one split) adds those rows into a key-mass
  // observer's table as soon as they are final. It keeps them in a per-thread buffer of its own
  // rows, reused item after item, so they are still in this core's caches when it adds them; and
  // its kernel brings the table row towards the core during its second half (tile_job::warm).
  // Otherwise every row goes to the call's buffer, in streaming stores, and the pass runs after
  // the split-KV merge. In a 32K decode step the pass costs 13-18 instead of 37-46 us per KV
  // head (bench/RESULTS.md).
  const bool deliver_in_item = observing && p.observer.sums_key_mass() && plan.splits == 1 &&
                               (plan.query_tiles - 1) * plan.tile_tokens <= observed_first;
  const index_t kept_floats = observing && !deliver_in_item
                                  ? round_up(observed_rows * observed_stride * kept_bytes / 4, 16)
                                  : 0;
  const index_t observed_floats =
      observing ? kept_floats + round_up(observed_rows, 16) +
                      round_up(observed_rows * plan.splits * segment_floats, 16)
                : 0;
  float* call_buffer =
      partial_floats + observed_floats > 0
          ? call_scratch().reserve(static_cast<std::size_t>(partial_floats + observed_floats))
          : nullptr;
  float* partials = call_buffer;
  float* observed_values = kept_floats > 0 ? call_buffer + partial_floats : nullptr;
  float* observed_lse2 = observing ? call_buffer + partial_floats + kept_floats : nullptr;
  auto* observed_segments =
      observing ? reinterpret_cast<observed_segment*>(observed_lse2 + round_up(observed_rows, 16))
                : nullptr;
  // Per item (deliver_in_item): its rows' kept values, then the pass's scratch.
  const index_t item_rows_floats =
      deliver_in_item ? round_up((p.q_tokens - observed_first) * group * plan.kv_heads_per_job *
                                     observed_stride * kept_bytes / 4,
                                 16)
                      : 0;
  const index_t item_kept_floats =
      deliver_in_item ? item_rows_floats + round_up(delivery_scratch_floats(p, p.kv_tokens), 16)
                      : 0;

  tile_context<TKV> context{kv.k, kv.v, &p, dp, rp};
  context.mask = &mask;
  context.mask_row = &mask_row<Mask>;
  context.observed_values = observed_values;
  context.observed_first_token = observed_first;
  context.observed_stride = observed_stride;
  context.kept_heads = p.q_heads;
  context.observed_in_half = kept_in_half;
  context.observed_streaming = !deliver_in_item;
  const float q_multiplier = query_multiplier(p);

  const index_t kernel_scratch = plan.row_kernel
                                     ? row_tile_scratch<A>(plan.kv_heads_per_job, rp, dp)
                                     : column_tile_scratch(rp, dp);
  const index_t span_capacity = max_key_spans(p.kv_tokens);
  const index_t span_floats =
      round_up(span_capacity * static_cast<index_t>(sizeof(key_span) / sizeof(float)), 16);
  const index_t item_floats =
      round_up(2 * rp * dp + 4 * rp + kernel_scratch, 16) + span_floats + item_kept_floats;

  const auto items = static_cast<std::size_t>(base_items * plan.splits);
  executor(items, [&](std::size_t item) {
    const index_t base = static_cast<index_t>(item) / plan.splits;
    const index_t split = static_cast<index_t>(item) % plan.splits;
    tile_job job = job_for(base);
    const index_t rows = job.rows(group);
    attention_params storage;
    const attention_params& jp = params_of(job, storage);

    float* q_rows = item_scratch().reserve(static_cast<std::size_t>(item_floats));
    float* o_rows = q_rows + rp * dp;
    float* m = o_rows + rp * dp;
    float* l = m + rp;
    float* lse2 = l + rp;
    float* reference = lse2 + rp;
    float* work = reference + rp;
    auto* spans =
        reinterpret_cast<key_span*>(q_rows + (item_floats - item_kept_floats - span_floats));
    float* item_kept = q_rows + (item_floats - item_kept_floats);
    float* item_delivery_scratch = item_kept + item_rows_floats;
    // This item adds its rows itself: it holds the last query tile (deliver_in_item).
    const bool delivers = deliver_in_item && job.token_begin + job.tokens == p.q_tokens;

    // This split's share of the visited keys, cut at multiples of fine_keys.
    index_t skip = 0, take = jp.kv_tokens;
    if (plan.splits > 1) {
      const index_t total = visited_keys(job, jp);
      const index_t share = round_up((total + plan.splits - 1) / plan.splits, fine_keys);
      skip = std::min(total, split * share);
      take = std::min(total - skip, share);
    }
    job.spans = spans;
    job.span_count = take > 0 ? collect_key_spans(mask, query_range(jp, job), job.kv_head * group,
                                                  job.kv_heads * group, 0, jp.kv_tokens,
                                                  plan.max_span_keys, skip, take, spans)
                              : 0;

    for (index_t h = 0; h < job.kv_heads; ++h)
      for (index_t t = 0; t < job.tokens; ++t)
        stage_rows<A>(q.row(job.token_begin + t, (job.kv_head + h) * group), q.stride(1),
                      q.stride(2), group, p.head_dim, q_rows + (h * job.tokens + t) * group * dp,
                      dp, dp, q_multiplier);
    if (observing) {
      std::fill(reference, reference + rows, -std::numeric_limits<float>::infinity());
      job.observed_reference = reference;
    }
    // The table row this item adds into once its kernel is done (one KV head a job).
    prefetch_stream table_row;
    if (delivers && job.kv_heads == 1) {
      const key_mass_target table = p.observer.mass_row(job.kv_head);
      if (table.mass != nullptr && table.stride == 1) {
        const index_t keys = std::min(kv.length(job.kv_head, p.kv_tokens), table.keys);
        table_row = prefetch_stream(table.mass, keys * index_t{sizeof(float)}, 0, 1);
        job.warm = &table_row;
      }
    }
    // The job's own context where its KV heads' length or its kept rows' buffer differ.
    tile_context<TKV> job_context = context;
    if (per_head_lengths) job_context.params = &jp;
    if (deliver_in_item) {
      job_context.observed_values = item_kept;
      job_context.kept_heads = group * job.kv_heads;
      job_context.kept_first_head = group * job.kv_head;
    }
    run_tile<A>(plan.row_kernel, job_context, job, q_rows, o_rows, m, l, work);
    normalise_rows(rows, dp, o_rows, m, l, lse2);
    if (observing) {
      if (!deliver_in_item) stream_fence();  // the streaming stores before another thread reads
      for (index_t r = 0; r < rows; ++r) {
        const index_t token = job.row_token(r, group);
        if (token < observed_first) continue;
        const index_t slot = context.observed_slot(token, job.row_head(r, group));
        observed_segment& segment = observed_segments[slot * plan.splits + split];
        segment = job.span_count > 0
                      ? observed_segment{job.spans[0].begin, job.spans[job.span_count - 1].end,
                                         reference[r]}
                      : observed_segment{};
      }
    }

    if (plan.splits == 1) {
      emit_rows(p, job, dp, o_rows, lse2, out, observed_lse2);
      if (delivers)
        for (index_t h = 0; h < job.kv_heads; ++h)
          deliver_head_rows<A>(p, job_context, kv, mask, observed_lse2, observed_segments, 1,
                               job.kv_head + h, item_delivery_scratch, kept_in_half);
    } else {
      float* slot = partials + (base * plan.splits + split) * slot_floats;
      std::copy(o_rows, o_rows + rows * dp, slot);
      std::copy(lse2, lse2 + rows, slot + rp * dp);
    }
  });

  // Merge the splits of each tile: weights 2^(lse_s - max) normalised, exactly as merge_states.
  if (plan.splits > 1) {
    executor(static_cast<std::size_t>(base_items), [&](std::size_t item) {
      const index_t base = static_cast<index_t>(item);
      const tile_job job = job_for(base);
      const index_t rows = job.rows(group);
      float* merged = item_scratch().reserve(static_cast<std::size_t>(rp * dp + rp));
      float* merged_lse2 = merged + rp * dp;
      const float* first_slot = partials + base * plan.splits * slot_floats;
      for (index_t r = 0; r < rows; ++r) {
        float top = -std::numeric_limits<float>::infinity();
        for (index_t s = 0; s < plan.splits; ++s)
          top = std::max(top, first_slot[s * slot_floats + rp * dp + r]);
        float* o = merged + r * dp;
        std::fill(o, o + dp, 0.0f);
        if (top == -std::numeric_limits<float>::infinity()) {
          merged_lse2[r] = top;
          continue;
        }
        float total = 0.0f;
        for (index_t s = 0; s < plan.splits; ++s) {
          const float* slot = first_slot + s * slot_floats;
          const float weight = std::exp2(slot[rp * dp + r] - top);
          if (weight == 0.0f) continue;
          total += weight;
          for (index_t c = 0; c < dp; ++c) o[c] += weight * slot[r * dp + c];
        }
        for (index_t c = 0; c < dp; ++c) o[c] /= total;
        merged_lse2[r] = top + std::log2(total);
      }
      emit_rows(p, job, dp, merged, merged_lse2, out, observed_lse2);
    });
  }

  // The observer pass: one KV head per work item, so that a head's rows arrive in order on one
  // thread (core/observer.hpp).
  if (observing && !deliver_in_item) {
    executor(static_cast<std::size_t>(p.kv_heads), [&](std::size_t item) {
      const auto kv_head = static_cast<index_t>(item);
      float* scratch = item_scratch().reserve(
          static_cast<std::size_t>(delivery_scratch_floats(p, kv.length(kv_head, p.kv_tokens))));
      deliver_head_rows<A>(p, context, kv, mask, observed_lse2, observed_segments, plan.splits,
                           kv_head, scratch, kept_in_half);
    });
  }
}

}  // namespace simd

// The backend entries: a contiguous K/V pair, and a paged cache with per-head lengths.
template <class Arch, class TQ, class TK, class TV, class TO, class Mask, class Executor>
void attention_impl(backend::simd<Arch>, tensor_view<const TQ, 3> q, tensor_view<const TK, 3> k,
                    tensor_view<const TV, 3> v, tensor_view<TO, 3> out, const Mask& mask,
                    const attention_params& p, Executor& executor) {
  static_assert(std::is_same_v<TK, TV>, "k and v must have the same element type");
  const simd::kv_source<TK> kv{simd::row_source<TK>::contiguous(k),
                               simd::row_source<TK>::contiguous(v), nullptr};
  simd::run_attention<Arch>(q, kv, out, mask, p, executor);
}

template <class Arch, class TQ, class TKV, class TO, class Mask, class Executor>
void attention_impl(backend::simd<Arch>, tensor_view<const TQ, 3> q,
                    const paged_kv_view<const TKV>& cache, tensor_view<TO, 3> out, const Mask& mask,
                    const attention_params& p, Executor& executor) {
  const simd::kv_source<TKV> kv{simd::row_source<TKV>::paged(cache, cache.keys),
                                simd::row_source<TKV>::paged(cache, cache.values), cache.lengths};
  simd::run_attention<Arch>(q, kv, out, mask, p, executor);
}

}  // namespace detail
}  // namespace attnkit
