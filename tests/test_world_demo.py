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


@pytest.mark.slow
def test_demo_compares_dense_sparse_and_distilled(tmp_path, save_world_model):
    save_world_model(tmp_path / "teacher", 0)
    save_world_model(tmp_path / "student", 1)
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


def test_demo_needs_two_videos(tmp_path):
    proc = subprocess.run([sys.executable, DEMO, "--videos", "1", "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and "--videos: must be >= 2" in proc.stderr


@pytest.mark.parametrize("flag", ["--teacher", "--student"])
def test_demo_names_a_model_that_is_not_there(tmp_path, flag):
    proc = subprocess.run([sys.executable, DEMO, flag, str(tmp_path / "missing"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and f"{flag}: " in proc.stderr and "neither a shipped world model" in proc.stderr


@pytest.mark.slow
def test_demo_runs_the_shipped_models_as_a_new_user_would(tmp_path):
    """The README's main job, shortened: the shipped teacher dense and sparse, and the student once it ships."""
    from sparge_pipelines.world.model import shipped_models

    assert "teacher" in shipped_models()  # the installation ships it (package data)
    cmd = [sys.executable, DEMO, "--size", "4x48x48", "--videos", "2", "--steps", "2", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "report.json").read_text())["rows"]
    names = ["teacher, dense attention", "teacher, sparse (training-free)"]
    names += ["student, sparse (distilled)"] if "student" in shipped_models() else []
    assert [r["name"] for r in rows] == names
    assert all(0 < r["density"] < 1 and r["psnr"] > 0 for r in rows[1:])
