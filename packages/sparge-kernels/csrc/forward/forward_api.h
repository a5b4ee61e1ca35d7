// Host-side entry points of the forward, free of CuTe so plain C++ (the binding, the dispatch) can use them.
#pragma once

#include <cuda_runtime_api.h>

#include "forward/params.h"

namespace sparge::fwd {

// Defined in the generated instantiation files; only the configured (head dim, dtype) pairs exist.
template <int kHeadDim, DType kDType>
void run_attention_forward_sm80(AttentionForwardParams const& params, cudaStream_t stream);

// Validates nothing; picks the instantiation for (params.head_dim, dtype). Throws std::invalid_argument
// when that pair was not compiled into this build.
void dispatch_attention_forward(AttentionForwardParams const& params, DType dtype, cudaStream_t stream);

}  // namespace sparge::fwd
