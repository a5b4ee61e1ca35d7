// Host-side entry points of the forward, free of CuTe so plain C++ (the binding, the dispatch) can use them.
#pragma once

#include <cuda_runtime_api.h>

#include "common/kernel_path.h"
#include "common/params.h"

namespace sparge::fwd {

// Which kernel runs: kAuto picks the Hopper (wgmma + TMA) kernel on sm_90 devices when this build has it
// and the strides suit TMA, else the portable mma.sync kernel.
using ForwardPath = KernelPath;

// Picks the kernel for (params.head_dim, dtype, path). Throws std::invalid_argument when that combination
// was not compiled into this build (or kSm90 is asked for where it cannot run).
void dispatch_attention_forward(FwdParams const& params, DType dtype, ForwardPath path,
                                cudaStream_t stream);

// The path kAuto resolves to for these params on the current device.
ForwardPath resolve_forward_path(FwdParams const& params, ForwardPath path);

}  // namespace sparge::fwd
