// The one launch template of the forward: included only by the generated instantiation files
// (instantiations/attention_forward_hdim<D>_<dtype>_<arch>.cu), one (head dim, dtype, arch) each.
#pragma once

#include <cuda_runtime.h>
#include <cutlass/numeric_types.h>

#include "common/cuda_check.h"
#include "forward/forward_api.h"
#include "forward/kernel_fwd_sm80.h"
#include "forward/kernel_traits_sm80.h"
#include "forward/tile_scheduler.h"

namespace sparge::fwd {

template <DType kDType>
using ElementOf = std::conditional_t<kDType == DType::kBFloat16, cutlass::bfloat16_t, cutlass::half_t>;

template <int kHeadDim, DType kDType>
void run_attention_forward_sm80(AttentionForwardParams const& params, cudaStream_t stream) {
  using Traits = KernelTraitsSm80<kHeadDim, ElementOf<kDType>>;
  auto kernel = &attention_forward_sm80_kernel<Traits>;
  constexpr int kSmemBytes = Traits::kSmemBytes;
  if constexpr (kSmemBytes > 48 * 1024) {
    SPARGE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes));
  }
  kernel<<<StaticTileScheduler::grid(params), Traits::kNThreads, kSmemBytes, stream>>>(params);
  SPARGE_CHECK_LAUNCH("attention_forward_sm80_kernel");
}

}  // namespace sparge::fwd
