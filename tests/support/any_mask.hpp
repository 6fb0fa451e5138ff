// attnkit tests — any_mask: every mask behind one concrete type, so that the CPU kernel is
// compiled once for all of them.
//
// Why: each (q, K/V, out, mask) instantiation of attnkit::cpu costs compile time (its driver:
// work decomposition, staging, split merge; the tile kernels, which depend only on the K/V type,
// are compiled once for the suite, see support/cpu_tile_kernels.hpp). The masked tests use a dozen
// mask types (windows, per-head windows, custom bits, block-sparse layouts, their intersections
// with causal); through any_mask the kernel sees a single mask type and is instantiated once per
// dtype combination (tests/test_cpu_kernel_masked.cpp).
//
// The erasure is exact: classify, allows, for_each_visible_run, varies_by_head and check forward
// to the concrete mask, so the kernel visits the same spans and masks the same keys as it would
// with the concrete type. for_each_visible_run forwards too (not left to the allows() scan): the
// kernel then runs the mask's own run enumeration, which is the code under test. The only cost
// is an indirect call per classify / allows / run, which tests do not notice.
//
//   const attnkit::sliding_window window{17, 0, 4};
//   any_mask mask(window, "window 17 sinks 4");   // copies the mask (not what it points to)
//   attnkit::attention(attnkit::backend::reference{}, q, k, v, out, mask);
//
// The mask object is copied (shared, immutable); masks that are views (custom, block_sparse,
// sliding_window_per_head) still point to their bits / layout / table, which must outlive the
// any_mask.
#pragma once

#include <memory>
#include <string>
#include <type_traits>
#include <utility>

#include "attnkit/core/config.hpp"
#include "attnkit/core/shape.hpp"
#include "attnkit/mask/tile.hpp"

namespace attnkit_test {

using attnkit::attention_shape;
using attnkit::head_index;
using attnkit::position;
using attnkit::position_range;
using attnkit::tile_kind;

// A non-owning reference to a callable visit(begin, end), like std::function_ref (C++26): what
// any_mask passes through its function pointer to the concrete mask's for_each_visible_run.
class run_visitor_ref {
 public:
  template <class F>
  requires(!std::is_same_v<std::remove_cvref_t<F>, run_visitor_ref>) explicit run_visitor_ref(
      F& visit) noexcept
      : target_(const_cast<void*>(static_cast<const void*>(std::addressof(visit)))),
        call_(&call<F>) {}

  void operator()(position begin, position end) const { call_(target_, begin, end); }

 private:
  template <class F>
  static void call(void* target, position begin, position end) {
    (*static_cast<F*>(target))(begin, end);
  }

  void* target_;
  void (*call_)(void*, position, position);
};

class any_mask {
 public:
  template <attnkit::attention_mask M>
  requires(!std::is_same_v<std::remove_cvref_t<M>, any_mask>) explicit any_mask(
      const M& mask, std::string name = "mask")
      : mask_(std::make_shared<const M>(mask)),
        name_(std::move(name)),
        classify_(&classify_with<M>),
        allows_(&allows_with<M>),
        runs_(&runs_with<M>),
        varies_(&varies_with<M>),
        check_(&check_with<M>) {}

  // The attention_mask concept.
  tile_kind classify(position_range q, position_range kv, head_index h) const {
    return classify_(mask_.get(), q, kv, h);
  }
  bool allows(position p, position j, head_index h) const { return allows_(mask_.get(), p, j, h); }

  // The optional members, each forwarded (the concrete mask's own, or the library's fallback
  // through attnkit::detail, exactly what the kernel would use with the concrete type).
  template <class F>
  void for_each_visible_run(position p, head_index h, position_range kv, F&& visit) const {
    runs_(mask_.get(), p, h, kv, run_visitor_ref(visit));
  }
  bool varies_by_head() const { return forced_varies_ || varies_(mask_.get()); }
  void check(const attention_shape& shape) const { check_(mask_.get(), shape); }

  const std::string& name() const noexcept { return name_; }

  // The same mask, but claiming that heads differ: the CPU kernel then runs decode with one KV
  // head per work item (the path per-head masks take) even for a head-uniform mask. Comparing
  // a per-head mask with a head-uniform one forced this way isolates the mask from the work
  // decomposition, so their results can be required bit-identical.
  any_mask with_per_head_jobs() const {
    any_mask copy = *this;
    copy.forced_varies_ = true;
    copy.name_ += " (per-head jobs)";
    return copy;
  }

 private:
  template <class M>
  static tile_kind classify_with(const void* m, position_range q, position_range kv, head_index h) {
    return static_cast<const M*>(m)->classify(q, kv, h);
  }
  template <class M>
  static bool allows_with(const void* m, position p, position j, head_index h) {
    return static_cast<const M*>(m)->allows(p, j, h);
  }
  template <class M>
  static void runs_with(const void* m, position p, head_index h, position_range kv,
                        run_visitor_ref visit) {
    attnkit::detail::for_each_visible_run(*static_cast<const M*>(m), p, h, kv, visit);
  }
  template <class M>
  static bool varies_with(const void* m) {
    return attnkit::detail::mask_varies_by_head(*static_cast<const M*>(m));
  }
  template <class M>
  static void check_with(const void* m, const attention_shape& shape) {
    attnkit::detail::check_mask(*static_cast<const M*>(m), shape);
  }

  std::shared_ptr<const void> mask_;
  std::string name_;
  bool forced_varies_ = false;
  tile_kind (*classify_)(const void*, position_range, position_range, head_index);
  bool (*allows_)(const void*, position, position, head_index);
  void (*runs_)(const void*, position, head_index, position_range, run_visitor_ref);
  bool (*varies_)(const void*);
  void (*check_)(const void*, const attention_shape&);
};

// any_mask is a mask with every optional member, so the kernels take its fast paths.
static_assert(attnkit::attention_mask<any_mask>);
static_assert(attnkit::detail::has_mask_check<any_mask>);
static_assert(attnkit::detail::has_varies_by_head<any_mask>);
static_assert(attnkit::detail::has_visible_runs<any_mask>);

}  // namespace attnkit_test
