// Arguments of the block-sparse attention backward, as the kernels see them. Plain data only, so the host-side
// binding (compiled without nvcc) can fill it. All strides are in elements; the head dim is contiguous.
#pragma once

#include <cstdint>

namespace sparge::bwd {

// Element strides of an HND view (B, H, L, D): batch, head, row (token). The head dim has stride 1.
struct Strides {
  int64_t batch = 0, head = 0, row = 0;
};

struct BackwardParams {
  // Inputs: q, out, dout are (B, H, Lq, D); k, v are (B, H, Lk, D); all of the element type.
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  const void* out = nullptr;
  const void* dout = nullptr;
  Strides q_stride, k_stride, v_stride, out_stride, dout_stride;
  const float* lse = nullptr;   // (B, H, Lq) contiguous, natural log; -inf for a query block with no kept key
  const float* dlse = nullptr;  // (B, H, Lq) contiguous, or nullptr when lse gets no gradient
  // Block mask (contiguous int32): per query block its kept key blocks, per key block its kept query blocks.
  const int32_t* kv_count = nullptr;  // (B, H, Nq)
  const int32_t* kv_index = nullptr;  // (B, H, Nq, Nk), ascending, -1 padded
  const int32_t* q_count = nullptr;   // (B, H, Nk)
  const int32_t* q_index = nullptr;   // (B, H, Nk, Nq), ascending, -1 padded

  // Outputs, of the element type, (B, H, L, D) with their own strides.
  void* dq = nullptr;
  void* dk = nullptr;
  void* dv = nullptr;
  Strides dq_stride, dk_stride, dv_stride;

  // Workspace, contiguous, rows padded to Nq * 128 (padded rows are written by the preprocess kernel).
  float* lse_log2 = nullptr;  // (B, H, Lq_pad): lse * log2(e); +inf where no key is kept or the row is padding
  float* delta = nullptr;     // (B, H, Lq_pad): rowsum(dO * O) - dlse; 0 on padding
  float* dq_accum = nullptr;  // (B, H, Lq_pad, D), zero-filled; only when !deterministic

  int batch = 0, heads = 0, seqlen_q = 0, seqlen_k = 0, head_dim = 0;
  int num_q_blocks = 0, num_k_blocks = 0;
  int64_t padded_q = 0;  // num_q_blocks * 128: rows of the workspace per (batch, head)
  float scale = 0.f;       // softmax scale
  float scale_log2 = 0.f;  // scale * log2(e)
  bool deterministic = false;
  bool dq_bulk_reduce = true;  // non-deterministic dQ: bulk async reduce on SM >= 90 (else 8-byte atomics)

};

}  // namespace sparge::bwd
