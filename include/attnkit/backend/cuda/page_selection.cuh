// attnkit — Quest page selection on backend::cuda (attention/quest.hpp has the method): page bounds
// kept in device memory, a selection that writes a device block layout, and no host
// synchronisation between a decode step's update, selection and attention.
//
//   attnkit::cuda::device_page_bounds<attnkit::half> bounds(16, kv_heads, head_dim, max_tokens);
//   attnkit::cuda::device_block_layout layout(kv_heads, 256);
//   const attnkit::backend::cuda gpu{stream};
//   // each decode step, after appending the new token's k (the cache now holds n tokens):
//   bounds.update(gpu, k_device_view_of_n_tokens, n - 1);      // touches the last page only
//   attnkit::cuda::quest_select(gpu, q, bounds, 256, layout);  // 256 pages = 4096 tokens
//   attnkit::attention(gpu, q, k, v, out, layout.mask());
//
//   // a paged cache in device memory (lengths on the device, per head):
//   bounds.update_appended(gpu, kv);             // from each head's previous count to kv.lengths
//   attnkit::cuda::quest_select(gpu, q, bounds, 256, layout);
//   attnkit::attention(gpu, q, kv, out, layout.mask());
//
// Same results as the CPU (attnkit::page_bounds / attnkit::quest_select):
//   - bounds: the fp32 min and max of every (KV head, page, column) taken with the reference's
//     comparisons, then stored as T with core/directed_rounding.hpp's round_down (min) and
//     round_up (max) after + 0 (a zero bound is +0). Those functions, and to_float, are
//     ATTNKIT_HOST_DEVICE and are called as they are, so the stored bits equal the CPU's (the
//     hardware __float2half_rd/_ru would agree on finite values but not on NaN payloads). The
//     storage layout is the CPU's too: per KV head, per page, the min row then the max row, each
//     padded_head_dim() values (64 bytes' worth, zero padded).
//   - scores: U(page) = Σ_c max(q_c·min_c, q_c·max_c), a term with q_c = 0 counting 0 (0·inf = 0:
//     an infinite 16-bit bound facing a zero query component adds nothing, facing a non-zero one
//     makes U = +inf); the score of a page is the maximum of U over the KV head's query heads and
//     the query tokens (not the sum); scale and softcap are left out (monotone). In fp32: the
//     products and sums are rounded (__fmul_rn / __fadd_rn, never fused), the columns summed per
//     lane then across the warp, so a score can differ from the reference's fp64 one by the
//     rounding of the sum, like the SIMD backend's: pages whose scores are that close may swap at
//     the cut. Scores that fp32 holds exactly (e.g. dyadic keys and queries) select exactly the
//     CPU's pages.
//   - selection: per KV head the last page always, and the top_pages - 1 best of the others by
//     (score descending, page ascending): ties go to the lower page; scores order as the SIMD
//     backend orders them (their float bits made monotone, -0 = +0, a positive NaN above +inf).
//     top_pages >= pages(h) keeps every page of head h, an empty head keeps none. Each layout row
//     lists its pages in increasing order.
//
// What the host cannot know. Device memory is not read back: a paged cache's lengths, page table
// and first slots are used on the device only. So:
//   - the per-head token counts live on the device (device_tokens()); tokens() on the host is known
//     after a contiguous update only (every head then holds k.extent(0)), and is empty after a
//     paged one;
//   - a paged update clamps each length to [0, kv.page_table_stride · kv.page_size] (as paged
//     attention does) and each first slot to [0, min(the head's previous count, its new length)]
//     (recomputing from an earlier slot than promised is always correct, from a later one never),
//     where the CPU throws; the bounds' capacity must hold a whole page-table row (checked on the
//     host), so every clamped length fits;
//   - quest_select checks "at least one token" and "q_tokens <= tokens" only when the host knows
//     the tokens. After a paged update the layout's shape cannot depend on the lengths: its one
//     block row covers query positions [-q_tokens, capacity_pages · page_size) and its key blocks
//     all capacity_pages pages, so it serves every head's queries (slots lengths[h] - q_tokens + i)
//     and any paged attention over a page table no larger than the capacity; each row lists the
//     same pages as the CPU's. After a contiguous update the shape is exactly the CPU's.
// Errors of the arguments the host can see throw attnkit::error before anything is enqueued, and
// leave the bounds and the layout as they were. Kernel errors surface at the caller's next
// synchronising call. The kernels assume IEEE fp32 (no -ftz=true / --use_fast_math for the
// translation unit: flushing subnormal keys would change the bounds' bits).
//
// Scratch: quest_select scores every competing page into kv_heads · pages uint32 values, from the
// backend's cuda_workspace when it has one (quest_select_workspace_bytes(bounds) says how much;
// a workspace sized so serves every call) or from the stream-ordered pool otherwise.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <type_traits>

#include "attnkit/attention/check.hpp"
#include "attnkit/backend/cuda/device_block_layout.cuh"
#include "attnkit/backend/cuda/device_types.cuh"
#include "attnkit/backend/cuda/runtime.cuh"
#include "attnkit/backend/cuda_tag.hpp"
#include "attnkit/core/config.hpp"
#include "attnkit/core/directed_rounding.hpp"
#include "attnkit/core/error.hpp"
#include "attnkit/core/float16.hpp"
#include "attnkit/core/page_bounds_layout.hpp"
#include "attnkit/core/paged_kv_view.hpp"
#include "attnkit/core/tensor_view.hpp"
#include "attnkit/mask/block_sparse.hpp"

namespace attnkit {
namespace detail::cuda {

inline constexpr const char* bounds_update_function = "attnkit::cuda::device_page_bounds::update";
inline constexpr const char* quest_select_function = "attnkit::cuda::quest_select";

inline constexpr int bounds_update_threads = 128;  // one thread per column, looping over columns
inline constexpr int quest_score_threads = 256;    // 8 warps, one page per warp at a time
inline constexpr int quest_select_threads = 1024;  // one block per KV head
inline constexpr int radix_bins = 256;             // 8-bit digits: 4 passes over a 32-bit score

__host__ __device__ constexpr index_t pages_for_tokens(index_t tokens, index_t page_size) {
  return (tokens + page_size - 1) / page_size;
}

// ---------------------------------------------------------------------------------------------
// Bounds update.
// ---------------------------------------------------------------------------------------------

// Where the update kernel finds key (h, slot)'s row: a strided [tokens, kv_heads, head_dim] view
// or a paged cache layer. Element c of the row is row[c * element_stride].
template <class TK>
struct bounds_key_source {
  bool paged = false;
  // contiguous
  const TK* k = nullptr;
  index_t token_stride = 0, head_stride = 0, dim_stride = 1;
  index_t tokens = 0;
  // paged
  paged_kv_view<const TK> kv;
  index_t slot_capacity = 0;  // kv.page_table_stride · kv.page_size

  // Slots head h holds; a paged length is clamped to its page-table row (see the header comment).
  __device__ index_t length(index_t h) const {
    if (!paged) return tokens;
    const index_t n = kv.lengths[h];
    return n < 0 ? 0 : n > slot_capacity ? slot_capacity : n;
  }
  __device__ const TK* row(index_t h, index_t slot) const {
    return paged ? kv.key(h, slot) : k + slot * token_stride + h * head_stride;
  }
  __device__ index_t element_stride() const { return paged ? 1 : dim_stride; }
};

struct bounds_update_params {
  index_t page_size = 1, head_dim = 0, padded_dim = 0;
  index_t head_stride = 0;              // elements between two KV heads' records
  const index_t* old_tokens = nullptr;  // [kv_heads]: the counts before this update
  index_t* new_tokens = nullptr;        // [kv_heads]: written (the other half of the ping-pong)
  // The first slot each head's caller says changed: first_slots[h * first_slots_stride] when
  // first_slots is set, else first_slot for every head.
  const index_t* first_slots = nullptr;
  index_t first_slots_stride = 1;
  index_t first_slot = 0;
};

// Grid (kv_heads, chunks), bounds_update_threads threads. Block (h, y) recomputes pages
// first_page + y, first_page + y + chunks, ... below end_page of head h, where
//   unchanged  = min(old_tokens[h], length(h))   slots below it are as the bounds saw them
//   first      = clamp(requested first slot, 0, unchanged)
//   first_page = first / page_size               the page holding slot `first` (whole pages are
//                                                 rebuilt, as on the CPU)
//   end_page   = ceil(length(h) / page_size)
// Thread c handles columns c, c + blockDim.x, ...: its loads of one row are consecutive across the
// block's threads (coalesced when the row is contiguous).
template <class TK, class T>
__global__ void __launch_bounds__(bounds_update_threads)
    page_bounds_update_kernel(bounds_key_source<TK> keys, bounds_update_params p, T* bounds) {
  const index_t h = blockIdx.x;
  const index_t length = keys.length(h);
  const index_t old = p.old_tokens[h];
  const index_t unchanged = old < length ? old : length;
  index_t first = p.first_slots != nullptr ? p.first_slots[h * p.first_slots_stride] : p.first_slot;
  first = first < 0 ? 0 : first > unchanged ? unchanged : first;
  // Only new_tokens is written and only old_tokens read (separate arrays): no block of this grid
  // can see another's write.
  if (blockIdx.y == 0 && threadIdx.x == 0) p.new_tokens[h] = length;

  const index_t first_page = first / p.page_size;
  const index_t end_page = pages_for_tokens(length, p.page_size);
  const index_t element_stride = keys.element_stride();
  for (index_t page = first_page + blockIdx.y; page < end_page; page += gridDim.y) {
    const index_t begin = page * p.page_size;
    const index_t end = begin + p.page_size < length ? begin + p.page_size : length;
    T* lo = bounds + h * p.head_stride + page * 2 * p.padded_dim;  // the page's min row ...
    T* hi = lo + p.padded_dim;                                     // ... then its max row
    for (index_t c = threadIdx.x; c < p.head_dim; c += blockDim.x) {
      float mn = to_float(keys.row(h, begin)[c * element_stride]);
      float mx = mn;
      // The reference's std::min / std::max, spelled out (same operand order, so ±0 and NaN
      // resolve as there).
      for (index_t t = begin + 1; t < end; ++t) {
        const float x = to_float(keys.row(h, t)[c * element_stride]);
        mn = x < mn ? x : mn;
        mx = mx < x ? x : mx;
      }
      lo[c] = round_down<T>(mn + 0.0f);
      hi[c] = round_up<T>(mx + 0.0f);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Scoring.
// ---------------------------------------------------------------------------------------------

struct quest_score_params {
  const void* q = nullptr;  // [q_tokens, q_heads, head_dim]
  storage_kind q_kind = storage_kind::float32;
  index_t q_token_stride = 0, q_head_stride = 0, q_dim_stride = 0;
  index_t q_tokens = 0, group = 1, head_dim = 0;
  index_t page_size = 1, padded_dim = 0, head_stride = 0;
  const index_t* tokens = nullptr;  // [kv_heads]
  index_t top_pages = 1;
  std::uint32_t* scores =
      nullptr;  // [kv_heads, score_stride]: ordered scores of pages [0, pages-1)
  index_t score_stride = 0;
};

// The score as an unsigned integer that orders as the float does (the SIMD backend's page_key
// without the page): sign bit flipped for non-negative values, every bit flipped for negative
// ones; + 0 makes -0 and +0 tie.
__device__ __forceinline__ std::uint32_t ordered_score(float score) {
  const std::uint32_t bits = __float_as_uint(__fadd_rn(score, 0.0f));
  return (bits & 0x80000000u) != 0 ? ~bits : bits | 0x80000000u;
}

// The sum of v over the warp, in every lane (an xor butterfly: at each step the two lanes of a
// pair add the same two values, so all lanes end with the same bits).
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int mask = 16; mask > 0; mask /= 2) v = __fadd_rn(v, __shfl_xor_sync(0xFFFFFFFFu, v, mask));
  return v;
}

// Grid (kv_heads, chunks), quest_score_threads threads. Warp w of block (h, y) scores pages
// y·warps + w, then + chunks·warps, ... below pages(h) - 1 (the last page is always kept and not
// scored). Query row r of the KV head is (token r / group, query head h·group + r % group); lane
// l sums columns l, l + 32, ... of U for that row, the warp adds the lanes, and the page's score
// is the maximum over rows (-inf with none). A head that keeps every page (top_pages >= pages)
// scores nothing.
template <class T>
__global__ void __launch_bounds__(quest_score_threads)
    quest_score_kernel(quest_score_params p, const T* bounds) {
  const index_t h = blockIdx.x;
  const index_t pages = pages_for_tokens(p.tokens[h], p.page_size);
  if (p.top_pages >= pages) return;
  const index_t candidates = pages - 1;
  const index_t warps = blockDim.x / 32;
  const index_t warp = threadIdx.x / 32;
  const index_t lane = threadIdx.x % 32;
  const index_t rows = p.q_tokens * p.group;
  for (index_t page = blockIdx.y * warps + warp; page < candidates; page += gridDim.y * warps) {
    const T* lo = bounds + h * p.head_stride + page * 2 * p.padded_dim;
    const T* hi = lo + p.padded_dim;
    float score = -__builtin_huge_valf();
    for (index_t r = 0; r < rows; ++r) {
      const index_t token = r / p.group;
      const index_t head = h * p.group + r % p.group;
      float u = 0.0f;
      for (index_t c = lane; c < p.head_dim; c += 32) {
        const float x = load_element(
            p.q, p.q_kind, token * p.q_token_stride + head * p.q_head_stride + c * p.q_dim_stride);
        if (x != 0.0f) {  // 0·inf = 0: a zero query component adds nothing
          const float a = __fmul_rn(x, to_float(lo[c]));
          const float b = __fmul_rn(x, to_float(hi[c]));
          u = __fadd_rn(u, a < b ? b : a);  // std::max(a, b), as the reference
        }
      }
      u = warp_sum(u);
      score = score < u ? u : score;  // std::max(score, u)
    }
    if (lane == 0) p.scores[h * p.score_stride + page] = ordered_score(score);
  }
}

// ---------------------------------------------------------------------------------------------
// Top-k and the layout rows.
// ---------------------------------------------------------------------------------------------

struct quest_select_params {
  const index_t* tokens = nullptr;  // [kv_heads]
  index_t kv_heads = 0, page_size = 1, top_pages = 1;
  const std::uint32_t* scores = nullptr;  // as quest_score_params
  index_t score_stride = 0;
  index_t* row_offsets = nullptr;  // [kv_heads + 1]
  index_t* columns = nullptr;
};

__device__ __forceinline__ index_t kept_pages(const quest_select_params& p, index_t h) {
  const index_t pages = pages_for_tokens(p.tokens[h], p.page_size);
  return pages < p.top_pages ? pages : p.top_pages;
}

// For a block-uniform call: how many threads below this one have `flag` set, and (in `total`) how
// many in the whole block. warp_counts holds blockDim.x / 32 entries of shared memory.
__device__ __forceinline__ unsigned block_exclusive_count(bool flag, unsigned* warp_counts,
                                                          unsigned& total) {
  const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const unsigned ballot = __ballot_sync(0xFFFFFFFFu, flag);
  if (lane == 0) warp_counts[warp] = __popc(ballot);
  __syncthreads();
  unsigned before = __popc(ballot & ((1u << lane) - 1u));  // set lanes below this one
  total = 0;
  for (unsigned w = 0; w < warps; ++w) {
    const unsigned count = warp_counts[w];
    if (w < warp) before += count;
    total += count;
  }
  __syncthreads();  // warp_counts is rewritten by the next call
  return before;
}

// One block of quest_select_threads threads per KV head h:
//   row_begin = Σ_{g < h} kept(g), kept(g) = min(top_pages, pages(g)); row_offsets[h + 1] =
//   row_begin + kept(h) (and row_offsets[0] = 0 from block 0), so the rows are back to back;
//   kept = 0: an empty row; kept = pages: every page 0 .. pages - 1;
//   otherwise `best` = kept - 1 pages by score among the candidates [0, pages - 1), then the last
//   page pages - 1 (larger than every candidate, so the row stays sorted).
// The best are found by a radix select of the best-th largest ordered score S (4 passes of 8 bits
// from the top: each pass counts the candidates that match the digits found so far, per value of
// the next digit, and keeps the digit whose bin holds the target rank). It leaves `remaining` =
// best - #{score > S} >= 1: the candidates with score > S all go in, and of those with score == S
// the `remaining` lowest pages (ties to the lower page). A last pass over the candidates in page
// order writes them, so the row comes out sorted.
// (A template only so that every translation unit including this header-only library may define
// it.)
template <class = void>
__global__ void __launch_bounds__(quest_select_threads) quest_select_kernel(quest_select_params p) {
  __shared__ unsigned histogram[radix_bins];
  __shared__ unsigned suffix[radix_bins];
  __shared__ unsigned warp_counts[quest_select_threads / 32];
  __shared__ unsigned chosen_digit, count_above;

  const index_t h = blockIdx.x;
  const unsigned tid = threadIdx.x;
  index_t row_begin = 0;
  for (index_t g = 0; g < h; ++g) row_begin += kept_pages(p, g);
  const index_t pages = pages_for_tokens(p.tokens[h], p.page_size);
  const index_t kept = pages < p.top_pages ? pages : p.top_pages;
  if (tid == 0) {
    p.row_offsets[h + 1] = row_begin + kept;
    if (h == 0) p.row_offsets[0] = 0;
  }
  index_t* row = p.columns + row_begin;
  if (kept == 0) return;
  if (kept == pages) {
    for (index_t i = tid; i < pages; i += blockDim.x) row[i] = i;
    return;
  }
  const index_t best = kept - 1;  // 0 <= best < candidates
  if (tid == 0) row[best] = pages - 1;
  if (best == 0) return;
  const index_t candidates = pages - 1;
  const std::uint32_t* scores = p.scores + h * p.score_stride;

  // Invariant at the start of each pass: the target (the best-th largest score) is the
  // remaining-th largest among the candidates whose digits above `shift` equal prefix's, and
  // 1 <= remaining <= their count.
  std::uint32_t prefix = 0, prefix_mask = 0;
  unsigned remaining = static_cast<unsigned>(best);
  for (int shift = 24; shift >= 0; shift -= 8) {
    if (tid < radix_bins) histogram[tid] = 0;
    __syncthreads();
    for (index_t i = tid; i < candidates; i += blockDim.x) {
      const std::uint32_t v = scores[i];
      if ((v & prefix_mask) == prefix) atomicAdd(&histogram[(v >> shift) & 0xFFu], 1u);
    }
    __syncthreads();
    // suffix[b] = Σ_{b' >= b} histogram[b'] (Hillis-Steele: after the step with offset o, suffix[b]
    // sums bins [b, b + 2o); 8 steps cover 256 bins).
    if (tid < radix_bins) suffix[tid] = histogram[tid];
    __syncthreads();
    for (unsigned offset = 1; offset < radix_bins; offset *= 2) {
      unsigned sum = 0;
      if (tid < radix_bins)
        sum = suffix[tid] + (tid + offset < radix_bins ? suffix[tid + offset] : 0u);
      __syncthreads();
      if (tid < radix_bins) suffix[tid] = sum;
      __syncthreads();
    }
    // suffix is non-increasing from suffix[0] (the count, >= remaining) to suffix[256] = 0
    // (< remaining): exactly one bin b has suffix[b] >= remaining > suffix[b + 1], and the target's
    // digit is b, its rank among the bin's candidates remaining - suffix[b + 1].
    if (tid < radix_bins) {
      const unsigned above = tid + 1 < radix_bins ? suffix[tid + 1] : 0u;
      if (suffix[tid] >= remaining && above < remaining) {
        chosen_digit = tid;
        count_above = above;
      }
    }
    __syncthreads();
    prefix |= static_cast<std::uint32_t>(chosen_digit) << shift;
    prefix_mask |= 0xFFu << shift;
    remaining -= count_above;
    __syncthreads();  // every thread has read chosen_digit before the next pass may rewrite it
  }
  const std::uint32_t threshold = prefix;   // the best-th largest score
  const unsigned equal_wanted = remaining;  // how many candidates scoring exactly S go in

  index_t written = 0;       // pages written so far (block-uniform)
  index_t equal_before = 0;  // candidates scoring S in earlier chunks
  for (index_t base = 0; base < candidates; base += blockDim.x) {
    const index_t i = base + tid;
    const bool in_range = i < candidates;
    const std::uint32_t v = in_range ? scores[i] : 0u;
    unsigned chunk_equal = 0, chunk_taken = 0;
    const bool equal = in_range && v == threshold;
    const unsigned equal_rank = block_exclusive_count(equal, warp_counts, chunk_equal);
    const bool take =
        in_range && (v > threshold || (equal && equal_before + equal_rank < equal_wanted));
    const unsigned rank = block_exclusive_count(take, warp_counts, chunk_taken);
    if (take) row[written + rank] = i;
    written += chunk_taken;
    equal_before += chunk_equal;
  }
}

}  // namespace detail::cuda

namespace cuda {

// Element-wise min and max of the keys of every (KV head, page) in device memory, stored as T
// (float, half or bfloat16; min rounded toward -inf, max toward +inf) for up to capacity_tokens
// tokens per head, in attnkit::page_bounds' layout (see the header comment). Allocates at
// construction (cudaMalloc, zeroed, synchronous: outside the decode loop); updates and
// selections then allocate nothing of their own. One stream at a time: an update, the selections
// that read it and the next update must be ordered (the same stream, or events).
template <class T = float>
class device_page_bounds {
  static_assert(is_storage_type_v<T>,
                "attnkit::cuda::device_page_bounds: T (the bounds' storage type) must be float, "
                "half or bfloat16");

 public:
  using value_type = T;

  device_page_bounds(index_t page_size, index_t kv_heads, index_t head_dim, index_t capacity_tokens)
      : page_size_(page_size),
        kv_heads_(kv_heads),
        head_dim_(head_dim),
        capacity_tokens_(capacity_tokens) {
    constexpr const char* function = "attnkit::cuda::device_page_bounds";
    const detail::page_bounds_layout layout = detail::check_page_bounds_shape<T>(
        function, page_size, kv_heads, head_dim, capacity_tokens);
    // Grid x holds a KV head, and the selection counts a head's pages in 32 bits.
    detail::require(kv_heads < (index_t{1} << 31), function, ": kv_heads is ", kv_heads,
                    ", at most 2^31 - 1 are supported");
    capacity_pages_ = layout.capacity_pages;
    detail::require(capacity_pages_ < (index_t{1} << 31), function, ": capacity_tokens ",
                    capacity_tokens, " at page_size ", page_size, " is ", capacity_pages_,
                    " pages, at most 2^31 - 1 are supported");
    padded_dim_ = layout.padded_dim;
    const index_t elements = kv_heads * capacity_pages_ * 2 * padded_dim_;
    storage_ = allocate<T>(static_cast<std::size_t>(elements), function);
    tokens_ = allocate<index_t>(static_cast<std::size_t>(2 * kv_heads), function);
    // Zeros: no tokens in either half of the ping-pong, and zero padding lanes as on the CPU.
    // Waited for, so the first update on any stream (blocking or not) sees them.
    detail::cuda::check(
        cudaMemset(storage_.get(), 0, static_cast<std::size_t>(elements) * sizeof(T)), function,
        "cudaMemset");
    detail::cuda::check(cudaMemset(tokens_.get(), 0, 2 * kv_heads * sizeof(index_t)), function,
                        "cudaMemset");
    detail::cuda::check(cudaDeviceSynchronize(), function, "cudaDeviceSynchronize");
  }

  device_page_bounds(const device_page_bounds&) = delete;
  device_page_bounds& operator=(const device_page_bounds&) = delete;
  device_page_bounds(device_page_bounds&&) noexcept = default;
  device_page_bounds& operator=(device_page_bounds&&) noexcept = default;

  index_t page_size() const noexcept { return page_size_; }
  index_t kv_heads() const noexcept { return kv_heads_; }
  index_t head_dim() const noexcept { return head_dim_; }
  index_t padded_head_dim() const noexcept { return padded_dim_; }
  index_t capacity_tokens() const noexcept { return capacity_tokens_; }
  index_t capacity_pages() const noexcept { return capacity_pages_; }
  // Elements between two KV heads' records: capacity_pages() · 2 · padded_head_dim().
  index_t head_stride() const noexcept { return capacity_pages_ * 2 * padded_dim_; }

  // Tokens every head covers, when the host knows it: after a contiguous update (and 0 before
  // any update). After a paged update the counts are per head and on the device only: empty.
  std::optional<index_t> tokens() const noexcept {
    return host_tokens_ >= 0 ? std::optional<index_t>(host_tokens_) : std::nullopt;
  }
  // [kv_heads] in device memory: the tokens each head covers, as of the last update in stream
  // order (the pointer changes with every update).
  const index_t* device_tokens() const noexcept { return tokens_.get() + current_ * kv_heads_; }
  // Device pointers to the rows of (kv_head, page), page < capacity_pages(); valid for the
  // pages a head covers.
  const T* device_data() const noexcept { return storage_.get(); }
  const T* min(index_t kv_head, index_t page) const noexcept {
    return storage_.get() + kv_head * head_stride() + page * 2 * padded_dim_;
  }
  const T* max(index_t kv_head, index_t page) const noexcept {
    return min(kv_head, page) + padded_dim_;
  }

  // Recomputes the bounds of every page touched by tokens [first_token, k.extent(0)) from k, a
  // [tokens, kv_heads, head_dim] view of device memory (any strides; the whole cache so far),
  // after which every head covers k.extent(0) tokens. As the CPU's update: append one token
  // with first_token = the count before it, 0 rebuilds, a shorter k truncates. first_token must
  // be <= tokens() when the host knows it; after a paged update it is clamped on the device to
  // each head's previous count.
  template <class TK>
  void update(const backend::cuda& backend, tensor_view<TK, 3> k, index_t first_token = 0) {
    using K = std::remove_cv_t<TK>;
    static_assert(is_storage_type_v<K>,
                  "attnkit::cuda::device_page_bounds::update: k must hold float, half or bfloat16");
    constexpr const char* function = detail::cuda::bounds_update_function;
    const index_t tokens = k.extent(0);
    detail::require(k.extent(2) == head_dim_, function, ": k head_dim (extent 2) is ", k.extent(2),
                    " but the bounds have head_dim ", head_dim_);
    detail::require(k.extent(1) == kv_heads_, function, ": k kv_heads (extent 1) is ", k.extent(1),
                    " but the bounds have kv_heads ", kv_heads_);
    detail::require(tokens <= capacity_tokens_, function, ": k has ", tokens,
                    " tokens (extent 0), over the bounds' capacity of ", capacity_tokens_,
                    " tokens");
    detail::require(first_token >= 0 && first_token <= tokens, function, ": first_token is ",
                    first_token, " but k has ", tokens, " tokens; it must be in [0, that]");
    if (host_tokens_ >= 0)
      detail::require(first_token <= host_tokens_, function, ": first_token is ", first_token,
                      " but the bounds hold ", host_tokens_,
                      " tokens; it must be in [0, tokens()]");
    detail::require(k.data() != nullptr || k.empty(), function, ": k has null data but ", k.size(),
                    " elements");
    detail::cuda::require_device_pointer(function, "k", k.data());

    detail::cuda::bounds_key_source<K> keys;
    keys.k = k.data();
    keys.token_stride = k.stride(0);
    keys.head_stride = k.stride(1);
    keys.dim_stride = k.stride(2);
    keys.tokens = tokens;
    detail::cuda::bounds_update_params p = update_params();
    p.first_slot = first_token;
    // Pages to recompute per head: exact when the host knows the previous count, else at most
    // every page up to the new end.
    const index_t from = host_tokens_ >= 0 ? first_token : 0;
    launch_update(backend, keys, p,
                  detail::cuda::pages_for_tokens(tokens, page_size_) - from / page_size_);
    host_tokens_ = tokens;
  }

  // The same from one layer of a paged cache in device memory (core/paged_kv_view.hpp: pools,
  // page table and lengths all device memory), rebuilding every page of every head from slot 0
  // to kv.lengths[h].
  template <class TK>
  void update(const backend::cuda& backend, paged_kv_view<TK> kv) {
    detail::cuda::bounds_update_params p = update_params();
    p.first_slot = 0;
    update_paged(backend, kv, p);
  }

  // The same for the slots from first_slots[h] on (first_slots: kv_heads entries in device
  // memory), e.g. each head's length before an append, or the first slot an eviction rewrote.
  // Each is clamped on the device to [0, min(the head's previous count, its new length)].
  template <class TK>
  void update(const backend::cuda& backend, paged_kv_view<TK> kv,
              tensor_view<const index_t, 1> first_slots) {
    constexpr const char* function = detail::cuda::bounds_update_function;
    detail::require(first_slots.extent(0) == kv_heads_, function, ": first_slots has ",
                    first_slots.extent(0), " entries but there are ", kv_heads_, " KV heads");
    detail::require(first_slots.data() != nullptr, function, ": first_slots has null data");
    detail::cuda::require_device_pointer(function, "first_slots", first_slots.data());
    detail::cuda::bounds_update_params p = update_params();
    p.first_slots = first_slots.data();
    p.first_slots_stride = first_slots.stride(0);
    update_paged(backend, kv, p);
  }

  // The same for the slots each head gained since the last update (from min(its previous count,
  // its new length)): what a decode step needs after appending to every head, with no array of
  // first slots. Correct only if the slots a head held before are unchanged (no eviction).
  template <class TK>
  void update_appended(const backend::cuda& backend, paged_kv_view<TK> kv) {
    detail::cuda::bounds_update_params p = update_params();
    p.first_slot = std::numeric_limits<index_t>::max();  // clamped to the previous count
    update_paged(backend, kv, p);
  }

 private:
  struct free_device_memory {
    void operator()(void* pointer) const noexcept { (void)cudaFree(pointer); }
  };
  template <class U>
  using device_array = std::unique_ptr<U, free_device_memory>;

  template <class U>
  static device_array<U> allocate(std::size_t count, const char* function) {
    void* memory = nullptr;
    detail::cuda::check(cudaMalloc(&memory, (count > 0 ? count : 1) * sizeof(U)), function,
                        "cudaMalloc");
    return device_array<U>(static_cast<U*>(memory));
  }

  detail::cuda::bounds_update_params update_params() const noexcept {
    detail::cuda::bounds_update_params p;
    p.page_size = page_size_;
    p.head_dim = head_dim_;
    p.padded_dim = padded_dim_;
    p.head_stride = head_stride();
    p.old_tokens = tokens_.get() + current_ * kv_heads_;
    p.new_tokens = tokens_.get() + (1 - current_) * kv_heads_;
    return p;
  }

  template <class TK>
  void update_paged(const backend::cuda& backend, paged_kv_view<TK> kv,
                    detail::cuda::bounds_update_params p) {
    using K = std::remove_cv_t<TK>;
    static_assert(is_storage_type_v<K>,
                  "attnkit::cuda::device_page_bounds::update: the cache must hold float, half or "
                  "bfloat16");
    constexpr const char* function = detail::cuda::bounds_update_function;
    detail::require(kv.head_dim == head_dim_, function, ": kv.head_dim is ", kv.head_dim,
                    " but the bounds have head_dim ", head_dim_);
    detail::require(kv.kv_heads == kv_heads_, function, ": kv.kv_heads is ", kv.kv_heads,
                    " but the bounds have kv_heads ", kv_heads_);
    const index_t slot_capacity = detail::check_device_paged_kv_view(function, kv);
    detail::require(slot_capacity <= capacity_tokens_, function, ": a page-table row holds ",
                    "kv.page_table_stride (", kv.page_table_stride, ") x kv.page_size (",
                    kv.page_size, ") = ", slot_capacity, " slots, over the bounds' capacity of ",
                    capacity_tokens_,
                    " tokens; the lengths are in device memory, so the bounds must be able to "
                    "cover a whole row");
    if (slot_capacity > 0) {
      detail::cuda::require_device_pointer(function, "kv.keys", kv.keys);
      detail::cuda::require_device_pointer(function, "kv.page_table", kv.page_table);
    }
    detail::cuda::require_device_pointer(function, "kv.lengths", kv.lengths);

    detail::cuda::bounds_key_source<K> keys;
    keys.paged = true;
    keys.kv = paged_kv_view<const K>(kv);
    keys.slot_capacity = slot_capacity;
    launch_update(backend, keys, p, detail::cuda::pages_for_tokens(slot_capacity, page_size_));
    host_tokens_ = -1;
  }

  // Enqueues the update kernel over (kv_heads, chunks) blocks, chunks enough to fill the device
  // when up to most_pages pages per head may change, then flips the ping-pong of token counts.
  template <class K>
  void launch_update(const backend::cuda& backend, const detail::cuda::bounds_key_source<K>& keys,
                     const detail::cuda::bounds_update_params& p, index_t most_pages) {
    constexpr const char* function = detail::cuda::bounds_update_function;
    const index_t filling =
        (4 * static_cast<index_t>(detail::cuda::multiprocessor_count(function)) + kv_heads_ - 1) /
        kv_heads_;
    index_t chunks = most_pages < filling ? most_pages : filling;
    chunks = chunks < 1 ? 1 : chunks > 65535 ? 65535 : chunks;
    const dim3 grid(static_cast<unsigned>(kv_heads_), static_cast<unsigned>(chunks));
    detail::cuda::page_bounds_update_kernel<K, T>
        <<<grid, detail::cuda::bounds_update_threads, 0,
           static_cast<cudaStream_t>(backend.stream)>>>(keys, p, storage_.get());
    detail::cuda::check_launch(function, "page_bounds_update_kernel");
    current_ = 1 - current_;
  }

  index_t page_size_ = 0;
  index_t kv_heads_ = 0;
  index_t head_dim_ = 0;
  index_t capacity_tokens_ = 0;
  index_t capacity_pages_ = 0;
  index_t padded_dim_ = 0;
  index_t host_tokens_ = 0;  // -1: per head, on the device only (after a paged update)
  index_t current_ = 0;      // which half of tokens_ holds the current counts
  device_array<T> storage_;
  device_array<index_t> tokens_;  // [2][kv_heads]: current counts and the next update's output
};

// Scratch bytes quest_select takes for these bounds (from a cuda_workspace when the backend has
// one): one 32-bit score per page per KV head, at the bounds' capacity.
template <class T>
std::size_t quest_select_workspace_bytes(const device_page_bounds<T>& bounds) {
  return static_cast<std::size_t>(bounds.kv_heads() * bounds.capacity_pages()) *
         sizeof(std::uint32_t);
}

// Selects, for every KV head, the pages whose Quest bound is largest for q [q_tokens, q_heads,
// head_dim] (device memory; the newest q_tokens tokens of the cache) and writes them to `layout`
// on the device: the CPU's quest_select (attention/quest.hpp), per head with the per-head counts
// of the last update, enqueued on backend.stream without waiting for anything. layout needs
// kv_heads() == bounds.kv_heads() and max_blocks_per_row() >= min(top_pages, the pages a head
// may hold: pages of tokens() when the host knows it, else capacity_pages()).
template <class TQ, class T>
void quest_select(const backend::cuda& backend, tensor_view<TQ, 3> q,
                  const device_page_bounds<T>& bounds, index_t top_pages,
                  device_block_layout& layout) {
  using Q = std::remove_cv_t<TQ>;
  static_assert(is_storage_type_v<Q>,
                "attnkit::cuda::quest_select: q must hold float, half or bfloat16");
  using namespace detail::cuda;
  constexpr const char* function = quest_select_function;
  const index_t q_tokens = q.extent(0);
  const index_t q_heads = q.extent(1);
  const index_t kv_heads = bounds.kv_heads();
  const std::optional<index_t> tokens = bounds.tokens();
  detail::require(q.extent(2) == bounds.head_dim(), function, ": q head_dim (extent 2) is ",
                  q.extent(2), " but the page bounds have head_dim ", bounds.head_dim());
  detail::require(q_heads >= 1 && q_heads % kv_heads == 0, function, ": q_heads (q extent 1) is ",
                  q_heads, ", it must be a positive multiple of the page bounds' kv_heads (",
                  kv_heads, ")");
  detail::require(top_pages >= 1, function, ": top_pages is ", top_pages, ", it must be >= 1");
  if (tokens) {
    detail::require(*tokens >= 1, function,
                    ": the page bounds hold 0 tokens; call device_page_bounds::update first");
    detail::require(q_tokens <= *tokens, function, ": q has ", q_tokens,
                    " tokens (extent 0) but the page bounds hold only ", *tokens,
                    "; the queries are the newest tokens of the cache");
  }
  detail::require(q.data() != nullptr || q.empty(), function, ": q has null data but ", q.size(),
                  " elements");
  const index_t most_pages =
      tokens ? pages_for_tokens(*tokens, bounds.page_size()) : bounds.capacity_pages();
  const index_t most_kept = top_pages < most_pages ? top_pages : most_pages;
  detail::require(layout.kv_heads() == kv_heads, function, ": the device_block_layout has ",
                  layout.kv_heads(), " KV heads but the page bounds have ", kv_heads);
  detail::require(layout.max_blocks_per_row() >= most_kept, function,
                  ": the device_block_layout holds ", layout.max_blocks_per_row(),
                  " pages per KV head but this selection may keep ", most_kept, " (top_pages ",
                  top_pages, ", up to ", most_pages, " pages per head)");
  require_device_pointer(function, "q", q.data());
  // Scores are needed only when some head may keep fewer pages than it has.
  const bool scoring = top_pages < most_pages;
  const std::size_t scratch_bytes =
      scoring ? static_cast<std::size_t>(kv_heads * most_pages) * sizeof(std::uint32_t) : 0;
  if (backend.workspace != nullptr)
    detail::require(backend.workspace->bytes() >= scratch_bytes, function,
                    ": the cuda_workspace holds ", backend.workspace->bytes(),
                    " bytes but this selection needs ", scratch_bytes,
                    " (reserve quest_select_workspace_bytes(bounds) for it)");

  block_layout_shape shape;
  shape.key_block = bounds.page_size();
  shape.query_blocks = 1;
  shape.layouts = kv_heads;
  shape.query_heads_per_layout = q_heads / kv_heads;
  if (tokens) {  // the CPU's shape
    shape.first_position = *tokens - q_tokens;
    shape.query_block = q_tokens > 1 ? q_tokens : 1;
    shape.key_blocks = most_pages;
  } else {  // any lengths up to the capacity (see the header comment)
    shape.first_position = -q_tokens;
    shape.key_blocks = bounds.capacity_pages();
    shape.query_block = shape.key_blocks * shape.key_block + q_tokens;
    shape.query_block = shape.query_block > 1 ? shape.query_block : 1;
  }
  // Validates the shape (block_sparse's raw-array constructor) before anything is enqueued.
  (void)block_sparse(shape, layout.device_row_offsets(), layout.device_columns());

  const auto stream = static_cast<cudaStream_t>(backend.stream);
  const call_scratch scratch(function, backend.workspace, stream, scratch_bytes);
  const T* data = bounds.device_data();
  if (scoring) {
    quest_score_params p;
    p.q = q.data();
    p.q_kind = storage_kind_of<Q>();
    p.q_token_stride = q.stride(0);
    p.q_head_stride = q.stride(1);
    p.q_dim_stride = q.stride(2);
    p.q_tokens = q_tokens;
    p.group = q_heads / kv_heads;
    p.head_dim = bounds.head_dim();
    p.page_size = bounds.page_size();
    p.padded_dim = bounds.padded_head_dim();
    p.head_stride = bounds.head_stride();
    p.tokens = bounds.device_tokens();
    p.top_pages = top_pages;
    p.scores = scratch.as<std::uint32_t>();
    p.score_stride = most_pages;
    // Enough blocks to fill the device: about 4 per multiprocessor over all heads, no more than
    // one per 8 candidate pages (a warp each).
    constexpr index_t warps = quest_score_threads / 32;
    const index_t filling =
        (4 * static_cast<index_t>(multiprocessor_count(function)) + kv_heads - 1) / kv_heads;
    index_t chunks = (most_pages + warps - 1) / warps;
    chunks = chunks < filling ? chunks : filling;
    chunks = chunks < 1 ? 1 : chunks > 65535 ? 65535 : chunks;
    quest_score_kernel<T><<<dim3(static_cast<unsigned>(kv_heads), static_cast<unsigned>(chunks)),
                            quest_score_threads, 0, stream>>>(p, data);
    check_launch(function, "quest_score_kernel");
  }
  quest_select_params s;
  s.tokens = bounds.device_tokens();
  s.kv_heads = kv_heads;
  s.page_size = bounds.page_size();
  s.top_pages = top_pages;
  s.scores = scoring ? scratch.as<std::uint32_t>() : nullptr;
  s.score_stride = most_pages;
  s.row_offsets = layout.device_row_offsets();
  s.columns = layout.device_columns();
  quest_select_kernel<><<<static_cast<unsigned>(kv_heads), quest_select_threads, 0, stream>>>(s);
  check_launch(function, "quest_select_kernel");
  layout.set_shape(shape);
}

}  // namespace cuda
}  // namespace attnkit
