"""tools/bench_train.py --compare-losses: the loss-curve comparison of two kept metrics.jsonl files (issue 13's
Hopper vs SM80 backward distillation check) and its --modes validation, run as a user would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOL = str(ROOT / "tools/bench_train.py")


def write_metrics(path: Path, losses: dict[int, float]) -> None:
    lines = [json.dumps({"step": s, "loss": v, "step_time_s": 1.0}) for s, v in losses.items()]
    path.write_text("\n".join([json.dumps({"event": "start"}), *lines]) + "\n")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True, timeout=120)


def test_compare_losses_reports_the_steps_both_logged(tmp_path):
    a, b = tmp_path / "sparse.metrics.jsonl", tmp_path / "sparse-sm80.metrics.jsonl"
    write_metrics(a, {s: 1.0 / s for s in range(1, 41)})
    write_metrics(b, {s: 1.0 / s * (1.02 if s == 40 else 1.0) for s in range(1, 45)})
    proc = run("--compare-losses", str(a), str(b))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "| step | sparse loss | sparse-sm80 loss | relative difference |" in out
    rows = [line for line in out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [int(r.split("|")[1]) for r in rows] == [1, 20, 40]  # the first, every 20th, the last common step
    assert "40 steps logged by both" in out
    assert "max 1.96e-02" in out  # |1/40 - 1.02/40| / (1.02/40)


def test_bad_mode_is_named():
    proc = run("--modes", "sparse,sparse-sm70")
    assert proc.returncode != 0
    assert "'sparse-sm70'" in proc.stderr
