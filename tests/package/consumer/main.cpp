// Minimal downstream consumer of attnkit, built by tests/package/check_consumers.cmake both
// against an installed attnkit (find_package) and against the source tree (add_subdirectory),
// with the consumer's default flags (no -march): the CPU backend must build and agree with the
// reference on whatever ISA that gives.
#include <attnkit/attnkit.hpp>
#include <cmath>
#include <cstdio>
#include <vector>

int main() {
  const attnkit::index_t tokens = 37, q_heads = 4, kv_heads = 2, dim = 24;
  std::vector<float> q(tokens * q_heads * dim), k(tokens * kv_heads * dim),
      v(tokens * kv_heads * dim);
  for (std::size_t i = 0; i < q.size(); ++i) q[i] = std::sin(0.37f * static_cast<float>(i));
  for (std::size_t i = 0; i < k.size(); ++i) k[i] = std::cos(0.11f * static_cast<float>(i));
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = std::sin(0.05f * static_cast<float>(i) + 1);
  std::vector<float> fast(q.size()), oracle(q.size());
  const attnkit::tensor_view<const float, 3> qv(q.data(), {tokens, q_heads, dim});
  const attnkit::tensor_view<const float, 3> kv(k.data(), {tokens, kv_heads, dim});
  const attnkit::tensor_view<const float, 3> vv(v.data(), {tokens, kv_heads, dim});
  attnkit::attention(attnkit::cpu, qv, kv, vv,
                     attnkit::tensor_view<float, 3>(fast.data(), {tokens, q_heads, dim}),
                     attnkit::causal{});
  attnkit::attention(attnkit::backend::reference{}, qv, kv, vv,
                     attnkit::tensor_view<float, 3>(oracle.data(), {tokens, q_heads, dim}),
                     attnkit::causal{});
  float worst = 0.0f;
  for (std::size_t i = 0; i < fast.size(); ++i)
    worst = std::fmax(worst, std::fabs(fast[i] - oracle[i]));
  std::printf("consumer: max |cpu - reference| = %g\n", static_cast<double>(worst));
  return worst < 1e-5f ? 0 : 1;
}
