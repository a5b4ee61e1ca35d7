// Host entry points of the mask-prediction kernels (mask_launch.cu). Streams cross as integers so that this
// header needs no CUDA types (bind.cpp is compiled by the host compiler).
#pragma once

#include <cstddef>
#include <cstdint>

#include "mask/mask_params.h"

namespace sparge::mask {

// Largest head dim the kernels take (pooled query rows of a CTA live in shared memory).
constexpr int kMaxHeadDim = 256;

// Kernel 1: block means of Q and K. Picks 16-byte loads when pointers, strides and D allow, else narrower.
void launch_pool_blocks(const PoolParams& params, DType dtype, std::uintptr_t stream);

// Kernel 2: scores, softmax, Top-k ∪ Top-p; rows_per_cta 0 picks the default (16 query blocks per CTA, fewer
// when Nk is too large for shared memory), else one of 4, 8, 16.
void launch_select_blocks(const SelectParams& params, int rows_per_cta, std::uintptr_t stream);

// Kernel 3: q_count / q_index from the row bitmask.
void launch_transpose_mask(const TransposeParams& params, std::uintptr_t stream);

// Kernels 1 and 2 fused (pool_select_fused.cuh), for all heads: bfloat16/float16 inputs whose rows allow 16-byte
// loads, tensor-core scores, 16 query blocks per selection task; counters: 1 + B * H uint32 of the workspace
// (zeroed here). Arguments are checked by launch_predict.
void launch_pool_select(const PoolParams& pool, const SelectParams& select, uint32_t* counters, DType dtype,
                        std::uintptr_t stream);
size_t pool_select_smem_bytes(int head_dim, int num_k_blocks);

// The whole prediction for all heads (the head_begin/group_heads fields of the params are overwritten). With
// head_groups > 1 the heads are split into that many contiguous groups: pooling runs group after group on the
// caller's stream, and each group's selection and transpose run on a high-priority side stream as soon as its
// pooling is done, overlapping the memory-bound pooling of the next groups. The caller's stream waits for the
// side stream before returning, so outputs are ordered on the caller's stream. With several groups,
// tail_rows_per_cta is used for the last one (smaller CTAs shorten the part that cannot overlap); 0 means
// rows_per_cta. fused: 0 separate launches as above; 1 the fused pooling + selection kernel (then the transpose)
// where launch_pool_select takes the inputs, else separate launches; 2 the fused kernel or std::invalid_argument.
// The fused kernel ignores head_groups, rows_per_cta and tail_rows_per_cta, and scores on tensor cores whatever
// select.tensor_scores says.
void launch_predict(PoolParams pool, SelectParams select, TransposeParams transpose, DType dtype,
                    int head_groups, int rows_per_cta, int tail_rows_per_cta, int fused, uint32_t* counters,
                    std::uintptr_t stream);

}  // namespace sparge::mask
