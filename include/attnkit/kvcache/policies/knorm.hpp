// attnkit — knorm_policy: keep the keys with the smallest L2 norm (Devoto et al. 2024, "A Simple
// and Effective L2 Norm-Based Strategy for KV Cache Compression"; kvpress' KnormPress).
//
// Keys with a low norm draw high attention (the observation of the paper), so the score of a slot
// is -‖k‖ and each head keeps its budget's best. It reads only the keys: no observer, and it
// works before any attention ran. Keys are read in the cache's type and summed in fp32.
#pragma once

#include <cmath>
#include <span>

#include "attnkit/core/config.hpp"
#include "attnkit/core/float16.hpp"
#include "attnkit/core/paged_kv_view.hpp"
#include "attnkit/kvcache/policy.hpp"
#include "attnkit/kvcache/scored_select.hpp"

namespace attnkit {

class knorm_policy {
 public:
  template <class T>
  void select(const paged_kv_view<const T>& layer, index_t layer_index, const budget& b,
              keep_list& keep) {
    detail::select_by_scores(*this, "attnkit::knorm_policy::select", layer, layer_index, b, keep,
                             scratch_);
  }

  template <class T>
  void validate(const char*, const paged_kv_view<const T>&, index_t) const noexcept {}

  // -‖k‖ per slot (the norm, not its square: the same order, and the scale AdaKV compares).
  template <class T>
  void score(const paged_kv_view<const T>& layer, index_t /*layer_index*/, index_t head,
             index_t /*keep_count*/, std::span<float> out) const {
    for (std::size_t s = 0; s < out.size(); ++s) {
      const T* key = layer.key(head, static_cast<index_t>(s));
      float sum = 0.0f;
      for (index_t d = 0; d < layer.head_dim; ++d) {
        const float x = to_float(key[d]);
        sum += x * x;
      }
      out[s] = -std::sqrt(sum);
    }
  }

 private:
  detail::score_scratch scratch_;
};

}  // namespace attnkit
