// Host-side entry points of the forward, free of CuTe so plain C++ (the binding, the dispatch) can use them.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/kernel_path.h"
#include "common/params.h"
#include "common/tail_split.h"

namespace sparge::fwd {

// Which kernel runs: kAuto picks the Hopper (wgmma + TMA) kernel on sm_90 devices when this build has it
// and the strides suit TMA, else the portable mma.sync kernel.
using ForwardPath = KernelPath;

// Picks the kernel for (params.head_dim, dtype, path). Throws std::invalid_argument when that combination
// was not compiled into this build (or kSm90 is asked for where it cannot run).
void dispatch_attention_forward(FwdParams const& params, DType dtype, ForwardPath path,
                                cudaStream_t stream);

// The path kAuto resolves to for these params on the current device.
ForwardPath resolve_forward_path(FwdParams const& params, ForwardPath path);

// The Hopper forward's workspace at FwdParams::tile_counter, in int32 words: the tile counter and the split tiles'
// arrival counts (padded to 16 bytes), then per part of a split tile its partial lse and output (fp32, 128 rows).
constexpr int kForwardBlockM = 128;
inline int64_t split_counter_words(int64_t split_tiles) { return (1 + split_tiles + 3) / 4 * 4; }
inline int64_t split_part_floats(int head_dim) { return int64_t(kForwardBlockM) * (1 + head_dim); }
// For `tiles` query-block tiles (B x H x Nq) on the current device and a tail_splits request.
TailSplit forward_tail_split(int tiles, int tail_splits);
int64_t forward_workspace_words(int tiles, int head_dim, int tail_splits);

}  // namespace sparge::fwd
