// Chooses the compiled forward kernel for a head dim, dtype and path (Hopper wgmma/TMA or portable mma.sync).
#include <cuda_runtime_api.h>

#include <stdexcept>
#include <string>

#include "common/kernel_path.h"
#include "forward/forward_api.h"

namespace sparge::fwd {

ForwardPath resolve_forward_path(FwdParams const& params, ForwardPath path) {
  return resolve_kernel_path(path, sm90_possible(params),
                             "the Hopper forward kernel needs a build with SPARGE_CUDA_ARCHS containing 90a, an "
                             "sm_90 GPU and non-zero strides for q, k, v (this build: " SPARGE_BUILD_ARCHS ")");
}

TailSplit forward_tail_split(int tiles, int tail_splits) {
  return TailSplit::plan(tiles, current_device_sms(), tail_splits);
}

int64_t forward_workspace_words(int tiles, int head_dim, int tail_splits) {
  const TailSplit split = forward_tail_split(tiles, tail_splits);
  const int64_t split_tiles = split.split_tiles(tiles);
  return split_counter_words(split_tiles) + split_tiles * split.parts * split_part_floats(head_dim);
}

void dispatch_attention_forward(FwdParams const& params, DType dtype, ForwardPath path, cudaStream_t stream) {
  const ForwardPath resolved = resolve_forward_path(params, path);
  if (resolved != ForwardPath::kSm90) return launch_on_path("attention_forward", params, dtype, resolved, stream);
  if (params.tile_counter == nullptr)
    throw std::invalid_argument(
        "sparge attention_forward: tile_counter must be the device address of the Hopper kernel's workspace "
        "(forward_workspace_words int32 words) where that kernel runs; got 0");
  if (params.tail_splits < 0 || params.tail_splits > TailSplit::kMaxParts)
    throw std::invalid_argument("sparge attention_forward: tail_splits must be 0 (auto), 1 (none) or 2.." +
                                std::to_string(TailSplit::kMaxParts) + ", got " +
                                std::to_string(params.tail_splits));
  const int tiles = params.batch * params.heads * params.num_q_blocks;
  const int64_t needed = forward_workspace_words(tiles, params.head_dim, params.tail_splits);
  if (params.workspace_words < needed)
    throw std::invalid_argument("sparge attention_forward: workspace_words=" +
                                std::to_string(params.workspace_words) +
                                " (int32 words at tile_counter) is too small: this launch needs " +
                                std::to_string(needed) + " (forward_workspace_words)");
  FwdParams planned = params;
  const TailSplit split = forward_tail_split(tiles, params.tail_splits);
  planned.tail_split_from = split.split_from;
  planned.tail_parts = split.parts;
  planned.split_partials =
      reinterpret_cast<float*>(params.tile_counter + split_counter_words(split.split_tiles(tiles)));
  launch_on_path("attention_forward", planned, dtype, resolved, stream);
}

}  // namespace sparge::fwd
