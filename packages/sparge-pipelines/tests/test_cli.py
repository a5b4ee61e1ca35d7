"""`sparge-generate` end to end on a tiny Wan2.1 saved with save_pretrained (offline, CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import imageio.v3 as iio
import pytest
import torch

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
     (["--dense-steps", "-2"], "--dense-steps"), (["--steps", "0"], "steps")],
)
def test_bad_arguments(model_dir, args, name, capsys):
    assert main(["--model", str(model_dir), "--prompt", "x", *args]) == 2
    assert name in capsys.readouterr().err


def _cli_subprocess(*args: str) -> subprocess.CompletedProcess:
    """`sparge-generate ARGS` in a fresh interpreter; also reports whether torch/diffusers got imported."""
    code = ("import sys; from sparge_pipelines.cli import main; rc = main(sys.argv[1:]); "
            "print('HEAVY', sorted(m for m in ('torch', 'diffusers') if m in sys.modules)); sys.exit(rc)")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)


def test_help_is_fast_and_imports_neither_torch_nor_diffusers():
    t0 = time.perf_counter()
    proc = _cli_subprocess("--help")
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0 and "--token-order" in proc.stdout
    assert "HEAVY []" in proc.stdout
    assert elapsed < 1.0, elapsed


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--out", "/tmp/noext"], "argument --out: '/tmp/noext' must end in one of .mp4, .mkv, .mov"),
     (["--out", "clip.gif"], "argument --out"),
     (["--frames", "10"], "argument --frames: frames must be 4k+1"),
     (["--topk", "1.5"], "argument --topk: must be in [0, 1]"),
     (["--topk", "0", "--topp", "0"], "argument --topk/--topp: both 0"),
     (["--steps", "0"], "argument --steps: must be >= 1"),
     (["--device", "gpu"], "argument --device: expected cpu, cuda or cuda:N"),
     (["--report", "r.txt"], "argument --report"),
     (["--image", "/nonexistent.png"], "argument --image")],
)
def test_argument_errors_are_fast_argparse_errors(args, message):
    t0 = time.perf_counter()
    proc = _cli_subprocess("--model", "/nonexistent", "--prompt", "x", *args)
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 2
    assert proc.stderr.startswith("usage: sparge-generate")
    assert f"sparge-generate: error: {message}" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "HEAVY []" in proc.stdout
    assert elapsed < 1.0, elapsed


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a usable GPU")
def test_device_cuda_without_a_gpu_is_a_clear_error(tmp_path):
    proc = _cli_subprocess("--model", str(tmp_path), "--prompt", "x", "--device", "cuda")
    assert proc.returncode == 2
    assert "sparge-generate: error: argument --device: 'cuda' is not available" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_generate_config_checks_out_and_device_before_loading(tmp_path):
    from sparge_pipelines.generate import GenerateConfig, generate

    with pytest.raises(ValueError, match="out '/tmp/noext' must end in one of"):
        GenerateConfig(model=str(tmp_path), prompt="x", out="/tmp/noext")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device 'cuda'.*no usable CUDA GPU"):
            generate(GenerateConfig(model=str(tmp_path / "never-loaded"), prompt="x", device="cuda"))


@pytest.mark.parametrize(
    ("world", "degree", "message"),
    [(None, "2", "argument --ulysses-degree: 2 needs 2 processes, one per GPU: launch with torchrun "
                 "--nproc_per_node 2 (WORLD_SIZE is 1)"),
     ("4", "4", "argument --ulysses-degree: Ulysses degree 4 does not divide the 2 attention heads"),
     (None, "0", "argument --ulysses-degree: must be >= 1")],
)
def test_ulysses_degree_errors_are_fast_argparse_errors(model_dir, monkeypatch, world, degree, message):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    if world is not None:
        monkeypatch.setenv("WORLD_SIZE", world)
    proc = _cli_subprocess("--model", str(model_dir), "--prompt", "x", "--ulysses-degree", degree)
    assert proc.returncode == 2
    assert f"sparge-generate: error: {message}" in proc.stderr, proc.stderr
    assert "HEAVY []" in proc.stdout


@pytest.mark.multiprocess
@pytest.mark.slow
def test_generate_under_torchrun_with_ulysses_equals_one_process(model_dir, tmp_path):
    """`torchrun --nproc_per_node 2 sparge-generate --ulysses-degree 2` (gloo) writes the video one process does."""
    args = ["--model", str(model_dir), "--prompt", "a red cat jumps", *VIDEO_ARGS, "--topk", "0.3", "--topp", "0.1",
            "--token-order", "tiled", "--block-q", "16", "--block-k", "8", "--stats"]
    assert main([*args, "--out", str(tmp_path / "one.mp4")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "sparge_pipelines.cli", *args, "--ulysses-degree", "2",
                           "--out", str(tmp_path / "two.mp4")], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert proc.stdout.count("wrote ") == 1  # rank 0 only
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert two["settings"]["ulysses_degree"] == 2
    assert two["density"]["per_step"] == pytest.approx(one["density"]["per_step"], rel=1e-9)
    frames_one, frames_two = (iio.imread(tmp_path / f"{n}.mp4").astype(int) for n in ("one", "two"))
    assert abs(frames_one - frames_two).max() <= 1  # the same floats up to rounding, encoded the same way
