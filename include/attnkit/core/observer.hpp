// attnkit — observers: the attention probabilities a kernel computed, handed to the caller.
//
// Score-based KV-cache policies (H2O, TOVA, SnapKV) need the attention probabilities of recent
// queries. Recomputing them would be a second attention pass over the whole cache; instead the
// kernels keep the observed rows' exponentials while they run (relative to a per-row reference,
// so nothing overflows) and, once each row's log-sum-exp is final (after the split-KV merge),
// hand the normalised probabilities to an observer — one multiply per key, no second exp. Only the
// last `last_queries` query tokens are observed (decode: the one token; prefill: SnapKV's
// observation window), so the extra memory is last_queries·q_heads·kv_tokens floats, and a call
// without an observer does none of it.
//
// Contract of a call: every observed (query token, query head) row is delivered exactly once,
// as probabilities over all kv_tokens keys (masked keys are 0; a row that sees nothing is all
// zeros). Rows of one KV head are delivered one after another on one thread; rows of different
// KV heads may be delivered concurrently — so an observer that only writes per-KV-head state
// needs no lock.
#pragma once

#include <algorithm>
#include <concepts>
#include <memory>
#include <span>
#include <type_traits>

#include "attnkit/core/config.hpp"
#include "attnkit/core/error.hpp"
#include "attnkit/core/shape.hpp"

namespace attnkit {

// Where a key-mass observer adds a KV head's probabilities: mass[j · stride] for keys j < keys
// (a null mass: the head is not recorded).
struct key_mass_target {
  float* mass = nullptr;
  index_t stride = 1;
  index_t keys = 0;
};

// How a kernel may hold a key-mass observer's rows until their log-sum-exp is final (the
// observer's key_mass_precision(), below):
// * single: fp32, so the table gets the same bits as adding the delivered rows;
// * half: fp16, half the extra memory traffic of observing (a 32K decode step writes and reads
//   back q_heads · kv_tokens kept values). Each probability is rounded to 11 significant bits
//   before it is added: off by at most 2^-11 of itself plus 2^-25 (a key whose probability falls
//   below about 2^-25 may add 0) — the precision an fp16 model's attention weights have, ample
//   for ranking keys. A value is rounded again when its row rebases (its maximum climbing more
//   than 15 binary orders of magnitude), which also shrinks it below 2^-15 of the new maximum.
enum class observed_precision { single, half };

// target.mass[j · stride] += probabilities[j] for the keys the target holds (none for a null
// target): how a key-mass observer takes a delivered row, and how a kernel adds a key range.
inline void add_key_mass(const key_mass_target& target, std::span<const float> probabilities) {
  if (target.mass == nullptr) return;
  const index_t keys = std::min(static_cast<index_t>(probabilities.size()), target.keys);
  const float* p = probabilities.data();
  if (target.stride == 1) {
    for (index_t j = 0; j < keys; ++j) target.mass[j] += p[j];
  } else {
    for (index_t j = 0; j < keys; ++j) target.mass[j * target.stride] += p[j];
  }
}

// One observed query row.
struct observed_row {
  index_t q_token = 0;  // row of q (0-based, not the absolute position)
  index_t q_head = 0;
  index_t kv_head = 0;
  std::span<const float> probabilities;  // [kv_tokens], sums to 1 unless the row saw no key
};

namespace detail {
template <class F>
concept has_observed_queries = requires(const F& f) {
  { f.observed_queries() } -> std::convertible_to<index_t>;
};
template <class F>
concept has_observer_check = requires(const F& f, const attention_shape& shape) {
  f.check(shape);
};
template <class F>
concept has_key_mass_row = requires(const F& f, index_t kv_head) {
  { f.key_mass_row(kv_head) } -> std::same_as<key_mass_target>;
};
template <class F>
concept has_key_mass_precision = requires(const F& f) {
  { f.key_mass_precision() } -> std::same_as<observed_precision>;
};
}  // namespace detail

// A non-owning, type-erased reference to anything callable as f(const observed_row&). Put one in
// attention_options::observer. The referenced object must outlive the attention call.
//   - f.observed_queries(), if present, says how many of the last query tokens to observe
//     (otherwise 1, or the explicit constructor argument);
//   - f.check(const attention_shape&), if present, runs before the kernel and may throw
//     attnkit::error (so a wrongly sized accumulator changes nothing);
//   - f.key_mass_row(kv_head) -> key_mass_target, if present, says that f does nothing with a row
//     but add its probabilities into that head's table (accumulate_key_mass, attention_scores).
//     A kernel may then add the rows itself, key range by key range while they are in cache,
//     instead of materialising and handing over each row: the same additions in the same order
//     for every key (rows in delivery order), so the table gets the same bits (where the
//     compiler does not contract a multiply and an add into one FMA: GCC's ISO modes such as
//     -std=c++20 do not; -ffp-contract=fast may change last bits);
//   - f.key_mass_precision() -> observed_precision, if present with key_mass_row: whether the
//     kernel may keep those rows in fp16 until they are added (see observed_precision; default
//     single).
class attention_observer {
 public:
  attention_observer() = default;

  template <class F>
  requires(!std::is_same_v<std::remove_cvref_t<F>, attention_observer> &&
           std::is_invocable_v<F&, const observed_row&>)
      attention_observer(F& f)  // NOLINT: implicit, so `options.observer = key_mass;` reads well
      : target_(const_cast<void*>(static_cast<const void*>(std::addressof(f)))),
        deliver_(&deliver<F>),
        check_(&check_shape<F>) {
    if constexpr (detail::has_observed_queries<F>) last_queries_ = f.observed_queries();
    if constexpr (detail::has_key_mass_row<F>) mass_row_ = &mass_row<F>;
    if constexpr (detail::has_key_mass_row<F> && detail::has_key_mass_precision<F>)
      key_mass_precision_ = f.key_mass_precision();
  }

  template <class F>
  requires std::is_invocable_v<F&, const observed_row&> attention_observer(F& f,
                                                                           index_t last_queries)
      : attention_observer(f) {
    last_queries_ = last_queries;
  }

  constexpr explicit operator bool() const noexcept { return target_ != nullptr; }
  constexpr index_t last_queries() const noexcept { return last_queries_; }

  void operator()(const observed_row& row) const { deliver_(target_, row); }

  // Whether the observer only adds rows into a key-mass table, and that table's row for a head.
  constexpr bool sums_key_mass() const noexcept { return mass_row_ != nullptr; }
  key_mass_target mass_row(index_t kv_head) const { return mass_row_(target_, kv_head); }
  constexpr observed_precision key_mass_precision() const noexcept { return key_mass_precision_; }

  // Throws attnkit::error if the observer cannot serve a call of this shape.
  void check(const char* function, const attention_shape& shape) const {
    if (target_ == nullptr) return;
    detail::require(last_queries_ >= 1, function, ": observer.last_queries is ", last_queries_,
                    ", it must be at least 1");
    check_(target_, shape);
  }

 private:
  template <class F>
  static void deliver(void* target, const observed_row& row) {
    (*static_cast<F*>(target))(row);
  }
  template <class F>
  static key_mass_target mass_row(void* target, index_t kv_head) {
    return static_cast<const F*>(target)->key_mass_row(kv_head);
  }
  template <class F>
  static void check_shape(void* target, const attention_shape& shape) {
    if constexpr (detail::has_observer_check<F>) static_cast<F*>(target)->check(shape);
  }

  void* target_ = nullptr;
  void (*deliver_)(void*, const observed_row&) = nullptr;
  void (*check_)(void*, const attention_shape&) = nullptr;
  key_mass_target (*mass_row_)(void*, index_t) = nullptr;
  index_t last_queries_ = 1;
  observed_precision key_mass_precision_ = observed_precision::single;
};

}  // namespace attnkit
