// Host entry of the backward, free of CuTe so plain C++ (the binding, the dispatch) can use it.
#pragma once

#include <cuda_runtime_api.h>

#include "common/dtype.h"
#include "common/kernel_path.h"
#include "common/params.h"

namespace sparge::bwd {

// Which dK/dV kernel runs in the default (non-deterministic) mode: kAuto is the SM80 mma.sync kernel until the
// Hopper one has passed on a GPU; kSm90 the warp-specialised wgmma/TMA kernel (sm_90 GPU and a 90a build).
// Deterministic mode always runs the SM80 kernels.
using BackwardPath = KernelPath;

// Runs the whole backward on `stream`. Throws std::invalid_argument for a (head dim, dtype) this build has no
// kernels for or kSm90 where it cannot run, std::runtime_error for a CUDA failure.
void dispatch_backward(BwdParams const& params, DType dtype, BackwardPath path, cudaStream_t stream);

// The path that runs for these params on the current device (kAuto resolved; kSm80 when deterministic).
BackwardPath resolve_backward_path(BwdParams const& params, BackwardPath path);

}  // namespace sparge::bwd
