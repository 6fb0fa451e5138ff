// attnkit — accumulate_key_mass: the attention mass each key received, from the kernel itself.
//
// H2O ranks keys by the attention probability they accumulate over decode steps, TOVA by the
// last query's probabilities, SnapKV by the probabilities of an observation window of the last
// prompt queries. All of them read one table, mass[kv_head][key] += Σ p over the observed rows
// of the KV head's query heads, which this observer fills from the probabilities the attention
// kernel already computed (core/observer.hpp): no second attention pass.
//
//   std::vector<float> mass(kv_heads * kv_tokens, 0.0f);
//   attnkit::accumulate_key_mass key_mass({mass.data(), {kv_heads, kv_tokens}},
//   /*last_queries=*/32); attnkit::attention_options options; options.observer = key_mass;
//   attnkit::attention(attnkit::cpu, q, k, v, out, attnkit::causal{}, options);
//
// Decode (one query token): the mass is exact — each KV head's row sums to group_size (the
// probabilities of its query heads, each summing to 1). Prefill: the sum over the last
// `last_queries` query tokens. The table is added to, never cleared, so successive decode steps
// accumulate; the table may be wider than kv_tokens (a cache's capacity), keys beyond are left
// alone.
#pragma once

#include "attnkit/core/error.hpp"
#include "attnkit/core/observer.hpp"
#include "attnkit/core/shape.hpp"
#include "attnkit/core/tensor_view.hpp"

namespace attnkit {

class accumulate_key_mass {
 public:
  // mass: [kv_heads, at least kv_tokens]; last_queries: how many of the last query tokens count;
  // precision: whether the kernel may round the probabilities to fp16 before adding them
  // (core/observer.hpp, observed_precision).
  explicit accumulate_key_mass(tensor_view<float, 2> mass, index_t last_queries = 1,
                               observed_precision precision = observed_precision::single)
      : mass_(mass), last_queries_(last_queries), precision_(precision) {
    detail::require(last_queries >= 1, "attnkit::accumulate_key_mass: last_queries is ",
                    last_queries, ", it must be at least 1");
  }

  index_t observed_queries() const noexcept { return last_queries_; }
  observed_precision key_mass_precision() const noexcept { return precision_; }
  tensor_view<float, 2> mass() const noexcept { return mass_; }

  void check(const attention_shape& shape) const {
    detail::require(mass_.extent(0) == shape.kv_heads,
                    "attnkit::accumulate_key_mass: mass extent 0 is ", mass_.extent(0),
                    " but kv_heads is ", shape.kv_heads);
    detail::require(mass_.extent(1) >= shape.kv_tokens,
                    "attnkit::accumulate_key_mass: mass extent 1 is ", mass_.extent(1),
                    " but the call has ", shape.kv_tokens, " keys");
    detail::require(mass_.data() != nullptr || mass_.empty(),
                    "attnkit::accumulate_key_mass: mass has null data but ", mass_.size(),
                    " elements");
  }

  // The kernels add rows here directly (core/observer.hpp).
  key_mass_target key_mass_row(index_t kv_head) const noexcept {
    if (kv_head < 0 || kv_head >= mass_.extent(0)) return {};
    return {mass_.data() + kv_head * mass_.stride(0), mass_.stride(1), mass_.extent(1)};
  }

  void operator()(const observed_row& row) const {
    add_key_mass(key_mass_row(row.kv_head), row.probabilities);
  }

 private:
  tensor_view<float, 2> mass_;
  index_t last_queries_;
  observed_precision precision_;
};

}  // namespace attnkit
