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
           "--tolerance", "0.04", "--curve", "0.5"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "ablation.json").read_text())
    assert set(report["training_free"]) == {f"{k}/{o}" for k in ("topk", "topp", "hybrid") for o in ("1d", "tiled")}
    for name, row in report["training_free"].items():
        assert row["within_tolerance"] and abs(row["density"] - 0.3333) <= 0.04, (name, row)
        assert all(0 < v < 1 for v in row["rel_mse"].values()), (name, row)
    assert "Training-free" in (tmp_path / "out" / "ablation.md").read_text()
