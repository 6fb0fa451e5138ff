// attnkit tests — what the KV-cache policy tests share: reading back a keep list and a cache's
// positions, and slot ranges to compare them with.
#pragma once

#include <algorithm>
#include <numeric>
#include <vector>

#include "attnkit/kvcache/kv_cache.hpp"
#include "attnkit/kvcache/policy.hpp"

namespace attnkit_test {

// The slots a keep list keeps in `head`, in order.
inline std::vector<attnkit::index_t> slots_of(const attnkit::keep_list& keep,
                                              attnkit::index_t head) {
  std::vector<attnkit::index_t> slots;
  for (const attnkit::slot_run& run : keep.runs(head))
    for (attnkit::index_t slot = run.begin; slot < run.end; ++slot) slots.push_back(slot);
  return slots;
}

// The positions of every slot of (layer, head), in slot order.
template <class T>
std::vector<attnkit::position> positions_of(const attnkit::kv_cache<T>& cache,
                                            attnkit::index_t layer, attnkit::index_t head) {
  std::vector<attnkit::position> p;
  for (attnkit::index_t s = 0; s < cache.length(layer, head); ++s)
    p.push_back(cache.position_of(layer, head, s));
  return p;
}

// begin, begin + 1, ..., end - 1 (empty when end <= begin).
inline std::vector<attnkit::index_t> range(attnkit::index_t begin, attnkit::index_t end) {
  std::vector<attnkit::index_t> r(
      static_cast<std::size_t>(std::max<attnkit::index_t>(end - begin, 0)));
  std::iota(r.begin(), r.end(), begin);
  return r;
}

}  // namespace attnkit_test
