// Parameters of the three mask-prediction kernels. Plain structs of pointers, sizes and element strides: the
// extension does not link libtorch; bind_mask.cpp fills them from the tensor arguments (common/tensor.h).
#pragma once

#include <cstdint>

#include "common/dtype.h"

namespace sparge::mask {

// One (B, H, L, D) input seen through element strides; the D axis must have stride 1.
struct StridedTokens {
  const void* ptr;
  int64_t stride_b, stride_h, stride_l;
  int length;      // L: tokens
  int block;       // tokens per block
  int num_blocks;  // ceil(L / block)
};

// Every launch covers all batches and the heads [head_begin, head_begin + group_heads) of `heads`, so that the
// heads can be processed in groups whose selection overlaps the pooling of the next group (mask_launch.cu).

// Kernel 1: block means of Q and K (fp32 accumulation) in one launch.
struct PoolParams {
  StridedTokens q, k;
  int batch, heads, head_dim;
  int head_begin, group_heads;
  float* q_pooled;    // (B, H, Nq, D) row-major
  float* k_pooled_t;  // (B, H, D, k_ld): transposed so that the score loop reads key blocks coalesced
  int k_ld;           // >= Nk
};

// Kernel 2: scores, softmax and the hybrid Top-k ∪ Top-p selection per query block, writing kv_* directly.
struct SelectParams {
  const float* q_pooled;
  const float* k_pooled_t;
  int k_ld;
  int batch, heads, head_dim, num_q_blocks, num_k_blocks;
  int head_begin, group_heads;
  float scale;
  int topk_count;  // Top-k size: validation.topk_count(topk, Nk); 0 disables Top-k
  float topp;      // Top-p mass; <= 0 disables Top-p
  int compact;     // 1: gather the last <= 32 candidates instead of bisecting to the end (same result)
  int tensor_scores;  // 1: scores by 3xTF32 mma.sync (scores_mma.cuh), 0: fp32 FMAs; within the same rounding band
  int register_rows;  // 1: each warp's row in registers where Nk allows (mask_launch.cu), 0: in shared memory;
                      // the same result
  int32_t* kv_count;   // (B, H, Nq)
  int32_t* kv_index;   // (B, H, Nq, Nk)
  uint32_t* row_bits;  // (B, H, Nq, bits_ld): bit j%32 of word j/32 set iff key block j is kept
  int bits_ld;         // ceil(Nk / 32)
};

// Kernel 3: q_count / q_index, the transpose of the selection, from the row bitmask.
struct TransposeParams {
  const uint32_t* row_bits;
  int bits_ld;
  int batch, heads, num_q_blocks, num_k_blocks;
  int head_begin, group_heads;
  int32_t* q_count;  // (B, H, Nk)
  int32_t* q_index;  // (B, H, Nk, Nq)
};

// Kernels 1 and 2 fused (pool_select_fused.cuh): one persistent launch in which each CTA takes tickets from
// counters[0]; a ticket is either a pooling task (kPoolWarps blocks of one (b, h)) or a selection task (16 query
// blocks of one (b, h)), in segments of pool_tasks + select_tasks tickets per (b, h): segment s pools unit s and
// selects unit s - kFusedLag, so a selection task waits (counters[1 + unit] == pool_tasks) only for pooling that
// began long before. pool and select cover all heads (head_begin 0).
struct PoolSelectParams {
  PoolParams pool;
  SelectParams select;
  uint32_t* counters;  // [0]: next ticket; [1 + b * H + h]: pooling tasks done for (b, h). Zeroed before launch.
  int units;           // B * H
  int pool_tasks;      // per unit: ceil((Nq + Nk) / kPoolWarps)
  int select_tasks;    // per unit: ceil(Nq / 16)
  int tickets;         // (units + kFusedLag) * (pool_tasks + select_tasks)
  int ticket_slots_at;  // byte offset of the kernel's two ticket slots in its dynamic shared memory
};

}  // namespace sparge::mask
