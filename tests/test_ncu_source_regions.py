"""tools/ncu_source_regions.py on a small synthetic `ncu --page source --csv` export: CTA phases split at BAR.SYNC,
basic blocks as runs of equally executed lines, shares of instructions and stall samples."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOL = str(ROOT / "tools/ncu_source_regions.py")

# (source, stall samples, instructions executed): a prologue, a barrier, a loop body of 3 lines run 100 times, exit.
SASS = [
    ("S2R R0, SR_TID.X", 1, 10),
    ("LDG.E R1, desc[UR4][R2.64]", 9, 10),
    ("BAR.SYNC.DEFER_BLOCKING 0x0", 10, 10),
    ("FFMA R3, R1, R1, R3", 20, 100),
    ("IADD3 R4, R4, 0x1, RZ", 10, 100),
    ("@P0 BRA 0x100", 30, 100),
    ("EXIT", 20, 10),
]


def write_export(path: Path) -> None:
    lines = ['"==PROF== Connected to process"', '"Address","Source","Warp Stall Sampling (All Samples)",'
             '"Instructions Executed"']
    for i, (source, stalls, executed) in enumerate(SASS):
        lines.append(f'"0x{16 * i:x}","{source}","{stalls}","{executed:,}"')
    path.write_text("\n".join(lines) + "\n")


def test_regions_blocks_and_hottest_lines(tmp_path):
    export = tmp_path / "src.csv"
    write_export(export)
    proc = subprocess.run([sys.executable, TOOL, str(export), "--blocks", "--top", "2", "--min-share", "0.05"],
                          capture_output=True, text=True, timeout=60, check=True)
    out = proc.stdout
    # 340 instructions, 100 stall samples: the prologue before the barrier, then barrier + loop + exit.
    assert "| 0-2 | 10.0% | 5.9% (20) | 0 |" in out
    assert "| 2-7 | 90.0% | 94.1% (320) | 100 |" in out
    # The loop body is one block of 3 lines run 100 times; the lone barrier and exit lines are blocks too.
    assert "| 3-5 | 3 | 100 | 88.2% | 60.0% | `FFMA R3, R1, R1, R3` |" in out
    assert "| 6-6 | 1 | 10 | 2.9% | 20.0% | `EXIT` |" in out
    hottest = out.strip().splitlines()[-2:]
    assert hottest[0].split()[:2] == ["5", "30.00%"] and hottest[1].split()[0] in ("3", "6")
