// Picks the backward for a head dim, dtype and path: the SM80 mma.sync kernels, or the Hopper warp-specialised
// dK/dV kernel (wgmma + TMA) in the non-deterministic mode. The instantiations live in csrc/instantiations/ and
// are compiled only for the head dims and dtypes selected at build time (SPARGE_HDIM_*, SPARGE_DTYPE_*), the
// Hopper ones only for a 90a build (SPARGE_ARCH_90A).
#include <cuda_runtime_api.h>

#include <stdexcept>
#include <string>

#include "backward/backward_api.h"
#include "common/cuda_check.h"
#include "common/dispatch.h"
#include "common/hopper_path.h"

namespace sparge::bwd {

namespace {

bool strides_suit_tma(BwdParams const& p) {
  return sparge::strides_suit_tma({p.q_stride, p.k_stride, p.v_stride, p.dout_stride}, p.heads, p.batch);
}

template <int kHeadDim, DType kDType>
void run(BwdParams const& params, BackwardPath path, cudaStream_t stream) {
#ifdef SPARGE_ARCH_90A
  if (path == BackwardPath::kSm90) {
    BwdParams p = params;
    fix_unit_dim_strides(p.q_stride, p.heads, p.batch, p.seqlen_q);
    fix_unit_dim_strides(p.dout_stride, p.heads, p.batch, p.seqlen_q);
    fix_unit_dim_strides(p.k_stride, p.heads, p.batch, p.seqlen_k);
    fix_unit_dim_strides(p.v_stride, p.heads, p.batch, p.seqlen_k);
    run_bwd_sm90<kHeadDim, kDType>(p, stream);
    return;
  }
#endif
  run_bwd_sm80<kHeadDim, kDType>(params, stream);
}

}  // namespace

BackwardPath resolve_backward_path(BwdParams const& params, BackwardPath path) {
  if (params.deterministic) return BackwardPath::kSm80;  // the Hopper kernel accumulates dQ with atomics
#ifdef SPARGE_ARCH_90A
  const bool sm90_possible = current_device_is_sm90() && strides_suit_tma(params);
#else
  const bool sm90_possible = false;
#endif
  if (path == BackwardPath::kSm90 && !sm90_possible) {
    throw std::invalid_argument(
        "sparge attention_backward: path='sm90' (the Hopper backward) needs a build with SPARGE_CUDA_ARCHS "
        "containing 90a, an sm_90 GPU and non-zero strides for q, k, v, dout (this build: " SPARGE_BUILD_ARCHS ")");
  }
  // kAuto stays on the SM80 kernels until the Hopper one has passed the GPU tests.
  return path == BackwardPath::kAuto ? BackwardPath::kSm80 : path;
}

void dispatch_backward(BwdParams const& params, DType dtype, BackwardPath path, cudaStream_t stream) {
  path = resolve_backward_path(params, path);
  dispatch_head_dim_dtype("attention_backward", params.head_dim, dtype, [&](auto head_dim, auto element) {
    run<decltype(head_dim)::value, decltype(element)::value>(params, path, stream);
  });
}

}  // namespace sparge::bwd
