// The one launch template of the backward (mma.sync, SM80+; also what runs on Hopper): preprocess, then either
// dK/dV with dQ accumulation + the dQ conversion, or (deterministic) dK/dV without it + the dQ kernel.
// Instantiated per (head dim, dtype) in csrc/instantiations/bwd_hdim<D>_<dtype>_sm80.cu
// (csrc/generate_instantiations.py), with run_sm80_dq: the dQ kernel alone, for the Hopper deterministic mode.
#pragma once

#include <cuda_runtime.h>

#include "backward/backward_api.h"
#include "backward/dq_accumulate_bwd.h"
#include "backward/kernel_traits_bwd_sm80.h"
#include "backward/mainloop_bwd_dkdv_sm80.h"
#include "backward/mainloop_bwd_dq_sm80.h"
#include "backward/preprocess_bwd.h"
#include "common/cuda_check.h"
#include "common/device_info.h"
#include "common/element_type.h"
#include "common/params.h"

namespace sparge::bwd {

template <class Traits, DqMode kDqMode>
void launch_dkdv(BwdParams const& p, dim3 grid, size_t smem_bytes, cudaStream_t stream) {
  auto kernel = dkdv_kernel<Traits, kDqMode>;
  SPARGE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem_bytes)));
  kernel<<<grid, Traits::kNThreads, smem_bytes, stream>>>(p);
  SPARGE_CHECK_LAUNCH("sparge backward dK/dV");
}

// Deterministic dQ: one CTA per query block over its kept key blocks (kv_index), no atomics; needs the
// preprocess's delta and lse·log2e.
template <class Traits>
void launch_dq_per_query_block(BwdParams const& p, cudaStream_t stream) {
  auto dq = dq_kernel<Traits>;
  SPARGE_CUDA_CHECK(cudaFuncSetAttribute(dq, cudaFuncAttributeMaxDynamicSharedMemorySize, int(Traits::kSmemBytesQ)));
  dq<<<dim3(p.num_q_blocks, p.heads, p.batch), Traits::kNThreads, Traits::kSmemBytesQ, stream>>>(p);
  SPARGE_CHECK_LAUNCH("sparge backward dQ (deterministic)");
}

template <int kHeadDim, DType kDType>
void run_sm80_dq(BwdParams const& p, cudaStream_t stream) {
  launch_dq_per_query_block<BackwardTraits<kHeadDim, ElementOf<kDType>>>(p, stream);
}

template <int kHeadDim, DType kDType>
void run_sm80(BwdParams const& p, cudaStream_t stream) {
  using Element = ElementOf<kDType>;
  using Traits = BackwardTraits<kHeadDim, Element>;

  launch_preprocess<kHeadDim, Element>(p, stream);

  const dim3 grid_kv(p.num_k_blocks, p.heads, p.batch);
  if (p.deterministic) {
    launch_dkdv<Traits, DqMode::kNone>(p, grid_kv, Traits::kSmemBytesKV, stream);
    launch_dq_per_query_block<Traits>(p, stream);
    return;
  }
  if (p.dq_bulk_reduce && current_device_attribute(cudaDevAttrComputeCapabilityMajor) >= 9) {
    launch_dkdv<Traits, DqMode::kBulkReduce>(p, grid_kv, Traits::kSmemBytesKV + Traits::kSmemBytesDqStage, stream);
    const dim3 grid_convert(2 * p.num_q_blocks, p.heads, p.batch);  // 64-row step chunks
    dq_convert_fragments_kernel<Traits><<<grid_convert, Traits::kNThreads, 0, stream>>>(p);
    SPARGE_CHECK_LAUNCH("sparge backward dQ convert");
  } else {
    launch_dkdv<Traits, DqMode::kAtomic>(p, grid_kv, Traits::kSmemBytesKV, stream);
    launch_dq_convert_rowmajor<kHeadDim, Element>(p, stream);
  }
}

}  // namespace sparge::bwd
