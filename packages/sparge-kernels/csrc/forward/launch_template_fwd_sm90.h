// Launch template of the Hopper forward: builds the TMA descriptors on the host, zeroes the tile counter on the
// stream and launches the persistent kernel, one CTA per SM.
// Included only by the generated csrc/instantiations/fwd_hdim<D>_<dtype>_sm90.cu files.
#pragma once

#include <cuda_runtime.h>

#include "common/cuda_check.h"
#include "common/element_type.h"
#include "forward/forward_api.h"
#include "forward/kernel_fwd_sm90.h"
#include "forward/kernel_traits_fwd_sm90.h"

namespace sparge::fwd {

template <int kHeadDim, DType kDType>
void run_sm90(FwdParams const& p, cudaStream_t stream) {
  using Traits = KernelTraitsSm90<kHeadDim, ElementOf<kDType>>;
  using Element = typename Traits::Element;
  using Shape4 = typename Traits::ShapeQKV;
  Shape4 shape_q = make_shape(p.seqlen_q, Int<kHeadDim>{}, p.heads, p.batch);
  Shape4 shape_k = make_shape(p.seqlen_k, Int<kHeadDim>{}, p.heads, p.batch);
  auto gmem = [](void const* ptr, Shape4 shape, int64_t row, int64_t head, int64_t batch) {
    return make_tensor(make_gmem_ptr(static_cast<Element const*>(ptr)),
                       make_layout(shape, make_stride(row, _1{}, head, batch)));
  };
  KernelParamsSm90<Traits> kp{
      p,
      make_tma_copy(SM90_TMA_LOAD{}, gmem(p.q, shape_q, p.q_stride.row, p.q_stride.head, p.q_stride.batch),
                    typename Traits::SmemLayoutQ{}, typename Traits::TileQ{}, _1{}),
      make_tma_copy(SM90_TMA_LOAD{}, gmem(p.k, shape_k, p.k_stride.row, p.k_stride.head, p.k_stride.batch),
                    typename Traits::SmemLayoutKVHalf{}, typename Traits::TileKV{}, _1{}),
      make_tma_copy(SM90_TMA_LOAD{}, gmem(p.v, shape_k, p.v_stride.row, p.v_stride.head, p.v_stride.batch),
                    typename Traits::SmemLayoutKVHalf{}, typename Traits::TileKV{}, _1{}),
      shape_q,
      shape_k,
  };
  constexpr int kSmemBytes = Traits::kSmemBytes;
  auto kernel = &attention_forward_sm90_kernel<Traits>;
  SPARGE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes));
  kernel<<<fwd_tile_scheduler(p).prepare_launch(stream), Traits::kNThreads, kSmemBytes, stream>>>(kp);
  SPARGE_CHECK_LAUNCH("attention_forward_sm90_kernel");
}

}  // namespace sparge::fwd
