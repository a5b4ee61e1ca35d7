"""tools/world/gate_teacher.py on a random one-layer world model (CPU): the JSON report, dense by default, and
with --topk/--topp the samples are drawn with sparse attention (the student's gate) and the density is reported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GATE = str(ROOT / "tools/world/gate_teacher.py")


@pytest.mark.slow
@pytest.mark.parametrize("sparse", [False, True])
def test_gate_reports_accuracy_and_the_sparse_density(tmp_path, sparse, save_world_model):
    save_world_model(tmp_path / "model", 0)
    cmd = [sys.executable, GATE, "--model", str(tmp_path / "model"), "--count", "2", "--frames", "4", "--size", "48",
           "--steps", "2", "--out", str(tmp_path / "gate.json")]
    if sparse:
        cmd += ["--topk", "0.2", "--topp", "0", "--token-order", "tiled"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]  # 1: a random model fails the gate, as it must
    report = json.loads((tmp_path / "gate.json").read_text())
    assert report["passed"] is (proc.returncode == 0) and not report["passed"]
    assert set(report["generated"]["accuracy"]) >= {"colour", "digit", "direction", "background"}
    if sparse:
        assert 0 < report["generated"]["density"] < 1
        assert report["generated"]["sparse"] == {"topk": 0.2, "topp": 0.0, "token_order": "tiled"}
    else:
        assert "density" not in report["generated"]
