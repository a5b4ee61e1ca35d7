// Host-only checks of the Hopper backward's layout algebra (csrc/backward/kernel_traits_bwd_sm90.h), run by
// test_layouts_bwd_sm90.py without a GPU: what the kernel relies on but cannot assert at compile time.
//   - the transposed smem views (Pᵀ/dSᵀ, Qᵀ/dOᵀ, Kᵀ) address the same bytes as the tiles they view;
//   - the 256 consumer threads cover every S/dP, dK/dV and dQ accumulator element exactly once, value pairs
//     (2j, 2j+1) are adjacent columns of one row (the 8-byte atomics, 4-byte stores), dK/dV are split over the
//     head dim by warpgroup, and S/dP/dQ rows 64w..64w+63 belong to warpgroup w;
//   - dS re-read as the register A operand of dQ = dS·K (accumulator_as_a_operand) holds the right elements;
//   - the stmatrix copy of P/dS to smem stores each register value at its own (query row, key);
//   - the dS spill mode's dQ kernel reads the bytes the dK/dV kernel spilled with the same layouts (check_dq).
// Prints one line per instantiation and exits non-zero on any mismatch.
#include <cstdio>
#include <vector>

#include "backward/kernel_traits_bwd_dq_sm90.h"
#include "backward/kernel_traits_bwd_sm90.h"
#include "common/utils.h"

using namespace cute;

template <class T>
int check() {
  int bad = 0;
  constexpr int M = T::kBlockM, N = T::kBlockN, D = T::kHeadDim, S = T::kStages;
  typename T::SmemLayoutPdS pds;
  typename T::SmemLayoutPdSt pdst;
  for (int q = 0; q < M; ++q)
    for (int k = 0; k < N; ++k) bad += pds(q, k) != pdst(k, q);
  typename T::SmemLayoutQ lq;
  typename T::SmemLayoutQt lqt;
  for (int s = 0; s < S; ++s)
    for (int m = 0; m < M; ++m)
      for (int d = 0; d < D; ++d) bad += lq(m, d, s) != lqt(d, m, s);
  typename T::SmemLayoutKV lk;
  typename T::SmemLayoutKt lkt;
  for (int n = 0; n < N; ++n)
    for (int d = 0; d < D; ++d) bad += lk(n, d) != lkt(d, n);

  auto cover = [&](auto mma, auto shape, int rows, int cols, bool head_dim_split, bool rows_by_warpgroup) {
    std::vector<int> seen(rows * cols, 0);
    for (int t = 0; t < T::kNumMmaThreads; ++t) {
      Tensor c = mma.get_thread_slice(t).partition_C(make_identity_tensor(shape));
      for (int i = 0; i < size(c); ++i) {
        const int r = get<0>(c(i)), col = get<1>(c(i));
        seen[r * cols + col]++;
        if (head_dim_split && (col >= D / 2) != (t >= 128)) ++bad;
        if (rows_by_warpgroup && r / 64 != t / 128) ++bad;
        if (i % 2 == 1 && (get<1>(c(i - 1)) + 1 != col || get<0>(c(i - 1)) != r)) ++bad;
      }
    }
    for (int x : seen) bad += x != 1;
  };
  cover(typename T::TiledMmaSdP{}, Shape<Int<M>, Int<N>>{}, M, N, false, true);
  cover(typename T::TiledMmadKV{}, Shape<Int<N>, Int<D>>{}, N, D, true, false);
  cover(typename T::TiledMmadQ{}, Shape<Int<M>, Int<D>>{}, M, D, false, true);

  for (int t = 0; t < T::kNumMmaThreads; ++t) {
    Tensor c = typename T::TiledMmaSdP{}.get_thread_slice(t).partition_C(make_identity_tensor(Shape<Int<M>, Int<N>>{}));
    Tensor as_a = make_tensor(c.data(), sparge::accumulator_as_a_operand(c.layout()));
    Tensor a = typename T::TiledMmadQ{}.get_thread_slice(t).partition_A(make_identity_tensor(Shape<Int<M>, Int<N>>{}));
    if (size(as_a) != size(a)) return 1 + bad;
    for (int i = 0; i < size(a); ++i) bad += as_a(i) != a(i);
  }
  // The stmatrix copy of P/dS: the registers it stores are the S/dP accumulator values of the same (row, key).
  auto copy_pds = make_tiled_copy_C(typename T::SmemCopyAtomPdS{}, typename T::TiledMmaSdP{});
  for (int t = 0; t < T::kNumMmaThreads; ++t) {
    auto thr = copy_pds.get_thread_slice(t);
    typename T::TiledMmaSdP mma;
    Tensor c = mma.get_thread_slice(t).partition_C(make_identity_tensor(Shape<Int<M>, Int<N>>{}));
    Tensor acc = partition_fragment_C(mma, Shape<Int<M>, Int<N>>{});  // a register tensor, as in the kernel
    for (int i = 0; i < size(acc); ++i) acc(i) = float(get<0>(c(i)) * N + get<1>(c(i)));
    Tensor src = thr.retile_S(acc);
    // stmatrix is warp-collective: a thread's values land where the copy's source partition says they are (the
    // atom moves logical coordinate (row, key) of the source to the same coordinate of the destination).
    Tensor logical = thr.partition_S(make_identity_tensor(Shape<Int<M>, Int<N>>{}));
    if (size(src) != size(logical)) return 1 + bad;
    for (int i = 0; i < size(src); ++i) bad += src(i) != float(get<0>(logical(i)) * N + get<1>(logical(i)));
  }
  printf("head dim %d, %d stages, %d B smem: %d mismatches\n", D, S, T::kSmemBytes, bad);
  return bad;
}

// The dS spill mode's dQ kernel (kernel_traits_bwd_dq_sm90.h) against the dK/dV kernel that spills for it:
//   - every stage of its dS and K rings is the dK/dV kernel's sdS / sK layout, offset by whole tiles (a stage
//     holds the bytes that kernel had: the spilled tile, the TMA's K tile), and its Kᵀ view addresses the same;
//   - its dQ accumulator (dS from smem) partitions (row, dim) exactly as the dK/dV kernel's (dS from registers),
//     so the bulk path's fragment-ordered dq_accum adds element for element.
template <class T>
int check_dq() {
  using DkDv = typename T::DkDv;
  int bad = 0;
  constexpr int M = T::kBlockM, N = T::kBlockN, D = T::kHeadDim, S = T::kStages;
  typename DkDv::SmemLayoutPdS pds;
  typename T::SmemLayoutdS ds;
  for (int s = 0; s < S; ++s)
    for (int m = 0; m < M; ++m)
      for (int n = 0; n < N; ++n) bad += ds(m, n, s) != pds(m, n) + s * int(cosize(pds));
  typename DkDv::SmemLayoutKV lk;
  typename T::SmemLayoutK k;
  typename T::SmemLayoutKt kt;
  for (int s = 0; s < S; ++s)
    for (int n = 0; n < N; ++n)
      for (int d = 0; d < D; ++d) bad += k(n, d, s) != lk(n, d) + s * int(cosize(lk)) || kt(d, n, s) != k(n, d, s);
  bad += int(T::kDsTileBytes) != int(cosize(pds) * sizeof(typename T::Element));
  for (int t = 0; t < T::kNumMmaThreads; ++t) {
    Tensor ours =
        typename T::TiledMmadQ{}.get_thread_slice(t).partition_C(make_identity_tensor(Shape<Int<M>, Int<D>>{}));
    Tensor theirs =
        typename DkDv::TiledMmadQ{}.get_thread_slice(t).partition_C(make_identity_tensor(Shape<Int<M>, Int<D>>{}));
    if (size(ours) != size(theirs)) return 1 + bad;
    for (int i = 0; i < size(ours); ++i) bad += ours(i) != theirs(i);
  }
  printf("dQ kernel, head dim %d, %d stages, %d B smem: %d mismatches\n", D, S, T::kSmemBytes, bad);
  return bad;
}

int main() {
  int bad = check<sparge::bwd::KernelTraitsBwdSm90<128, cutlass::bfloat16_t>>();
  bad += check<sparge::bwd::KernelTraitsBwdSm90<128, cutlass::half_t>>();
  bad += check<sparge::bwd::KernelTraitsBwdSm90<64, cutlass::bfloat16_t>>();
  bad += check<sparge::bwd::KernelTraitsBwdSm90<64, cutlass::half_t>>();
  bad += check_dq<sparge::bwd::KernelTraitsBwdDqSm90<128, cutlass::bfloat16_t>>();
  bad += check_dq<sparge::bwd::KernelTraitsBwdDqSm90<128, cutlass::half_t>>();
  bad += check_dq<sparge::bwd::KernelTraitsBwdDqSm90<64, cutlass::bfloat16_t>>();
  bad += check_dq<sparge::bwd::KernelTraitsBwdDqSm90<64, cutlass::half_t>>();
  return bad != 0;
}
