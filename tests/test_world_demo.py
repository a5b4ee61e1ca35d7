"""tools/world/demo.py (the fidelity demo) on random one-layer world models (CPU): three rows from the same noise,
the dense row is the PSNR reference, the sparse rows report their achieved density; report and GIF written; a
missing shipped teacher is a clear argument error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "tools/world/demo.py")


def _save_model(path: Path, seed: int) -> None:
    import torch
    from diffusers import WanTransformer3DModel

    from sparge_pipelines.world.model import WORLD_TRANSFORMER_CONFIG

    torch.manual_seed(seed)
    WanTransformer3DModel(**{**WORLD_TRANSFORMER_CONFIG, "num_layers": 1}).save_pretrained(path)


@pytest.mark.slow
def test_demo_compares_dense_sparse_and_distilled(tmp_path):
    _save_model(tmp_path / "teacher", 0)
    _save_model(tmp_path / "student", 1)
    # 4 x 48 x 48 = 576 tokens (5 query blocks x 9 key blocks): a mask can skip something
    cmd = [sys.executable, DEMO, "--teacher", str(tmp_path / "teacher"), "--student", str(tmp_path / "student"),
           "--size", "4x48x48", "--videos", "2", "--steps", "2", "--topk", "0.2", "--topp", "0",
           "--out", str(tmp_path / "out")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    dense, training_free, distilled = report["rows"]
    assert dense["density"] == 1.0 and "psnr" not in dense
    for row in (training_free, distilled):
        assert 0 < row["density"] < 1, row
        assert 0 <= row["ssim"] <= 1 and row["psnr"] > 0, row
        assert set(row["accuracy"]) >= {"colour", "digit", "direction", "background"}
    assert training_free["psnr"] > distilled["psnr"]  # same weights as the reference vs other random weights
    assert (tmp_path / "out" / "side_by_side.gif").stat().st_size > 0
    assert "teacher, sparse (training-free)" in proc.stdout and "speed needs a GPU" in proc.stdout


def test_demo_without_a_shipped_teacher_says_so(tmp_path):
    from sparge_pipelines.world.model import shipped_models

    if "teacher" in shipped_models():
        pytest.skip("a teacher ships in this installation")
    proc = subprocess.run([sys.executable, DEMO, "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and "--teacher: this installation ships no world teacher yet" in proc.stderr
