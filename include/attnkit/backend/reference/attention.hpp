// attnkit — the reference attention kernel: the oracle every other backend is tested against.
//
// Straight from the definition: for each query row, every visible key's logit in fp64, a
// two-pass softmax (max, then sum) in fp64, the weighted sum of values in fp64, one rounding to
// the output type at the end. No tiling, no online rescaling, no approximation of exp — so that
// a bug in the fast kernels cannot be mirrored here.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "attnkit/backend/tags.hpp"
#include "attnkit/core/float16.hpp"
#include "attnkit/core/observer.hpp"
#include "attnkit/core/options.hpp"
#include "attnkit/core/paged_kv_view.hpp"
#include "attnkit/core/tensor_view.hpp"
#include "attnkit/mask/tile.hpp"

namespace attnkit {
namespace detail {

// One correct rounding from fp64 to the output type. Going through fp32 with round-to-nearest
// would round twice; rounding to fp32 *to odd* first (of the two floats around x, the one with an
// odd last bit) keeps enough information for the final rounding to half or bfloat16 to be exact.
template <class T>
T round_from_double(double x) {
  float f = static_cast<float>(x);
  if constexpr (!std::is_same_v<T, float>) {
    if (static_cast<double>(f) != x && std::isfinite(f) && (bits_as<std::uint32_t>(f) & 1u) == 0)
      f = std::nextafter(f, static_cast<double>(f) > x ? -HUGE_VALF : HUGE_VALF);
  }
  return from_float<T>(f);
}

// One row of head_dim elements, `stride` apart (1 unless a tensor_view was given explicit
// strides). The oracle addresses each K/V row once per query row instead of recomputing the full
// view offset (or the page-table lookup) per element: the arithmetic is unchanged, and under
// AddressSanitizer, where every load is a checked call, it is what makes the oracle affordable in
// the test suite.
template <class T>
struct strided_row {
  const T* data;
  index_t stride;
  float operator[](index_t c) const noexcept { return to_float(data[c * stride]); }
};

// The oracle for one call, over any K/V storage: `length(g)` keys for KV head g, whose slot j
// has the rows key_row(g, j) / value_row(g, j) (strided_row). Query row i of KV head g's query
// heads sits at slot length(g) - q_tokens + i (bottom-right aligned per head; for a contiguous
// K/V pair every head has kv_tokens and this is p.query_position(i)).
template <class TQ, class TO, class Mask, class Executor, class Length, class KeyRow,
          class ValueRow>
void reference_attention(tensor_view<const TQ, 3> q, tensor_view<TO, 3> out, const Mask& mask,
                         const attention_params& p, Executor& executor, Length&& length,
                         KeyRow&& key_row, ValueRow&& value_row) {
  const index_t d = p.head_dim;
  const index_t observed_first = p.observed_first_token();
  // One item per KV head: each writes only its group's output and LSE rows, and delivers its
  // observed rows in order on one thread (the observer contract).
  executor(static_cast<std::size_t>(p.kv_heads), [&](std::size_t item) {
    const index_t kv_h = static_cast<index_t>(item);
    const index_t kv_tokens = length(kv_h);
    std::vector<double> logits(static_cast<std::size_t>(kv_tokens));
    std::vector<double> acc(static_cast<std::size_t>(d));
    std::vector<float> probabilities(static_cast<std::size_t>(kv_tokens));
    std::vector<double> query(static_cast<std::size_t>(d));
    // A merged key stands for `count` tokens: exp(s)·count, i.e. s + ln(count).
    const index_t merged_slot = p.merged_keys != nullptr ? p.merged_keys[kv_h].slot : -1;
    const double merged_log_count =
        merged_slot >= 0 ? std::log(double(p.merged_keys[kv_h].count)) : 0.0;
    for (index_t h = kv_h * p.group_size; h < (kv_h + 1) * p.group_size; ++h) {
      for (index_t i = 0; i < p.q_tokens; ++i) {
        const position q_pos = kv_tokens - p.q_tokens + i;
        const strided_row<TQ> query_row{q.row(i, h), q.stride(2)};
        for (index_t c = 0; c < d; ++c) query[static_cast<std::size_t>(c)] = query_row[c];
        double row_max = -std::numeric_limits<double>::infinity();
        for (index_t j = 0; j < kv_tokens; ++j) {
          double s = -std::numeric_limits<double>::infinity();
          if (mask.allows(q_pos, j, h)) {
            const auto key = key_row(kv_h, j);
            double dot = 0.0;
            for (index_t c = 0; c < d; ++c)
              dot += query[static_cast<std::size_t>(c)] * double(key[c]);
            s = double(p.scale) * dot;
            if (p.softcap > 0.0f) s = double(p.softcap) * std::tanh(s / double(p.softcap));
            if (p.alibi_slopes != nullptr) {
              const double slope = p.alibi_slopes[h * p.alibi_stride];
              s -= slope * std::fabs(double(q_pos - j));
            }
            if (j == merged_slot) s += merged_log_count;
            if (s > row_max) row_max = s;
          }
          logits[static_cast<std::size_t>(j)] = s;
        }
        for (auto& a : acc) a = 0.0;
        double sum = 0.0;
        if (row_max != -std::numeric_limits<double>::infinity()) {
          for (index_t j = 0; j < kv_tokens; ++j) {
            const double s = logits[static_cast<std::size_t>(j)];
            if (s == -std::numeric_limits<double>::infinity()) continue;
            const double w = std::exp(s - row_max);
            sum += w;
            const auto value = value_row(kv_h, j);
            for (index_t c = 0; c < d; ++c)
              acc[static_cast<std::size_t>(c)] += w * double(value[c]);
          }
        }
        // A row that sees no key is defined as zeros with log-sum-exp -inf (never 0/0 = NaN).
        for (index_t c = 0; c < d; ++c)
          out(i, h, c) =
              round_from_double<TO>(sum > 0.0 ? acc[static_cast<std::size_t>(c)] / sum : 0.0);
        if (!p.log_sum_exp.empty())
          p.log_sum_exp(h, i) = sum > 0.0 ? static_cast<float>(row_max + std::log(sum))
                                          : -std::numeric_limits<float>::infinity();
        if (p.observer && i >= observed_first) {
          for (index_t j = 0; j < kv_tokens; ++j) {
            const double s = logits[static_cast<std::size_t>(j)];
            probabilities[static_cast<std::size_t>(j)] =
                sum > 0.0 && s != -std::numeric_limits<double>::infinity()
                    ? static_cast<float>(std::exp(s - row_max) / sum)
                    : 0.0f;
          }
          p.observer(observed_row{i, h, kv_h, probabilities});
        }
      }
    }
  });
}

template <class TQ, class TK, class TV, class TO, class Mask, class Executor>
void attention_impl(backend::reference, tensor_view<const TQ, 3> q, tensor_view<const TK, 3> k,
                    tensor_view<const TV, 3> v, tensor_view<TO, 3> out, const Mask& mask,
                    const attention_params& p, Executor& executor) {
  reference_attention(
      q, out, mask, p, executor, [&](index_t) { return p.kv_tokens; },
      [&](index_t g, index_t j) {
        return strided_row<TK>{k.row(j, g), k.stride(2)};
      },
      [&](index_t g, index_t j) {
        return strided_row<TV>{v.row(j, g), v.stride(2)};
      });
}

// A paged cache: slot j of KV head g through the view's own addressing (its page table).
template <class TQ, class TKV, class TO, class Mask, class Executor>
void attention_impl(backend::reference, tensor_view<const TQ, 3> q,
                    const paged_kv_view<const TKV>& kv, tensor_view<TO, 3> out, const Mask& mask,
                    const attention_params& p, Executor& executor) {
  reference_attention(
      q, out, mask, p, executor, [&](index_t g) { return kv.length(g); },
      [&](index_t g, index_t j) {
        return strided_row<TKV>{kv.key(g, j), 1};
      },
      [&](index_t g, index_t j) {
        return strided_row<TKV>{kv.value(g, j), 1};
      });
}

}  // namespace detail
}  // namespace attnkit
