// Python entry points of the mask-prediction kernels in sparge_kernels._C. Tensors arrive as device pointers
// (integers) with sizes and element strides; the stream is torch's `cuda_stream` integer. cuda_mask.py is the
// torch glue: `mask_predict` runs everything, the three stage functions exist for tests and benchmarks.
#include <nanobind/nanobind.h>

#include <cstdint>

#include "bindings.h"
#include "mask/mask_launch.h"

namespace nb = nanobind;
using namespace nb::literals;
using sparge::mask::InputDtype;

namespace {

sparge::mask::StridedTokens tokens(std::uintptr_t ptr, int64_t stride_b, int64_t stride_h, int64_t stride_l,
                                   int length, int block) {
  return {reinterpret_cast<const void*>(ptr), stride_b, stride_h, stride_l, length, block,
          block > 0 ? (length + block - 1) / block : 0};
}

sparge::mask::PoolParams pool_params(std::uintptr_t q, int64_t q_stride_b, int64_t q_stride_h, int64_t q_stride_l,
                                     int seq_len_q, int block_q, std::uintptr_t k, int64_t k_stride_b,
                                     int64_t k_stride_h, int64_t k_stride_l, int seq_len_k, int block_k, int batch,
                                     int heads, int head_dim, std::uintptr_t q_pooled, std::uintptr_t k_pooled_t,
                                     int k_ld) {
  sparge::mask::PoolParams p{};
  p.q = tokens(q, q_stride_b, q_stride_h, q_stride_l, seq_len_q, block_q);
  p.k = tokens(k, k_stride_b, k_stride_h, k_stride_l, seq_len_k, block_k);
  p.batch = batch;
  p.heads = heads;
  p.head_dim = head_dim;
  p.head_begin = 0;
  p.group_heads = heads;
  p.q_pooled = reinterpret_cast<float*>(q_pooled);
  p.k_pooled_t = reinterpret_cast<float*>(k_pooled_t);
  p.k_ld = k_ld;
  return p;
}

sparge::mask::SelectParams select_params(std::uintptr_t q_pooled, std::uintptr_t k_pooled_t, int k_ld, int batch,
                                         int heads, int head_dim, int num_q_blocks, int num_k_blocks, float scale,
                                         int topk_count, float topp, int compact, std::uintptr_t kv_count,
                                         std::uintptr_t kv_index, std::uintptr_t row_bits, int bits_ld) {
  sparge::mask::SelectParams p{};
  p.q_pooled = reinterpret_cast<const float*>(q_pooled);
  p.k_pooled_t = reinterpret_cast<const float*>(k_pooled_t);
  p.k_ld = k_ld;
  p.batch = batch;
  p.heads = heads;
  p.head_dim = head_dim;
  p.num_q_blocks = num_q_blocks;
  p.num_k_blocks = num_k_blocks;
  p.head_begin = 0;
  p.group_heads = heads;
  p.scale = scale;
  p.topk_count = topk_count;
  p.topp = topp;
  p.compact = compact;
  p.kv_count = reinterpret_cast<int32_t*>(kv_count);
  p.kv_index = reinterpret_cast<int32_t*>(kv_index);
  p.row_bits = reinterpret_cast<uint32_t*>(row_bits);
  p.bits_ld = bits_ld;
  return p;
}

sparge::mask::TransposeParams transpose_params(std::uintptr_t row_bits, int bits_ld, int batch, int heads,
                                               int num_q_blocks, int num_k_blocks, std::uintptr_t q_count,
                                               std::uintptr_t q_index) {
  sparge::mask::TransposeParams p{};
  p.row_bits = reinterpret_cast<const uint32_t*>(row_bits);
  p.bits_ld = bits_ld;
  p.batch = batch;
  p.heads = heads;
  p.num_q_blocks = num_q_blocks;
  p.num_k_blocks = num_k_blocks;
  p.head_begin = 0;
  p.group_heads = heads;
  p.q_count = reinterpret_cast<int32_t*>(q_count);
  p.q_index = reinterpret_cast<int32_t*>(q_index);
  return p;
}

}  // namespace

void bind_mask_prediction(nb::module_& m) {
  m.attr("mask_max_head_dim") = sparge::mask::kMaxHeadDim;

  m.def(
      "mask_predict",
      [](std::uintptr_t q, int64_t q_stride_b, int64_t q_stride_h, int64_t q_stride_l, int seq_len_q, int block_q,
         std::uintptr_t k, int64_t k_stride_b, int64_t k_stride_h, int64_t k_stride_l, int seq_len_k, int block_k,
         int batch, int heads, int head_dim, int dtype, float scale, int topk_count, float topp, int compact,
         std::uintptr_t q_pooled, std::uintptr_t k_pooled_t, int k_ld, std::uintptr_t row_bits, int bits_ld,
         std::uintptr_t kv_count, std::uintptr_t kv_index, std::uintptr_t q_count, std::uintptr_t q_index,
         int head_groups, int rows_per_cta, int tail_rows_per_cta, std::uintptr_t stream) {
        const int nq = (seq_len_q + block_q - 1) / block_q, nk = (seq_len_k + block_k - 1) / block_k;
        sparge::mask::launch_predict(
            pool_params(q, q_stride_b, q_stride_h, q_stride_l, seq_len_q, block_q, k, k_stride_b, k_stride_h,
                        k_stride_l, seq_len_k, block_k, batch, heads, head_dim, q_pooled, k_pooled_t, k_ld),
            select_params(q_pooled, k_pooled_t, k_ld, batch, heads, head_dim, nq, nk, scale, topk_count, topp,
                          compact, kv_count, kv_index, row_bits, bits_ld),
            transpose_params(row_bits, bits_ld, batch, heads, nq, nk, q_count, q_index), static_cast<InputDtype>(dtype),
            head_groups, rows_per_cta, tail_rows_per_cta, stream);
      },
      "q"_a, "q_stride_b"_a, "q_stride_h"_a, "q_stride_l"_a, "seq_len_q"_a, "block_q"_a, "k"_a, "k_stride_b"_a,
      "k_stride_h"_a, "k_stride_l"_a, "seq_len_k"_a, "block_k"_a, "batch"_a, "heads"_a, "head_dim"_a, "dtype"_a,
      "scale"_a, "topk_count"_a, "topp"_a, "compact"_a, "q_pooled"_a, "k_pooled_t"_a, "k_ld"_a, "row_bits"_a, "bits_ld"_a,
      "kv_count"_a, "kv_index"_a, "q_count"_a, "q_index"_a, "head_groups"_a, "rows_per_cta"_a, "tail_rows_per_cta"_a,
      "stream"_a,
      "Whole mask prediction: pool, select, transpose; head_groups > 1 overlaps selection with pooling on a "
      "high-priority side stream. dtype: 0 fp16, 1 bf16, 2 fp32.");

  m.def(
      "mask_pool_blocks",
      [](std::uintptr_t q, int64_t q_stride_b, int64_t q_stride_h, int64_t q_stride_l, int seq_len_q, int block_q,
         std::uintptr_t k, int64_t k_stride_b, int64_t k_stride_h, int64_t k_stride_l, int seq_len_k, int block_k,
         int batch, int heads, int head_dim, int dtype, std::uintptr_t q_pooled, std::uintptr_t k_pooled_t,
         int k_ld, std::uintptr_t stream) {
        sparge::mask::launch_pool_blocks(
            pool_params(q, q_stride_b, q_stride_h, q_stride_l, seq_len_q, block_q, k, k_stride_b, k_stride_h,
                        k_stride_l, seq_len_k, block_k, batch, heads, head_dim, q_pooled, k_pooled_t, k_ld),
            static_cast<InputDtype>(dtype), stream);
      },
      "q"_a, "q_stride_b"_a, "q_stride_h"_a, "q_stride_l"_a, "seq_len_q"_a, "block_q"_a, "k"_a, "k_stride_b"_a,
      "k_stride_h"_a, "k_stride_l"_a, "seq_len_k"_a, "block_k"_a, "batch"_a, "heads"_a, "head_dim"_a, "dtype"_a,
      "q_pooled"_a, "k_pooled_t"_a, "k_ld"_a, "stream"_a,
      "Stage 1: block means of Q (B,H,Lq,D) and K into q_pooled (B,H,Nq,D) and k_pooled_t (B,H,D,k_ld), fp32.");

  m.def(
      "mask_select_blocks",
      [](std::uintptr_t q_pooled, std::uintptr_t k_pooled_t, int k_ld, int batch, int heads, int head_dim,
         int num_q_blocks, int num_k_blocks, float scale, int topk_count, float topp, int compact,
         std::uintptr_t kv_count, std::uintptr_t kv_index, std::uintptr_t row_bits, int bits_ld, int rows_per_cta,
         std::uintptr_t stream) {
        sparge::mask::launch_select_blocks(
            select_params(q_pooled, k_pooled_t, k_ld, batch, heads, head_dim, num_q_blocks, num_k_blocks, scale,
                          topk_count, topp, compact, kv_count, kv_index, row_bits, bits_ld),
            rows_per_cta, stream);
      },
      "q_pooled"_a, "k_pooled_t"_a, "k_ld"_a, "batch"_a, "heads"_a, "head_dim"_a, "num_q_blocks"_a,
      "num_k_blocks"_a, "scale"_a, "topk_count"_a, "topp"_a, "compact"_a, "kv_count"_a, "kv_index"_a, "row_bits"_a, "bits_ld"_a,
      "rows_per_cta"_a, "stream"_a,
      "Stage 2: scores, softmax, hybrid Top-k/Top-p: kv_count (B,H,Nq), kv_index (B,H,Nq,Nk), row_bits.");

  m.def(
      "mask_transpose",
      [](std::uintptr_t row_bits, int bits_ld, int batch, int heads, int num_q_blocks, int num_k_blocks,
         std::uintptr_t q_count, std::uintptr_t q_index, std::uintptr_t stream) {
        sparge::mask::launch_transpose_mask(
            transpose_params(row_bits, bits_ld, batch, heads, num_q_blocks, num_k_blocks, q_count, q_index), stream);
      },
      "row_bits"_a, "bits_ld"_a, "batch"_a, "heads"_a, "num_q_blocks"_a, "num_k_blocks"_a, "q_count"_a, "q_index"_a,
      "stream"_a, "Stage 3: q_count (B,H,Nk) and q_index (B,H,Nk,Nq) from row_bits.");
}
