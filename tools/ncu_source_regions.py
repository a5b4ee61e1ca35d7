"""Where a kernel's time goes, by region: reads `ncu --page source --csv --print-source sass` output and splits
the SASS at its BAR.SYNC instructions (CTA-wide phases), printing per region the share of warp-stall samples (time)
and of executed instructions, its FFMA count, and the hottest instructions overall.

    python tools/ncu_source_regions.py ncu_select_14b_src.csv [--top 15]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path


def number(text: str) -> float:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv", type=Path)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    rows = list(csv.reader(args.csv.open()))
    header_at = next(i for i, row in enumerate(rows) if row[:2] == ["Address", "Source"])
    header, data = rows[header_at], rows[header_at + 1:]
    src, stalls, executed = (header.index(name) for name in
                             ("Source", "Warp Stall Sampling (All Samples)", "Instructions Executed"))
    cuts = [i for i, row in enumerate(data) if "BAR.SYNC" in row[src]]
    bounds = list(zip([0, *cuts], [*cuts, len(data)]))
    total_stalls = sum(number(row[stalls]) for row in data) or 1.0
    total_executed = sum(number(row[executed]) for row in data) or 1.0
    print("| region (SASS lines) | stall samples | instructions executed | FFMA executed |")
    print("|---|---:|---:|---:|")
    for begin, end in bounds:
        part = data[begin:end]
        s = sum(number(row[stalls]) for row in part)
        e = sum(number(row[executed]) for row in part)
        ffma = sum(number(row[executed]) for row in part if "FFMA" in row[src])
        print(f"| {begin}-{end} | {s / total_stalls:.1%} | {e / total_executed:.1%} ({e:.3g}) | {ffma:.3g} |")
    print()
    hottest = sorted(range(len(data)), key=lambda i: -number(data[i][stalls]))[: args.top]
    for i in hottest:
        print(f"{i:5d} {number(data[i][stalls]) / total_stalls:6.2%}  {data[i][src].strip()[:80]}")


if __name__ == "__main__":
    main()
