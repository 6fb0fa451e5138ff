// attnkit — full_policy: keeps every token (the baseline every other policy is measured against).
#pragma once

#include "attnkit/core/config.hpp"
#include "attnkit/core/paged_kv_view.hpp"
#include "attnkit/kvcache/policy.hpp"

namespace attnkit {

struct full_policy {
  // Keeps all slots of every head; the budget is checked (a per-head budget must fit the layer)
  // and otherwise ignored.
  template <class T>
  void select(const paged_kv_view<const T>& layer, index_t /*layer_index*/, const budget& b,
              keep_list& keep) const {
    b.check("attnkit::full_policy::select", layer.kv_heads);
    keep.reset(layer.kv_heads, layer.head_dim);
    for (index_t h = 0; h < layer.kv_heads; ++h) keep.keep_range(h, 0, layer.length(h));
  }
};

}  // namespace attnkit
