// Chooses the compiled forward kernel for a head dim, dtype and path (Hopper wgmma/TMA or portable mma.sync).
#include <cuda_runtime_api.h>

#include <stdexcept>

#include "common/kernel_path.h"
#include "forward/forward_api.h"

namespace sparge::fwd {

ForwardPath resolve_forward_path(FwdParams const& params, ForwardPath path) {
  return resolve_kernel_path(path, sm90_possible(params),
                             "the Hopper forward kernel needs a build with SPARGE_CUDA_ARCHS containing 90a, an "
                             "sm_90 GPU and non-zero strides for q, k, v (this build: " SPARGE_BUILD_ARCHS ")");
}

void dispatch_attention_forward(FwdParams const& params, DType dtype, ForwardPath path, cudaStream_t stream) {
  const ForwardPath resolved = resolve_forward_path(params, path);
  if (resolved == ForwardPath::kSm90 && params.tile_counter == nullptr)
    throw std::invalid_argument(
        "sparge attention_forward: tile_counter must be the device address of one int32 where the Hopper kernel "
        "runs (its persistent tile counter); got 0");
  launch_on_path("attention_forward", params, dtype, resolved, stream);
}

}  // namespace sparge::fwd
