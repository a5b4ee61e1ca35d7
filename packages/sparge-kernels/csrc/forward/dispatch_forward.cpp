// Chooses the compiled forward kernel for a head dim, dtype and path (Hopper wgmma/TMA or portable mma.sync).
#include <cuda_runtime_api.h>

#include <stdexcept>
#include <string>

#include "common/cuda_check.h"
#include "common/dispatch.h"
#include "common/hopper_path.h"
#include "forward/forward_api.h"

namespace sparge::fwd {

namespace {

bool strides_suit_tma(FwdParams const& p) {
  return sparge::strides_suit_tma({p.q_stride, p.k_stride, p.v_stride}, p.heads, p.batch);
}

template <int kHeadDim, DType kDType>
void run(FwdParams const& params, ForwardPath path, cudaStream_t stream) {
#ifdef SPARGE_ARCH_90A
  if (path == ForwardPath::kSm90) {
    FwdParams p = params;
    fix_unit_dim_strides(p.q_stride, p.heads, p.batch, p.seqlen_q);
    fix_unit_dim_strides(p.k_stride, p.heads, p.batch, p.seqlen_k);
    fix_unit_dim_strides(p.v_stride, p.heads, p.batch, p.seqlen_k);
    run_fwd_sm90<kHeadDim, kDType>(p, stream);
    return;
  }
#endif
  run_fwd_sm80<kHeadDim, kDType>(params, stream);
}

}  // namespace

ForwardPath resolve_forward_path(FwdParams const& params, ForwardPath path) {
#ifdef SPARGE_ARCH_90A
  const bool sm90_possible = current_device_is_sm90() && strides_suit_tma(params);
#else
  const bool sm90_possible = false;
#endif
  if (path == ForwardPath::kSm90 && !sm90_possible) {
    throw std::invalid_argument(
        "the Hopper forward kernel needs a build with SPARGE_CUDA_ARCHS containing 90a, an sm_90 GPU and "
        "non-zero strides for q, k, v (this build: " SPARGE_BUILD_ARCHS ")");
  }
  if (path == ForwardPath::kAuto) return sm90_possible ? ForwardPath::kSm90 : ForwardPath::kSm80;
  return path;
}

void dispatch_attention_forward(FwdParams const& params, DType dtype, ForwardPath path, cudaStream_t stream) {
  path = resolve_forward_path(params, path);
  dispatch_head_dim_dtype("attention_forward", params.head_dim, dtype, [&](auto head_dim, auto element) {
    run<decltype(head_dim)::value, decltype(element)::value>(params, path, stream);
  });
}

}  // namespace sparge::fwd
