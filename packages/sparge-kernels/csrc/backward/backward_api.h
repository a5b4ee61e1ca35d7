// Host entry of the backward, free of CuTe so plain C++ (the binding, the dispatch) can use it.
#pragma once

#include <cuda_runtime_api.h>

#include "common/dtype.h"
#include "common/params.h"

namespace sparge::bwd {

// Defined in the generated instantiation files; only the configured (head dim, dtype) pairs exist.
template <int kHeadDim, DType kDType>
void run_bwd_sm80(BwdParams const& params, cudaStream_t stream);

// Runs the whole backward on `stream`. Throws std::invalid_argument for a (head dim, dtype) this build has no
// kernels for, std::runtime_error for a CUDA failure.
void dispatch_backward(BwdParams const& params, DType dtype, cudaStream_t stream);

}  // namespace sparge::bwd
