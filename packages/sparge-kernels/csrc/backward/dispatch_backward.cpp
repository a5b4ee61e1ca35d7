// Picks the backward for a head dim, dtype and path: the SM80 mma.sync kernels, or the Hopper warp-specialised
// dK/dV kernel (wgmma + TMA; in deterministic mode without dQ, followed by the SM80 dQ kernel). The
// instantiations live in csrc/instantiations/ and are compiled only for the head dims and dtypes selected at build
// time (SPARGE_HDIM_*, SPARGE_DTYPE_*), the Hopper ones only for a 90a build (SPARGE_ARCH_90A).
#include <cuda_runtime_api.h>

#include <cstddef>

#include "backward/backward_api.h"
#include "common/cuda_check.h"
#include "common/kernel_path.h"

namespace sparge::bwd {

BackwardPath resolve_backward_path(BwdParams const& params, BackwardPath path) {
  return resolve_kernel_path(path, sm90_possible(params),
                             "sparge attention_backward: path='sm90' (the Hopper backward) needs a build with "
                             "SPARGE_CUDA_ARCHS containing 90a, an sm_90 GPU and non-zero strides for q, k, v, "
                             "dout (this build: " SPARGE_BUILD_ARCHS ")");
}

void dispatch_backward(BwdParams const& params, DType dtype, BackwardPath path, cudaStream_t stream) {
  const BackwardPath resolved = resolve_backward_path(params, path);
  if (resolved == BackwardPath::kSm80 && params.ds_spill != nullptr) {
    // The spill mode is the Hopper kernels'; the SM80 ones take the bulk path, into an accumulator that the spill
    // mode's caller did not zero (deterministic: their own dQ kernel, no accumulator).
    BwdParams bulk = params;
    bulk.ds_spill = nullptr;
    bulk.ds_spill_pairs = 0;
    const size_t bytes = size_t(bulk.batch) * bulk.heads * size_t(bulk.padded_q) * bulk.head_dim * sizeof(float);
    if (bulk.dq_accum != nullptr) SPARGE_CUDA_CHECK(cudaMemsetAsync(bulk.dq_accum, 0, bytes, stream));
    launch_on_path("attention_backward", bulk, dtype, resolved, stream);
    return;
  }
  launch_on_path("attention_backward", params, dtype, resolved, stream);
}

}  // namespace sparge::bwd
