// Python entry points of the mask-prediction kernels in sparge_kernels._C. Tensors arrive as device pointers
// (integers) with sizes and element strides; the stream is torch's `cuda_stream` integer. cuda_mask.py is the
// torch glue that allocates and calls these in order: pool -> select -> transpose.
#include <nanobind/nanobind.h>

#include <cstdint>

#include "bindings.h"
#include "mask/mask_launch.h"

namespace nb = nanobind;
using sparge::mask::InputDtype;

namespace {

sparge::mask::StridedTokens tokens(std::uintptr_t ptr, int64_t stride_b, int64_t stride_h, int64_t stride_l,
                                   int length, int block) {
  return {reinterpret_cast<const void*>(ptr), stride_b, stride_h, stride_l, length, block,
          block > 0 ? (length + block - 1) / block : 0};
}

}  // namespace

void bind_mask_prediction(nb::module_& m) {
  m.attr("mask_max_head_dim") = sparge::mask::kMaxHeadDim;

  m.def(
      "mask_pool_blocks",
      [](std::uintptr_t q, int64_t q_stride_b, int64_t q_stride_h, int64_t q_stride_l, int seq_len_q, int block_q,
         std::uintptr_t k, int64_t k_stride_b, int64_t k_stride_h, int64_t k_stride_l, int seq_len_k, int block_k,
         int batch, int heads, int head_dim, int dtype, std::uintptr_t q_pooled, std::uintptr_t k_pooled_t,
         int k_ld, std::uintptr_t stream) {
        sparge::mask::PoolParams p{};
        p.q = tokens(q, q_stride_b, q_stride_h, q_stride_l, seq_len_q, block_q);
        p.k = tokens(k, k_stride_b, k_stride_h, k_stride_l, seq_len_k, block_k);
        p.batch = batch;
        p.heads = heads;
        p.head_dim = head_dim;
        p.q_pooled = reinterpret_cast<float*>(q_pooled);
        p.k_pooled_t = reinterpret_cast<float*>(k_pooled_t);
        p.k_ld = k_ld;
        sparge::mask::launch_pool_blocks(p, static_cast<InputDtype>(dtype), stream);
      },
      nb::arg("q"), nb::arg("q_stride_b"), nb::arg("q_stride_h"), nb::arg("q_stride_l"), nb::arg("seq_len_q"),
      nb::arg("block_q"), nb::arg("k"), nb::arg("k_stride_b"), nb::arg("k_stride_h"), nb::arg("k_stride_l"),
      nb::arg("seq_len_k"), nb::arg("block_k"), nb::arg("batch"), nb::arg("heads"), nb::arg("head_dim"),
      nb::arg("dtype"), nb::arg("q_pooled"), nb::arg("k_pooled_t"), nb::arg("k_ld"), nb::arg("stream"),
      "Block means of Q (B,H,Lq,D) and K: q_pooled (B,H,Nq,D) and k_pooled_t (B,H,D,k_ld), fp32. dtype: 0 fp16, "
      "1 bf16, 2 fp32.");

  m.def(
      "mask_select_blocks",
      [](std::uintptr_t q_pooled, std::uintptr_t k_pooled_t, int k_ld, int batch, int heads, int head_dim,
         int num_q_blocks, int num_k_blocks, float scale, int topk_count, float topp, std::uintptr_t kv_count,
         std::uintptr_t kv_index, std::uintptr_t row_bits, int bits_ld, int rows_per_cta, std::uintptr_t stream) {
        sparge::mask::SelectParams p{};
        p.q_pooled = reinterpret_cast<const float*>(q_pooled);
        p.k_pooled_t = reinterpret_cast<const float*>(k_pooled_t);
        p.k_ld = k_ld;
        p.batch = batch;
        p.heads = heads;
        p.head_dim = head_dim;
        p.num_q_blocks = num_q_blocks;
        p.num_k_blocks = num_k_blocks;
        p.scale = scale;
        p.topk_count = topk_count;
        p.topp = topp;
        p.kv_count = reinterpret_cast<int32_t*>(kv_count);
        p.kv_index = reinterpret_cast<int32_t*>(kv_index);
        p.row_bits = reinterpret_cast<uint32_t*>(row_bits);
        p.bits_ld = bits_ld;
        sparge::mask::launch_select_blocks(p, rows_per_cta, stream);
      },
      nb::arg("q_pooled"), nb::arg("k_pooled_t"), nb::arg("k_ld"), nb::arg("batch"), nb::arg("heads"),
      nb::arg("head_dim"), nb::arg("num_q_blocks"), nb::arg("num_k_blocks"), nb::arg("scale"), nb::arg("topk_count"),
      nb::arg("topp"), nb::arg("kv_count"), nb::arg("kv_index"), nb::arg("row_bits"), nb::arg("bits_ld"),
      nb::arg("rows_per_cta"), nb::arg("stream"),
      "Scores, softmax and hybrid Top-k/Top-p per query block: kv_count (B,H,Nq), kv_index (B,H,Nq,Nk) int32 and "
      "row_bits (B,H,Nq,bits_ld) uint32.");

  m.def(
      "mask_transpose",
      [](std::uintptr_t row_bits, int bits_ld, int batch, int heads, int num_q_blocks, int num_k_blocks,
         std::uintptr_t q_count, std::uintptr_t q_index, std::uintptr_t stream) {
        sparge::mask::TransposeParams p{};
        p.row_bits = reinterpret_cast<const uint32_t*>(row_bits);
        p.bits_ld = bits_ld;
        p.batch = batch;
        p.heads = heads;
        p.num_q_blocks = num_q_blocks;
        p.num_k_blocks = num_k_blocks;
        p.q_count = reinterpret_cast<int32_t*>(q_count);
        p.q_index = reinterpret_cast<int32_t*>(q_index);
        sparge::mask::launch_transpose_mask(p, stream);
      },
      nb::arg("row_bits"), nb::arg("bits_ld"), nb::arg("batch"), nb::arg("heads"), nb::arg("num_q_blocks"),
      nb::arg("num_k_blocks"), nb::arg("q_count"), nb::arg("q_index"), nb::arg("stream"),
      "q_count (B,H,Nk) and q_index (B,H,Nk,Nq) int32 from row_bits.");
}
