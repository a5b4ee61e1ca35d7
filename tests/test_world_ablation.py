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


def _ablation_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("world_ablation", ROOT / "tools/world/ablation.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


def test_each_fine_tuning_arm_trains_its_own_seed_at_the_ablation_size_under_its_mask(tmp_path):
    from sparge_pipelines.world import WorldSize

    abl = _ablation_module()
    mask = abl.MaskSetting("hybrid", "tiled", 0.03, 0.14, 0.05, True)
    size = WorldSize(16, 64, 64)
    sparse = abl.fit_command(abl.Arm("velocity+hybrid", "velocity", mask), tmp_path / "t", tmp_path / "o", 300, 2,
                             size, ["train.micro_batch_size=4"])
    sets = [sparse[i + 1] for i, a in enumerate(sparse) if a == "--set"]
    for expected in ("loss.kind=velocity", "train.max_steps=300", "train.seed=2", "data.world.seed=2",
                     "data.world.sizes=[[16,64,64]]", "sparge.topk=0.03", "sparge.topp=0.14",
                     "sparge.token_order=tiled", f"model.pretrained={tmp_path / 't'}", "train.micro_batch_size=4"):
        assert expected in sets, expected
    assert sets[-1] == "train.micro_batch_size=4"  # the caller's overrides come last: they win
    dense = abl.fit_command(abl.Arm("dense diffusion (control)", "diffusion", None), tmp_path / "t", tmp_path / "o",
                            300, 0, size, [])
    assert "sparge.enabled=false" in dense and not any(a.startswith("sparge.topk") for a in dense)
    assert abl.Arm("dense diffusion (control)", "diffusion", None).slug == "dense"


def test_verdict_reads_the_papers_orderings_off_the_means():
    abl = _ablation_module()

    def row(mean):
        return {"rel_mse": {"mean": {"mean": mean, "ci95": None, "n": 1}}}

    report = {"token_order": "tiled",
              "training_free": {"hybrid/tiled": row(0.03), "topk/tiled": row(0.04), "topp/tiled": row(0.06)},
              "finetuned": {"velocity+hybrid": row(0.02), "diffusion+hybrid": row(0.01), "velocity+topk": row(0.015),
                            "velocity+topp": row(0.025)}}
    v = abl.verdict(report)
    free = v["training_free: hybrid < topk < topp"]
    assert free["held"] and free["measured"] == ["hybrid", "topk", "topp"]
    assert free["steps"][0]["ratio"] == pytest.approx(0.04 / 0.03)
    losses = v["hybrid: distillation < diffusion loss < training-free"]
    assert not losses["held"] and losses["measured"] == ["diffusion loss", "distillation", "training-free"]
    assert losses["steps"][0]["ratio"] == pytest.approx(0.5)  # below 1: that step of the claim failed
    assert not v["distilled: hybrid < topk < topp"]["held"]
