// Arguments of the block-sparse attention forward, shared by the host dispatch and every kernel.
// Plain C++ (no CUDA/CuTe types) so the nanobind binding can fill it.
#pragma once

#include <cstdint>

namespace sparge::fwd {

enum class DType { kFloat16, kBFloat16 };

struct AttentionForwardParams {
  // Device pointers. q, k, v, out: (B, H, L, D) through the strides below (in elements, last-dim stride 1).
  const void* q;
  const void* k;
  const void* v;
  void* out;
  float* lse;              // (B, H, Lq) contiguous
  const int32_t* kv_count;  // (B, H, Nq) contiguous
  const int32_t* kv_index;  // (B, H, Nq, Nk) contiguous: kept key blocks ascending, first kv_count valid

  int batch, heads, seqlen_q, seqlen_k, head_dim;
  int num_q_blocks, num_k_blocks;
  int64_t q_batch_stride, q_head_stride, q_row_stride;
  int64_t k_batch_stride, k_head_stride, k_row_stride;
  int64_t v_batch_stride, v_head_stride, v_row_stride;
  int64_t o_batch_stride, o_head_stride, o_row_stride;

  float scale;       // softmax scale applied to q·k
  float scale_log2;  // scale * log2(e): the kernels exponentiate with exp2
};

}  // namespace sparge::fwd
