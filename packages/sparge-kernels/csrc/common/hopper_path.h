// What the Hopper (TMA) kernels need at run time beyond a 90a build, checked by the forward and backward dispatch
// before they pick the sm90 path: an sm_90 device, and strides TMA can walk.
#pragma once

#include <cuda_runtime_api.h>

#include <initializer_list>

#include "common/cuda_check.h"
#include "common/device_info.h"
#include "common/params.h"
#include "common/tensor.h"

namespace sparge {

inline bool current_device_is_sm90() {
  return current_device_attribute(cudaDevAttrComputeCapabilityMajor) == 9 &&
         current_device_attribute(cudaDevAttrComputeCapabilityMinor) == 0;
}

// TMA steps over rows, heads and batch: each stride it steps with must be non-zero (16-byte multiples are the
// binding's check); a size-1 head or batch dim may carry any stride, even 0.
inline bool strides_suit_tma(std::initializer_list<Strides> operands, int heads, int batch) {
  for (const Strides& s : operands) {
    if (s.row <= 0 || (s.head <= 0 && heads != 1) || (s.batch <= 0 && batch != 1)) return false;
  }
  return true;
}

// A valid TMA stride for a size-1 (or zero-stride broadcast) head/batch dim; its value never steps.
inline void fix_unit_dim_strides(Strides& s, int heads, int batch, int seqlen) {
  if (heads == 1 || s.head == 0) s.head = s.row * seqlen;
  if (batch == 1 || s.batch == 0) s.batch = s.head * heads;
}

// The operands each direction's Hopper kernel reads with TMA: q, k, v, and in the backward dout too.
inline bool strides_suit_tma(FwdParams const& p) {
  return strides_suit_tma({p.q_stride, p.k_stride, p.v_stride}, p.heads, p.batch);
}
inline bool strides_suit_tma(BwdParams const& p) {
  return strides_suit_tma({p.q_stride, p.k_stride, p.v_stride, p.dout_stride}, p.heads, p.batch);
}

inline void fix_unit_dim_strides(FwdParams& p) {
  fix_unit_dim_strides(p.q_stride, p.heads, p.batch, p.seqlen_q);
  fix_unit_dim_strides(p.k_stride, p.heads, p.batch, p.seqlen_k);
  fix_unit_dim_strides(p.v_stride, p.heads, p.batch, p.seqlen_k);
}
inline void fix_unit_dim_strides(BwdParams& p) {
  fix_unit_dim_strides(static_cast<FwdParams&>(p));
  fix_unit_dim_strides(p.dout_stride, p.heads, p.batch, p.seqlen_q);
}

}  // namespace sparge
