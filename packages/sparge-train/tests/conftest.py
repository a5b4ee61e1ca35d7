"""Shared helpers for sparge-train tests: a tiny Wan "pretrained" teacher on disk and a launcher for
`sparge-train fit` in 1 or 2 CPU processes (plain python, torchrun or the deepspeed launcher, gloo)."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

TINY_LATENT = {"latent_channels": 4, "latent_frames": 4, "latent_height": 16, "latent_width": 16,
               "text_tokens": 8, "text_dim": 32}  # 4 × 8 × 8 = 256 tokens: 2 query blocks, 4 key blocks


def save_tiny_wan(path: Path, *, seed: int = 0, std: float = 0.1, **arch: Any) -> Path:
    """The `tiny` preset (with `arch` overrides) with every parameter redrawn from N(0, std): a stand-in pretrained
    teacher whose attention is far from uniform (diffusers' default init leaves it nearly so)."""
    from diffusers import WanTransformer3DModel

    from sparge_train.presets import wan_config

    torch.manual_seed(seed)
    model = WanTransformer3DModel(**{**wan_config("tiny"), **arch})
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    model.save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_wan_dir(tmp_path_factory) -> Path:
    return save_tiny_wan(tmp_path_factory.mktemp("tiny_wan") / "transformer")


def tiny_run_config(model_dir: Path, out_dir: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "model": {"pretrained": str(model_dir), "gradient_checkpointing": True},
        "sparge": {"enabled": True, "topk": 0.1, "topp": 0.3},
        "loss": {"kind": "velocity"},
        "data": {"source": "synthetic", "text_len": 16, "synthetic": {"num_samples": 8, **TINY_LATENT}},
        "optim": {"lr": 1e-4, "grad_clip": 1.0},
        "deepspeed": {"zero_stage": 2},
        "train": {"output_dir": str(out_dir), "max_steps": 4, "micro_batch_size": 1, "global_batch_size": 2,
                  "save_every": 2, "tensorboard": False, "progress_bar": False},
    }
    for section, values in sections.items():
        merged = dict(cfg.get(section, {}))
        for key, value in values.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
        cfg[section] = merged
    return cfg


def write_config(cfg: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


class FitRuns:
    """Runs each configuration of a test module once, on first use: `get(name)` calls the subclass's `_<name>()`
    and caches its result. `_config(name, **sections)` writes the tiny run config of output folder tmp/name."""

    def __init__(self, tmp: Path, model_dir: Path):
        self.tmp, self.model_dir, self.cache = tmp, model_dir, {}

    def _config(self, name: str, **sections: dict[str, Any]) -> tuple[Path, Path]:
        out = self.tmp / name
        return write_config(tiny_run_config(self.model_dir, out, **sections), self.tmp / f"{name}.yaml"), out

    def get(self, name: str) -> Any:
        if name not in self.cache:
            self.cache[name] = getattr(self, f"_{name}")()
        return self.cache[name]


def deepspeed_shm_segments() -> set[str]:
    """The DeepSpeed SHM-allreduce segments in /dev/shm now (sparge_train.distributed._unlink_deepspeed_shm)."""
    return {p.name for p in Path("/dev/shm").glob("deepspeed_allreduce_buffer_*")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fit_command(config: Path, nprocs: int, launcher: str, extra: list[str] | None) -> tuple[list[str], dict]:
    fit_args = ["sparge_train", "fit", "--config", str(config), *(extra or [])]
    port = str(free_port())
    if launcher == "python":
        assert nprocs == 1
        cmd = [sys.executable, "-m", *fit_args]
    elif launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nprocs), "--master_port", port,
               "-m", *fit_args]
    elif launcher == "deepspeed":
        cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(nprocs), "--master_port", port,
               "--module", *fit_args]
    else:
        raise ValueError(launcher)
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false"}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return cmd, env


def run_fit(config: Path, *, nprocs: int = 1, launcher: str = "python", extra: list[str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `sparge-train fit`; returns the completed process (output captured)."""
    cmd, env = _fit_command(config, nprocs, launcher, extra)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def start_fit(config: Path, log: Path, *, nprocs: int = 1, launcher: str = "python",
              extra: list[str] | None = None) -> subprocess.Popen:
    """Start `sparge-train fit` in its own process group (kill it with os.killpg), output to `log`."""
    cmd, env = _fit_command(config, nprocs, launcher, extra)
    with open(log, "w") as f:
        return subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def kill_after_first_checkpoint(proc: subprocess.Popen, out: Path, log: Path) -> tuple[int, int, float]:
    """SIGKILL the whole process group of a `start_fit` run from outside, at a random moment (0-0.6 s) after its
    first checkpoint (mid-step, mid-save or mid-log), like a node failure. Returns (the killed run's exit code,
    the step of the checkpoint `latest` names, the delay). Launch it with the deepspeed launcher (or plain
    python): torchrun starts its workers in sessions of their own, which the kill would not reach."""
    latest = out / "checkpoints" / "latest"
    deadline = time.monotonic() + 300
    while not latest.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    delay = random.uniform(0.0, 0.6)  # anywhere in the next few steps / the next save
    time.sleep(delay)
    if proc.poll() is not None:
        raise AssertionError(f"the run ended (rc {proc.returncode}) before the kill:\n{log.read_text()[-4000:]}")
    os.killpg(proc.pid, signal.SIGKILL)
    killed_rc = proc.wait(timeout=60)
    return killed_rc, int(latest.read_text().strip().removeprefix("step_")), delay


def check_ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    if proc.returncode != 0:
        raise AssertionError(f"fit failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="session")
def tiny_wan_components(tmp_path_factory):
    """(folder with vae/, text_encoder/, tokenizer/; the VAE; the tiny WanPipeline they come from)."""
    from diffusers import AutoencoderKLWan

    from sparge_pipelines.testing import tiny_wan_pipeline

    root = tmp_path_factory.mktemp("tiny_pipeline")
    pipe = tiny_wan_pipeline(seed=0)
    torch.manual_seed(0)
    # non-trivial normalisation constants, to check (z - mean) / std
    vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True], latents_mean=[0.1, -0.2, 0.3, 0.0],
                           latents_std=[2.0, 0.5, 1.0, 1.5]).eval()
    vae.save_pretrained(str(root / "vae"))
    pipe.text_encoder.save_pretrained(str(root / "text_encoder"))
    pipe.tokenizer.save_pretrained(str(root / "tokenizer"))
    return root, vae, pipe
