// Hybrid Top-k ∪ Top-p selection of one score row by one warp, without sorting.
//
// Both rules keep a prefix of the row sorted by (probability descending, index ascending), so their union is
// the longer prefix, of length M = max(k, m_p) where m_p counts the entries whose exclusive cumulative mass is
// below topp. The M-th entry's probability v is found by bisection over the IEEE bit patterns of the
// probabilities (non-negative floats order like their bits) with the predicate
//     P(u) = #{p >= u} >= k  and  mass{p >= u} >= topp,
// whose largest true u is min(v_k, v_p) = v. The kept set is every entry above v plus the first `take` entries
// equal to v in index order: exact float ties go to the lower index, as in the reference's stable sort.
// Cumulative masses are fp32 sums (per lane in index order, then a butterfly), so the set can differ from the
// reference only where a cumulative mass lies within fp32 rounding of topp, or where probabilities computed in a
// different rounding order (fp32 pooling, FMA dot products, __expf, multiplication by 1/sum) swap near-ties.
#pragma once

#include <cstdint>

#include "mask/warp_utils.cuh"

namespace sparge::mask {

// The kept set of a row: {j : bits_j > threshold} ∪ {first `take` j with bits_j == threshold}; `ties` entries
// equal the threshold.
struct RowCut {
  uint32_t threshold;
  int take, ties;
};

// Bisection stops once at most this many entries lie in the search interval; they are then gathered (one per
// lane) and the cut among them is resolved in registers, saving the last ~log2(kCandidates) passes over the row.
constexpr int kCandidates = 32;

// Where a warp keeps its row during the selection. Lane `lane` owns the entries j = 32c + lane (word c); every
// pass visits them in index order, so both storages give bitwise the same sums and decisions.
//   SharedRow          the row in shared memory, rewritten in place (any n).
//   RegisterRow<kW>    loaded once into kW registers per lane (n <= 32 kW): the passes are register-only.
// for_each(f): f(value) for each entry this lane owns; update(f): value = f(value); for_each_word(f): all lanes,
// every word c < ceil(n / 32), f(c, j, value (0 past n), j < n). The *_padded forms may also visit padding
// entries past n (RegisterRow: no per-entry bounds test in the hot passes): they hold a -inf logit, which the
// exp pass turns into probability 0 (bits 0). Use them only where such an entry changes nothing: a max, a sum of
// +0, a count of entries >= a bit pattern >= 1.
struct SharedRow {
  uint32_t* bits;
  int n, lane;

  template <class F>
  __device__ __forceinline__ void for_each(F&& f) const {
    for (int j = lane; j < n; j += 32) f(bits[j]);
  }
  template <class F>
  __device__ __forceinline__ void update(F&& f) {
    for (int j = lane; j < n; j += 32) bits[j] = f(bits[j]);
  }
  template <class F>
  __device__ __forceinline__ void for_each_padded(F&& f) const {
    for_each(f);
  }
  template <class F>
  __device__ __forceinline__ void update_padded(F&& f) {
    update(f);
  }
  template <class F>
  __device__ __forceinline__ void for_each_word(F&& f) const {
    for (int c = 0; c * 32 < n; ++c) {
      const int j = c * 32 + lane;
      f(c, j, j < n ? bits[j] : 0u, j < n);
    }
  }
};

template <int kWords>
struct RegisterRow {
  uint32_t value[kWords];
  int n, lane;

  __device__ __forceinline__ RegisterRow(const uint32_t* src, int n_, int lane_) : n(n_), lane(lane_) {
#pragma unroll
    for (int c = 0; c < kWords; ++c) {
      const int j = c * 32 + lane;
      value[c] = j < n ? src[j] : __float_as_uint(-INFINITY);
    }
  }
  template <class F>
  __device__ __forceinline__ void for_each(F&& f) const {
#pragma unroll
    for (int c = 0; c < kWords; ++c) {
      if (c * 32 + lane < n) f(value[c]);
    }
  }
  template <class F>
  __device__ __forceinline__ void update(F&& f) {
#pragma unroll
    for (int c = 0; c < kWords; ++c) {
      if (c * 32 + lane < n) value[c] = f(value[c]);
    }
  }
  template <class F>
  __device__ __forceinline__ void for_each_padded(F&& f) const {
#pragma unroll
    for (int c = 0; c < kWords; ++c) f(value[c]);
  }
  template <class F>
  __device__ __forceinline__ void update_padded(F&& f) {
#pragma unroll
    for (int c = 0; c < kWords; ++c) value[c] = f(value[c]);
  }
  template <class F>
  __device__ __forceinline__ void for_each_word(F&& f) const {
#pragma unroll
    for (int c = 0; c < kWords; ++c) {
      if (c * 32 < n) f(c, c * 32 + lane, c * 32 + lane < n ? value[c] : 0u, c * 32 + lane < n);
    }
  }
};

// `row` holds the n scaled logits of one row as float bit patterns (SharedRow or RegisterRow, whose lane runs
// this); they are replaced by the bit patterns of the softmax probabilities, which write_row then reads. Only
// `scratch` (kCandidates words of this warp) needs warp barriers. compact = false bisects to the end.
template <class Row>
__device__ __forceinline__ RowCut select_row(Row& row, int topk_count, float topp, bool compact, uint32_t* scratch) {
  const int n = row.n, lane = row.lane;
  float row_max = -INFINITY;
  row.for_each_padded([&](uint32_t x) { row_max = fmaxf(row_max, __uint_as_float(x)); });
  row_max = warp_max(row_max);
  float denom = 0.f;
  row.update_padded([&](uint32_t x) {  // padding: exp(-inf) = +0
    const float e = __expf(__uint_as_float(x) - row_max);
    denom += e;
    return __float_as_uint(e);
  });
  denom = warp_sum(denom);
  const float inv_denom = __frcp_rn(denom);
  float total = 0.f;
  uint32_t min_bits = 0xffffffffu, max_bits = 0u;
  row.update([&](uint32_t x) {
    const float prob = __fmul_rn(__uint_as_float(x), inv_denom);  // rounded on its own: never fused into total
    const uint32_t b = __float_as_uint(prob);
    total += prob;
    min_bits = min(min_bits, b);
    max_bits = max(max_bits, b);
    return b;
  });
  total = warp_sum(total);
  min_bits = __reduce_min_sync(kFullWarp, min_bits);
  max_bits = __reduce_max_sync(kFullWarp, max_bits);

  const bool use_topp = topp > 0.f;
  auto holds = [&](int count, float mass) { return count >= topk_count && (!use_topp || mass >= topp); };
  // The whole row's mass can fall short of topp by rounding: then every entry is kept, as in the reference.
  if (!holds(n, total)) return RowCut{0u, n, n};

  // Invariant: P(lo) holds with count_lo entries >= lo; P(hi) fails with count_hi entries (mass_hi) >= hi.
  uint32_t lo = min_bits, hi = max_bits + 1u;
  int count_lo = n, count_hi = 0;
  float mass_hi = 0.f;
  const int stop_at = compact ? kCandidates : 1;
  while (hi - lo > 1u && count_lo - count_hi > stop_at) {
    const uint32_t mid = lo + ((hi - lo) >> 1);
    int count = 0;
    float mass = 0.f;
    row.for_each_padded([&](uint32_t b) {  // mid > lo >= 0: padding (bits 0) never counts
      const bool counts = b >= mid;
      count += int(counts);
      mass += counts ? __uint_as_float(b) : 0.f;
    });
    count = int(__reduce_add_sync(kFullWarp, uint32_t(count)));
    mass = warp_sum(mass);
    if (holds(count, mass)) {
      lo = mid;
      count_lo = count;
    } else {
      hi = mid;
      count_hi = count;
      mass_hi = mass;
    }
  }
  // [lo, hi) holds the cut value: hi = lo + 1, or one entry lies in [lo, hi) (the largest below hi), or 2 to
  // kCandidates entries do: gather them one per lane and take the largest candidate u with P(u).
  uint32_t cut = lo;
  const int in_range = count_lo - count_hi;
  if (hi - lo > 1u && in_range > 1) {
    // Each lane's entries in [lo, hi) go to consecutive slots after those of the lanes below it; the resolution
    // below depends on the set only, up to the order of its fp32 mass sum (fixed by this layout).
    const uint32_t width = hi - lo;
    int own = 0;
    row.for_each([&](uint32_t b) { own += int(b - lo < width); });
    int slot = 0;  // entries in [lo, hi) owned by lower lanes (own <= in_range <= 32), summed bit by bit
#pragma unroll
    for (int bit = 0; bit < 6; ++bit) {
      slot += __popc(__ballot_sync(kFullWarp, (own >> bit) & 1) & lanes_below(lane)) << bit;
    }
    row.for_each([&](uint32_t b) {
      if (b - lo < width) {
        if (slot < kCandidates) scratch[slot] = b;
        ++slot;
      }
    });
    __syncwarp();
    const bool valid = lane < in_range;
    const uint32_t mine = valid ? scratch[lane] : 0u;
    __syncwarp();  // scratch is rewritten by this warp's next row
    int count = 0;
    float mass = 0.f;
    for (int i = 0; i < kCandidates; ++i) {
      const uint32_t other = __shfl_sync(kFullWarp, mine, i);
      if (i < in_range && other >= mine) {
        ++count;
        mass += __uint_as_float(other);
      }
    }
    const bool ok = valid && holds(count_hi + count, mass_hi + mass);
    // P(lo) held, so the smallest candidate qualifies up to rounding of the differently ordered sums.
    cut = __ballot_sync(kFullWarp, ok) ? __reduce_max_sync(kFullWarp, ok ? mine : 0u)
                                       : __reduce_min_sync(kFullWarp, valid ? mine : 0xffffffffu);
  } else if (hi - lo > 1u) {
    uint32_t below_hi = 0u;
    row.for_each_padded([&](uint32_t b) {  // padding: max with 0
      if (b < hi) below_hi = max(below_hi, b);
    });
    cut = __reduce_max_sync(kFullWarp, below_hi);
  }

  int above = 0, ties = 0;
  float mass_above = 0.f;
  row.for_each([&](uint32_t b) {
    if (b > cut) {
      ++above;
      mass_above += __uint_as_float(b);
    } else if (b == cut) {
      ++ties;
    }
  });
  above = int(__reduce_add_sync(kFullWarp, uint32_t(above)));
  ties = int(__reduce_add_sync(kFullWarp, uint32_t(ties)));
  mass_above = warp_sum(mass_above);

  // Entries equal to the cut value, in index order: Top-k takes what it still lacks; Top-p takes each one
  // while the mass before it is still short of topp (the crossing entry included).
  const int take_k = topk_count > above ? min(topk_count - above, ties) : 0;
  int take_p = 0;
  if (use_topp) {
    const float cut_prob = __uint_as_float(cut);
    float before = mass_above;
    while (take_p < ties && before < topp) {
      before += cut_prob;
      ++take_p;
    }
  }
  return RowCut{cut, max(take_k, take_p), ties};
}

// Writes one row of kv_index (kept key blocks ascending, then -1), its kv_count and its bitmask words, from the
// probabilities select_row left in `row`.
template <class Row>
__device__ __forceinline__ void write_row(Row const& row, RowCut cut, int32_t* index_row, int32_t* count_out,
                                          uint32_t* bits_row) {
  const int n = row.n, lane = row.lane;
  const uint32_t below = lanes_below(lane);
  int kept = 0;
  int32_t* next_index = index_row;  // where this word's first kept index goes
  uint32_t* next_bits = bits_row;
  auto write_words = [&](auto&& keeps) {
    row.for_each_word([&](int, int j, uint32_t b, bool valid) {
      const bool keep = keeps(b, valid);
      const uint32_t keep_mask = __ballot_sync(kFullWarp, keep);
      if (keep) next_index[__popc(keep_mask & below)] = j;
      next_index += __popc(keep_mask);
      if (lane == 0) *next_bits = keep_mask;
      ++next_bits;
    });
    kept = int(next_index - index_row);
  };
  if (cut.take == 0 || cut.take >= cut.ties) {
    // Every entry equal to the threshold is kept, or none: one comparison per entry (the usual case).
    const uint32_t least_kept = cut.take == 0 ? cut.threshold + 1u : cut.threshold;
    write_words([&](uint32_t b, bool valid) { return valid && b >= least_kept; });
  } else {
    int ties_before = 0;
    write_words([&](uint32_t b, bool valid) {
      const bool tie = valid && b == cut.threshold;
      const uint32_t tie_mask = __ballot_sync(kFullWarp, tie);
      const bool keep = (valid && b > cut.threshold) || (tie && ties_before + __popc(tie_mask & below) < cut.take);
      ties_before += __popc(tie_mask);
      return keep;
    });
  }
  fill_minus_one(index_row, kept, n, lane);
  if (lane == 0) *count_out = kept;
}

}  // namespace sparge::mask
