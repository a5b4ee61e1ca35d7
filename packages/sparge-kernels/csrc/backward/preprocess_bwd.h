// Backward preprocess: per query row, delta = rowsum(dO ∘ O) − dlse (the softmax-Jacobian term with lse's own
// gradient folded in) and lse in log2 units. Rows past Lq (padding up to the 128-row block) and rows whose query
// block kept no key (lse = -inf) get lse_log2 = +inf, so P = exp2(S·scale·log2e − lse_log2) is exactly 0 there.
#pragma once

#include <cuda_runtime.h>
#include <cutlass/numeric_types.h>

#include <cmath>

#include "common/cuda_check.h"
#include "common/params.h"

namespace sparge::bwd {

template <int kHeadDim, typename Element>
struct Preprocess {
  static constexpr int kThreads = 256;
  static constexpr int kThreadsPerRow = kHeadDim / 8;  // one 16 B chunk of dO and O per thread
  static constexpr int kRowsPerBlock = kThreads / kThreadsPerRow;
  static_assert(kThreadsPerRow <= 32 && 32 % kThreadsPerRow == 0);
};

template <int kHeadDim, typename Element>
__global__ void __launch_bounds__(256) preprocess_kernel(const BwdParams p) {
  using Cfg = Preprocess<kHeadDim, Element>;
  const int64_t padded = p.padded_q;
  const int64_t total_rows = int64_t(p.batch) * p.heads * padded;
  const int64_t row = int64_t(blockIdx.x) * Cfg::kRowsPerBlock + threadIdx.x / Cfg::kThreadsPerRow;
  const int chunk = threadIdx.x % Cfg::kThreadsPerRow;
  const bool in_range = row < total_rows;
  const int64_t bh = in_range ? row / padded : 0;
  const int i = in_range ? int(row - bh * padded) : 0;
  const int b = int(bh / p.heads), h = int(bh % p.heads);
  const bool real = in_range && i < p.seqlen_q;

  float dot = 0.f;
  if (real) {
    const Element* o = static_cast<const Element*>(p.out) + b * p.out_stride.batch + h * p.out_stride.head +
                       i * p.out_stride.row + chunk * 8;
    const Element* d = static_cast<const Element*>(p.dout) + b * p.dout_stride.batch + h * p.dout_stride.head +
                       i * p.dout_stride.row + chunk * 8;
    const uint4 ov = __ldg(reinterpret_cast<const uint4*>(o));
    const uint4 dv = __ldg(reinterpret_cast<const uint4*>(d));
    const Element* oe = reinterpret_cast<const Element*>(&ov);
    const Element* de = reinterpret_cast<const Element*>(&dv);
#pragma unroll
    for (int e = 0; e < 8; ++e) dot += float(oe[e]) * float(de[e]);
  }
  // The threads of one row are consecutive lanes of one warp.
#pragma unroll
  for (int offset = Cfg::kThreadsPerRow / 2; offset > 0; offset /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, offset);

  if (in_range && chunk == 0) {
    float lse_log2 = INFINITY, delta = 0.f;
    if (real) {
      const int64_t idx = bh * p.seqlen_q + i;
      const float lse = p.lse[idx];
      lse_log2 = (lse == -INFINITY) ? INFINITY : lse * float(M_LOG2E);
      delta = dot - (p.dlse != nullptr ? p.dlse[idx] : 0.f);
    }
    p.lse_log2[row] = lse_log2;
    p.delta[row] = delta;
  }
}

// Launches the preprocess over every padded row of (B, H, Nq * 128); shared by the SM80 and SM90 backward.
template <int kHeadDim, typename Element>
void launch_preprocess(BwdParams const& p, cudaStream_t stream) {
  using Cfg = Preprocess<kHeadDim, Element>;
  const int64_t padded_rows = int64_t(p.batch) * p.heads * p.padded_q;
  const int64_t blocks = (padded_rows + Cfg::kRowsPerBlock - 1) / Cfg::kRowsPerBlock;
  preprocess_kernel<kHeadDim, Element><<<dim3(unsigned(blocks)), Cfg::kThreads, 0, stream>>>(p);
  SPARGE_CHECK_LAUNCH("sparge backward preprocess");
}

}  // namespace sparge::bwd
