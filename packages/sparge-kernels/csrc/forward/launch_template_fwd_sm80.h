// Launch template of the portable (SM80+) forward: included only by the generated instantiation files
// (csrc/instantiations/fwd_hdim<D>_<dtype>_sm80.cu), one (head dim, dtype) each.
#pragma once

#include <cuda_runtime.h>
#include <cutlass/numeric_types.h>

#include "common/cuda_check.h"
#include "common/element_type.h"
#include "common/tile_scheduler.h"
#include "forward/forward_api.h"
#include "forward/kernel_fwd_sm80.h"
#include "forward/kernel_traits_fwd_sm80.h"

namespace sparge::fwd {

template <int kHeadDim, DType kDType>
void run_sm80(FwdParams const& params, cudaStream_t stream) {
  using Traits = KernelTraitsSm80<kHeadDim, ElementOf<kDType>>;
  auto kernel = &attention_forward_sm80_kernel<Traits>;
  constexpr int kSmemBytes = Traits::kSmemBytes;
  if constexpr (kSmemBytes > 48 * 1024) {
    SPARGE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes));
  }
  kernel<<<StaticTileScheduler::grid(params.num_q_blocks, params.heads, params.batch), Traits::kNThreads, kSmemBytes, stream>>>(params);
  SPARGE_CHECK_LAUNCH("attention_forward_sm80_kernel");
}

}  // namespace sparge::fwd
