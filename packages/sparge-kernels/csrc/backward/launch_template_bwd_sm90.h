// Launch template of the Hopper backward: preprocess (the SM80 path's), the warp-specialised dK/dV kernel with
// dQ accumulation into the fp32 buffer (TMA descriptors built here), then the dQ conversion: row-major after the
// atomic mode, fragment order after the bulk mode (p.dq_bulk_reduce, KernelOptions.dq_accumulate == "bulk").
// p.tile_counter set (KernelOptions.backward_schedule == "persistent"): the dK/dV kernel runs one CTA per SM, taking
// key blocks from that counter, zeroed here on the stream.
// dS spill mode (p.ds_spill set): preprocess, the pair numbering (spill_pairs_kernel), the dK/dV kernel spilling
// dS (bulk dQ for key blocks that do not fit), then the dQ kernel (kernel_bwd_dq_sm90.h) instead of the convert.
// Deterministic mode (wherever the Hopper path runs, dispatch_backward.cpp): preprocess, the dK/dV kernel without
// dQ (one CTA per key block), then the SM80 per-query-block dQ kernel (run_sm80_dq, from the sm80 instantiation
// file).
// Included only by the generated csrc/instantiations/bwd_hdim<D>_<dtype>_sm90.cu files.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>

#include "backward/backward_api.h"
#include "backward/dq_accumulate_bwd.h"
#include "backward/kernel_bwd_dq_sm90.h"
#include "backward/kernel_traits_bwd_dq_sm90.h"
#include "backward/kernel_bwd_sm90.h"
#include "backward/kernel_traits_bwd_sm90.h"
#include "backward/preprocess_bwd.h"
#include "backward/stage_skip_bwd_sm90.h"
#include "common/cuda_check.h"
#include "common/element_type.h"
#include "common/params.h"
#include "common/tile_scheduler.h"

namespace sparge::bwd {

// A (B, H, L, D) operand as the TMA descriptors see it: (L, D, H, B) with element strides (row, 1, head, batch).
template <class Traits>
auto tma_gmem(void const* ptr, typename Traits::ShapeQKV shape, Strides const& s) {
  using Element = typename Traits::Element;
  return make_tensor(make_gmem_ptr(static_cast<Element const*>(ptr)),
                     make_layout(shape, make_stride(s.row, _1{}, s.head, s.batch)));
}

// Opts `kernel` into smem_bytes of dynamic shared memory and launches it; `what` names the launch in errors.
template <class Params>
void launch_with_smem(void (*kernel)(Params), dim3 grid, int threads, int smem_bytes, Params const& kp,
                      cudaStream_t stream, const char* what) {
  SPARGE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes));
  kernel<<<grid, threads, smem_bytes, stream>>>(kp);
  if (const cudaError_t err = cudaGetLastError(); err != cudaSuccess) throw_cuda_error(err, what, __FILE__, __LINE__);
}

// The spill mode's dQ kernel: one CTA per (query block, head, batch), or (p.tile_counter set, the persistent
// schedule) one per SM taking query blocks from that counter, zeroed again here after the dK/dV kernel's use.
template <class Traits>
void launch_dq_sm90(BwdParams const& p, cudaStream_t stream) {
  constexpr int kSmemBytes = Traits::kSmemBytes;
  typename Traits::ShapeQKV shape_k = make_shape(p.seqlen_k, Int<Traits::kHeadDim>{}, p.heads, p.batch);
  KernelParamsBwdDqSm90<Traits> kp{
      p,
      make_tma_copy(SM90_TMA_LOAD{}, tma_gmem<Traits>(p.k, shape_k, p.k_stride),
                    take<0, 2>(typename Traits::SmemLayoutK{}), typename Traits::TileKV{}, _1{}),
      shape_k,
  };
  if (p.tile_counter != nullptr) {
    launch_with_smem(&attention_backward_dq_sm90_kernel<Traits, /*kPersistent=*/true>,
                     dq_tile_scheduler(p).prepare_launch(stream), Traits::kNThreads, kSmemBytes, kp, stream,
                     "launch of sparge backward dQ (sm90, spilled dS, persistent)");
  } else {
    launch_with_smem(&attention_backward_dq_sm90_kernel<Traits, /*kPersistent=*/false>,
                     StaticTileScheduler::grid(p.num_q_blocks, p.heads, p.batch), Traits::kNThreads, kSmemBytes, kp,
                     stream, "launch of sparge backward dQ (sm90, spilled dS)");
  }
}

// The dK/dV kernel: one CTA per key block, or (p.tile_counter set) one per SM taking key blocks from that counter,
// zeroed here on the stream. Profiling variants (kSkipStages != 0) are never given a counter, so only the
// production kernels are instantiated persistent.
template <class Traits>
void launch_dkdv_sm90(KernelParamsBwdSm90<Traits> const& kp, cudaStream_t stream) {
  BwdParams const& p = kp.args;
  constexpr int kSmemBytes = Traits::kSmemBytes;
  if constexpr (Traits::kSkipStages == 0) {
    if (p.tile_counter != nullptr) {
      launch_with_smem(&attention_backward_sm90_kernel<Traits, /*kPersistent=*/true>,
                       bwd_tile_scheduler(p).prepare_launch(stream), Traits::kNThreads, kSmemBytes, kp, stream,
                       "launch of sparge backward dK/dV (sm90, persistent)");
      return;
    }
  } else if (p.tile_counter != nullptr) {
    throw std::invalid_argument("sparge attention_backward: the profiling variants have no persistent schedule");
  }
  launch_with_smem(&attention_backward_sm90_kernel<Traits, /*kPersistent=*/false>,
                   StaticTileScheduler::grid(p.num_k_blocks, p.heads, p.batch), Traits::kNThreads, kSmemBytes, kp,
                   stream, "launch of sparge backward dK/dV (sm90)");
}

// The three launches for one traits type (KernelTraitsBwdSm90, or a profiling KernelTraitsBwdSm90Stages);
// launch_main = false leaves out the dK/dV kernel (profiling: the fixed cost of the other two).
// Deterministic (p.deterministic, Traits without the dQ GEMM): no dQ accumulator and no conversion.
template <class Traits>
void launch_bwd_sm90(BwdParams const& p, cudaStream_t stream, bool launch_main = true) {
  using Element = typename Traits::Element;
  constexpr int kHeadDim = Traits::kHeadDim;
  using Shape4 = typename Traits::ShapeQKV;
  constexpr bool kComputesDq = !(Traits::kSkipStages & kSkipDqGemm);
  const bool mode_ok = p.deterministic ? (!kComputesDq || Traits::kDsSpill) : p.dq_accum != nullptr;
  if (!mode_ok) {
    throw std::invalid_argument(
        "sparge attention_backward: the Hopper deterministic mode runs the dK/dV kernel without dQ (or spilling "
        "dS), the default mode the one with dQ into dq_accum");
  }
  if (Traits::kDsSpill != (p.ds_spill != nullptr)) {
    throw std::invalid_argument("sparge attention_backward: the dS spill kernels need the spill buffer, and only they");
  }
  launch_preprocess<kHeadDim, Element>(p, stream);
  if constexpr (Traits::kDsSpill) launch_spill_pairs<kHeadDim>(p, stream);  // zeroes the dq_accum blocks it uses

  Shape4 shape_q = make_shape(p.seqlen_q, Int<kHeadDim>{}, p.heads, p.batch);
  Shape4 shape_k = make_shape(p.seqlen_k, Int<kHeadDim>{}, p.heads, p.batch);
  auto gmem = [](void const* ptr, Shape4 shape, Strides const& s) { return tma_gmem<Traits>(ptr, shape, s); };
  auto smem_q = take<0, 2>(typename Traits::SmemLayoutQ{});
  auto smem_kv = typename Traits::SmemLayoutKV{};
  KernelParamsBwdSm90<Traits> kp{
      p,
      make_tma_copy(SM90_TMA_LOAD{}, gmem(p.q, shape_q, p.q_stride), smem_q, typename Traits::TileQ{}, _1{}),
      make_tma_copy(SM90_TMA_LOAD{}, gmem(p.dout, shape_q, p.dout_stride), smem_q, typename Traits::TileQ{}, _1{}),
      make_tma_copy(SM90_TMA_LOAD{}, gmem(p.k, shape_k, p.k_stride), smem_kv, typename Traits::TileKV{}, _1{}),
      make_tma_copy(SM90_TMA_LOAD{}, gmem(p.v, shape_k, p.v_stride), smem_kv, typename Traits::TileKV{}, _1{}),
      shape_q,
      shape_k,
  };
  if (launch_main) launch_dkdv_sm90<Traits>(kp, stream);
  if constexpr (Traits::kDsSpill) {  // deterministic: the query blocks that spilled all their tiles (run_sm90)
    launch_dq_sm90<KernelTraitsBwdDqSm90<kHeadDim, Element>>(p, stream);
    return;
  }
  if (p.deterministic) return;

  if constexpr (Traits::kDqBulk) {
    constexpr int kM = Traits::kBlockM;
    constexpr int kThreads = Traits::kNumMmaThreads;
    auto convert = dq_convert_fragment_order_kernel<typename Traits::TiledMmadQ, kM, kHeadDim, kThreads, Element>;
    convert<<<dim3(unsigned((p.seqlen_q + kM - 1) / kM), p.heads, p.batch), kThreads, 0, stream>>>(p);
    SPARGE_CHECK_LAUNCH("sparge backward dQ convert (fragment order, sm90)");
  } else {
    launch_dq_convert_rowmajor<kHeadDim, Element>(p, stream);
  }
}

// dq_bulk_reduce (the default; KernelOptions.dq_accumulate "bulk" or "spill") picks the bulk reduce-add dQ kernel,
// otherwise the 8-byte atomics; both non-deterministic. ds_spill: the spill kernels. Deterministic: dK/dV here, dQ
// by the SM80 kernel; with ds_spill, the spill kernels make the dQ of query blocks whose key blocks all spilled
// and the SM80 kernel that of the others (spill_pairs_kernel marks them), each in its fixed order.
template <int kHeadDim, DType kDType>
void run_sm90(BwdParams const& p, cudaStream_t stream) {
  if (p.deterministic && p.ds_spill != nullptr) {
    launch_bwd_sm90<KernelTraitsBwdSm90<kHeadDim, ElementOf<kDType>, /*kDqBulk=*/true, /*kDsSpill=*/true>>(p, stream);
    run_sm80_dq<kHeadDim, kDType>(p, stream);
    return;
  }
  if (p.deterministic) {
    BwdParams one_cta_per_key_block = p;
    one_cta_per_key_block.tile_counter = nullptr;
    launch_bwd_sm90<KernelTraitsBwdSm90DkvOnly<kHeadDim, ElementOf<kDType>>>(one_cta_per_key_block, stream);
    run_sm80_dq<kHeadDim, kDType>(p, stream);
    return;
  }
  if (p.ds_spill != nullptr) {
    launch_bwd_sm90<KernelTraitsBwdSm90<kHeadDim, ElementOf<kDType>, /*kDqBulk=*/true, /*kDsSpill=*/true>>(p, stream);
  } else if (p.dq_bulk_reduce) {
    launch_bwd_sm90<KernelTraitsBwdSm90<kHeadDim, ElementOf<kDType>, /*kDqBulk=*/true>>(p, stream);
  } else {
    launch_bwd_sm90<KernelTraitsBwdSm90<kHeadDim, ElementOf<kDType>, /*kDqBulk=*/false>>(p, stream);
  }
}

// Profiling builds only (SPARGE_PROFILE_STAGES, csrc/profile/): the backward with the dK/dV kernel variant that
// skips the kernel bits of kSkip (backward/stage_skip_bwd_sm90.h); kSkipMainKernel in `skip` leaves it out.
template <int kHeadDim, DType kDType, uint32_t kSkip>
void run_bwd_sm90_stages(BwdParams const& p, uint32_t skip, cudaStream_t stream) {
  launch_bwd_sm90<KernelTraitsBwdSm90Stages<kHeadDim, ElementOf<kDType>, kSkip>>(p, stream,
                                                                                 !(skip & kSkipMainKernel));
}

}  // namespace sparge::bwd
