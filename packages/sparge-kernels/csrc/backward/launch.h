// The one launch template of the backward: preprocess, dK/dV (+ dQ atomics), then either the dQ conversion or the
// deterministic dQ kernel. Instantiated per (head dim, dtype) in instantiations/ (generate_instantiations.py).
#pragma once

#include <cuda_runtime.h>

#include "common/cuda_check.h"
#include "dkdv_kernel.h"
#include "dq_kernel.h"
#include "kernel_traits.h"
#include "params.h"
#include "preprocess.h"

namespace sparge::bwd {

template <int kHeadDim, typename Element>
void run_backward(BackwardParams const& p, cudaStream_t stream) {
  using Traits = BackwardTraits<kHeadDim, Element>;
  using Pre = Preprocess<kHeadDim, Element>;

  const int64_t padded_rows = int64_t(p.batch) * p.heads * p.padded_q;
  const int64_t pre_blocks = (padded_rows + Pre::kRowsPerBlock - 1) / Pre::kRowsPerBlock;
  preprocess_kernel<kHeadDim, Element><<<dim3(unsigned(pre_blocks)), Pre::kThreads, 0, stream>>>(p);
  SPARGE_CHECK_LAUNCH("sparge backward preprocess");

  const dim3 grid_kv(p.num_k_blocks, p.heads, p.batch);
  if (p.deterministic) {
    auto dkdv = dkdv_kernel<Traits, false>;
    SPARGE_CUDA_CHECK(
        cudaFuncSetAttribute(dkdv, cudaFuncAttributeMaxDynamicSharedMemorySize, int(Traits::kSmemBytesKV)));
    dkdv<<<grid_kv, Traits::kNThreads, Traits::kSmemBytesKV, stream>>>(p);
    SPARGE_CHECK_LAUNCH("sparge backward dK/dV");

    auto dq = dq_kernel<Traits>;
    SPARGE_CUDA_CHECK(cudaFuncSetAttribute(dq, cudaFuncAttributeMaxDynamicSharedMemorySize, int(Traits::kSmemBytesQ)));
    dq<<<dim3(p.num_q_blocks, p.heads, p.batch), Traits::kNThreads, Traits::kSmemBytesQ, stream>>>(p);
    SPARGE_CHECK_LAUNCH("sparge backward dQ (deterministic)");
  } else {
    auto dkdv = dkdv_kernel<Traits, true>;
    SPARGE_CUDA_CHECK(
        cudaFuncSetAttribute(dkdv, cudaFuncAttributeMaxDynamicSharedMemorySize, int(Traits::kSmemBytesKV)));
    dkdv<<<grid_kv, Traits::kNThreads, Traits::kSmemBytesKV, stream>>>(p);
    SPARGE_CHECK_LAUNCH("sparge backward dK/dV/dQ-accumulate");

    const int64_t chunks = int64_t(p.batch) * p.heads * p.seqlen_q * (kHeadDim / 8);
    dq_convert_kernel<kHeadDim, Element><<<dim3(unsigned((chunks + 255) / 256)), 256, 0, stream>>>(p);
    SPARGE_CHECK_LAUNCH("sparge backward dQ convert");
  }
}

}  // namespace sparge::bwd
