"""tools/world/ablation.py, training-free part, on a random tiny teacher (CPU): the bisection reaches the target
density for every mask kind and token order, and the report is written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_training_free_ablation_matches_the_density(tmp_path):
    import torch
    from diffusers import WanTransformer3DModel

    from sparge_pipelines.world.model import WORLD_TRANSFORMER_CONFIG

    torch.manual_seed(1)  # one layer of the world architecture keeps this CPU test short
    WanTransformer3DModel(**{**WORLD_TRANSFORMER_CONFIG, "num_layers": 1}).save_pretrained(tmp_path / "teacher")
    # 4 x 12 x 12 = 576 tokens: 5 query blocks x 9 key blocks; Top-k densities step by 1/9 per row, 3/9 is one
    cmd = [sys.executable, str(ROOT / "tools/world/ablation.py"), "--teacher", str(tmp_path / "teacher"),
           "--out", str(tmp_path / "out"), "--frames", "4", "--size", "48", "--batch", "1", "--density", "0.3333",
           "--tolerance", "0.04", "--curve", "0.5", "--seeds", "0", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "ablation.json").read_text())
    assert set(report["training_free"]) == {f"{k}/{o}" for k in ("topk", "topp", "hybrid") for o in ("1d", "tiled")}
    for name, row in report["training_free"].items():
        assert row["within_tolerance"] and abs(row["density"] - 0.3333) <= 0.04, (name, row)
        assert len(row["per_seed"]) == 2 and row["per_seed"][0] != row["per_seed"][1], (name, row)  # own probes
        for sigma, m in row["rel_mse"].items():
            assert 0 < m["mean"] < 1 and m["ci95"] is not None and m["n"] == 2, (name, sigma, m)
    verdict = report["verdict"]["training_free: hybrid < topk < topp"]
    assert sorted(verdict["measured"]) == ["hybrid", "topk", "topp"] and isinstance(verdict["held"], bool)
    md = (tmp_path / "out" / "ablation.md").read_text()
    assert "Training-free" in md and "The paper's orderings, measured" in md
    assert (tmp_path / "out" / "ablation.png").stat().st_size > 10_000  # the plot, drawn
