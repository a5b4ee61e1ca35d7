"""`sparge-generate` end to end on a tiny Wan2.1 saved with save_pretrained and on the shipped world model (the
default without --model), offline, CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import imageio.v3 as iio
import pytest
import torch

from sparge_pipelines.cli import build_parser, main
from sparge_pipelines.model_source import resolve_model, shipped_world_models
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


# -- the world model: the default without --model ----------------------------------------------------------------

CAPTION = "a red 3 moving left and a blue 7 moving up on clouds"
# The smallest size the teacher's 1x4x4 patch takes without a degenerate grid, 2 steps: seconds on the reference ops.
WORLD_ARGS = ["--prompt", CAPTION, "--frames", "4", "--height", "32", "--width", "32", "--steps", "2", "--no-progress"]
needs_teacher = pytest.mark.skipif("teacher" not in shipped_world_models(), reason="no shipped world teacher")


@needs_teacher
def test_no_model_generates_with_the_shipped_teacher(tmp_path, capsys):
    out = tmp_path / "world.gif"
    assert main([*WORLD_ARGS, "--seed", "3", "--stats", "--time-attention", "--out", str(out)]) == 0, \
        capsys.readouterr().err
    frames = iio.imread(out)  # (F, H, W, 3) uint8
    assert frames.shape == (4, 32, 32, 3) and frames.std() > 0
    report = json.loads(out.with_suffix(".json").read_text())
    settings = report["settings"]
    assert settings["model"] is None and settings["model_kind"] == "world" and settings["caption"] == CAPTION
    assert settings["model_path"] == str(shipped_world_models()["teacher"])
    assert (settings["guidance"], settings["shift"], settings["fps"]) == (4.0, 3.0, 8)  # SamplerConfig's, world fps
    assert settings["mode"] == "sparge" and settings["device"] == "cpu" and settings["dtype"] == "float32"
    assert len(report["per_step_s"]) == 2 and report["total_s"] >= report["denoise_s"] > 0
    assert 0 < report["attention_share"] < 1
    assert report["density"]["per_step"] and 0 < report["density"]["overall"] < 1
    assert open(report["density"]["heatmap"], "rb").read(4) == b"\x89PNG"
    assert "density" in capsys.readouterr().out


needs_student = pytest.mark.skipif("student" not in shipped_world_models(), reason="no shipped world student")


@needs_student
def test_world_student_serves_with_the_mask_it_was_distilled_at(tmp_path):
    """`--model world-student` loads the shipped sparse student and, with no mask flags, its sparge.json."""
    trained = json.loads((shipped_world_models()["student"] / "sparge.json").read_text())
    assert trained["trained_by"] == "sparge-train" and 0 < trained["topk"] < 1  # written by the export, not by hand
    out = tmp_path / "student.gif"
    assert main([*WORLD_ARGS, "--model", "world-student", "--stats", "--out", str(out)]) == 0
    assert iio.imread(out).std() > 0
    report = json.loads(out.with_suffix(".json").read_text())
    settings = report["settings"]
    assert settings["model_path"] == str(shipped_world_models()["student"]) and settings["mode"] == "sparge"
    assert {k: settings[k] for k in ("topk", "topp", "token_order")} == \
        {k: trained[k] for k in ("topk", "topp", "token_order")}
    assert 0 < report["density"]["overall"] < 1
    # an explicit flag still wins over the trained mask
    out = tmp_path / "override.gif"
    assert main([*WORLD_ARGS, "--model", "world-student", "--topk", "0.5", "--steps", "1", "--out", str(out)]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["settings"]["topk"] == 0.5


@needs_teacher
def test_world_video_is_reproducible_by_seed(tmp_path):
    videos = {}
    for name, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        out = tmp_path / f"{name}.mp4"
        args = [*WORLD_ARGS, "--model", "world-teacher", "--dense", "--steps", "1", "--seed", seed, "--out", str(out)]
        assert main(args) == 0
        videos[name] = iio.imread(out)
    assert (videos["a"] == videos["b"]).all()
    assert (videos["a"] != videos["c"]).any()


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--image", "/nonexistent.png"], "argument --image: the world model has no image conditioning"),
     (["--negative-prompt", "blurry"], "argument --negative-prompt: the world model's guidance"),
     (["--ulysses-degree", "2"], "argument --ulysses-degree: the world model"),
     (["--height", "30"], "argument --height: must be a multiple of 4 (the world model's 1x4x4 patch), got 30"),
     (["--out", "clip.webm"], "argument --out: 'clip.webm' must end in one of .mp4, .mkv, .mov, .gif"),
     (["--guidance", "-1"], "argument --guidance: the world sampler's CFG scale must be >= 0")],
)
def test_world_argument_errors_are_fast_argparse_errors(args, message):
    proc = _cli_subprocess("--prompt", CAPTION, *args)
    assert proc.returncode == 2
    assert f"sparge-generate: error: {message}" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "HEAVY []" in proc.stdout


@pytest.mark.parametrize(
    ("prompt", "reason"),
    [("a red cat jumps", "caption: expected 'a <colour> <digit> moving <direction>"),
     ("a purple 3 moving left on clouds", "colour: 'purple' is not in the vocabulary"),
     ("a red 3 moving left on stripes", "background: 'stripes' is not one of")],
)
def test_world_prompt_outside_the_vocabulary_is_a_clear_error(prompt, reason, capsys):
    # The prompt is checked last: these sizes (not Wan's 4k+1 frames and multiples of 16) passed the checks before.
    assert main(["--prompt", prompt, "--frames", "10", "--height", "36", "--width", "44"]) == 2
    err = capsys.readouterr().err
    assert f"sparge-generate: error: argument --prompt: {reason}" in err, err
    assert f"e.g. {CAPTION!r}" in err and "colours: red, green" in err and "backgrounds: clouds" in err


def test_model_names_and_folders(tmp_path, monkeypatch):
    import sparge_pipelines.model_source as model_source

    teacher = tmp_path / "weights" / "teacher"
    teacher.mkdir(parents=True)
    (teacher / "config.json").write_text(json.dumps({"_class_name": "WanTransformer3DModel", "in_channels": 3,
                                                     "out_channels": 3, "patch_size": [1, 4, 4]}))
    monkeypatch.setattr(model_source, "WORLD_WEIGHTS_DIR", tmp_path / "weights")
    for value in (None, "world", "world-teacher", str(teacher)):
        source = resolve_model(value)
        assert (source.kind, source.path, source.patch_size) == ("world", teacher, (1, 4, 4)), value
    with pytest.raises(FileNotFoundError, match=r"--model 'world-student' is not in this installation \(shipped "
                                                r"world models: world, world-teacher\)"):
        resolve_model("world-student")
    (tmp_path / "wan").mkdir()
    (tmp_path / "wan" / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    assert resolve_model(str(tmp_path / "wan")).kind == "wan"
    assert resolve_model(str(tmp_path / "nope")).kind == "wan"  # the Wan loader says what is missing
    (tmp_path / "wan" / "transformer").mkdir()
    (tmp_path / "wan" / "transformer" / "config.json").write_text(json.dumps(
        {"_class_name": "WanTransformer3DModel", "in_channels": 16, "out_channels": 16}))
    with pytest.raises(ValueError, match="not a \\(pixel-space, RGB\\) world model; for Wan2.1 pass the pipeline"):
        resolve_model(str(tmp_path / "wan" / "transformer"))
    teacher.rename(tmp_path / "weights" / "old")
    with pytest.raises(FileNotFoundError, match="no --model: the default world teacher is not in this installation "
                                                "\\(shipped world models: none\\)"):
        resolve_model(None)


def test_defaults_per_model(model_dir):
    from sparge_pipelines.generate import GenerateConfig

    args = build_parser().parse_args(["--prompt", "p"])
    assert args.model is None and None in (args.frames, args.height, args.width, args.steps, args.guidance, args.fps)
    wan = GenerateConfig(model=str(model_dir), prompt="p").with_defaults("cpu")
    assert (wan.frames, wan.height, wan.width, wan.steps, wan.guidance, wan.fps) == (81, 480, 832, 50, 5.0, 16)
    world = GenerateConfig(model=None, prompt=CAPTION)
    cpu, cuda = world.with_defaults("cpu"), world.with_defaults("cuda")
    assert (cpu.frames, cpu.height, cpu.width, cpu.steps, cpu.guidance, cpu.fps) == (8, 64, 64, 25, 4.0, 8)
    assert (cuda.frames, cuda.height, cuda.width) == (16, 64, 64)  # the largest size the shipped models passed at
    assert GenerateConfig(model=None, prompt=CAPTION, steps=3).with_defaults("cpu").steps == 3  # given stays


@pytest.mark.parametrize(
    ("fields", "message"),
    [({"prompt": "a cat"}, "prompt: caption: expected"), ({"image": "x.png"}, "image: the world model"),
     ({"height": 30}, "height: must be a multiple of 4"), ({"out": "v.webm"}, "out 'v.webm' must end in one of")],
)
def test_generate_config_checks_world_fields(fields, message):
    from sparge_pipelines.generate import GenerateConfig

    with pytest.raises(ValueError, match=message):
        GenerateConfig(**{"model": "world", "prompt": CAPTION, **fields})
