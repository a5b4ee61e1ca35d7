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
                       uintptr_t tile_counter) {
  sparge::FwdParams p{};
  sparge::set_attention_params(p, "sparge attention_forward", q, k, v, out, lse, kv_count, kv_index, block_q,
                               block_k, scale);
  p.tile_counter = reinterpret_cast<int*>(tile_counter);
  sparge::fwd::dispatch_attention_forward(p, q.dtype, sparge::parse_kernel_path(path, ""),
                                          reinterpret_cast<cudaStream_t>(stream));
}

}  // namespace

void bind_attention_forward(nb::module_& m) {
  m.def("attention_forward", &attention_forward, "q"_a, "k"_a, "v"_a, "out"_a, "lse"_a, "kv_count"_a, "kv_index"_a,
        "block_q"_a, "block_k"_a, "scale"_a, "stream"_a, "path"_a = "auto", "tile_counter"_a = 0,
        "Block-sparse attention forward over (B, H, L, D) strided device tensors (bf16/fp16; sizes and dtype are "
        "read from q and k). Writes out (q's dtype) and lse (float32, contiguous (B, H, Lq)); kv_count (B, H, Nq) "
        "and kv_index (B, H, Nq, Nk) are contiguous int32. Asynchronous on `stream` (a cudaStream_t as an "
        "integer). `path`: 'auto' (Hopper wgmma/TMA kernel on sm_90 when built for 90a, else the portable one), "
        "'sm80' or 'sm90'. `tile_counter`: the device address of one int32 on q's device, the Hopper kernel's "
        "tile counter (zeroed on `stream` before its launch; it must not be shared with a launch running at the "
        "same time); 0 is accepted only where the portable kernel runs.");
}
