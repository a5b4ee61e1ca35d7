// Arguments of the block-sparse attention kernels as the kernels see them. The backward's extend the forward's
// (as flash-attention hopper's Flash_bwd_params : Flash_fwd_params): q, k, v, out, lse, the kept-key-block list
// and the sizes mean the same in both. Plain data only (no CUDA/CuTe types), so the bindings can fill them.
// FwdParams keeps the field order of the forward's former AttentionForwardParams (the kernels' parameter offsets).
#pragma once

#include <cstdint>

#include "common/tensor.h"

namespace sparge {

struct FwdParams {
  // q, k, v, out: (B, H, L, D) of the element type through the strides below (in elements, D stride 1).
  // In the backward, out is an input (the forward's output).
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* out = nullptr;
  float* lse = nullptr;               // (B, H, Lq) contiguous, natural log; -inf for a query block with no kept key
  const int32_t* kv_count = nullptr;  // (B, H, Nq) contiguous
  const int32_t* kv_index = nullptr;  // (B, H, Nq, Nk) contiguous: kept key blocks ascending, first kv_count valid

  int batch = 0, heads = 0, seqlen_q = 0, seqlen_k = 0, head_dim = 0;
  int num_q_blocks = 0, num_k_blocks = 0;
  Strides q_stride, k_stride, v_stride, out_stride;

  float scale = 0.f;       // softmax scale applied to q·k
  float scale_log2 = 0.f;  // scale * log2(e): the kernels exponentiate with exp2

  // Hopper forward only (required there): one int32 from which its CTAs, one per SM, take query blocks (zeroed
  // by the launcher on the stream before the kernel; common/tile_scheduler.h).
  int* tile_counter = nullptr;
};

struct BwdParams : FwdParams {
  const void* dout = nullptr;  // (B, H, Lq, D)
  Strides dout_stride;
  const float* dlse = nullptr;  // (B, H, Lq) contiguous, or nullptr when lse gets no gradient
  // The transpose of the kept-block list: per key block its kept query blocks.
  const int32_t* q_count = nullptr;  // (B, H, Nk)
  const int32_t* q_index = nullptr;  // (B, H, Nk, Nq), ascending, -1 padded

  // Outputs, of the element type, (B, H, L, D) with their own strides.
  void* dq = nullptr;
  void* dk = nullptr;
  void* dv = nullptr;
  Strides dq_stride, dk_stride, dv_stride;

  // Workspace, contiguous, rows padded to Nq * 128 (padded rows are written by the preprocess kernel).
  float* lse_log2 = nullptr;  // (B, H, Lq_pad): lse * log2(e); +inf where no key is kept or the row is padding
  float* delta = nullptr;     // (B, H, Lq_pad): rowsum(dO * O) - dlse; 0 on padding
  float* dq_accum = nullptr;  // (B, H, Lq_pad, D), zero-filled; only when !deterministic

  int64_t padded_q = 0;  // num_q_blocks * 128: rows of the workspace per (batch, head)
  bool deterministic = false;
  bool dq_bulk_reduce = true;  // non-deterministic dQ: bulk async reduce on SM >= 90 (else 8-byte atomics)

  // Hopper dS spill (KernelOptions.dq_accumulate == "spill"; ds_spill null otherwise). Kept (query block, key
  // block) pairs are numbered key-block-major: pair = q_end[bh, n] - q_count[bh, n] + (slot of the query block in
  // q_index[bh, n]). A key block whose pairs all fall below ds_spill_pairs spills its dS tiles (128 x 64
  // elements, the dK/dV kernel's smem bytes as they are) to ds_spill; the others add dQ into dq_accum (bulk).
  void* ds_spill = nullptr;            // (ds_spill_pairs, 128, 64) elements
  int64_t ds_spill_pairs = 0;          // its capacity in tiles
  const int32_t* q_end = nullptr;      // (B, H, Nk): inclusive prefix sum of q_count over the flattened (B, H, Nk)
  int32_t* kv_pair = nullptr;          // (B, H, Nq, Nk): per kept key block of a query block its pair, -1 if it
                                       // did not spill (first kv_count entries of a row; written by the backward)
};

}  // namespace sparge
