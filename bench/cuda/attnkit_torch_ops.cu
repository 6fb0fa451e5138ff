// attnkit_torch_ops — a small C ABI over attnkit's CUDA backend, for bench_vs_sdpa.py (ctypes).
//
// Every function takes raw device pointers (torch's data_ptr()), shapes, strides in elements and
// a cudaStream_t as an integer, and returns 0 on success or 1 after storing the attnkit::error's
// message for attnkit_last_error(). Nothing here synchronises: kernels are enqueued on the
// caller's stream, so CUDA events recorded on that stream time them.
//
// One attnkit::attention call is one sequence. A batch is folded into the head dimension when the
// layout allows it (token-major [tokens, batch, heads, dim]: batch stride = heads x head stride,
// so head b*H + h of the folded view is head h of sequence b, and for grouped-query attention
// query head b*Hq + h maps to KV head (b*Hq + h) / group = b*Hkv + h / group as it should); any
// other layout ([batch, tokens, heads, dim], torch's usual) is a loop of calls on the stream.
//
// Instantiated: half (bfloat16 too with -DATTNKIT_TORCH_OPS_BFLOAT16=1); masks full, causal,
// sliding_window and block_sparse for the contiguous front door, full and causal for the paged one
// (decode). bench/cuda/run_on_gpu.sh builds it (nvcc -std=c++20 -O3 -I include for sm_90,
// -Xcompiler -fPIC -shared).
#include <attnkit/cuda.cuh>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <string>
#include <utility>
#include <vector>

namespace {

thread_local std::string last_error;

// bfloat16 doubles the kernels (and the build time); the benchmark runs float16 only.
#ifndef ATTNKIT_TORCH_OPS_BFLOAT16
#define ATTNKIT_TORCH_OPS_BFLOAT16 0
#endif
constexpr const char* bfloat16_note = ATTNKIT_TORCH_OPS_BFLOAT16
                                          ? " or 1 (bfloat16)"
                                          : " (build with -DATTNKIT_TORCH_OPS_BFLOAT16=1 for 1, "
                                            "bfloat16)";

enum dtype_code : int { dtype_half = 0, dtype_bfloat16 = 1 };
enum mask_code : int { mask_full = 0, mask_causal = 1, mask_sliding_window = 2, mask_block = 3 };

// A block-sparse mask and the layout it points into (the host mask checks each call's shape
// against the layout; the device copy is what the kernels read).
struct block_mask_handle {
  attnkit::block_layout layout;
  attnkit::cuda::device_mask<attnkit::block_sparse> mask;

  explicit block_mask_handle(attnkit::block_layout built)
      : layout(std::move(built)), mask(attnkit::block_sparse(layout)) {}
};

// Runs `body`, turning any exception into a stored message and the return code 1.
template <class Body>
int guarded(Body&& body) {
  try {
    body();
    return 0;
  } catch (const std::exception& failure) {
    last_error = failure.what();
  } catch (...) {
    last_error = "attnkit_torch_ops: unknown exception";
  }
  return 1;
}

using attnkit::index_t;

// Strides of one 4-D operand, in elements: [batch, token, head, dim].
struct strides4 {
  index_t batch, token, head, dim;
};

strides4 read_strides(const std::int64_t* s) { return {s[0], s[1], s[2], s[3]}; }

template <class T>
attnkit::tensor_view<T, 3> view3(std::uintptr_t address, index_t tokens, index_t heads, index_t dim,
                                 const strides4& s, index_t batch_offset) {
  return attnkit::tensor_view<T, 3>(reinterpret_cast<T*>(address) + batch_offset * s.batch,
                                    {tokens, heads, dim}, {s.token, s.head, s.dim});
}

struct contiguous_call {
  std::uintptr_t q, k, v, out;
  index_t batch, q_tokens, kv_tokens, q_heads, kv_heads, head_dim;
  strides4 qs, ks, vs, os;
  attnkit::backend::cuda backend;
};

// The heads of every sequence line up as one larger head axis.
bool foldable(const contiguous_call& c) {
  return c.qs.batch == c.q_heads * c.qs.head && c.ks.batch == c.kv_heads * c.ks.head &&
         c.vs.batch == c.kv_heads * c.vs.head && c.os.batch == c.q_heads * c.os.head;
}

// One call over the folded batch, or one call per sequence; returns how many calls were made.
template <class T, class Mask>
index_t run_contiguous(const contiguous_call& c, const Mask& mask) {
  const bool fold = c.batch > 1 && foldable(c);
  const index_t calls = fold ? 1 : c.batch;
  const index_t heads_per_call = fold ? c.batch : 1;
  for (index_t b = 0; b < calls; ++b) {
    attnkit::attention(
        c.backend, view3<const T>(c.q, c.q_tokens, c.q_heads * heads_per_call, c.head_dim, c.qs, b),
        view3<const T>(c.k, c.kv_tokens, c.kv_heads * heads_per_call, c.head_dim, c.ks, b),
        view3<const T>(c.v, c.kv_tokens, c.kv_heads * heads_per_call, c.head_dim, c.vs, b),
        view3<T>(c.out, c.q_tokens, c.q_heads * heads_per_call, c.head_dim, c.os, b), mask);
  }
  return calls;
}

template <class T>
index_t dispatch_mask(const contiguous_call& c, int mask, std::int64_t left, std::int64_t right,
                      std::uintptr_t block_mask) {
  switch (mask) {
    case mask_full:
      return run_contiguous<T>(c, attnkit::full{});
    case mask_causal:
      return run_contiguous<T>(c, attnkit::causal{});
    case mask_sliding_window:
      return run_contiguous<T>(c, attnkit::sliding_window{left, right, 0, 1});
    case mask_block:
      attnkit::detail::require(block_mask != 0,
                               "attnkit_attention: mask code 3 (block_sparse) needs a handle from "
                               "attnkit_block_mask_create, got 0");
      return run_contiguous<T>(c, reinterpret_cast<const block_mask_handle*>(block_mask)->mask);
    default:
      attnkit::detail::fail("attnkit_attention: mask code is ", mask,
                            "; expected 0 (full), 1 (causal), 2 (sliding_window) or 3 (block)");
  }
}

}  // namespace

extern "C" {

// The message of the last failed call of this thread ("" if none failed).
const char* attnkit_last_error() { return last_error.c_str(); }

// Scratch bytes one call needs (kv_tokens: keys, or page_table_stride x page_size when paged).
int attnkit_workspace_bytes(std::int64_t q_tokens, std::int64_t q_heads, std::int64_t kv_heads,
                            std::int64_t head_dim, std::int64_t kv_tokens, std::uint64_t* bytes) {
  return guarded([&] {
    *bytes = attnkit::attention_workspace_bytes(q_tokens, q_heads, kv_heads, head_dim, kv_tokens);
  });
}

// A cuda_workspace of at least `bytes` (cudaMalloc, so call it outside timed regions).
int attnkit_workspace_create(std::uint64_t bytes, std::uintptr_t* handle) {
  return guarded([&] {
    auto* workspace = new attnkit::cuda_workspace(bytes > 0 ? bytes : 1);
    *handle = reinterpret_cast<std::uintptr_t>(workspace);
  });
}

void attnkit_workspace_destroy(std::uintptr_t handle) {
  delete reinterpret_cast<attnkit::cuda_workspace*>(handle);
}

// A block-sparse mask (one layout for every head) copied to the device, from a CSR layout in host
// memory: row_offsets has query_blocks + 1 entries, columns row_offsets[query_blocks] sorted KV
// block indices per row. Block row 0 starts at query position 0 (bottom-right aligned: use it for
// q_tokens == kv_tokens).
int attnkit_block_mask_create(std::int64_t query_block, std::int64_t key_block,
                              std::int64_t query_blocks, std::int64_t key_blocks,
                              const std::int64_t* row_offsets, const std::int64_t* columns,
                              std::uintptr_t* handle) {
  return guarded([&] {
    attnkit::detail::require(row_offsets != nullptr && query_blocks >= 0,
                             "attnkit_block_mask_create: row_offsets is null or query_blocks (",
                             query_blocks, ") is negative");
    const auto nonzero = static_cast<std::size_t>(row_offsets[query_blocks]);
    attnkit::block_layout_shape shape;
    shape.query_block = query_block;
    shape.key_block = key_block;
    shape.query_blocks = query_blocks;
    shape.key_blocks = key_blocks;
    std::vector<index_t> offsets(row_offsets, row_offsets + query_blocks + 1);
    std::vector<index_t> listed(columns, columns + nonzero);
    auto* made =
        new block_mask_handle(attnkit::block_layout(shape, std::move(offsets), std::move(listed)));
    *handle = reinterpret_cast<std::uintptr_t>(made);
  });
}

void attnkit_block_mask_destroy(std::uintptr_t handle) {
  delete reinterpret_cast<block_mask_handle*>(handle);
}

// out = attention(q, k, v) for `batch` sequences. Strides are 4 elements each, [batch, token,
// head, dim], in elements. mask: 0 full, 1 causal, 2 sliding_window{left, right}, 3 block
// (block_mask from attnkit_block_mask_create). workspace: 0 or a handle from
// attnkit_workspace_create. *calls receives the number of attnkit::attention calls made (1 when
// the batch was folded into the heads).
int attnkit_attention(int dtype, std::uintptr_t q, std::uintptr_t k, std::uintptr_t v,
                      std::uintptr_t out, std::int64_t batch, std::int64_t q_tokens,
                      std::int64_t kv_tokens, std::int64_t q_heads, std::int64_t kv_heads,
                      std::int64_t head_dim, const std::int64_t* q_strides,
                      const std::int64_t* k_strides, const std::int64_t* v_strides,
                      const std::int64_t* out_strides, int mask, std::int64_t left,
                      std::int64_t right, std::uintptr_t block_mask, std::uintptr_t stream,
                      std::uintptr_t workspace, std::int64_t* calls) {
  return guarded([&] {
    attnkit::detail::require(batch >= 1, "attnkit_attention: batch is ", batch,
                             ", it must be >= 1");
    const contiguous_call c{
        q,
        k,
        v,
        out,
        batch,
        q_tokens,
        kv_tokens,
        q_heads,
        kv_heads,
        head_dim,
        read_strides(q_strides),
        read_strides(k_strides),
        read_strides(v_strides),
        read_strides(out_strides),
        attnkit::backend::cuda{reinterpret_cast<cudaStream_t>(stream),
                               reinterpret_cast<attnkit::cuda_workspace*>(workspace)}};
    index_t made = 0;
    if (dtype == dtype_half)
      made = dispatch_mask<attnkit::half>(c, mask, left, right, block_mask);
#if ATTNKIT_TORCH_OPS_BFLOAT16
    else if (dtype == dtype_bfloat16)
      made = dispatch_mask<attnkit::bfloat16>(c, mask, left, right, block_mask);
#endif
    else
      attnkit::detail::fail("attnkit_attention: dtype code is ", dtype, "; expected 0 (float16)",
                            bfloat16_note);
    if (calls != nullptr) *calls = made;
  });
}

// Attention of q ([q_tokens, q_heads, head_dim], strides [token, head, dim]) over one paged KV
// layer (core/paged_kv_view.hpp; pools, page table (int32) and lengths (int64) in device memory).
// A batch is folded by the caller: sequence b's KV heads are heads b*kv_heads' .. of the view.
// mask: 0 full, 1 causal.
int attnkit_paged_attention(int dtype, std::uintptr_t q, std::int64_t q_tokens,
                            std::int64_t q_heads, std::int64_t head_dim,
                            const std::int64_t* q_strides, std::uintptr_t key_pool,
                            std::uintptr_t value_pool, std::uintptr_t page_table,
                            std::uintptr_t lengths, std::int64_t kv_heads, std::int64_t page_size,
                            std::int64_t page_table_stride, std::int64_t row_stride,
                            std::int64_t page_stride, std::int64_t head_stride, std::uintptr_t out,
                            const std::int64_t* out_strides, int mask, std::uintptr_t stream,
                            std::uintptr_t workspace) {
  return guarded([&] {
    const attnkit::backend::cuda backend{reinterpret_cast<cudaStream_t>(stream),
                                         reinterpret_cast<attnkit::cuda_workspace*>(workspace)};
    auto run = [&](auto element) {
      using T = decltype(element);
      attnkit::paged_kv_view<const T> kv;
      kv.keys = reinterpret_cast<const T*>(key_pool);
      kv.values = reinterpret_cast<const T*>(value_pool);
      kv.page_table = reinterpret_cast<const attnkit::page_id*>(page_table);
      kv.lengths = reinterpret_cast<const index_t*>(lengths);
      kv.kv_heads = kv_heads;
      kv.head_dim = head_dim;
      kv.page_size = page_size;
      kv.page_table_stride = page_table_stride;
      kv.row_stride = row_stride;
      kv.page_stride = page_stride;
      kv.head_stride = head_stride;
      const attnkit::tensor_view<const T, 3> queries(reinterpret_cast<const T*>(q),
                                                     {q_tokens, q_heads, head_dim},
                                                     {q_strides[0], q_strides[1], q_strides[2]});
      const attnkit::tensor_view<T, 3> output(reinterpret_cast<T*>(out),
                                              {q_tokens, q_heads, head_dim},
                                              {out_strides[0], out_strides[1], out_strides[2]});
      if (mask == mask_full)
        attnkit::attention(backend, queries, kv, output, attnkit::full{});
      else if (mask == mask_causal)
        attnkit::attention(backend, queries, kv, output, attnkit::causal{});
      else
        attnkit::detail::fail("attnkit_paged_attention: mask code is ", mask,
                              "; expected 0 (full) or 1 (causal)");
    };
    if (dtype == dtype_half)
      run(attnkit::half{});
#if ATTNKIT_TORCH_OPS_BFLOAT16
    else if (dtype == dtype_bfloat16)
      run(attnkit::bfloat16{});
#endif
    else
      attnkit::detail::fail("attnkit_paged_attention: dtype code is ", dtype,
                            "; expected 0 (float16)", bfloat16_note);
  });
}

}  // extern "C"
