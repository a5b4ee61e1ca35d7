"""Where a kernel's time goes, by region: reads `ncu --page source --csv --print-source sass` output and splits
the SASS at its BAR.SYNC instructions (CTA-wide phases), printing per region the share of warp-stall samples (time)
and of executed instructions, its FFMA count, and the hottest instructions overall. With --blocks, also the basic
blocks (runs of consecutive instructions executed equally often: loop bodies show up as one run) that hold at
least --min-share of the instructions or stall samples, which finds the hot loops and their cost per trip.

    python tools/ncu_source_regions.py ncu_select_14b_src.csv [--top 15] [--blocks] [--min-share 0.01]
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass
from pathlib import Path


def number(text: str) -> float:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return 0.0


@dataclass
class SassLine:
    source: str
    stalls: float
    executed: float


@dataclass
class Block:
    begin: int  # first SASS line
    end: int  # one past the last
    trips: float  # executions of each of its instructions
    stalls: float
    executed: float


def read_sass(path: Path) -> list[SassLine]:
    rows = list(csv.reader(path.open()))
    header_at = next(i for i, row in enumerate(rows) if row[:2] == ["Address", "Source"])
    header, data = rows[header_at], rows[header_at + 1:]
    src, stalls, executed = (header.index(name) for name in
                             ("Source", "Warp Stall Sampling (All Samples)", "Instructions Executed"))
    return [SassLine(row[src], number(row[stalls]), number(row[executed])) for row in data]


def basic_blocks(lines: list[SassLine]) -> list[Block]:
    """Runs of consecutive lines with the same execution count."""
    blocks: list[Block] = []
    for i, line in enumerate(lines):
        if blocks and blocks[-1].trips == line.executed:
            block = blocks[-1]
            block.end, block.stalls, block.executed = i + 1, block.stalls + line.stalls, block.executed + line.executed
        else:
            blocks.append(Block(i, i + 1, line.executed, line.stalls, line.executed))
    return blocks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv", type=Path)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--blocks", action="store_true", help="also list the basic blocks above --min-share")
    parser.add_argument("--min-share", type=float, default=0.01)
    args = parser.parse_args()
    lines = read_sass(args.csv)
    cuts = [i for i, line in enumerate(lines) if "BAR.SYNC" in line.source]
    bounds = list(zip([0, *cuts], [*cuts, len(lines)]))
    total_stalls = sum(line.stalls for line in lines) or 1.0
    total_executed = sum(line.executed for line in lines) or 1.0
    print("| region (SASS lines) | stall samples | instructions executed | FFMA executed |")
    print("|---|---:|---:|---:|")
    for begin, end in bounds:
        part = lines[begin:end]
        s = sum(line.stalls for line in part)
        e = sum(line.executed for line in part)
        ffma = sum(line.executed for line in part if "FFMA" in line.source)
        print(f"| {begin}-{end} | {s / total_stalls:.1%} | {e / total_executed:.1%} ({e:.3g}) | {ffma:.3g} |")
    if args.blocks:
        print("\n| basic block (SASS lines) | instructions | executions each | instructions executed | stall samples "
              "| first instruction |")
        print("|---|---:|---:|---:|---:|---|")
        for block in basic_blocks(lines):
            e, s = block.executed / total_executed, block.stalls / total_stalls
            if e >= args.min_share or s >= args.min_share:
                first = lines[block.begin].source.strip()[:50]
                print(f"| {block.begin}-{block.end - 1} | {block.end - block.begin} | {block.trips:.0f} | {e:.1%} "
                      f"| {s:.1%} | `{first}` |")
    print()
    hottest = sorted(range(len(lines)), key=lambda i: -lines[i].stalls)[: args.top]
    for i in hottest:
        print(f"{i:5d} {lines[i].stalls / total_stalls:6.2%}  {lines[i].source.strip()[:80]}")


if __name__ == "__main__":
    main()
