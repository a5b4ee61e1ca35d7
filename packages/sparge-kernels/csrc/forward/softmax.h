// Online softmax (FlashAttention-2 style) over the kept key blocks, in the exp2 domain.
// Each thread tracks the running max and (thread-partial) sum of its accumulator rows; the sum is reduced
// across the row's quad only once, at the end.
#pragma once

#include <cute/tensor.hpp>

#include <cmath>

#include "common/block_sparse.h"
#include "common/utils.h"

namespace sparge::fwd {

using namespace cute;

template <int kRows>
struct OnlineSoftmax {
  using RowVector = decltype(make_tensor<float>(Shape<Int<kRows>>{}));
  RowVector row_max;  // running max of the raw (unscaled) scores
  RowVector row_sum;  // running sum of exp2(score * scale_log2 - max * scale_log2), thread-partial
  float scale_log2;

  __device__ explicit OnlineSoftmax(float scale_log2_) : scale_log2(scale_log2_) {
    fill(row_max, -INFINITY);
    fill(row_sum, 0.f);
  }

  // scores: (kRows, cols) raw q·k (masked entries -inf), overwritten with the unnormalised probabilities.
  // Returns each row's factor for the running output (rescale_output), which may be applied later: the Hopper
  // mainloop applies it once the previous stage's O += P·V, in flight meanwhile, has completed.
  template <class Scores>
  __device__ __forceinline__ RowVector update_scores(Scores& scores) {
    static_assert(decltype(size<0>(scores))::value == kRows);
    RowVector rescale;
    CUTE_UNROLL
    for (int mi = 0; mi < kRows; ++mi) {
      float block_max = row_max(mi);
      CUTE_UNROLL
      for (int ni = 0; ni < size<1>(scores); ++ni) block_max = fmaxf(block_max, scores(mi, ni));
      block_max = quad_allreduce(block_max, MaxOp{});
      // A row that has seen only -inf keeps max -inf; use 0 as its offset so exp2 gives 0, never NaN.
      const float max_scaled = block_max == -INFINITY ? 0.f : block_max * scale_log2;
      rescale(mi) = exp2f(row_max(mi) * scale_log2 - max_scaled);  // 0 when the old max is -inf
      row_max(mi) = block_max;
      row_sum(mi) *= rescale(mi);
      float sum = 0.f;
      CUTE_UNROLL
      for (int ni = 0; ni < size<1>(scores); ++ni) {
        const float p = exp2f(scores(mi, ni) * scale_log2 - max_scaled);
        scores(mi, ni) = p;
        sum += p;
      }
      row_sum(mi) += sum;
    }
    return rescale;
  }

  // out: (kRows, head dim) running output, brought to the max of the update_scores call that gave `rescale`.
  template <class Out>
  __device__ __forceinline__ static void rescale_output(Out& out, RowVector const& rescale) {
    CUTE_UNROLL
    for (int mi = 0; mi < kRows; ++mi) {
      CUTE_UNROLL
      for (int di = 0; di < size<1>(out); ++di) out(mi, di) *= rescale(mi);
    }
  }

  // Both at once (the SM80 mainloop).
  template <class Scores, class Out>
  __device__ __forceinline__ void update(Scores& scores, Out& out) {
    rescale_output(out, update_scores(scores));
  }

  // Normalises out and returns each row's log-sum-exp (natural log, of scale·q·k). A row with no kept key
  // (sum 0) gets out = 0 and lse = -inf.
  template <class Out>
  __device__ __forceinline__ RowVector finalize(Out& out, float scale) {
    RowVector lse;
    CUTE_UNROLL
    for (int mi = 0; mi < kRows; ++mi) {
      const float sum = quad_allreduce(row_sum(mi), SumOp{});
      const bool empty = !(sum > 0.f);
      const float inv = empty ? 0.f : 1.f / sum;
      lse(mi) = empty ? -INFINITY : row_max(mi) * scale + logf(sum);
      CUTE_UNROLL
      for (int di = 0; di < size<1>(out); ++di) out(mi, di) *= inv;
    }
    return lse;
  }
};

// Between the forward's two GEMMs, once the score tile is masked: the online softmax takes the tile (rescaling
// acc_o), and P comes back in the element type with the accumulator's layout (the caller views it as the A
// operand of O += P·V).
template <class Element, class Softmax, class AccS, class AccORowCol>
__device__ __forceinline__ auto softmax_probs(Softmax& softmax, AccS& acc_s, AccORowCol& acc_o_rowcol) {
  Tensor scores = make_tensor(acc_s.data(), accumulator_as_rowcol(acc_s.layout()));
  softmax.update(scores, acc_o_rowcol);
  return convert_fragment<Element>(acc_s);
}

// One kept key block (the SM80 mainloop): keys past the sequence end (valid_cols < kBlockN: the tail block) get
// -inf, then softmax_probs.
template <class Element, int kBlockN, class Softmax, class AccS, class Coord, class AccORowCol>
__device__ __forceinline__ auto softmax_block(Softmax& softmax, AccS& acc_s, Coord const& tScS, int valid_cols,
                                              AccORowCol& acc_o_rowcol) {
  if (valid_cols < kBlockN) mask_tail_cols(acc_s, tScS, valid_cols, -INFINITY);
  return softmax_probs<Element>(softmax, acc_s, acc_o_rowcol);
}

// A stage of two kept blocks (the SM90 mainloop; columns [0, kBlockN) and [kBlockN, 2 kBlockN)): each half is
// masked past its own valid count (valid_b = 0: the stage has one block and its second half is a repeat, all
// -inf), then the online softmax takes the scores (acc_s now holds the unnormalised probabilities) and returns
// the rows' output rescale factors, for the caller to apply once the output is not in a GEMM. A stage's -inf
// entries give p = 0, never NaN: the online softmax keeps a row's max finite once one key was valid, and offsets a
// row that has seen only -inf by 0.
template <int kBlockN, class Softmax, class AccS, class Coord>
__device__ __forceinline__ auto softmax_block_pair_scores(Softmax& softmax, AccS& acc_s, Coord const& tScS,
                                                          int valid_a, int valid_b) {
  if (valid_a < kBlockN || valid_b < kBlockN) mask_pair_tail_cols<kBlockN>(acc_s, tScS, valid_a, valid_b, -INFINITY);
  Tensor scores = make_tensor(acc_s.data(), accumulator_as_rowcol(acc_s.layout()));
  return softmax.update_scores(scores);
}

}  // namespace sparge::fwd
