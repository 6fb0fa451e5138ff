// attnkit benchmarks — what the benchmarks and the demo share besides the peak probes: owning
// aligned buffers for the NHD tensors, deterministic fills, and the exact work a shape represents
// (flops over allowed (query, key) pairs, bytes of K and V).
#pragma once

#include <algorithm>
#include <attnkit/attnkit.hpp>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <type_traits>

#include "peak.hpp"

namespace attnkit_bench {

using attnkit::index_t;

// Short dtype names for benchmark names and tables.
template <class T>
constexpr const char* dtype_name() {
  if constexpr (std::is_same_v<T, float>) {
    return "fp32";
  } else if constexpr (std::is_same_v<T, attnkit::half>) {
    return "fp16";
  } else {
    static_assert(std::is_same_v<T, attnkit::bfloat16>, "dtype_name: float, half or bfloat16");
    return "bf16";
  }
}

// An owning, 64-byte aligned (2 MiB for large sizes, huge pages requested) array of T. The
// elements start uninitialized: fill them before use.
template <class T>
class buffer {
  static_assert(std::is_trivially_copyable_v<T> && std::is_trivially_default_constructible_v<T>);

 public:
  buffer() = default;
  explicit buffer(std::size_t count)
      : count_(count), data_(static_cast<T*>(allocate_bytes(count * sizeof(T)))) {}

  T* data() const noexcept { return data_.get(); }
  std::size_t size() const noexcept { return count_; }
  std::size_t bytes() const noexcept { return count_ * sizeof(T); }

  // Contiguous NHD view [tokens, heads, dim] of the start of the buffer.
  attnkit::tensor_view<T, 3> view(index_t tokens, index_t heads, index_t dim) const noexcept {
    return attnkit::tensor_view<T, 3>(data(), {tokens, heads, dim});
  }
  attnkit::tensor_view<const T, 3> cview(index_t tokens, index_t heads, index_t dim) const {
    return attnkit::tensor_view<const T, 3>(data(), {tokens, heads, dim});
  }

 private:
  std::size_t count_ = 0;
  std::unique_ptr<T, free_deleter> data_;
};

// Deterministic uniform values in [lo, hi), element i depending only on (seed, i).
inline float uniform_at(std::uint64_t seed, std::uint64_t i, float lo, float hi) {
  std::uint64_t z = seed * 0x9E3779B97F4A7C15ull + i + 0x632BE59BD9B4E019ull;  // splitmix64
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  const float unit = float(z >> 40) * (1.0f / float(std::uint64_t{1} << 24));
  return lo + (hi - lo) * unit;
}

template <class T>
void fill_uniform(const buffer<T>& b, std::uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  T* p = b.data();
  const std::size_t n = b.size();
  for (std::size_t i = 0; i < n; ++i) p[i] = attnkit::from_float<T>(uniform_at(seed, i, lo, hi));
}

template <class T>
void fill_zero(const buffer<T>& b) {
  if (b.size() != 0) std::memset(static_cast<void*>(b.data()), 0, b.bytes());
}

// ------------------------------------------------------------------------------------------------
// Cold calls: streaming a buffer larger than the last-level cache (the bandwidth probe's size)
// between calls, so the next one starts with nothing of its working set cached.
// ------------------------------------------------------------------------------------------------

// The buffer, allocated and zeroed on first use (call it before handing slices to a pool).
inline const buffer<float>& cache_sweep_buffer() {
  static const buffer<float> sweep = [] {
    buffer<float> b(default_bandwidth_bytes() / sizeof(float));
    fill_zero(b);
    return b;
  }();
  return sweep;
}

// Reads slice `slice` of `slices` of the buffer, one float per 64-byte line: one thread reads
// the whole buffer (slices = 1), or a pool splits it so every core's private caches go cold too.
inline void sweep_caches(std::size_t slice = 0, std::size_t slices = 1) {
  const buffer<float>& sweep = cache_sweep_buffer();
  const std::size_t n = sweep.size();
  float sum = 0.0f;
  for (std::size_t i = n * slice / slices; i < n * (slice + 1) / slices; i += 16)
    sum += sweep.data()[i];
  keep(sum);
}

// Copies of a KV cache of `bytes_one` bytes that rotating through streams at least as many bytes
// as the bandwidth probe does, so a call never finds its K/V in the last-level cache.
inline std::size_t cold_copies(double bytes_one) {
  const double want = double(default_bandwidth_bytes());
  return std::max<std::size_t>(1, std::size_t((want + bytes_one - 1.0) / bytes_one));
}

// Fills `copies` copies of `elements` K and V elements each with the same uniform values (seeds
// 2 and 3), so a call on any copy computes what a call on copy 0 does.
template <class KV>
void fill_kv_copies(const buffer<KV>& k, const buffer<KV>& v, std::size_t elements,
                    std::size_t copies) {
  buffer<KV> k0(elements), v0(elements);
  fill_uniform(k0, 2);
  fill_uniform(v0, 3);
  for (std::size_t c = 0; c < copies; ++c) {
    std::memcpy(static_cast<void*>(k.data() + c * elements), k0.data(), k0.bytes());
    std::memcpy(static_cast<void*>(v.data() + c * elements), v0.data(), v0.bytes());
  }
}

// ------------------------------------------------------------------------------------------------
// The work a shape represents.
// ------------------------------------------------------------------------------------------------

// Keys visible to query row i of n_q over n_kv keys (bottom-right aligned, as the kernels do).
inline index_t visible_keys(attnkit::full, index_t /*i*/, index_t /*n_q*/, index_t n_kv) {
  return n_kv;
}
inline index_t visible_keys(attnkit::causal, index_t i, index_t n_q, index_t n_kv) {
  return std::clamp<index_t>(n_kv - n_q + i + 1, 0, n_kv);
}

// Exact number of allowed (query, key) pairs of query head `head` under any mask, counted from
// the mask's visible runs (query row i sits at position n_kv - n_q + i).
template <class Mask>
double allowed_pairs(const Mask& mask, index_t n_q, index_t n_kv, attnkit::head_index head = 0) {
  double pairs = 0.0;
  for (index_t i = 0; i < n_q; ++i)
    attnkit::detail::for_each_visible_run(mask, n_kv - n_q + i, head, {0, n_kv},
                                          [&](index_t b, index_t e) { pairs += double(e - b); });
  return pairs;
}

// The same summed over query heads [0, q_heads) (masks may differ per head).
template <class Mask>
double allowed_pairs_all_heads(const Mask& mask, index_t n_q, index_t n_kv, index_t q_heads) {
  if (!attnkit::detail::mask_varies_by_head(mask))
    return allowed_pairs(mask, n_q, n_kv) * double(q_heads);
  double pairs = 0.0;
  for (index_t h = 0; h < q_heads; ++h) pairs += allowed_pairs(mask, n_q, n_kv, h);
  return pairs;
}

// Useful flops of one attention call: 2·d for the q·k dot product and 2·d for the p·v update,
// per allowed pair per query head. Masked pairs count nothing, whatever a kernel spends on them.
template <class Mask>
double attention_flops(const Mask& mask, index_t n_q, index_t n_kv, index_t q_heads,
                       index_t head_dim) {
  return allowed_pairs_all_heads(mask, n_q, n_kv, q_heads) * 4.0 * double(head_dim);
}

// Bytes of K and V, each read once.
template <class KV>
double kv_bytes(index_t n_kv, index_t kv_heads, index_t head_dim) {
  return double(n_kv) * double(kv_heads) * double(head_dim) * 2.0 * double(sizeof(KV));
}

}  // namespace attnkit_bench
