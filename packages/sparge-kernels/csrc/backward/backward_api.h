// Host entry of the backward, free of CuTe so plain C++ (the binding, the dispatch) can use it.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/dtype.h"
#include "common/kernel_path.h"
#include "common/params.h"
#include "common/tensor.h"

namespace sparge::bwd {

// Which dK/dV kernel runs: kAuto the Hopper warp-specialised wgmma/TMA kernel where it can run (sm_90 GPU, 90a
// build, TMA-walkable strides), else the SM80 mma.sync kernel; kSm80 / kSm90 pin one. Deterministic mode on the
// Hopper path runs the Hopper dK/dV kernel without dQ, then the SM80 per-query-block dQ kernel (no atomics).
using BackwardPath = KernelPath;

// Runs the whole backward on `stream`. Throws std::invalid_argument for a (head dim, dtype) this build has no
// kernels for or kSm90 where it cannot run, std::runtime_error for a CUDA failure.
void dispatch_backward(BwdParams const& params, DType dtype, BackwardPath path, cudaStream_t stream);

// The path that runs for these params on the current device (kAuto resolved).
BackwardPath resolve_backward_path(BwdParams const& params, BackwardPath path);

// The SM80 per-query-block dQ kernel alone (the preprocess must have run): instantiated with run_sm80 in
// csrc/instantiations/bwd_hdim<D>_<dtype>_sm80.cu (compiled for every arch), called by the Hopper path's
// deterministic mode after its dK/dV kernel.
template <int kHeadDim, DType kDType>
void run_sm80_dq(BwdParams const& p, cudaStream_t stream);

// The params of one backward call from the binding's tensors, every argument checked (std::invalid_argument led
// by `who`); bind_backward.cpp, shared with the profiling entry of csrc/profile/.
BwdParams backward_params(const char* who, TensorArg const& q, TensorArg const& k, TensorArg const& v,
                          TensorArg const& out, TensorArg const& dout, TensorArg const& lse, TensorArg const& dlse,
                          TensorArg const& kv_count, TensorArg const& kv_index, TensorArg const& q_count,
                          TensorArg const& q_index, TensorArg const& dq, TensorArg const& dk, TensorArg const& dv,
                          TensorArg const& lse_log2, TensorArg const& delta, TensorArg const& dq_accum, int block_q,
                          int block_k, double scale, bool deterministic, bool dq_bulk_reduce);

}  // namespace sparge::bwd
