// The split of a persistent launch's last round of tiles by key range (the Hopper forward): plain C++, so the
// dispatch and the bindings plan it as the kernel's scheduler (common/tile_scheduler.h) decodes it.
#pragma once

namespace sparge {

// The tail split of a persistent launch of `tiles` equal-cost-order tiles over `ctas` CTAs: the last round holds
// tiles % ctas of them (all of them when tiles <= ctas), and with fewer than half the CTAs busy there, its tiles
// are split by key range into `parts` pieces each (auto: as many as the idle CTAs can take, at most
// kMaxAutoParts), combined by their LSEs (tools/results/fwd_tail_h200_2026-12-04.md: on the 1.3B shape's 3072
// equal tiles over 132 SMs the last round's idle SMs cost 3% of the forward). `requested`: 0 auto, 1 no split,
// k >= 2 k parts per tile of the last round whatever its fill.
struct TailSplit {
  static constexpr int kMaxAutoParts = 4;
  static constexpr int kMaxParts = 16;
  int split_from = 0;  // tiles [split_from, tiles) are split
  int parts = 1;       // 1: nothing is split
  // constexpr: device code calls them too (--expt-relaxed-constexpr).
  constexpr int split_tiles(int tiles) const { return parts > 1 ? tiles - split_from : 0; }
  // Work units: the whole tiles, then every part of each split tile.
  constexpr int units(int tiles) const { return tiles + split_tiles(tiles) * (parts - 1); }

  static TailSplit plan(int tiles, int ctas, int requested) {
    const int last_round = tiles > ctas ? tiles % ctas : tiles;
    if (last_round == 0 || requested == 1) return TailSplit{tiles, 1};
    int parts = requested;
    if (parts == 0) {
      parts = 2 * last_round <= ctas ? ctas / last_round : 1;
      parts = parts < kMaxAutoParts ? parts : kMaxAutoParts;
    }
    return parts > 1 ? TailSplit{tiles - last_round, parts} : TailSplit{tiles, 1};
  }
};

}  // namespace sparge
