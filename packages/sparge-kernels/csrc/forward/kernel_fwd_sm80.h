// The portable forward kernel: one CTA per (query block of 128 rows, head, batch), composed of the
// mainloop (kept key blocks only), online softmax and epilogue.
#pragma once

#include <cute/tensor.hpp>

#include "common/params.h"
#include "common/tile_scheduler.h"
#include "common/utils.h"
#include "forward/epilogue_fwd_sm80.h"
#include "forward/mainloop_fwd_sm80.h"
#include "forward/softmax.h"

namespace sparge::fwd {

using namespace cute;

template <class Traits>
__global__ void __launch_bounds__(Traits::kNThreads, 2)
    attention_forward_sm80_kernel(__grid_constant__ const FwdParams params) {
  extern __shared__ __align__(128) char smem[];
  const TileCoord tile = StaticTileScheduler::tile();

  typename Traits::TiledMma tiled_mma;
  Tensor acc_o = partition_fragment_C(tiled_mma, Shape<Int<Traits::kBlockM>, Int<Traits::kHeadDim>>{});
  clear(acc_o);
  constexpr int kRowsPerThread = decltype(size<0>(accumulator_as_rowcol(acc_o.layout())))::value;
  OnlineSoftmax<kRowsPerThread> softmax(params.scale_log2);

  MainloopFwdSm80<Traits>::run(params, tile, smem, acc_o, softmax);

  Tensor acc_o_rowcol = make_tensor(acc_o.data(), accumulator_as_rowcol(acc_o.layout()));
  auto lse = softmax.finalize(acc_o_rowcol, params.scale);
  EpilogueFwd<Traits>::store(params, tile, smem, acc_o, lse);
}

}  // namespace sparge::fwd
