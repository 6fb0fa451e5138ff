// attnkit tests — a scalar model of a FlashAttention-2 CPU kernel, with injectable bugs.
//
// It is NOT part of the library and never tested as if it were: it exists to test the tests.
//   * Unmutated, it reproduces the error profile of a real fp32 kernel (fp32 dot products and
//     running sums, log2(e) folded into the logits, exp2 with an injected ±4-ulp error standing in
//     for a fast polynomial exp, online max/rescaling over 64-key tiles, mask tile classification).
//     The tolerances in harness.hpp must accept it on every shape; if they do not, they are too
//     tight for any real kernel.
//   * With a mutation it has one classic kernel bug; the tolerances must reject every one of them
//     on at least one probe, or they are too loose to catch that bug in attnkit::cpu.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string_view>
#include <type_traits>
#include <vector>

#include "attnkit/attnkit.hpp"
#include "support/tensor.hpp"

namespace attnkit_test {

enum class mutation {
  none,
  no_rescale,            // forgets to rescale acc and l when the running max grows
  partial_as_full,       // runs partially-masked tiles without the per-element predicate
  causal_strict,         // kv < q: the diagonal is masked out
  causal_top_left,       // causal aligned top-left (row i at position i, not n_kv - n_q + i)
  gqa_modulo,            // kv head = h % kv_heads instead of h / (q_heads / kv_heads)
  drop_tail_key,         // the last key of a partial final tile is skipped
  skip_first_key,        // the first key of the sequence is skipped
  head_dim_tail,         // the dot product ignores the last head_dim % 16 elements (SIMD tail)
  output_dim_tail,       // the last head_dim % 16 output elements are never written
  lse_log2,              // returns the base-2 log-sum-exp (forgets the ln 2 factor)
  lse_without_max,       // lse = log(l), forgetting the running max
  max_init_zero,         // running max starts at 0 instead of -inf
  masked_rows_nan,       // a row that sees no key divides 0 by 0
  masked_lse_unwritten,  // the log-sum-exp of a row that sees no key is never written
  alibi_signed,          // slope * (q - kv) without the absolute value
  softcap_after_alibi,   // the cap is applied after the ALiBi bias
  scale_ignored,         // options.scale ignored, 1/sqrt(d) always
  coarse_exp,            // an exp with 2e-4 relative error
  truncating_store,      // the 16-bit output conversion truncates instead of rounding to nearest
  unwritten_last_row,    // the last query row is never written
  bf16_probabilities,    // the weights p are rounded to bfloat16 before p·V (fp32 accumulation
                         // promised)
  approx_reciprocal,     // 1/l from a 14-bit reciprocal estimate without a Newton step (rcp14)
};

inline const char* mutation_name(mutation m) {
  switch (m) {
    case mutation::none:
      return "none";
    case mutation::no_rescale:
      return "no_rescale";
    case mutation::partial_as_full:
      return "partial_as_full";
    case mutation::causal_strict:
      return "causal_strict";
    case mutation::causal_top_left:
      return "causal_top_left";
    case mutation::gqa_modulo:
      return "gqa_modulo";
    case mutation::drop_tail_key:
      return "drop_tail_key";
    case mutation::skip_first_key:
      return "skip_first_key";
    case mutation::head_dim_tail:
      return "head_dim_tail";
    case mutation::output_dim_tail:
      return "output_dim_tail";
    case mutation::lse_log2:
      return "lse_log2";
    case mutation::lse_without_max:
      return "lse_without_max";
    case mutation::max_init_zero:
      return "max_init_zero";
    case mutation::masked_rows_nan:
      return "masked_rows_nan";
    case mutation::masked_lse_unwritten:
      return "masked_lse_unwritten";
    case mutation::alibi_signed:
      return "alibi_signed";
    case mutation::softcap_after_alibi:
      return "softcap_after_alibi";
    case mutation::scale_ignored:
      return "scale_ignored";
    case mutation::coarse_exp:
      return "coarse_exp";
    case mutation::truncating_store:
      return "truncating_store";
    case mutation::unwritten_last_row:
      return "unwritten_last_row";
    case mutation::bf16_probabilities:
      return "bf16_probabilities";
    case mutation::approx_reciprocal:
      return "approx_reciprocal";
  }
  return "?";
}

// The mutation named by the environment variable ATTNKIT_TEST_MUTATION (none if unset/unknown).
inline mutation mutation_from_env() {
  const char* name = std::getenv("ATTNKIT_TEST_MUTATION");
  if (name == nullptr) return mutation::none;
  for (int m = 0; m <= static_cast<int>(mutation::approx_reciprocal); ++m)
    if (std::string_view(name) == mutation_name(static_cast<mutation>(m)))
      return static_cast<mutation>(m);
  return mutation::none;
}

namespace detail {

// exp2 with a deterministic relative error of up to `rel` (a hash of the argument's bits picks it).
inline float perturbed_exp2(float x, float rel) {
  const float e = std::exp2(x);
  std::uint32_t h = std::bit_cast<std::uint32_t>(x) * 0x9E3779B1u;
  h ^= h >> 15;
  const float u = static_cast<float>(h & 0xFFFFu) / 32767.5f - 1.0f;  // [-1, 1]
  return e * (1.0f + rel * u);
}

template <class TO>
TO store(float x, bool truncate) {
  if constexpr (std::is_same_v<TO, float>) {
    return x;
  } else {
    if (!truncate) return attnkit::from_float<TO>(x);
    // Round toward zero: keep what fits, drop the rest.
    TO r = attnkit::from_float<TO>(x);
    if (std::fabs(static_cast<float>(r)) > std::fabs(x))
      r = TO::from_bits(static_cast<std::uint16_t>(r.bits - 1));
    return r;
  }
}

}  // namespace detail

template <class TQ, class TKV, class TO, class Mask>
void emulated_attention(tensor_view<const TQ, 3> q, tensor_view<const TKV, 3> k,
                        tensor_view<const TKV, 3> v, tensor_view<TO, 3> out, const Mask& mask,
                        const attnkit::attention_options& o, mutation mut) {
  using attnkit::to_float;
  constexpr float neg_inf = -std::numeric_limits<float>::infinity();
  constexpr float log2e = 1.4426950408889634f;
  constexpr float ln2 = 0.6931471805599453f;
  constexpr index_t q_tile = 16, kv_tile = 64;

  const index_t nq = q.extent(0), hq = q.extent(1), d = q.extent(2);
  const index_t nkv = k.extent(0), hkv = k.extent(1);
  const index_t group = hq / hkv;
  const float scale = (o.scale && mut != mutation::scale_ignored)
                          ? *o.scale
                          : 1.0f / std::sqrt(static_cast<float>(d));
  const float cap = o.softcap;
  const bool alibi = !o.alibi_slopes.empty();
  const float exp_rel = mut == mutation::coarse_exp ? 2e-4f : 2.5e-7f;
  const index_t dot_dim = (mut == mutation::head_dim_tail) ? d - d % 16 : d;
  const index_t out_dim = (mut == mutation::output_dim_tail) ? d - d % 16 : d;
  auto qpos = [&](index_t i) { return mut == mutation::causal_top_left ? i : nkv - nq + i; };

  std::vector<float> m(q_tile), l(q_tile), acc(static_cast<std::size_t>(q_tile * d)), s(kv_tile);
  for (index_t h = 0; h < hq; ++h) {
    const index_t kh = mut == mutation::gqa_modulo ? h % hkv : h / group;
    const float slope = alibi ? o.alibi_slopes(h) : 0.0f;
    for (index_t i0 = 0; i0 < nq; i0 += q_tile) {
      const index_t i1 = std::min(nq, i0 + q_tile);
      for (index_t r = 0; r < i1 - i0; ++r) {
        m[static_cast<std::size_t>(r)] = mut == mutation::max_init_zero ? 0.0f : neg_inf;
        l[static_cast<std::size_t>(r)] = 0.0f;
      }
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (index_t j0 = (mut == mutation::skip_first_key ? 1 : 0); j0 < nkv; j0 += kv_tile) {
        index_t j1 = std::min(nkv, j0 + kv_tile);
        if (mut == mutation::drop_tail_key && j1 - j0 < kv_tile) --j1;
        if (j1 <= j0) continue;
        attnkit::tile_kind kind = mask.classify({qpos(i0), qpos(i1 - 1) + 1}, {j0, j1}, h);
        if (kind == attnkit::tile_kind::empty) continue;
        if (mut == mutation::partial_as_full) kind = attnkit::tile_kind::full;
        for (index_t i = i0; i < i1; ++i) {
          const std::size_t r = static_cast<std::size_t>(i - i0);
          const index_t p = qpos(i);
          float tile_max = neg_inf;
          for (index_t j = j0; j < j1; ++j) {
            bool visible = kind == attnkit::tile_kind::full || mask.allows(p, j, h);
            if (mut == mutation::causal_strict && j == p) visible = false;
            float x = neg_inf;
            if (visible) {
              float dot = 0.0f;
              for (index_t c = 0; c < dot_dim; ++c)
                dot += to_float(q(i, h, c)) * to_float(k(j, kh, c));
              x = dot * scale;
              const float bias = mut == mutation::alibi_signed
                                     ? slope * static_cast<float>(p - j)
                                     : slope * std::fabs(static_cast<float>(p - j));
              if (mut == mutation::softcap_after_alibi) {
                x -= bias;
                if (cap > 0.0f) x = cap * std::tanh(x / cap);
              } else {
                if (cap > 0.0f) x = cap * std::tanh(x / cap);
                x -= bias;
              }
              x *= log2e;
              tile_max = std::max(tile_max, x);
            }
            s[static_cast<std::size_t>(j - j0)] = x;
          }
          const float m_new = std::max(m[r], tile_max);
          if (m_new == neg_inf) continue;
          const float alpha =
              mut == mutation::no_rescale ? 1.0f : detail::perturbed_exp2(m[r] - m_new, exp_rel);
          float* a = acc.data() + r * static_cast<std::size_t>(d);
          l[r] *= alpha;
          for (index_t c = 0; c < d; ++c) a[c] *= alpha;
          for (index_t j = j0; j < j1; ++j) {
            const float x = s[static_cast<std::size_t>(j - j0)];
            if (x == neg_inf) continue;
            float pj = detail::perturbed_exp2(x - m_new, exp_rel);
            if (mut == mutation::bf16_probabilities) pj = static_cast<float>(attnkit::bfloat16(pj));
            l[r] += pj;
            for (index_t c = 0; c < d; ++c) a[c] += pj * to_float(v(j, kh, c));
          }
          m[r] = m_new;
        }
      }
      for (index_t i = i0; i < i1; ++i) {
        if (mut == mutation::unwritten_last_row && i == nq - 1) continue;
        const std::size_t r = static_cast<std::size_t>(i - i0);
        const float* a = acc.data() + r * static_cast<std::size_t>(d);
        const bool empty_row = l[r] == 0.0f;
        // 1/l: exact division, or a reciprocal estimate with a relative error up to 2^-14.
        const float inv_l = mut == mutation::approx_reciprocal
                                ? detail::perturbed_exp2(-std::log2(l[r]), 0x1p-14f)
                                : 1.0f / l[r];
        for (index_t c = 0; c < out_dim; ++c) {
          const float x = (empty_row && mut != mutation::masked_rows_nan)
                              ? 0.0f
                              : (mut == mutation::approx_reciprocal ? a[c] * inv_l : a[c] / l[r]);
          out(i, h, c) = detail::store<TO>(x, mut == mutation::truncating_store);
        }
        if (!o.log_sum_exp.empty()) {
          if (empty_row) {
            if (mut != mutation::masked_lse_unwritten) o.log_sum_exp(h, i) = neg_inf;
          } else {
            float lse2 =
                mut == mutation::lse_without_max ? std::log2(l[r]) : m[r] + std::log2(l[r]);
            o.log_sum_exp(h, i) = mut == mutation::lse_log2 ? lse2 : lse2 * ln2;
          }
        }
      }
    }
  }
}

// Runner for harness.hpp's evaluate().
struct emulated_runner {
  mutation mut = mutation::none;
  template <class Q, class K, class V, class O, class Mask>
  void operator()(Q q, K k, V v, O out, const Mask& mask,
                  const attnkit::attention_options& o) const {
    using TQ = std::remove_const_t<typename Q::element_type>;
    using TKV = std::remove_const_t<typename K::element_type>;
    using TO = typename O::element_type;
    emulated_attention<TQ, TKV, TO>(q, k, v, out, mask, o, mut);
  }
};

}  // namespace attnkit_test
