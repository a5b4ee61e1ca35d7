// The mask prediction's intermediates in one float32 buffer, so that a call allocates once: q_pooled (B, H, Nq, D),
// k_pooled_t (B, H, D, k_ld), row_bits (B, H, Nq, words; int32 bit patterns) and the fused kernel's counters
// (1 + B * H uint32, PoolSelectParams), each starting on a 512-byte boundary. cuda_mask.MaskWorkspace takes its views from this layout (mask_workspace_layout in _C); mask_predict
// takes the buffer itself.
#pragma once

#include <cstdint>

namespace sparge::mask {

struct WorkspaceLayout {
  int64_t q_pooled, k_pooled_t, row_bits, counters;  // offsets, in floats
  int64_t total;                           // floats
  int k_ld, words;                         // k_pooled_t's leading dim (words * 32), row_bits' words per row
};

inline WorkspaceLayout workspace_layout(int64_t b, int64_t h, int64_t nq, int64_t nk, int64_t d) {
  constexpr int64_t kAlign = 128;  // floats: 512 bytes, like the caching allocator's blocks
  auto padded = [](int64_t floats) { return (floats + kAlign - 1) / kAlign * kAlign; };
  WorkspaceLayout w{};
  w.words = int((nk + 31) / 32);
  w.k_ld = w.words * 32;
  w.q_pooled = 0;
  w.k_pooled_t = padded(b * h * nq * d);
  w.row_bits = w.k_pooled_t + padded(b * h * d * w.k_ld);
  w.counters = w.row_bits + padded(b * h * nq * w.words);
  w.total = w.counters + padded(1 + b * h);
  return w;
}

}  // namespace sparge::mask
