// Python binding of the block-sparse attention forward: tensors (common/tensor_caster.h: device pointer, dtype,
// shape, element strides) and the caller's CUDA stream (an integer) in; results written into the caller's
// buffers. Sizes and the element type come from the tensors. Argument errors raise ValueError, CUDA errors
// RuntimeError.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include <cstdint>
#include <string>

#include "bindings.h"
#include "common/attention_args.h"
#include "common/kernel_path.h"
#include "common/params.h"
#include "common/tensor.h"
#include "common/tensor_caster.h"
#include "forward/forward_api.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

using sparge::TensorArg;

void attention_forward(TensorArg const& q, TensorArg const& k, TensorArg const& v, TensorArg const& out,
                       TensorArg const& lse, TensorArg const& kv_count, TensorArg const& kv_index, int block_q,
                       int block_k, double scale, uintptr_t stream, std::string const& path,
                       uintptr_t tile_counter, int64_t workspace_words, int tail_splits) {
  sparge::FwdParams p{};
  sparge::set_attention_params(p, "sparge attention_forward", q, k, v, out, lse, kv_count, kv_index, block_q,
                               block_k, scale);
  p.tile_counter = reinterpret_cast<int*>(tile_counter);
  p.workspace_words = workspace_words;
  p.tail_splits = tail_splits;
  sparge::fwd::dispatch_attention_forward(p, q.dtype, sparge::parse_kernel_path(path, ""),
                                          reinterpret_cast<cudaStream_t>(stream));
}

}  // namespace

void bind_attention_forward(nb::module_& m) {
  m.def("attention_forward", &attention_forward, "q"_a, "k"_a, "v"_a, "out"_a, "lse"_a, "kv_count"_a, "kv_index"_a,
        "block_q"_a, "block_k"_a, "scale"_a, "stream"_a, "path"_a = "auto", "tile_counter"_a = 0,
        "workspace_words"_a = 1, "tail_splits"_a = 0,
        "Block-sparse attention forward over (B, H, L, D) strided device tensors (bf16/fp16; sizes and dtype are "
        "read from q and k). Writes out (q's dtype) and lse (float32, contiguous (B, H, Lq)); kv_count (B, H, Nq) "
        "and kv_index (B, H, Nq, Nk) are contiguous int32. Asynchronous on `stream` (a cudaStream_t as an "
        "integer). `path`: 'auto' (Hopper wgmma/TMA kernel on sm_90 when built for 90a, else the portable one), "
        "'sm80' or 'sm90'. `tile_counter`: the device address of the Hopper kernel's workspace, `workspace_words` "
        "int32 words on q's device (forward_workspace_words; its counters are zeroed on `stream` before the "
        "launch; it must not be shared with a launch running at the same time); 0 is accepted only where the "
        "portable kernel runs. `tail_splits`: the Hopper kernel's split of its last round of tiles by key range "
        "(0 automatic, 1 none, k parts per tile, k <= 16).");
  m.def(
      "forward_workspace_words",
      [](int tiles, int head_dim, int tail_splits) {
        return sparge::fwd::forward_workspace_words(tiles, head_dim, tail_splits);
      },
      "tiles"_a, "head_dim"_a, "tail_splits"_a = 0,
      "int32 words of the Hopper forward's workspace (`tile_counter`) for `tiles` = B x H x Nq query blocks on the "
      "current device.");
  m.def(
      "forward_tail_split",
      [](int tiles, int ctas, int tail_splits) {
        const sparge::TailSplit split = sparge::TailSplit::plan(tiles, ctas, tail_splits);
        return nb::make_tuple(split.split_from, split.parts);
      },
      "tiles"_a, "ctas"_a, "tail_splits"_a = 0,
      "(split_from, parts): the Hopper forward's split of its last round for `tiles` tiles over `ctas` persistent "
      "CTAs: tiles from split_from on run as `parts` key ranges each (parts 1: none).");
}
