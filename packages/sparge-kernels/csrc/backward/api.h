// Host entry of the backward, callable from code compiled without nvcc (the nanobind binding).
#pragma once

#include "params.h"

namespace sparge::bwd {

enum class DType { kBFloat16, kFloat16 };

// Runs the whole backward on `stream` (a cudaStream_t). Throws std::invalid_argument for a (head dim, dtype)
// this build has no kernels for, std::runtime_error for a CUDA failure.
void dispatch_backward(BackwardParams const& params, DType dtype, void* stream);

// "64,128" and "bf16,fp16": what this build instantiated.
const char* built_head_dims();
const char* built_dtypes();

}  // namespace sparge::bwd
