// attnkit — random_policy: each head keeps a uniformly random subset of its budget's size.
//
// The floor any informed policy must beat (kvpress' RandomPress). Seeded: the same seed and the
// same sequence of calls keep the same slots on every platform (SplitMix64, not <random>'s
// distributions, whose algorithms the standard leaves open).
#pragma once

#include <cstdint>
#include <span>

#include "attnkit/core/config.hpp"
#include "attnkit/core/paged_kv_view.hpp"
#include "attnkit/kvcache/policy.hpp"
#include "attnkit/kvcache/scored_select.hpp"

namespace attnkit {

class random_policy {
 public:
  explicit random_policy(std::uint64_t seed = 0) : state_(seed) {}

  template <class T>
  void select(const paged_kv_view<const T>& layer, index_t layer_index, const budget& b,
              keep_list& keep) {
    detail::select_by_scores(*this, "attnkit::random_policy::select", layer, layer_index, b, keep,
                             scratch_);
  }

  // Scorer interface (policies/adakv.hpp): independent uniform scores, so the top keep_count
  // is a uniformly random subset.
  template <class T>
  void validate(const char*, const paged_kv_view<const T>&, index_t) const noexcept {}
  template <class T>
  void score(const paged_kv_view<const T>&, index_t, index_t, index_t, std::span<float> out) {
    for (float& s : out) s = static_cast<float>(next() >> 40) * 0x1p-24f;
  }

 private:
  std::uint64_t next() noexcept {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }

  std::uint64_t state_;
  detail::score_scratch scratch_;
};

}  // namespace attnkit
