// attnkit — linear_attention() on backend::cuda: causal linear attention over views of device
// memory, continuing a recurrent state that stays on the device (cuda::linear_state).
//
//   attnkit::cuda::linear_state state(kv_heads, map.feature_dim(key_dim), value_dim);
//   attnkit::linear_attention(attnkit::backend::cuda{stream}, q, k, v, out, map, state, options);
//
// The semantics are those of the CPU front door (linear/linear_attention.hpp): for query head h
// over KV head g = h / (q_heads / kv_heads), with γ = options.decay[g] (1 without decay),
//   S_t = γ·S_{t-1} + φ(k_t) v_tᵀ,   z_t = γ·z_{t-1} + φ(k_t),
//   out_t = φ(q_t)ᵀ S_t / φ(q_t)ᵀ z_t   (normalize; a zero denominator gives zeros)
//   out_t = φ(q_t)ᵀ S_t                 (otherwise).
//
// One kernel, in two sizes, runs every call: the chunked form, which for each chunk of C tokens
// computes the intra-chunk part as a decayed causal C×C product, adds the carried state's part
// γ^(t+1)·φq_t·S and then folds the chunk into the state (S ← γ^n S + Σ_s γ^(n-1-s) φk_s v_sᵀ).
// Prefill uses C = 64; short calls (decode, <= 4 tokens) use C = 4, which is the recurrent form:
// the state is read once and updated once per call, with a 4×4 causal product in between instead
// of 64×64 work mostly on absent tokens. Everything is fp32 on CUDA cores; inputs and outputs are
// float, half or bfloat16 in any combination (their types are runtime values, so the kernel is
// instantiated once per feature map and chunk size only).
//
// Grid: one block per (KV head, 32 value columns). A block owns its columns of the KV head's S
// and loops over the query heads of the group before updating them, so each part of the state is
// updated exactly once; every block also keeps a private copy of z in shared memory (z is shared
// by the column tiles), and the first column tile's final z goes to scratch and is copied into
// the state after the kernel (a block of another column tile may still be reading the old z).
//
// Decay: options.decay is host memory, as on the CPU (it is validated there); its values are
// passed to the kernel by value, up to 128 KV heads per launch (more heads: more launches).
// Validation happens on the host before anything is enqueued and leaves the state untouched on
// error; no host synchronisation happens inside the call.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <type_traits>
#include <utility>

#include "attnkit/attention/check.hpp"
#include "attnkit/backend/cuda/device_types.cuh"
#include "attnkit/backend/cuda/runtime.cuh"
#include "attnkit/backend/cuda_tag.hpp"
#include "attnkit/core/config.hpp"
#include "attnkit/core/error.hpp"
#include "attnkit/core/float16.hpp"
#include "attnkit/core/tensor_view.hpp"
#include "attnkit/feature/elu_plus_one.hpp"
#include "attnkit/feature/identity.hpp"
#include "attnkit/feature/relu.hpp"
#include "attnkit/feature/taylor2.hpp"
#include "attnkit/linear/linear_state.hpp"
#include "attnkit/linear/options.hpp"

namespace attnkit {
namespace cuda {

// The recurrent state of linear_attention on the device, fp32, per KV head:
//   S [kv_heads, feature_dim, value_dim] and z [kv_heads, feature_dim],
// stored densely (no row padding) in one allocation, S first. Constructed zeroed (the start of a
// sequence); reset() zeroes it again in stream order. download()/upload() copy it to/from the
// host synchronously, either as one span in the order of the CPU linear_state's s() then z()
// elements (S[h][f][c] at (h·F + f)·dv + c, then z[h][f] at kv_heads·F·dv + h·F + f), or
// straight into/out of a CPU attnkit::linear_state of the same shape.
class linear_state {
 public:
  linear_state() = default;
  linear_state(index_t kv_heads, index_t feature_dim, index_t value_dim) {
    detail::require(kv_heads >= 1 && feature_dim >= 1 && value_dim >= 1,
                    "attnkit::cuda::linear_state: shape is (kv_heads ", kv_heads, ", feature_dim ",
                    feature_dim, ", value_dim ", value_dim, "), every extent must be >= 1");
    kv_heads_ = kv_heads;
    feature_dim_ = feature_dim;
    value_dim_ = value_dim;
    void* memory = nullptr;
    detail::cuda::check(cudaMalloc(&memory, floats() * sizeof(float)),
                        "attnkit::cuda::linear_state", "cudaMalloc");
    data_ = static_cast<float*>(memory);
    const cudaError_t status = cudaMemset(data_, 0, floats() * sizeof(float));
    if (status != cudaSuccess) {
      release();
      detail::cuda::check(status, "attnkit::cuda::linear_state", "cudaMemset");
    }
  }
  linear_state(const linear_state&) = delete;
  linear_state& operator=(const linear_state&) = delete;
  linear_state(linear_state&& other) noexcept { swap(other); }
  linear_state& operator=(linear_state&& other) noexcept {
    if (this != &other) {
      release();
      swap(other);
    }
    return *this;
  }
  ~linear_state() { release(); }

  bool has_shape() const noexcept { return data_ != nullptr; }
  index_t kv_heads() const noexcept { return kv_heads_; }
  index_t feature_dim() const noexcept { return feature_dim_; }
  index_t value_dim() const noexcept { return value_dim_; }
  // Tokens consumed since the start of the sequence (counted on the host by each call).
  index_t tokens() const noexcept { return tokens_; }
  // kv_heads·F·dv + kv_heads·F: the length of the span download()/upload() take.
  std::size_t size() const noexcept { return floats(); }

  // Device pointers for the kernels (and for engines that save or restore states themselves).
  float* s_data() const noexcept { return data_; }
  float* z_data() const noexcept { return data_ == nullptr ? nullptr : data_ + s_floats(); }

  // A new sequence in the same memory: zeros (enqueued on `stream`), tokens() = 0.
  void reset(cudaStream_t stream = nullptr) {
    if (data_ != nullptr)
      detail::cuda::check(cudaMemsetAsync(data_, 0, floats() * sizeof(float), stream),
                          "attnkit::cuda::linear_state::reset", "cudaMemsetAsync");
    tokens_ = 0;
  }

  // Synchronous copies (cudaMemcpy: they wait for the work enqueued on the legacy default
  // stream; a caller on another stream synchronises it first).
  void download(std::span<float> host) const {
    require_size("download", host.size());
    detail::cuda::check(
        cudaMemcpy(host.data(), data_, floats() * sizeof(float), cudaMemcpyDeviceToHost),
        "attnkit::cuda::linear_state::download", "cudaMemcpy");
  }
  void upload(std::span<const float> host) {
    require_size("upload", host.size());
    detail::cuda::check(
        cudaMemcpy(data_, host.data(), floats() * sizeof(float), cudaMemcpyHostToDevice),
        "attnkit::cuda::linear_state::upload", "cudaMemcpy");
  }
  // Into / from a CPU state of the same shape (the CPU state's tokens() is left as it is; an
  // upload sets this state's tokens() to the CPU state's).
  void download(attnkit::linear_state& host) const {
    require_same_shape("download", host);
    std::unique_ptr<float[]> staging(new float[floats()]);
    download(std::span<float>(staging.get(), floats()));
    const tensor_view<float, 3> s = host.s();
    const tensor_view<float, 2> z = host.z();
    for (index_t h = 0; h < kv_heads_; ++h)
      for (index_t f = 0; f < feature_dim_; ++f) {
        z(h, f) = staging[static_cast<std::size_t>(s_floats() + h * feature_dim_ + f)];
        for (index_t c = 0; c < value_dim_; ++c)
          s(h, f, c) = staging[static_cast<std::size_t>((h * feature_dim_ + f) * value_dim_ + c)];
      }
  }
  void upload(const attnkit::linear_state& host) {
    require_same_shape("upload", host);
    std::unique_ptr<float[]> staging(new float[floats()]);
    const tensor_view<const float, 3> s = host.s();
    const tensor_view<const float, 2> z = host.z();
    for (index_t h = 0; h < kv_heads_; ++h)
      for (index_t f = 0; f < feature_dim_; ++f) {
        staging[static_cast<std::size_t>(s_floats() + h * feature_dim_ + f)] = z(h, f);
        for (index_t c = 0; c < value_dim_; ++c)
          staging[static_cast<std::size_t>((h * feature_dim_ + f) * value_dim_ + c)] = s(h, f, c);
      }
    upload(std::span<const float>(staging.get(), floats()));
    tokens_ = host.tokens();
  }

  // For the front door, after a call has been enqueued.
  void advance(index_t tokens) noexcept { tokens_ += tokens; }

 private:
  std::size_t s_floats() const noexcept {
    return static_cast<std::size_t>(kv_heads_ * feature_dim_ * value_dim_);
  }
  std::size_t floats() const noexcept {
    return s_floats() + static_cast<std::size_t>(kv_heads_ * feature_dim_);
  }
  void require_size(const char* what, std::size_t size) const {
    detail::require(has_shape(), "attnkit::cuda::linear_state::", what,
                    ": the state has no shape (default-constructed)");
    detail::require(size == floats(), "attnkit::cuda::linear_state::", what, ": the span holds ",
                    size, " floats but the state has ", floats(), " (kv_heads ", kv_heads_,
                    " x feature_dim ", feature_dim_, " x (value_dim ", value_dim_, " + 1))");
  }
  void require_same_shape(const char* what, const attnkit::linear_state& host) const {
    detail::require(has_shape() && host.has_shape() && host.kv_heads() == kv_heads_ &&
                        host.feature_dim() == feature_dim_ && host.value_dim() == value_dim_,
                    "attnkit::cuda::linear_state::", what, ": the CPU state's shape (kv_heads ",
                    host.kv_heads(), ", feature_dim ", host.feature_dim(), ", value_dim ",
                    host.value_dim(), ") differs from the device state's (", kv_heads_, ", ",
                    feature_dim_, ", ", value_dim_, ")");
  }
  void swap(linear_state& other) noexcept {
    std::swap(data_, other.data_);
    std::swap(kv_heads_, other.kv_heads_);
    std::swap(feature_dim_, other.feature_dim_);
    std::swap(value_dim_, other.value_dim_);
    std::swap(tokens_, other.tokens_);
  }
  void release() noexcept {
    if (data_ != nullptr) (void)cudaFree(data_);
    data_ = nullptr;
    kv_heads_ = feature_dim_ = value_dim_ = tokens_ = 0;
  }

  float* data_ = nullptr;
  index_t kv_heads_ = 0;
  index_t feature_dim_ = 0;
  index_t value_dim_ = 0;
  index_t tokens_ = 0;
};

}  // namespace cuda

namespace detail::cuda {

inline constexpr const char* linear_function = "attnkit::linear_attention (backend::cuda)";

// The device side of the built-in feature maps: feature f of φ(x) for an input row read through
// `row(i)` (a float), with the same values and feature order as the CPU maps' apply(). A map
// without a specialisation is rejected at compile time.
template <class Map>
struct device_feature_map {
  static_assert(sizeof(Map) == 0,
                "attnkit::linear_attention (backend::cuda) supports the feature maps "
                "feature::identity, feature::relu, feature::elu_plus_one and feature::taylor2; "
                "apply another map to q and k first and pass feature::identity");
};

template <>
struct device_feature_map<feature::identity> {
  template <class Row>
  __device__ static float value(const feature::identity&, const Row& row, index_t, index_t f) {
    return row(f);
  }
};

template <>
struct device_feature_map<feature::relu> {
  template <class Row>
  __device__ static float value(const feature::relu&, const Row& row, index_t, index_t f) {
    const float x = row(f);
    return x > 0.0f ? x : 0.0f;  // -0 and NaN become +0, as on the CPU
  }
};

template <>
struct device_feature_map<feature::elu_plus_one> {
  template <class Row>
  __device__ static float value(const feature::elu_plus_one&, const Row& row, index_t, index_t f) {
    const float x = row(f);
    return x > 0.0f ? x + 1.0f : expf(x);
  }
};

// taylor2's layout: [1, s·x_0 .. s·x_{d-1}, then for i = 0..d-1 the products for j = i..d-1],
// the diagonal product (s·x_i)²/√2 and the others (s·x_i)(s·x_j).
template <>
struct device_feature_map<feature::taylor2> {
  template <class Row>
  __device__ static float value(const feature::taylor2& map, const Row& row, index_t d, index_t f) {
    if (f == 0) return 1.0f;
    const float scale = map.input_scale;
    if (f <= d) return row(f - 1) * scale;
    // Row i of the quadratic block holds d - i products; walk to the row holding f (O(d), but
    // exact: no square-root inversion that could round to the wrong row).
    index_t p = f - 1 - d;
    index_t i = 0;
    while (p >= d - i) {
      p -= d - i;
      ++i;
    }
    const index_t j = i + p;
    const float xi = row(i) * scale;
    if (j == i) return xi * xi * 0.70710678118654752440084436210485f;
    return xi * (row(j) * scale);
  }
};

inline constexpr int linear_threads = 256;
inline constexpr int linear_feature_tile = 32;  // features per shared-memory tile
inline constexpr int linear_value_tile = 32;    // value columns per block
inline constexpr int linear_prefill_chunk = 64;
inline constexpr int linear_decode_chunk = 4;
inline constexpr index_t linear_recurrent_max_tokens = 4;
inline constexpr int linear_heads_per_launch = 128;  // decay values passed by value
// z is kept in shared memory per block: bounded so that the largest block fits the 99 KiB that
// every sm_80+ device (sm_86/89 included) allows a block.
inline constexpr index_t linear_max_feature_dim = 12288;

struct linear_kernel_params {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* out = nullptr;
  storage_kind q_kind = storage_kind::float32;
  storage_kind kv_kind = storage_kind::float32;
  storage_kind out_kind = storage_kind::float32;
  bool normalize = true;
  index_t q_strides[3] = {};
  index_t k_strides[3] = {};
  index_t v_strides[3] = {};
  index_t out_strides[3] = {};
  float* s = nullptr;           // [kv_heads][F][dv], updated in place
  const float* z_in = nullptr;  // [kv_heads][F], read only
  float* z_out = nullptr;       // [kv_heads][F], scratch: the final z
  index_t tokens = 0;
  index_t group_size = 1;
  index_t key_dim = 0;
  index_t value_dim = 0;
  index_t feature_dim = 0;
  index_t first_kv_head = 0;  // this launch's heads: first_kv_head + blockIdx.y
  float decay[linear_heads_per_launch] = {};
};

// Shared memory of one block, in floats: the decayed scores A [C][C+1], the feature tiles of q and
// k [C][FT+1] (padded rows: the A loop reads k's tile down a column), the value tile [C][VT], the
// state tile [FT][VT], the denominators [C], the powers γ^0..γ^C and the private z [F].
template <int Chunk>
constexpr index_t linear_shared_floats_fixed() {
  return index_t{Chunk} * (Chunk + 1) + 2 * index_t{Chunk} * (linear_feature_tile + 1) +
         index_t{Chunk} * linear_value_tile + index_t{linear_feature_tile} * linear_value_tile +
         Chunk + (Chunk + 1);
}
template <int Chunk>
std::size_t linear_shared_bytes(index_t feature_dim) {
  return static_cast<std::size_t>(linear_shared_floats_fixed<Chunk>() + feature_dim) *
         sizeof(float);
}

// φ of `Chunk` rows starting at token `start` (rows at or past n read as 0), features
// [f0, f0 + FT) (features at or past F read as 0), into tile[t·(FT+1) + fl].
template <int Chunk, class Map>
__device__ void load_feature_tile(const Map& map, const void* data, storage_kind kind,
                                  const index_t (&strides)[3], index_t start, int n, index_t head,
                                  index_t d, index_t f0, index_t F, float* tile) {
  constexpr int FT = linear_feature_tile;
  for (int e = threadIdx.x; e < Chunk * FT; e += linear_threads) {
    const int t = e / FT, fl = e % FT;
    const index_t f = f0 + fl;
    float value = 0.0f;
    if (t < n && f < F) {
      const index_t base = (start + t) * strides[0] + head * strides[1];
      const auto row = [&](index_t i) { return load_element(data, kind, base + i * strides[2]); };
      value = device_feature_map<Map>::value(map, row, d, f);
    }
    tile[t * (FT + 1) + fl] = value;
  }
}

template <class Map, int Chunk>
__global__ void __launch_bounds__(linear_threads)
    linear_attention_kernel(const linear_kernel_params p, const Map map) {
  constexpr int FT = linear_feature_tile, VT = linear_value_tile;
  constexpr int score_slots = (Chunk * Chunk + linear_threads - 1) / linear_threads;
  constexpr int output_slots = (Chunk * VT + linear_threads - 1) / linear_threads;
  constexpr int state_slots = (FT * VT + linear_threads - 1) / linear_threads;

  extern __shared__ float shared[];
  float* scores = shared;                    // [Chunk][Chunk + 1]
  float* fq = scores + Chunk * (Chunk + 1);  // [Chunk][FT + 1]
  float* fk = fq + Chunk * (FT + 1);         // [Chunk][FT + 1]
  float* vt = fk + Chunk * (FT + 1);         // [Chunk][VT]
  float* st = vt + Chunk * VT;               // [FT][VT]
  float* den = st + FT * VT;                 // [Chunk]
  float* powers = den + Chunk;               // [Chunk + 1]: γ^0 .. γ^Chunk
  float* z = powers + (Chunk + 1);           // [F]

  const int tid = static_cast<int>(threadIdx.x);
  const index_t g = p.first_kv_head + blockIdx.y;
  const index_t c0 = static_cast<index_t>(blockIdx.x) * VT;
  const index_t F = p.feature_dim, dv = p.value_dim, dk = p.key_dim;
  float* s_head = p.s + g * F * dv;

  if (tid == 0) {
    // In fp64 and rounded once, as the reference's powers are.
    const double gamma = p.decay[blockIdx.y];
    double x = 1.0;
    for (int i = 0; i <= Chunk; ++i, x *= gamma) powers[i] = static_cast<float>(x);
  }
  for (index_t f = tid; f < F; f += linear_threads) z[f] = p.z_in[g * F + f];
  __syncthreads();

  for (index_t start = 0; start < p.tokens; start += Chunk) {
    const int n = static_cast<int>(p.tokens - start < Chunk ? p.tokens - start : Chunk);

    // This block's columns of the chunk's values (the same for every query head of the group).
    for (int e = tid; e < Chunk * VT; e += linear_threads) {
      const int t = e / VT, c = e % VT;
      float value = 0.0f;
      if (t < n && c0 + c < dv)
        value = load_element(
            p.v, p.kv_kind,
            (start + t) * p.v_strides[0] + g * p.v_strides[1] + (c0 + c) * p.v_strides[2]);
      vt[e] = value;
    }

    for (index_t h = g * p.group_size; h < (g + 1) * p.group_size; ++h) {
      float score_acc[score_slots] = {};
      float carried_num[output_slots] = {};
      float carried_den = 0.0f;
      for (index_t f0 = 0; f0 < F; f0 += FT) {
        __syncthreads();  // the previous tiles (and scores, den, vt writes) are done with
        load_feature_tile<Chunk>(map, p.q, p.q_kind, p.q_strides, start, n, h, dk, f0, F, fq);
        load_feature_tile<Chunk>(map, p.k, p.kv_kind, p.k_strides, start, n, g, dk, f0, F, fk);
        for (int e = tid; e < FT * VT; e += linear_threads) {
          const int fl = e / VT, c = e % VT;
          st[e] = f0 + fl < F && c0 + c < dv ? s_head[(f0 + fl) * dv + c0 + c] : 0.0f;
        }
        __syncthreads();
        // φq_t·φk_s, every (t, s) of the chunk (the mask and decay are applied afterwards).
#pragma unroll
        for (int i = 0; i < score_slots; ++i) {
          const int e = tid + i * linear_threads;
          if (e < Chunk * Chunk) {
            const int t = e / Chunk, s = e % Chunk;
            float sum = 0.0f;
            for (int fl = 0; fl < FT; ++fl) sum += fq[t * (FT + 1) + fl] * fk[s * (FT + 1) + fl];
            score_acc[i] += sum;
          }
        }
        // φq_t·S and φq_t·z with the state as it was before the chunk.
#pragma unroll
        for (int i = 0; i < output_slots; ++i) {
          const int e = tid + i * linear_threads;
          if (e < Chunk * VT) {
            const int t = e / VT, c = e % VT;
            float sum = 0.0f;
            for (int fl = 0; fl < FT; ++fl) sum += fq[t * (FT + 1) + fl] * st[fl * VT + c];
            carried_num[i] += sum;
          }
        }
        if (tid < Chunk)
          for (int fl = 0; fl < FT && f0 + fl < F; ++fl)
            carried_den += fq[tid * (FT + 1) + fl] * z[f0 + fl];
      }
      // Causal mask and decay: A[t][s] = γ^(t-s) φq_t·φk_s for s <= t < n, else 0.
#pragma unroll
      for (int i = 0; i < score_slots; ++i) {
        const int e = tid + i * linear_threads;
        if (e < Chunk * Chunk) {
          const int t = e / Chunk, s = e % Chunk;
          scores[t * (Chunk + 1) + s] = s <= t && t < n ? powers[t - s] * score_acc[i] : 0.0f;
        }
      }
      __syncthreads();
      if (tid < Chunk) {
        // The state entered this chunk as S_{start-1}: by token t it has decayed t + 1 times.
        float d = powers[tid + 1] * carried_den;
        for (int s = 0; s <= tid; ++s) d += scores[tid * (Chunk + 1) + s];
        den[tid] = d;
      }
      __syncthreads();
#pragma unroll
      for (int i = 0; i < output_slots; ++i) {
        const int e = tid + i * linear_threads;
        if (e < Chunk * VT) {
          const int t = e / VT, c = e % VT;
          if (t < n && c0 + c < dv) {
            float num = powers[t + 1] * carried_num[i];
            for (int s = 0; s <= t; ++s) num += scores[t * (Chunk + 1) + s] * vt[s * VT + c];
            const float value = !p.normalize ? num : den[t] == 0.0f ? 0.0f : num / den[t];
            store_element(
                p.out, p.out_kind,
                (start + t) * p.out_strides[0] + h * p.out_strides[1] + (c0 + c) * p.out_strides[2],
                value);
          }
        }
      }
    }

    // Fold the chunk into the state: S ← γ^n S + Σ_s γ^(n-1-s) φk_s v_sᵀ, z likewise. Only
    // after every query head of the group has read the state of the chunk's start.
    for (index_t f0 = 0; f0 < F; f0 += FT) {
      __syncthreads();
      load_feature_tile<Chunk>(map, p.k, p.kv_kind, p.k_strides, start, n, g, dk, f0, F, fk);
      __syncthreads();
#pragma unroll
      for (int i = 0; i < state_slots; ++i) {
        const int e = tid + i * linear_threads;
        if (e < FT * VT) {
          const int fl = e / VT, c = e % VT;
          const index_t f = f0 + fl;
          if (f < F && c0 + c < dv) {
            float* entry = s_head + f * dv + c0 + c;
            float value = powers[n] * *entry;
            for (int s = 0; s < n; ++s)
              value += powers[n - 1 - s] * fk[s * (FT + 1) + fl] * vt[s * VT + c];
            *entry = value;
          }
        }
      }
      if (tid < FT && f0 + tid < F) {
        float value = powers[n] * z[f0 + tid];
        for (int s = 0; s < n; ++s) value += powers[n - 1 - s] * fk[s * (FT + 1) + tid];
        z[f0 + tid] = value;
      }
    }
    __syncthreads();  // vt, z and the state tiles are complete before the next chunk
  }

  if (blockIdx.x == 0)
    for (index_t f = tid; f < F; f += linear_threads) p.z_out[g * F + f] = z[f];
}

template <class Map, int Chunk>
void launch_linear_attention(linear_kernel_params p, const Map& map, const float* decay,
                             index_t decay_stride, index_t kv_heads, cudaStream_t stream) {
  const auto kernel = linear_attention_kernel<Map, Chunk>;
  const std::size_t bytes = linear_shared_bytes<Chunk>(p.feature_dim);
  if (bytes > 48 * 1024)
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(bytes)),
          linear_function, "cudaFuncSetAttribute(linear_attention_kernel shared memory)");
  const index_t column_tiles = (p.value_dim + linear_value_tile - 1) / linear_value_tile;
  for (index_t first = 0; first < kv_heads; first += linear_heads_per_launch) {
    const index_t heads =
        kv_heads - first < linear_heads_per_launch ? kv_heads - first : linear_heads_per_launch;
    p.first_kv_head = first;
    for (index_t h = 0; h < heads; ++h)
      p.decay[h] = decay != nullptr ? decay[(first + h) * decay_stride] : 1.0f;
    const dim3 grid(static_cast<unsigned>(column_tiles), static_cast<unsigned>(heads));
    kernel<<<grid, linear_threads, bytes, stream>>>(p, map);
    check_launch(linear_function, "linear_attention_kernel");
  }
}

template <class T>
void require_linear_device_view(const char* name, const T* data) {
  require_device_pointer(linear_function, name, data);
}

}  // namespace detail::cuda

// Causal linear attention on the device, continuing `state` (see the top of this file and
// linear/linear_attention.hpp for the semantics, which are the CPU front door's):
//   q [tokens, q_heads, key_dim], k [tokens, kv_heads, key_dim], v [tokens, kv_heads, value_dim],
//   out [tokens, q_heads, value_dim]: views of device memory, float, half or bfloat16, any
//   strides; k and v of one type;
//   map: feature::identity, relu, elu_plus_one or taylor2;
//   state: cuda::linear_state of shape (kv_heads, map.feature_dim(key_dim), value_dim);
//   options.decay: host memory, [kv_heads], each in (0, 1].
// Enqueued on backend.stream; the scratch (the final z, kv_heads·F floats) comes from
// backend.workspace when one is given (cuda::linear_attention_workspace_bytes), else from the
// stream's pool. Invalid arguments throw attnkit::error before anything is enqueued.
template <class TQ, class TK, class TV, class TO, class Map>
void linear_attention(const backend::cuda& backend, tensor_view<TQ, 3> q, tensor_view<TK, 3> k,
                      tensor_view<TV, 3> v, tensor_view<TO, 3> out, const Map& map,
                      cuda::linear_state& state, const linear_options& options = {}) {
  using namespace detail;
  using namespace detail::cuda;
  static_assert(is_storage_type_v<std::remove_cv_t<TQ>>, "q must hold float, half or bfloat16");
  static_assert(is_storage_type_v<std::remove_cv_t<TK>>, "k must hold float, half or bfloat16");
  static_assert(std::is_same_v<std::remove_cv_t<TK>, std::remove_cv_t<TV>>,
                "k and v must have the same element type");
  static_assert(is_storage_type_v<TO>, "out must be a mutable view of float, half or bfloat16");
  (void)device_feature_map<Map>{};  // the static_assert naming the supported maps
  const char* function = linear_function;

  const index_t tokens = q.extent(0), q_heads = q.extent(1), key_dim = q.extent(2);
  const index_t kv_heads = k.extent(1), value_dim = v.extent(2);
  require(key_dim >= 1, function, ": key dim (q extent 2) is ", key_dim, ", it must be >= 1");
  require(value_dim >= 1, function, ": value dim (v extent 2) is ", value_dim, ", it must be >= 1");
  check_extent(function, "k tokens (extent 0)", k.extent(0), "q tokens", tokens);
  check_extent(function, "k key dim (extent 2)", k.extent(2), "q key dim", key_dim);
  check_extent(function, "v tokens (extent 0)", v.extent(0), "q tokens", tokens);
  check_extent(function, "v kv_heads (extent 1)", v.extent(1), "k kv_heads", kv_heads);
  const index_t group_size = check_head_counts(function, q_heads, kv_heads);
  check_out_extents(function, out, tokens, q_heads, "out value dim (extent 2)", "v value dim",
                    value_dim);
  check_view_data(function, "q", q);
  check_view_data(function, "k", k);
  check_view_data(function, "v", v);
  check_view_data(function, "out", out);
  const index_t feature_dim = static_cast<index_t>(map.feature_dim(key_dim));
  require(feature_dim >= 1 && feature_dim <= linear_max_feature_dim, function,
          ": the feature map's feature_dim(", key_dim, ") is ", feature_dim,
          ", backend::cuda supports 1 to ", linear_max_feature_dim);
  require(state.has_shape(), function,
          ": the cuda::linear_state has no shape; construct it with (kv_heads, "
          "map.feature_dim(key_dim), value_dim)");
  check_extent(function, "state kv_heads", state.kv_heads(), "k kv_heads", kv_heads);
  require(state.feature_dim() == feature_dim, function, ": state feature_dim is ",
          state.feature_dim(), " but the feature map gives ", feature_dim, " for key dim ", key_dim,
          " (a state continues one sequence with one map)");
  check_extent(function, "state value_dim", state.value_dim(), "v value dim", value_dim);
  linear_params decay_params;
  check_linear_decay(function, options, kv_heads, decay_params);  // host memory, as on the CPU
  require_linear_device_view("q", q.data());
  require_linear_device_view("k", k.data());
  require_linear_device_view("v", v.data());
  require_linear_device_view("out", out.data());
  if (tokens == 0) return;

  const cudaStream_t stream = backend.stream;
  const std::size_t z_bytes = static_cast<std::size_t>(kv_heads * feature_dim) * sizeof(float);
  call_scratch scratch(function, backend.workspace, stream, z_bytes);

  linear_kernel_params p;
  p.q = q.data();
  p.k = k.data();
  p.v = v.data();
  p.out = out.data();
  p.q_kind = storage_kind_of<std::remove_cv_t<TQ>>();
  p.kv_kind = storage_kind_of<std::remove_cv_t<TK>>();
  p.out_kind = storage_kind_of<TO>();
  p.normalize = options.normalize;
  for (int d = 0; d < 3; ++d) {
    p.q_strides[d] = q.stride(static_cast<std::size_t>(d));
    p.k_strides[d] = k.stride(static_cast<std::size_t>(d));
    p.v_strides[d] = v.stride(static_cast<std::size_t>(d));
    p.out_strides[d] = out.stride(static_cast<std::size_t>(d));
  }
  p.s = state.s_data();
  p.z_in = state.z_data();
  p.z_out = scratch.as<float>();
  p.tokens = tokens;
  p.group_size = group_size;
  p.key_dim = key_dim;
  p.value_dim = value_dim;
  p.feature_dim = feature_dim;
  if (tokens <= linear_recurrent_max_tokens)
    launch_linear_attention<Map, linear_decode_chunk>(p, map, decay_params.decay,
                                                      decay_params.decay_stride, kv_heads, stream);
  else
    launch_linear_attention<Map, linear_prefill_chunk>(p, map, decay_params.decay,
                                                       decay_params.decay_stride, kv_heads, stream);
  // Every block has read the old z by now (stream order): the new one replaces it.
  check(cudaMemcpyAsync(state.z_data(), p.z_out, z_bytes, cudaMemcpyDeviceToDevice, stream),
        function, "cudaMemcpyAsync (z)");
  state.advance(tokens);
}

namespace cuda {

// The cuda_workspace a linear_attention call on backend::cuda needs (its final z).
inline std::size_t linear_attention_workspace_bytes(index_t kv_heads, index_t feature_dim) {
  return static_cast<std::size_t>(kv_heads * feature_dim) * sizeof(float);
}

}  // namespace cuda
}  // namespace attnkit
