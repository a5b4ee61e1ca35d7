// Python entry points of the mask-prediction kernels in sparge_kernels._C. Tensors arrive through the one tensor
// caster (common/tensor_caster.h: device pointer, dtype, shape, element strides); sizes, leading dims and the
// input dtype come from them. The stream is torch's `cuda_stream` integer. cuda_mask.py is the torch glue:
// `mask_predict` runs everything, the three stage functions exist for tests and benchmarks.
#include <nanobind/nanobind.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>

#include "bindings.h"
#include "common/tensor.h"
#include "common/tensor_caster.h"
#include "mask/mask_launch.h"
#include "mask/mask_workspace.h"

namespace nb = nanobind;
using namespace nb::literals;
using sparge::TensorArg;

namespace {

// The mask kernels read a (B, H, L, D) input through its (B, H, L) strides (D stride 1, checked in pool_params)
// and index every other buffer as contiguous: only ranks are checked here, so the sizes below exist.
void require_rank(const char* name, TensorArg const& t, int rank) {
  if (t.rank != rank) {
    throw std::invalid_argument(std::string("sparge mask prediction: ") + name + " must have " + std::to_string(rank) +
                                " dims, got " + std::to_string(t.rank));
  }
}

// Every launch from Python covers all batches and all heads of the (B, H, ...) tensor t (launch_predict splits
// the heads into groups itself): what the three kernels' params say alike.
template <class Params>
void cover_all_heads(Params& p, TensorArg const& t) {
  p.batch = int(t.size(0));
  p.heads = int(t.size(1));
  p.head_begin = 0;
  p.group_heads = p.heads;
}

sparge::mask::StridedTokens tokens(TensorArg const& t, int block) {
  const int length = int(t.size(2));
  return {t.data, t.stride[0], t.stride[1], t.stride[2], length, block, block > 0 ? (length + block - 1) / block : 0};
}

// q, k: (B, H, L, D); q_pooled (B, H, Nq, D); k_pooled_t (B, H, D, k_ld).
sparge::mask::PoolParams pool_params(TensorArg const& q, TensorArg const& k, int block_q, int block_k,
                                     TensorArg const& q_pooled, TensorArg const& k_pooled_t) {
  require_rank("q", q, 4);
  require_rank("k", k, 4);
  require_rank("k_pooled_t", k_pooled_t, 4);
  for (auto [name, t] : {std::pair<const char*, TensorArg const*>{"q", &q}, {"k", &k}}) {
    if (t->stride[3] != 1) {  // the kernels read D contiguously: another stride would be a silent wrong answer
      throw std::invalid_argument(std::string("sparge mask prediction: ") + name +
                                  " must have unit stride along D (its last dim), got " + std::to_string(t->stride[3]));
    }
  }
  sparge::mask::PoolParams p{};
  p.q = tokens(q, block_q);
  p.k = tokens(k, block_k);
  cover_all_heads(p, q);
  p.head_dim = int(q.size(3));
  p.q_pooled = q_pooled.ptr<float>();
  p.k_pooled_t = k_pooled_t.ptr<float>();
  p.k_ld = int(k_pooled_t.size(-1));
  return p;
}

// q_pooled (B, H, Nq, D); kv_count (B, H, Nq); kv_index (B, H, Nq, Nk); row_bits (B, H, Nq, bits_ld).
sparge::mask::SelectParams select_params(TensorArg const& q_pooled, TensorArg const& k_pooled_t, float scale,
                                         int topk_count, float topp, int compact, int tensor_scores,
                                         int register_rows, TensorArg const& kv_count, TensorArg const& kv_index,
                                         TensorArg const& row_bits) {
  require_rank("q_pooled", q_pooled, 4);
  require_rank("k_pooled_t", k_pooled_t, 4);
  require_rank("kv_index", kv_index, 4);
  require_rank("row_bits", row_bits, 4);
  sparge::mask::SelectParams p{};
  p.q_pooled = q_pooled.ptr<const float>();
  p.k_pooled_t = k_pooled_t.ptr<const float>();
  p.k_ld = int(k_pooled_t.size(-1));
  cover_all_heads(p, q_pooled);
  p.head_dim = int(q_pooled.size(3));
  p.num_q_blocks = int(q_pooled.size(2));
  p.num_k_blocks = int(kv_index.size(3));
  p.scale = scale;
  p.topk_count = topk_count;
  p.topp = topp;
  p.compact = compact;
  p.tensor_scores = tensor_scores;
  p.register_rows = register_rows;
  p.kv_count = kv_count.ptr<int32_t>();
  p.kv_index = kv_index.ptr<int32_t>();
  p.row_bits = row_bits.ptr<uint32_t>();
  p.bits_ld = int(row_bits.size(-1));
  return p;
}

// row_bits (B, H, Nq, bits_ld); q_count (B, H, Nk); q_index (B, H, Nk, Nq).
sparge::mask::TransposeParams transpose_params(TensorArg const& row_bits, TensorArg const& q_count,
                                               TensorArg const& q_index) {
  require_rank("row_bits", row_bits, 4);
  require_rank("q_count", q_count, 3);
  sparge::mask::TransposeParams p{};
  p.row_bits = row_bits.ptr<const uint32_t>();
  p.bits_ld = int(row_bits.size(-1));
  cover_all_heads(p, row_bits);
  p.num_q_blocks = int(row_bits.size(2));
  p.num_k_blocks = int(q_count.size(2));
  p.q_count = q_count.ptr<int32_t>();
  p.q_index = q_index.ptr<int32_t>();
  return p;
}

// The contiguous (B, H, rows, cols) view of the workspace that starts `offset` floats in.
TensorArg workspace_view(TensorArg const& workspace, int64_t offset, sparge::DType dtype, int64_t b, int64_t h,
                         int64_t rows, int64_t cols) {
  TensorArg t{};
  t.data = static_cast<float*>(workspace.data) + offset;
  t.dtype = dtype;
  t.rank = 4;
  t.shape = {b, h, rows, cols};
  t.stride = {h * rows * cols, rows * cols, cols, 1};
  return t;
}

}  // namespace

void bind_mask_prediction(nb::module_& m) {
  m.attr("mask_max_head_dim") = sparge::mask::kMaxHeadDim;

  m.def(
      "mask_workspace_layout",
      [](int64_t b, int64_t h, int64_t nq, int64_t nk, int64_t d) {
        const auto w = sparge::mask::workspace_layout(b, h, nq, nk, d);
        return nb::make_tuple(w.total, w.q_pooled, w.k_pooled_t, w.row_bits, w.k_ld, w.words, w.counters);
      },
      "b"_a, "h"_a, "nq"_a, "nk"_a, "d"_a,
      "(total floats, q_pooled offset, k_pooled_t offset, row_bits offset, k_ld, words, counters offset) of the one "
      "float32 buffer that holds the mask prediction's intermediates.");
  m.def(
      "mask_predict",
      [](TensorArg const& q, TensorArg const& k, int block_q, int block_k, float scale, int topk_count, float topp,
         int compact, TensorArg const& workspace, TensorArg const& kv_count, TensorArg const& kv_index,
         TensorArg const& q_count, TensorArg const& q_index, int head_groups, int rows_per_cta, int tail_rows_per_cta,
         std::uintptr_t stream, int tensor_scores, int register_rows, int fused) {
        require_rank("q", q, 4);
        require_rank("kv_index", kv_index, 4);
        require_rank("k", k, 4);
        const int64_t b = q.size(0), h = q.size(1), d = q.size(3), nq = kv_index.size(2), nk = kv_index.size(3);
        if (block_q <= 0 || block_k <= 0 || nq != (q.size(2) + block_q - 1) / block_q ||
            nk != (k.size(2) + block_k - 1) / block_k) {
          throw std::invalid_argument("sparge mask prediction: kv_index must be (B, H, ceil(Lq / block_q), "
                                      "ceil(Lk / block_k)) for positive block sizes");
        }
        const auto w = sparge::mask::workspace_layout(b, h, nq, nk, d);
        if (workspace.rank != 1 || workspace.dtype != sparge::DType::kFloat32 || workspace.stride[0] != 1 ||
            workspace.size(0) < w.total) {
          throw std::invalid_argument("sparge mask prediction: workspace must be a contiguous float32 vector of at "
                                      "least mask_workspace_layout(...)[0] = " + std::to_string(w.total) +
                                      " elements");
        }
        using sparge::DType;
        const TensorArg q_pooled = workspace_view(workspace, w.q_pooled, DType::kFloat32, b, h, nq, d);
        const TensorArg k_pooled_t = workspace_view(workspace, w.k_pooled_t, DType::kFloat32, b, h, d, w.k_ld);
        const TensorArg row_bits = workspace_view(workspace, w.row_bits, DType::kInt32, b, h, nq, w.words);
        sparge::mask::launch_predict(
            pool_params(q, k, block_q, block_k, q_pooled, k_pooled_t),
            select_params(q_pooled, k_pooled_t, scale, topk_count, topp, compact, tensor_scores, register_rows,
                          kv_count, kv_index, row_bits),
            transpose_params(row_bits, q_count, q_index), q.dtype, head_groups, rows_per_cta, tail_rows_per_cta,
            fused, reinterpret_cast<uint32_t*>(static_cast<float*>(workspace.data) + w.counters), stream);
      },
      "q"_a, "k"_a, "block_q"_a, "block_k"_a, "scale"_a, "topk_count"_a, "topp"_a, "compact"_a, "workspace"_a,
      "kv_count"_a, "kv_index"_a, "q_count"_a, "q_index"_a, "head_groups"_a, "rows_per_cta"_a,
      "tail_rows_per_cta"_a, "stream"_a, "tensor_scores"_a = 0, "register_rows"_a = 0, "fused"_a = 0,
      "Whole mask prediction: pool, select, transpose; head_groups > 1 overlaps selection with pooling on a "
      "high-priority side stream; fused 1 (where the inputs allow) or 2 (else ValueError) pools and selects in one "
      "persistent launch instead. q, k: float16, bfloat16 or float32 (B, H, L, D) with unit stride along D; "
      "workspace: the float32 buffer of mask_workspace_layout.");
  m.def(
      "mask_pool_blocks",
      [](TensorArg const& q, TensorArg const& k, int block_q, int block_k, TensorArg const& q_pooled,
         TensorArg const& k_pooled_t, std::uintptr_t stream) {
        sparge::mask::launch_pool_blocks(pool_params(q, k, block_q, block_k, q_pooled, k_pooled_t), q.dtype, stream);
      },
      "q"_a, "k"_a, "block_q"_a, "block_k"_a, "q_pooled"_a, "k_pooled_t"_a, "stream"_a,
      "Stage 1: block means of Q (B,H,Lq,D) and K into q_pooled (B,H,Nq,D) and k_pooled_t (B,H,D,k_ld), fp32.");

  m.def(
      "mask_select_blocks",
      [](TensorArg const& q_pooled, TensorArg const& k_pooled_t, float scale, int topk_count, float topp, int compact,
         TensorArg const& kv_count, TensorArg const& kv_index, TensorArg const& row_bits, int rows_per_cta,
         std::uintptr_t stream, int tensor_scores, int register_rows) {
        sparge::mask::launch_select_blocks(select_params(q_pooled, k_pooled_t, scale, topk_count, topp, compact,
                                                         tensor_scores, register_rows, kv_count, kv_index, row_bits),
                                           rows_per_cta, stream);
      },
      "q_pooled"_a, "k_pooled_t"_a, "scale"_a, "topk_count"_a, "topp"_a, "compact"_a, "kv_count"_a, "kv_index"_a,
      "row_bits"_a, "rows_per_cta"_a, "stream"_a, "tensor_scores"_a = 0, "register_rows"_a = 0,
      "Stage 2: scores, softmax, hybrid Top-k/Top-p: kv_count (B,H,Nq), kv_index (B,H,Nq,Nk), row_bits.");

  m.def(
      "mask_transpose",
      [](TensorArg const& row_bits, TensorArg const& q_count, TensorArg const& q_index, std::uintptr_t stream) {
        sparge::mask::launch_transpose_mask(transpose_params(row_bits, q_count, q_index), stream);
      },
      "row_bits"_a, "q_count"_a, "q_index"_a, "stream"_a,
      "Stage 3: q_count (B,H,Nk) and q_index (B,H,Nk,Nq) from row_bits.");
}
