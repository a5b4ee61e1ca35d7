"""`sparge-generate` end to end on a tiny Wan2.1 saved with save_pretrained (offline, CPU)."""

from __future__ import annotations

import json

import imageio.v3 as iio
import pytest

from sparge_pipelines.cli import main
from sparge_pipelines.testing import TINY_VIDEO, tiny_wan_pipeline

VIDEO_ARGS = ["--frames", str(TINY_VIDEO["num_frames"]), "--height", str(TINY_VIDEO["height"]),
              "--width", str(TINY_VIDEO["width"]), "--steps", "3", "--no-progress"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-wan")
    tiny_wan_pipeline(seed=0).save_pretrained(path)
    return path


def test_generate_sparse_with_stats(model_dir, tmp_path, capsys):
    out = tmp_path / "video.mp4"
    rc = main(["--model", str(model_dir), "--prompt", "a red cat jumps", "--negative-prompt", "blurry",
               *VIDEO_ARGS, "--guidance", "5.0", "--seed", "1", "--topk", "0.3", "--topp", "0.1",
               "--dense-steps", "1", "--token-order", "tiled", "--block-q", "16", "--block-k", "8", "--stats",
               "--time-attention", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    frames = iio.imread(out)  # (F, H, W, 3) uint8
    assert frames.shape == (TINY_VIDEO["num_frames"], TINY_VIDEO["height"], TINY_VIDEO["width"], 3)
    assert frames.std() > 0

    report = json.loads(out.with_suffix(".json").read_text())
    assert report["settings"]["topk"] == 0.3 and report["settings"]["token_order"] == "tiled"
    assert report["settings"]["mode"] == "sparge" and report["settings"]["device"] == "cpu"
    assert len(report["per_step_s"]) == 3 and all(t > 0 for t in report["per_step_s"])
    assert report["total_s"] >= report["denoise_s"] > 0
    assert 0 < report["attention_share"] < 1
    density = report["density"]
    assert density["per_step"][0] == 1.0 and 0 < density["per_step"][1] < 1  # dense step 0, then sparse
    stats = json.loads(open(density["json"]).read())
    assert stats["steps"] == [0, 1, 2] and stats["layers"] == ["blocks.0", "blocks.1"]
    assert open(density["heatmap"], "rb").read(4) == b"\x89PNG"
    assert "density" in capsys.readouterr().out


def test_generate_dense_baseline(model_dir, tmp_path):
    out = tmp_path / "dense.mp4"
    report_path = tmp_path / "r" / "dense-report.json"
    rc = main(["--model", str(model_dir), "--prompt", "a dog", *VIDEO_ARGS, "--dense", "--time-attention",
               "--out", str(out), "--report", str(report_path)])
    assert rc == 0
    report = json.loads(report_path.read_text())
    assert report["settings"]["mode"] == "dense" and "density" not in report
    assert 0 < report["attention_share"] < 1
    assert out.stat().st_size > 0


def test_missing_directory_is_a_clear_error(tmp_path, capsys):
    assert main(["--model", str(tmp_path / "nope"), "--prompt", "x"]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_not_a_pipeline_directory(tmp_path, capsys):
    assert main(["--model", str(tmp_path), "--prompt", "x"]) == 2
    assert "model_index.json" in capsys.readouterr().err
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    assert main(["--model", str(tmp_path), "--prompt", "x"]) == 2
    assert "WanPipeline" in capsys.readouterr().err


def test_incomplete_model_directory(tmp_path, capsys):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    assert main(["--model", str(tmp_path), "--prompt", "x"]) == 2
    assert "could not load the Wan pipeline offline" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "name"),
    [(["--topk", "1.5"], "topk"), (["--frames", "10"], "frames"), (["--height", "100"], "height"),
     (["--dense-steps", "-2"], "dense_steps"), (["--steps", "0"], "steps")],
)
def test_bad_arguments(model_dir, args, name, capsys):
    assert main(["--model", str(model_dir), "--prompt", "x", *args]) == 2
    assert name in capsys.readouterr().err
