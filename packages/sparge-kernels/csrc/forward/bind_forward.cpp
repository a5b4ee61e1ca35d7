// Python binding of the block-sparse attention forward: tensors (common/tensor_caster.h: device pointer, dtype,
// shape, element strides) and the caller's CUDA stream (an integer) in; results written into the caller's
// buffers. Sizes and the element type come from the tensors. Argument errors raise ValueError, CUDA errors
// RuntimeError.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "bindings.h"
#include "common/cuda_check.h"
#include "common/params.h"
#include "common/tensor.h"
#include "common/tensor_caster.h"
#include "forward/forward_api.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

using sparge::TensorArg;

constexpr const char* kWho = "sparge attention_forward";

sparge::fwd::ForwardPath parse_path(std::string const& path) {
  if (path == "auto") return sparge::fwd::ForwardPath::kAuto;
  if (path == "sm80") return sparge::fwd::ForwardPath::kSm80;
  if (path == "sm90") return sparge::fwd::ForwardPath::kSm90;
  throw std::invalid_argument("path must be 'auto', 'sm80' or 'sm90', got '" + path + "'");
}

void attention_forward(TensorArg const& q, TensorArg const& k, TensorArg const& v, TensorArg const& out,
                       TensorArg const& lse, TensorArg const& kv_count, TensorArg const& kv_index, int block_q,
                       int block_k, double scale, uintptr_t stream, std::string const& path) {
  SPARGE_REQUIRE(block_q == 128 && block_k == 64,
                 "the CUDA forward supports block_q=128 and block_k=64 only, got block_q=" + std::to_string(block_q) +
                     ", block_k=" + std::to_string(block_k));
  sparge::check_attention_operand(kWho, "q", q);
  sparge::check_attention_operand(kWho, "k", k);
  sparge::check_attention_operand(kWho, "v", v);
  sparge::check_attention_operand(kWho, "out", out);
  const int batch = int(q.size(0)), heads = int(q.size(1)), seqlen_q = int(q.size(2)), seqlen_k = int(k.size(2));
  SPARGE_REQUIRE(batch > 0 && heads > 0 && seqlen_q > 0 && seqlen_k > 0,
                 "batch, heads, seqlen_q and seqlen_k must be positive");
  SPARGE_REQUIRE(batch <= 65535 && heads <= 65535, "batch and heads must be at most 65535");
  SPARGE_REQUIRE(std::isfinite(scale) && scale > 0, "scale must be a finite positive number");
  SPARGE_REQUIRE(lse.data != nullptr && kv_count.data != nullptr && kv_index.data != nullptr,
                 "lse, kv_count and kv_index must be non-null");
  SPARGE_REQUIRE(q.dtype == sparge::DType::kBFloat16 || q.dtype == sparge::DType::kFloat16,
                 std::string("dtype must be bfloat16 or float16 for the CUDA forward, got ") +
                     sparge::dtype_name(q.dtype));

  sparge::FwdParams p{};
  p.q = q.data;
  p.k = k.data;
  p.v = v.data;
  p.out = out.data;
  p.q_stride = q.bhl_strides();
  p.k_stride = k.bhl_strides();
  p.v_stride = v.bhl_strides();
  p.out_stride = out.bhl_strides();
  p.lse = lse.ptr<float>();
  p.kv_count = kv_count.ptr<const int32_t>();
  p.kv_index = kv_index.ptr<const int32_t>();
  p.batch = batch;
  p.heads = heads;
  p.seqlen_q = seqlen_q;
  p.seqlen_k = seqlen_k;
  p.head_dim = int(q.size(3));
  p.num_q_blocks = (seqlen_q + block_q - 1) / block_q;
  p.num_k_blocks = (seqlen_k + block_k - 1) / block_k;
  p.scale = static_cast<float>(scale);
  p.scale_log2 = static_cast<float>(scale * 1.4426950408889634);
  sparge::fwd::dispatch_attention_forward(p, q.dtype, parse_path(path), reinterpret_cast<cudaStream_t>(stream));
}

}  // namespace

void bind_attention_forward(nb::module_& m) {
  m.def("attention_forward", &attention_forward, "q"_a, "k"_a, "v"_a, "out"_a, "lse"_a, "kv_count"_a, "kv_index"_a,
        "block_q"_a, "block_k"_a, "scale"_a, "stream"_a, "path"_a = "auto",
        "Block-sparse attention forward over (B, H, L, D) strided device tensors (bf16/fp16; sizes and dtype are "
        "read from q and k). Writes out (q's dtype) and lse (float32, contiguous (B, H, Lq)); kv_count (B, H, Nq) "
        "and kv_index (B, H, Nq, Nk) are contiguous int32. Asynchronous on `stream` (a cudaStream_t as an "
        "integer). `path`: 'auto' (Hopper wgmma/TMA kernel on sm_90 when built for 90a, else the portable one), "
        "'sm80' or 'sm90'.");
}
