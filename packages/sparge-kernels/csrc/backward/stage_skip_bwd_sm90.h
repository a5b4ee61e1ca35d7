// Stage-skipping variants of the Hopper backward, for profiling only (issue 13: what does each stage cost?).
// `Traits::kSkipStages` (KernelTraitsBwdSm90: 0, the production kernel; KernelTraitsBwdSm90Stages<D, T, kSkip>:
// a profiling variant) is a mask of the bits below. Every `if constexpr` on it in kernel_bwd_sm90.h and
// mainloop_bwd_sm90.h folds away at 0, so the production kernel is the same code (its SASS is compared in the
// commit that added this). The variants are instantiated only in a SPARGE_PROFILE_STAGES=ON build
// (csrc/profile/, bound as `_C.attention_backward_stage_profile`, timed by tools/profile_backward_stages.py).
//
// What never changes in a variant, so that none can hang: the producer (K, V once, then per kept query block Q,
// dO, lse·log2e, delta: the same TMA boxes and transaction bytes, so every stage's full barrier completes as in
// production), the consumers' consumer_wait / consumer_release once per stage (the ring's phases), their wait on
// the K/V barrier, and both named barriers per stage (each consumer warpgroup still arrives at both). A variant
// skips math, shared-memory writes or global writes only; its results are garbage, its timing is the point.
// kDqBulkReduce is the one bit that skips nothing (it picks the bulk dQ accumulation).
// Where a skip removes the only reader of some registers (the dQ atomics, the dK/dV stores, the P/dS stores),
// keep_alive (mainloop_bwd_sm90.h) reads them, so that ptxas does not delete the GEMMs that produced them.
// Plain C++ (host code includes it).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/dtype.h"
#include "common/params.h"

namespace sparge::bwd {

enum StageSkip : uint32_t {
  kSkipNone = 0,
  // dQ: the dS·K GEMM still runs, its 8-byte atomics (red.global.add.v2.f32) into dq_accum do not.
  kSkipDqAtomics = 1u << 0,
  // dQ: neither the dS·K GEMM nor its atomics (dq_accum stays as it was).
  kSkipDqGemm = 1u << 1,
  // The softmax-backward elementwise work: no P = exp2(S·scale·log2e − lse·log2e) with the tail mask, no
  // dS = P∘(dP − delta); the raw S and dP accumulators are converted and used as P and dS.
  kSkipSoftmax = 1u << 2,
  // P and dS are not written to shared memory (no stmatrix); both named barriers and the proxy fence stay, and
  // dV/dK read whatever sP/sdS hold.
  kSkipPdSStore = 1u << 3,
  // The dV += Pᵀ·dO and dK += dSᵀ·Q GEMMs.
  kSkipDkvGemm = 1u << 4,
  // The epilogue: no dK/dV global stores (neither the accumulators nor the zeros of an unattended key block).
  kSkipDkvStore = 1u << 5,
  // Producer loads only: the consumers run no wgmma and no math, write neither smem nor dq_accum; per stage they
  // wait for the stage, pass both named barriers and release it (the dK/dV stores then store zeros).
  kSkipConsumerMath = 1u << 6,
  // Not a skip: the bulk dQ mode (KernelTraitsBwdSm90's kDqBulk; production selects it with dq_bulk_reduce),
  // so that one profiling build times the atomics against the bulk reduce-adds (variant `bulk_dq`).
  kDqBulkReduce = 1u << 7,
  // Host side: preprocess and the dQ conversion run, the dK/dV kernel is not launched (their fixed cost).
  kSkipMainKernel = 1u << 8,
};

// The bits that change the dK/dV kernel (a template argument); kSkipMainKernel only changes what is launched.
inline constexpr uint32_t kStageSkipKernelBits = kSkipMainKernel - 1;

// The profiling build's host entry (launch_template_bwd_sm90.h defines it, csrc/profile/ instantiates and binds
// it): the Hopper backward with the dK/dV kernel variant that skips the stages in kSkip, kSkipMainKernel read from
// `skip`.
template <int kHeadDim, DType kDType, uint32_t kSkip>
void run_bwd_sm90_stages(BwdParams const& params, uint32_t skip, cudaStream_t stream);

}  // namespace sparge::bwd
