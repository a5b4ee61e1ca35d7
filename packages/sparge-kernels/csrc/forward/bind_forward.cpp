// Python binding of the block-sparse attention forward: raw device pointers, shapes, element strides and
// the caller's CUDA stream (an integer) in; results written into the caller's buffers. Argument errors
// raise ValueError, CUDA errors RuntimeError.
#include <nanobind/nanobind.h>
#include <nanobind/stl/array.h>
#include <nanobind/stl/string.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "bindings.h"
#include "common/cuda_check.h"
#include "forward/forward_api.h"
#include "forward/params.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

using Strides = std::array<int64_t, 4>;  // (B, H, L, D) element strides

void check_operand(const char* name, uintptr_t ptr, Strides const& s) {
  const std::string n(name);
  SPARGE_REQUIRE(ptr != 0, n + " is a null pointer");
  SPARGE_REQUIRE(s[3] == 1, n + " must have a unit stride in its last (head) dim, got " + std::to_string(s[3]));
  SPARGE_REQUIRE(ptr % 16 == 0, n + " must be 16-byte aligned");
  for (int i = 0; i < 3; ++i) {
    SPARGE_REQUIRE(s[i] % 8 == 0 && s[i] >= 0,
                   n + " strides must be non-negative multiples of 8 elements (16 bytes), got stride[" +
                       std::to_string(i) + "]=" + std::to_string(s[i]));
  }
}

sparge::fwd::DType parse_dtype(std::string const& dtype) {
  if (dtype == "bfloat16") return sparge::fwd::DType::kBFloat16;
  if (dtype == "float16") return sparge::fwd::DType::kFloat16;
  throw std::invalid_argument("dtype must be 'bfloat16' or 'float16' for the CUDA forward, got '" + dtype + "'");
}

sparge::fwd::ForwardPath parse_path(std::string const& path) {
  if (path == "auto") return sparge::fwd::ForwardPath::kAuto;
  if (path == "sm80") return sparge::fwd::ForwardPath::kSm80;
  if (path == "sm90") return sparge::fwd::ForwardPath::kSm90;
  throw std::invalid_argument("path must be 'auto', 'sm80' or 'sm90', got '" + path + "'");
}

void attention_forward(uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t out, uintptr_t lse, uintptr_t kv_count,
                       uintptr_t kv_index, int batch, int heads, int seqlen_q, int seqlen_k, int head_dim,
                       Strides q_stride, Strides k_stride, Strides v_stride, Strides out_stride,
                       std::string const& dtype, int block_q, int block_k, double scale, uintptr_t stream,
                       std::string const& path) {
  SPARGE_REQUIRE(block_q == 128 && block_k == 64,
                 "the CUDA forward supports block_q=128 and block_k=64 only, got block_q=" + std::to_string(block_q) +
                     ", block_k=" + std::to_string(block_k));
  SPARGE_REQUIRE(batch > 0 && heads > 0 && seqlen_q > 0 && seqlen_k > 0,
                 "batch, heads, seqlen_q and seqlen_k must be positive");
  SPARGE_REQUIRE(batch <= 65535 && heads <= 65535, "batch and heads must be at most 65535");
  SPARGE_REQUIRE(std::isfinite(scale) && scale > 0, "scale must be a finite positive number");
  SPARGE_REQUIRE(lse != 0 && kv_count != 0 && kv_index != 0, "lse, kv_count and kv_index must be non-null");
  check_operand("q", q, q_stride);
  check_operand("k", k, k_stride);
  check_operand("v", v, v_stride);
  check_operand("out", out, out_stride);
  const sparge::fwd::DType element = parse_dtype(dtype);

  sparge::fwd::AttentionForwardParams p{};
  p.q = reinterpret_cast<const void*>(q);
  p.k = reinterpret_cast<const void*>(k);
  p.v = reinterpret_cast<const void*>(v);
  p.out = reinterpret_cast<void*>(out);
  p.lse = reinterpret_cast<float*>(lse);
  p.kv_count = reinterpret_cast<const int32_t*>(kv_count);
  p.kv_index = reinterpret_cast<const int32_t*>(kv_index);
  p.batch = batch;
  p.heads = heads;
  p.seqlen_q = seqlen_q;
  p.seqlen_k = seqlen_k;
  p.head_dim = head_dim;
  p.num_q_blocks = (seqlen_q + block_q - 1) / block_q;
  p.num_k_blocks = (seqlen_k + block_k - 1) / block_k;
  p.q_batch_stride = q_stride[0], p.q_head_stride = q_stride[1], p.q_row_stride = q_stride[2];
  p.k_batch_stride = k_stride[0], p.k_head_stride = k_stride[1], p.k_row_stride = k_stride[2];
  p.v_batch_stride = v_stride[0], p.v_head_stride = v_stride[1], p.v_row_stride = v_stride[2];
  p.o_batch_stride = out_stride[0], p.o_head_stride = out_stride[1], p.o_row_stride = out_stride[2];
  p.scale = static_cast<float>(scale);
  p.scale_log2 = static_cast<float>(scale * 1.4426950408889634);
  sparge::fwd::dispatch_attention_forward(p, element, parse_path(path), reinterpret_cast<cudaStream_t>(stream));
}

}  // namespace

void bind_attention_forward(nb::module_& m) {
  m.def("attention_forward", &attention_forward, "q"_a, "k"_a, "v"_a, "out"_a, "lse"_a, "kv_count"_a, "kv_index"_a,
        "batch"_a, "heads"_a, "seqlen_q"_a, "seqlen_k"_a, "head_dim"_a, "q_stride"_a, "k_stride"_a, "v_stride"_a,
        "out_stride"_a, "dtype"_a, "block_q"_a, "block_k"_a, "scale"_a, "stream"_a, "path"_a = "auto",
        "Block-sparse attention forward over (B, H, L, D) strided device buffers. Writes out (q's dtype) and "
        "lse (float32, contiguous (B, H, Lq)); kv_count (B, H, Nq) and kv_index (B, H, Nq, Nk) are contiguous "
        "int32. Asynchronous on `stream` (a cudaStream_t as an integer). `path`: 'auto' (Hopper wgmma/TMA kernel "
        "on sm_90 when built for 90a, else the portable one), 'sm80' or 'sm90'.");
}
