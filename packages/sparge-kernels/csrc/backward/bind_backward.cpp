// Python entry of the block-sparse attention backward: sparge_kernels._C.attention_backward(...).
// Tensors arrive through the one tensor caster (common/tensor_caster.h: device pointer, dtype, shape, element
// strides); sizes and the element type come from them. The torch glue (cuda_backward.py) allocates outputs and
// workspace and passes the caller's current stream. Bad arguments raise ValueError (std::invalid_argument).
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include <array>
#include <climits>
#include <cstdint>
#include <string>
#include <utility>

#include "backward/backward_api.h"
#include "bindings.h"
#include "common/attention_args.h"
#include "common/kernel_path.h"
#include "common/params.h"
#include "common/tensor.h"
#include "common/tensor_caster.h"

namespace nb = nanobind;
using namespace nb::literals;

using sparge::TensorArg;

sparge::BwdParams sparge::bwd::backward_params(const char* who, TensorArg const& q, TensorArg const& k,
                                               TensorArg const& v, TensorArg const& out, TensorArg const& dout,
                                               TensorArg const& lse, TensorArg const& dlse, TensorArg const& kv_count,
                                               TensorArg const& kv_index, TensorArg const& q_count,
                                               TensorArg const& q_index, TensorArg const& dq, TensorArg const& dk,
                                               TensorArg const& dv, TensorArg const& lse_log2,
                                               TensorArg const& delta, TensorArg const& dq_accum, int block_q,
                                               int block_k, double scale, bool deterministic, bool dq_bulk_reduce) {
  sparge::BwdParams p{};
  sparge::set_attention_params(p, who, q, k, v, out, lse, kv_count, kv_index, block_q, block_k, scale);
  // What the backward adds: dO and the gradients (attention operands), the transposed mask and the workspace.
  for (auto [name, t] : {std::pair<const char*, TensorArg const*>{"dout", &dout}, {"dq", &dq}, {"dk", &dk},
                         {"dv", &dv}}) {
    sparge::check_attention_operand(who, name, *t);
  }
  for (auto [name, t] : {std::pair<const char*, TensorArg const*>{"lse", &lse}, {"kv_count", &kv_count},
                         {"kv_index", &kv_index}, {"q_count", &q_count}, {"q_index", &q_index},
                         {"lse_log2", &lse_log2}, {"delta", &delta}, {"dlse", &dlse}, {"dq_accum", &dq_accum}}) {
    const bool optional = t == &dlse || (t == &dq_accum && deterministic);
    sparge::check_buffer(who, name, *t, optional);
    // The kernels index these as row-major arrays: a strided view (e.g. a head slice with B > 1) would be read
    // as the wrong elements.
    if (!t->is_none() && !sparge::is_contiguous(*t)) {
      throw std::invalid_argument(std::string(who) + ": " + name + " must be contiguous");
    }
  }

  p.dout = dout.data;
  p.dout_stride = dout.bhl_strides();
  p.dlse = dlse.ptr<const float>();
  p.q_count = q_count.ptr<const int32_t>();
  p.q_index = q_index.ptr<const int32_t>();
  p.dq = dq.data;
  p.dk = dk.data;
  p.dv = dv.data;
  p.dq_stride = dq.bhl_strides();
  p.dk_stride = dk.bhl_strides();
  p.dv_stride = dv.bhl_strides();
  p.lse_log2 = lse_log2.ptr<float>();
  p.delta = delta.ptr<float>();
  p.dq_accum = dq_accum.ptr<float>();
  p.padded_q = int64_t(p.num_q_blocks) * block_q;
  p.deterministic = deterministic;
  p.dq_bulk_reduce = dq_bulk_reduce;
  return p;
}

namespace {

// The dS spill buffers (all three or none): ds_spill (pairs, block_q, block_k) of q's dtype, contiguous;
// q_end (B, H, Nk) and kv_pair (B, H, Nq, Nk) int32.
void set_ds_spill(sparge::BwdParams& p, const char* who, sparge::DType dtype, int tile_rows, int tile_cols,
                  TensorArg const& ds_spill, TensorArg const& q_end, TensorArg const& kv_pair) {
  const bool any = !ds_spill.is_none() || !q_end.is_none() || !kv_pair.is_none();
  if (!any) return;
  const std::string w = std::string(who) + ": ";
  if (ds_spill.is_none() || q_end.is_none() || kv_pair.is_none()) {
    throw std::invalid_argument(w + "ds_spill, q_end and kv_pair go together (all three or none)");
  }
  sparge::check_buffer(who, "ds_spill", ds_spill);
  sparge::check_buffer(who, "q_end", q_end);
  sparge::check_buffer(who, "kv_pair", kv_pair);
  if (ds_spill.dtype != dtype || ds_spill.rank != 3 || ds_spill.shape[1] != tile_rows ||
      ds_spill.shape[2] != tile_cols || ds_spill.stride[2] != 1 || ds_spill.stride[1] != tile_cols ||
      ds_spill.stride[0] != tile_rows * tile_cols) {
    throw std::invalid_argument(w + "ds_spill must be a contiguous (pairs, block_q, block_k) tensor of q's dtype");
  }
  const std::array<int64_t, 4> bhnq_nk{p.batch, p.heads, p.num_q_blocks, p.num_k_blocks};
  const bool q_end_ok = q_end.dtype == sparge::DType::kInt32 && q_end.rank == 3 && q_end.shape[0] == p.batch &&
                        q_end.shape[1] == p.heads && q_end.shape[2] == p.num_k_blocks && sparge::is_contiguous(q_end);
  bool kv_pair_ok = kv_pair.dtype == sparge::DType::kInt32 && kv_pair.rank == 4 && sparge::is_contiguous(kv_pair);
  for (int i = 0; i < 4 && kv_pair_ok; ++i) kv_pair_ok = kv_pair.shape[i] == bhnq_nk[i];
  if (!q_end_ok) throw std::invalid_argument(w + "q_end must be a contiguous int32 (B, H, Nk) tensor");
  if (!kv_pair_ok) throw std::invalid_argument(w + "kv_pair must be a contiguous int32 (B, H, Nq, Nk) tensor");
  if (int64_t(p.batch) * p.heads * p.num_q_blocks * p.num_k_blocks > INT32_MAX) {
    throw std::invalid_argument(w + "ds_spill numbers pairs in int32: B * H * Nq * Nk must be below 2^31");
  }
  p.ds_spill = ds_spill.data;
  p.ds_spill_pairs = ds_spill.shape[0];
  p.q_end = q_end.ptr<const int32_t>();
  p.kv_pair = kv_pair.ptr<int32_t>();
}

void attention_backward(TensorArg const& q, TensorArg const& k, TensorArg const& v, TensorArg const& out,
                        TensorArg const& dout, TensorArg const& lse, TensorArg const& dlse,
                        TensorArg const& kv_count, TensorArg const& kv_index, TensorArg const& q_count,
                        TensorArg const& q_index, TensorArg const& dq, TensorArg const& dk, TensorArg const& dv,
                        TensorArg const& lse_log2, TensorArg const& delta, TensorArg const& dq_accum, int block_q,
                        int block_k, double scale, bool deterministic, bool dq_bulk_reduce, uintptr_t stream,
                        std::string const& path, uintptr_t tile_counter, TensorArg const& ds_spill,
                        TensorArg const& q_end, TensorArg const& kv_pair) {
  constexpr const char* kWho = "sparge attention_backward";
  sparge::BwdParams p =
      sparge::bwd::backward_params(kWho, q, k, v, out, dout, lse, dlse, kv_count, kv_index, q_count, q_index, dq,
                                   dk, dv, lse_log2, delta, dq_accum, block_q, block_k, scale, deterministic,
                                   dq_bulk_reduce);
  p.tile_counter = reinterpret_cast<int*>(tile_counter);
  set_ds_spill(p, kWho, q.dtype, block_q, block_k, ds_spill, q_end, kv_pair);
  sparge::bwd::dispatch_backward(p, q.dtype, sparge::parse_kernel_path(path, std::string(kWho) + ": "),
                                 reinterpret_cast<cudaStream_t>(stream));
}

}  // namespace

void bind_attention_backward(nb::module_& m) {
  m.def("attention_backward", &attention_backward, "q"_a, "k"_a, "v"_a, "out"_a, "dout"_a, "lse"_a, "dlse"_a.none(),
        "kv_count"_a, "kv_index"_a, "q_count"_a, "q_index"_a, "dq"_a, "dk"_a, "dv"_a, "lse_log2"_a, "delta"_a,
        "dq_accum"_a.none(), "block_q"_a, "block_k"_a, "scale"_a, "deterministic"_a, "dq_bulk_reduce"_a, "stream"_a,
        "path"_a = "auto", "tile_counter"_a = 0, "ds_spill"_a.none() = nb::none(), "q_end"_a.none() = nb::none(),
        "kv_pair"_a.none() = nb::none(),
        "Block-sparse attention backward on (B, H, L, D) strided device tensors (bf16/fp16; sizes and dtype are "
        "read from q and k): writes dq, dk, dv. lse_log2/delta (B,H,Nq*128) and dq_accum (B,H,Nq*128,D, zeroed; "
        "None when deterministic) are float32 workspace; dlse may be None. dq_bulk_reduce: accumulate dQ with "
        "bulk async reduce-adds (SM >= 90) instead of 8-byte atomics (both the SM80 kernels and the Hopper "
        "kernel; dq_accum's layout then follows the kernel's fragments). path: 'auto' (the Hopper kernel where it "
        "can run, else SM80), 'sm80' or 'sm90' "
        "(warp-specialised wgmma/TMA dK/dV kernel: sm_90 GPU, 90a build); deterministic=True always runs SM80. "
        "tile_counter: 0 (one Hopper dK/dV CTA per key block), or the device address of one int32 on q's device "
        "that the Hopper kernel then takes key blocks from, one CTA per SM (zeroed on `stream` before the "
        "launch; not shared with a launch running at the same time); the SM80 kernels ignore it. "
        "ds_spill, q_end, kv_pair (all or none): the Hopper dS spill mode. ds_spill (pairs, 128, 64) of q's dtype "
        "takes the dS tiles of key blocks whose pairs fit; q_end (B, H, Nk) int32 is the inclusive prefix sum of "
        "q_count over the flattened (B, H, Nk); kv_pair (B, H, Nq, Nk) int32 is workspace. Key blocks that do not "
        "fit add dQ into dq_accum (bulk), or, deterministic, leave their query blocks to the SM80 dQ kernel. With "
        "ds_spill, dq_accum need not be zeroed (the kernels zero the blocks they add into; on the SM80 kernels, "
        "which take the bulk path, the whole buffer).");
}
