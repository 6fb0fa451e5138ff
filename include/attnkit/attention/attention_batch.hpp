// attnkit — attention_batch(): softmax attention over a ragged batch of sequences in one call.
//
// An engine that batches requests (continuous batching) attends many sequences per step, each
// with its own number of new query tokens (1 for decode, a chunk for chunked prefill) and its own
// cache length. Calling attention() once per sequence works, but every call pays a parallel
// dispatch and, for decode, splits its keys across the threads and merges the parts: for short
// sequences those costs are the step. attention_batch() schedules the whole batch at once:
//
// * a sequence either runs "wide", across all threads, as attention() would run it (query tiles,
//   or split-KV for decode), or "narrow": one work item on one thread, unsplit;
// * the wide ones are the k longest, run first one after another; the narrow ones follow, taken
//   longest first by whichever thread frees up (longest-processing-time-first list scheduling,
//   LPT, whose makespan is within 4/3 of the best possible);
// * k is chosen by simulating that schedule on the sequences' costs (query rows × keys): the
//   smallest k whose estimated time is within 2 % of the best k's, since a wide sequence also
//   pays a dispatch and a split-KV merge the estimate leaves out. Only k up to the point where
//   every narrow sequence is at most a third of a thread's share of the narrow work are tried
//   (beyond it LPT is already within 4/3 of that share), at most 33 of them.
// A batch of many short sequences runs without a split or a dispatch per sequence; a batch
// dominated by one long sequence runs that one as the per-sequence loop would.
//
// Results are those of attention() for each sequence on its own: a sequence run on one thread
// gives the bits of attention(…, parallel::serial{}), a wide one those of attention() with the
// same executor.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <functional>
#include <ranges>
#include <span>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "attnkit/attention/attention.hpp"
#include "attnkit/attention/check.hpp"
#include "attnkit/backend/tags.hpp"
#include "attnkit/core/observer.hpp"
#include "attnkit/core/options.hpp"
#include "attnkit/core/paged_kv_view.hpp"
#include "attnkit/core/tensor_view.hpp"
#include "attnkit/parallel/executor.hpp"
#include "attnkit/parallel/thread_pool.hpp"

namespace attnkit {

// Where each sequence of a batch lies. Offsets follow the CSR convention (FlashInfer's indptr):
// sequence i owns rows [indptr[i], indptr[i + 1]), so an indptr has batch + 1 entries, starts at
// 0, never decreases and ends at the tensor's token count.
struct batch_layout {
  // Rows of q, out and (columns of) options.log_sum_exp.
  std::span<const index_t> q_indptr{};
  // Rows of k and v, for the contiguous call; empty for the paged call (one view per sequence).
  std::span<const index_t> kv_indptr{};
  // Empty, or one observer per sequence (an empty observer observes nothing). Sequences run
  // concurrently, so two sequences must not share an observer object; options.observer must be
  // empty.
  std::span<const attention_observer> observers{};
};

namespace detail {

// What the scheduler knows of one sequence: its index and its cost (query rows × keys, in
// proportion to its flops and, for decode, to its K/V bytes).
struct batch_entry {
  double cost = 0.0;
  index_t sequence = 0;
};

// The calling thread's per-call lists, reused from call to call: they grow with the largest
// batch seen, then allocate nothing.
struct batch_workspace {
  std::vector<batch_entry> entries;
  std::vector<double> loads;                              // the scheduler's simulation:
  std::vector<std::pair<std::size_t, double>> estimates;  // (wide sequences, estimated time)
  std::vector<attention_params> params;  // each sequence's, as its checks resolved them
};

inline batch_workspace& calling_thread_batch_workspace() {
  thread_local batch_workspace workspace;
  return workspace;
}

// Runs run(i, executor) for every sequence i whose cost(i) > 0, as the header comment describes.
// Wide sequences get the caller's executor, the others a parallel::serial one inside one of the
// executor's items. The narrow sequences are drawn from a shared counter by `threads` items, so
// the longest-first order holds whichever way the executor distributes its items (dynamically
// like parallel::thread_pool, or in static chunks).
template <class Cost, class Run, class Executor>
void run_batch(batch_workspace& workspace, index_t batch, const Cost& cost, const Run& run,
               Executor& executor) {
  std::vector<batch_entry>& entries = workspace.entries;
  entries.clear();
  double total = 0.0;
  for (index_t i = 0; i < batch; ++i) {
    const double c = cost(i);
    if (c <= 0.0) continue;
    entries.push_back({c, i});
    total += c;
  }
  const std::size_t threads = parallel::concurrency_of(executor);
  if (threads == 1) {
    for (const batch_entry& entry : entries) run(entry.sequence, executor);
    return;
  }
  std::stable_sort(entries.begin(), entries.end(),
                   [](const batch_entry& a, const batch_entry& b) { return a.cost > b.cost; });

  // Candidates: k = 0 .. the first k whose sequence is at most a third of a thread's share of
  // the work left (k_max). Estimate of each: the wide part at perfect speed-up plus the LPT
  // makespan of the rest, simulated with a min-heap of thread loads.
  const double width = static_cast<double>(threads);
  std::size_t k_max = 0;
  for (double left = total; k_max < entries.size() && 3.0 * width * entries[k_max].cost > left;
       ++k_max)
    left -= entries[k_max].cost;
  std::vector<double>& loads = workspace.loads;
  auto estimate = [&](std::size_t k, double wide_cost) {
    loads.assign(std::min(threads, entries.size() - k), 0.0);  // all equal: already a heap
    for (std::size_t j = k; j < entries.size(); ++j) {
      std::pop_heap(loads.begin(), loads.end(), std::greater<>{});
      loads.back() += entries[j].cost;
      std::push_heap(loads.begin(), loads.end(), std::greater<>{});
    }
    const double narrow = loads.empty() ? 0.0 : *std::max_element(loads.begin(), loads.end());
    return wide_cost / width + narrow;
  };
  // At most 33 candidates (evenly spaced when k_max is larger), so the simulation costs at most
  // 33 · n · log(threads) steps whatever the batch.
  std::size_t wide = 0;
  if (k_max > 0) {
    std::vector<std::pair<std::size_t, double>>& estimates = workspace.estimates;
    estimates.clear();
    const std::size_t spacing = (k_max + 31) / 32;
    double wide_cost = 0.0;
    for (std::size_t k = 0; k <= k_max; ++k) {
      if (k % spacing == 0 || k == k_max) estimates.emplace_back(k, estimate(k, wide_cost));
      if (k < entries.size()) wide_cost += entries[k].cost;
    }
    double best = estimates.front().second;
    for (const auto& candidate : estimates) best = std::min(best, candidate.second);
    for (const auto& candidate : estimates)
      if (candidate.second <= 1.02 * best) {
        wide = candidate.first;
        break;
      }
  }
  for (std::size_t w = 0; w < wide; ++w) run(entries[w].sequence, executor);

  const std::span<const batch_entry> narrow(entries.data() + wide, entries.size() - wide);
  if (narrow.empty()) return;
  std::atomic<std::size_t> next{0};
  executor(std::min(threads, narrow.size()), [&](std::size_t) {
    parallel::serial one_thread;
    for (std::size_t i = next.fetch_add(1, std::memory_order_relaxed); i < narrow.size();
         i = next.fetch_add(1, std::memory_order_relaxed))
      run(narrow[i].sequence, one_thread);
  });
}

// An indptr over `rows` rows: batch + 1 entries from 0 to rows, never decreasing.
inline void check_indptr(const char* function, const char* name, std::span<const index_t> indptr,
                         index_t batch, const char* rows_what, index_t rows) {
  require(static_cast<index_t>(indptr.size()) == batch + 1, function, ": ", name, " has ",
          indptr.size(), " entries but a batch of ", batch, " sequences needs ", batch + 1);
  require(indptr[0] == 0, function, ": ", name, "[0] is ", indptr[0], ", it must be 0");
  for (index_t i = 0; i < batch; ++i)
    require(indptr[i + 1] >= indptr[i], function, ": ", name, "[", i + 1, "] (", indptr[i + 1],
            ") is less than ", name, "[", i, "] (", indptr[i], ")");
  require(indptr[batch] == rows, function, ": ", name, "[", batch, "] is ", indptr[batch], " but ",
          rows_what, " is ", rows);
}

// The batch's q_indptr and observers, against q; returns the number of sequences.
template <class TQ>
index_t check_batch_layout(const char* function, const batch_layout& batch,
                           const tensor_view<TQ, 3>& q, const attention_options& options) {
  require(!batch.q_indptr.empty(), function,
          ": q_indptr is empty, it needs batch + 1 entries (a batch of none is {0})");
  const index_t sequences = static_cast<index_t>(batch.q_indptr.size()) - 1;
  check_indptr(function, "q_indptr", batch.q_indptr, sequences, "q tokens (q extent 0)",
               q.extent(0));
  require(batch.observers.empty() || static_cast<index_t>(batch.observers.size()) == sequences,
          function, ": batch.observers has ", batch.observers.size(), " entries for ", sequences,
          " sequences (give one per sequence, or none)");
  require(!options.observer, function,
          ": options.observer is set; a batch takes one observer per sequence in "
          "batch.observers");
  return sequences;
}

// Sequence i's rows [indptr[i], indptr[i + 1]) of a packed [tokens, heads, dim] view.
template <class T>
tensor_view<T, 3> sequence_rows(const tensor_view<T, 3>& view, std::span<const index_t> indptr,
                                index_t i) {
  return view.slice(indptr[static_cast<std::size_t>(i)], indptr[static_cast<std::size_t>(i) + 1]);
}

// Sequence i's options: the shared ones, its columns of log_sum_exp and its observer.
inline attention_options sequence_options(const attention_options& options,
                                          const batch_layout& batch, index_t i) {
  attention_options own = options;
  const index_t begin = batch.q_indptr[i];
  const index_t end = batch.q_indptr[i + 1];
  if (options.log_sum_exp.data() != nullptr)
    own.log_sum_exp = tensor_view<float, 2>(
        options.log_sum_exp.data() + begin * options.log_sum_exp.stride(1),
        {options.log_sum_exp.extent(0), end - begin}, options.log_sum_exp.strides());
  if (!batch.observers.empty()) own.observer = batch.observers[static_cast<std::size_t>(i)];
  return own;
}

// What both front doors do once their packed tensors are checked: check every sequence first
// (check(i) returns its resolved parameters, or throws before anything is written), then run the
// batch, with each sequence's cost(i, params) and run(i, params, executor).
template <class Check, class Cost, class Run, class Executor>
void check_and_run_batch(index_t sequences, const Check& check, const Cost& cost, const Run& run,
                         Executor& executor) {
  batch_workspace& workspace = calling_thread_batch_workspace();
  workspace.params.resize(static_cast<std::size_t>(sequences));
  for (index_t i = 0; i < sequences; ++i) workspace.params[static_cast<std::size_t>(i)] = check(i);
  auto params = [&](index_t i) -> const attention_params& {
    return workspace.params[static_cast<std::size_t>(i)];
  };
  run_batch(
      workspace, sequences, [&](index_t i) { return cost(i, params(i)); },
      [&](index_t i, auto& run_on) { run(i, params(i), run_on); }, executor);
}

template <class T>
struct paged_kv_element {};
template <class T>
struct paged_kv_element<paged_kv_view<T>> {
  using type = std::remove_cv_t<T>;
};

}  // namespace detail

// A contiguous range of paged_kv_view<T> (a std::vector, std::array, span …): one per sequence.
template <class R>
concept paged_kv_views =
    std::ranges::contiguous_range<R> && std::ranges::sized_range<R> && requires {
  typename detail::paged_kv_element<std::ranges::range_value_t<R>>::type;
};

// Softmax attention over a batch of sequences whose tokens are packed one after another:
//
//   q, out  [Σ q tokens, q_heads, head_dim]    sequence i: rows batch.q_indptr[i] .. [i + 1]
//   k, v    [Σ kv tokens, kv_heads, head_dim]  sequence i: rows batch.kv_indptr[i] .. [i + 1]
//   options.log_sum_exp, if given: [q_heads, Σ q tokens], columns as q's rows
//
// Sequence i is attention(backend, q_i, k_i, v_i, out_i, mask, options_i): its own causal
// alignment (its queries are its newest tokens), the shared mask, scale, softcap and ALiBi slopes,
// and batch.observers[i] as its observer. Every argument of every sequence (indptrs, shapes, the
// mask against each sequence's shape, each observer) is checked before anything is written.
template <class Backend, class TQ, class TK, class TV, class TO, attention_mask Mask,
          parallel::executor Executor>
void attention_batch(const Backend& backend, tensor_view<TQ, 3> q, tensor_view<TK, 3> k,
                     tensor_view<TV, 3> v, tensor_view<TO, 3> out, const batch_layout& batch,
                     const Mask& mask, const attention_options& options, Executor&& executor) {
  static_assert(!std::is_same_v<Backend, backend::cuda>,
                "attnkit::attention_batch: backend::cuda has no batched entry point yet");
  constexpr const char* function = "attnkit::attention_batch";
  const index_t sequences = detail::check_batch_layout(function, batch, q, options);
  detail::check_indptr(function, "kv_indptr", batch.kv_indptr, sequences, "k tokens (k extent 0)",
                       k.extent(0));
  detail::check_attention_arguments(function, q, k, v, out, options);  // the packed tensors

  using Q = std::remove_cv_t<TQ>;
  using KV = std::remove_cv_t<TK>;
  const tensor_view<const Q, 3> all_q = q;
  const tensor_view<const KV, 3> all_k = k, all_v = v;
  auto views = [&](index_t i) {
    return std::tuple(detail::sequence_rows(all_q, batch.q_indptr, i),
                      detail::sequence_rows(all_k, batch.kv_indptr, i),
                      detail::sequence_rows(all_v, batch.kv_indptr, i),
                      detail::sequence_rows(out, batch.q_indptr, i));
  };
  detail::check_and_run_batch(
      sequences,
      [&](index_t i) {
        const auto [qi, ki, vi, oi] = views(i);
        const detail::attention_params params = detail::check_attention_arguments(
            function, qi, ki, vi, oi, detail::sequence_options(options, batch, i));
        detail::check_mask(mask, params.shape());
        return params;
      },
      [](index_t, const detail::attention_params& params) {
        // + 1 key: a sequence with queries but no keys still writes its rows.
        return static_cast<double>(params.q_tokens) * static_cast<double>(params.kv_tokens + 1);
      },
      [&](index_t i, const detail::attention_params& params, auto& run_on) {
        const auto [qi, ki, vi, oi] = views(i);
        detail::attention_impl(backend, qi, ki, vi, oi, mask, params, run_on);
      },
      executor);
}

template <class Backend, class TQ, class TK, class TV, class TO, attention_mask Mask>
void attention_batch(const Backend& backend, tensor_view<TQ, 3> q, tensor_view<TK, 3> k,
                     tensor_view<TV, 3> v, tensor_view<TO, 3> out, const batch_layout& batch,
                     const Mask& mask, const attention_options& options = {}) {
  attention_batch(backend, q, k, v, out, batch, mask, options, parallel::default_thread_pool());
}

// The same over paged caches: kv[i] is sequence i's layer (kv_cache<T>::view(layer), or an
// engine's own paged_kv_view), with its own page table and per-head lengths; every view has q's
// head_dim and a kv_heads that divides q_heads. batch.kv_indptr must be empty.
template <class Backend, class TQ, paged_kv_views Views, class TO, attention_mask Mask,
          parallel::executor Executor>
void attention_batch(const Backend& backend, tensor_view<TQ, 3> q, const Views& kv,
                     tensor_view<TO, 3> out, const batch_layout& batch, const Mask& mask,
                     const attention_options& options, Executor&& executor) {
  static_assert(!std::is_same_v<Backend, backend::cuda>,
                "attnkit::attention_batch: backend::cuda has no batched entry point yet");
  constexpr const char* function = "attnkit::attention_batch";
  const index_t sequences = detail::check_batch_layout(function, batch, q, options);
  detail::require(batch.kv_indptr.empty(), function, ": kv_indptr has ", batch.kv_indptr.size(),
                  " entries; the paged call reads each sequence's keys from its own view (leave "
                  "it empty)");
  detail::require(static_cast<index_t>(std::ranges::size(kv)) == sequences, function, ": kv has ",
                  std::ranges::size(kv), " views for ", sequences, " sequences (q_indptr has ",
                  batch.q_indptr.size(), " entries)");
  {
    detail::attention_params whole;  // out and log_sum_exp against the packed q
    whole.q_tokens = q.extent(0);
    whole.q_heads = q.extent(1);
    whole.head_dim = q.extent(2);
    detail::check_out_extents(function, out, whole.q_tokens, whole.q_heads,
                              "out head_dim (extent 2)", "q head_dim", whole.head_dim);
    detail::check_view_data(function, "q", q);
    detail::check_view_data(function, "out", out);
    detail::check_attention_options(function, options, whole);
  }

  using Q = std::remove_cv_t<TQ>;
  using KV = typename detail::paged_kv_element<std::ranges::range_value_t<Views>>::type;
  const tensor_view<const Q, 3> all_q = q;
  auto cache = [&](index_t i) -> paged_kv_view<const KV> { return std::ranges::data(kv)[i]; };
  detail::check_and_run_batch(
      sequences,
      [&](index_t i) {
        const detail::attention_params params = detail::check_paged_attention_arguments(
            function, detail::sequence_rows(all_q, batch.q_indptr, i), cache(i),
            detail::sequence_rows(out, batch.q_indptr, i),
            detail::sequence_options(options, batch, i));
        detail::check_mask(mask, params.shape());
        return params;
      },
      [&](index_t i, const detail::attention_params& params) {
        const paged_kv_view<const KV> view = cache(i);
        double keys = 0.0;  // per-head lengths: a head costs what it holds
        for (index_t h = 0; h < view.kv_heads; ++h) keys += static_cast<double>(view.length(h));
        return static_cast<double>(params.q_tokens) *
               (keys / static_cast<double>(std::max<index_t>(view.kv_heads, 1)) + 1.0);
      },
      [&](index_t i, const detail::attention_params& params, auto& run_on) {
        detail::attention_impl(backend, detail::sequence_rows(all_q, batch.q_indptr, i), cache(i),
                               detail::sequence_rows(out, batch.q_indptr, i), mask, params, run_on);
      },
      executor);
}

template <class Backend, class TQ, paged_kv_views Views, class TO, attention_mask Mask>
void attention_batch(const Backend& backend, tensor_view<TQ, 3> q, const Views& kv,
                     tensor_view<TO, 3> out, const batch_layout& batch, const Mask& mask,
                     const attention_options& options = {}) {
  attention_batch(backend, q, kv, out, batch, mask, options, parallel::default_thread_pool());
}

}  // namespace attnkit
