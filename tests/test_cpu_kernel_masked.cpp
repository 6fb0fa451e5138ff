// Not a test: the one instantiation of attnkit::cpu with an arbitrary mask (any_mask) that the
// masked tests link (see support/cpu_kernel_masked.hpp for why only these four dtype
// combinations): q and out float32 over float32, float16 and bfloat16 K/V, and bfloat16
// throughout. The executor is erased to any_executor, as in support/cpu_kernel.hpp.
#include <stdexcept>
#include <string>

#include "support/cpu_kernel_masked.hpp"

namespace attnkit_test {

namespace {

const char* dtype_label(dtype t) {
  switch (t) {
    case dtype::float32:
      return "float32";
    case dtype::float16:
      return "float16";
    case dtype::bfloat16:
      return "bfloat16";
  }
  return "?";
}

template <class TQ, class TKV, class TO>
void run(erased_view3 q, erased_view3 k, erased_view3 v, erased_view3 out, const any_mask& mask,
         const attnkit::attention_options& options, const any_executor& executor) {
  attnkit::attention(attnkit::cpu, q.as<const TQ>(), k.as<const TKV>(), v.as<const TKV>(),
                     out.as<TO>(), mask, options, executor);
}

}  // namespace

void cpu_attention_masked(erased_view3 q, erased_view3 k, erased_view3 v, erased_view3 out,
                          const any_mask& mask, const attnkit::attention_options& options,
                          const any_executor* executor) {
  const any_executor& ex = executor != nullptr ? *executor : default_executor();
  if (k.type == v.type && q.type == dtype::float32 && out.type == dtype::float32) {
    switch (k.type) {
      case dtype::float32:
        return run<float, float, float>(q, k, v, out, mask, options, ex);
      case dtype::float16:
        return run<float, attnkit::half, float>(q, k, v, out, mask, options, ex);
      case dtype::bfloat16:
        return run<float, attnkit::bfloat16, float>(q, k, v, out, mask, options, ex);
    }
  }
  if (q.type == dtype::bfloat16 && k.type == dtype::bfloat16 && v.type == dtype::bfloat16 &&
      out.type == dtype::bfloat16)
    return run<attnkit::bfloat16, attnkit::bfloat16, attnkit::bfloat16>(q, k, v, out, mask, options,
                                                                        ex);
  throw std::invalid_argument(std::string("cpu_attention_masked: q ") + dtype_label(q.type) +
                              ", k " + dtype_label(k.type) + ", v " + dtype_label(v.type) +
                              ", out " + dtype_label(out.type) +
                              " is not instantiated (see support/cpu_kernel_masked.hpp)");
}

}  // namespace attnkit_test
