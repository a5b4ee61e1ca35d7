"""`sparge-train fit` with sequence parallelism (Ulysses, `parallel.sequence_parallel_size`) on the CPU (gloo):
2 processes of degree 2, 4 processes of degree 4 and 4 processes as 2 data-parallel groups of degree 2, each
against 1 process at the same global batch; a killed-and-resumed degree-2 run against an uninterrupted one; the
errors of layouts that cannot run.

All runs: the tiny Wan teacher with 4 heads of 8 (so that degree 4 divides them), sparse student (top-k 0.1, top-p
0.3 over 2 × 4 blocks of 256 tokens), velocity loss, fp32, global batch 2, 5 steps, checkpoints every 2 steps.

Tolerances: sequence parallelism changes where tokens are projected and how the gradients are summed (over the
ranks of a group, then ZeRO's reduction), not what is computed: rtol 2e-5 as for plain data parallelism (observed:
2e-6). A resumed run replays the same arithmetic on the same ranks: rtol 1e-6.
"""

from __future__ import annotations

import json

import pytest
import torch

from sparge_train.cli import main
from sparge_train.config import ConfigError, ParallelSection, config_from_dict
from sparge_train.metrics import read_metrics
from sparge_train.sequence_parallel import ParallelLayout

from .conftest import (
    FitRuns,
    check_ok,
    kill_after_first_checkpoint,
    run_fit,
    save_tiny_wan,
    start_fit,
    tiny_run_config,
    write_config,
)

STEPS = 5
HEADS = {"num_attention_heads": 4, "attention_head_dim": 8}  # the tiny preset's width 32, as 4 heads


def sp(degree: int, zero: int, **train) -> dict:
    return {"parallel": {"sequence_parallel_size": degree}, "deepspeed": {"zero_stage": zero},
            "train": {"max_steps": STEPS, **train}}


class Runs(FitRuns):
    def _baseline(self):  # 1 process, micro-batch 2, ZeRO-2
        cfg, out = self._config("baseline", train={"micro_batch_size": 2, "max_steps": STEPS})
        check_ok(run_fit(cfg))
        return out

    def _degree2(self):  # one group of 2 ranks, micro-batch 1 and 2 accumulation steps, ZeRO-3
        cfg, out = self._config("degree2", **sp(2, 3))
        check_ok(run_fit(cfg, nprocs=2, launcher="torchrun"))
        return out

    def _degree4(self):  # one group of 4 ranks, ZeRO-2, the deepspeed launcher
        cfg, out = self._config("degree4", **sp(4, 2))
        check_ok(run_fit(cfg, nprocs=4, launcher="deepspeed"))
        return out

    def _data2_degree2(self):  # 2 data-parallel groups of 2 ranks, ZeRO-3 over the 4
        cfg, out = self._config("data2_degree2", **sp(2, 3))
        check_ok(run_fit(cfg, nprocs=4, launcher="torchrun"))
        return out

    def _degree2_compiled(self):  # degree 2 with the student's repeated blocks compiled (model.compile)
        cfg, out = self._config("degree2_compiled", model={"compile": True}, **sp(2, 2))
        check_ok(run_fit(cfg, nprocs=2, launcher="torchrun"))
        return out

    def _degree2_killed_then_resumed(self):
        # Constant lr and step-indexed data: steps 1..5 of a long run are those of the 5-step run.
        cfg, out = self._config("degree2_resume", **sp(2, 3, max_steps=10_000, export_at_end=False))
        log = self.tmp / "degree2_resume_killed.log"
        proc = start_fit(cfg, log, nprocs=2, launcher="deepspeed")
        killed_rc, resume_step, delay = kill_after_first_checkpoint(proc, out, log)
        max_steps = max(STEPS, resume_step + 1)
        cfg, _ = self._config("degree2_resume", **sp(2, 3, max_steps=max_steps, export_at_end=False))
        resumed = check_ok(run_fit(cfg, nprocs=2, launcher="deepspeed"))
        return killed_rc, resumed, out, resume_step, max_steps, delay


@pytest.fixture(scope="module")
def four_head_wan(tmp_path_factory):
    return save_tiny_wan(tmp_path_factory.mktemp("tiny_wan_4_heads") / "transformer", **HEADS)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, four_head_wan):
    return Runs(tmp_path_factory.mktemp("fit_sp"), four_head_wan)


def losses(out, steps=STEPS):
    metrics = read_metrics(out / "metrics.jsonl")
    return torch.tensor([metrics[s]["loss"] for s in range(1, steps + 1)], dtype=torch.float64)


@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.parametrize("name", ["degree2", "degree4", "data2_degree2"])
def test_sequence_parallel_losses_match_one_process(runs, name):
    out = runs.get(name)
    torch.testing.assert_close(losses(out), losses(runs.get("baseline")), rtol=2e-5, atol=0)
    metrics, base = read_metrics(out / "metrics.jsonl"), read_metrics(runs.get("baseline") / "metrics.jsonl")
    # The gradients too (their norm), not only the Adam steps that are nearly invariant to their scale.
    torch.testing.assert_close(torch.tensor([metrics[s]["grad_norm"] for s in range(1, STEPS + 1)]),
                               torch.tensor([base[s]["grad_norm"] for s in range(1, STEPS + 1)]), rtol=1e-4, atol=0)
    assert (out / "export" / "diffusion_pytorch_model.safetensors").is_file()


@pytest.mark.multiprocess
@pytest.mark.slow
def test_compiled_student_under_sequence_parallelism_matches_one_process(runs):
    """diffusers' context-parallel hooks, the Ulysses all-to-alls and the sparge custom ops inside
    compile_repeated_blocks: the same losses as the eager single process (inductor may fuse differently: 1e-4)."""
    out = runs.get("degree2_compiled")
    torch.testing.assert_close(losses(out), losses(runs.get("baseline")), rtol=1e-4, atol=0)


@pytest.mark.multiprocess
@pytest.mark.slow
def test_killed_sequence_parallel_run_resumes_and_matches(runs):
    killed_rc, resumed, out, resume_step, max_steps, delay = runs.get("degree2_killed_then_resumed")
    assert killed_rc != 0, "the run finished before it was killed"
    log = resumed.stdout + resumed.stderr
    assert f"resumed from {out / 'checkpoints'}/step_{resume_step:08d} at step {resume_step}" in log, (delay, log)
    assert resume_step >= 2 and resume_step % 2 == 0
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, max_steps + 1)), (delay, steps)
    torch.testing.assert_close(losses(out), losses(runs.get("degree2")), rtol=1e-6, atol=0)


def test_degree_not_dividing_the_heads_is_a_config_error(tmp_path, tiny_wan_dir, capsys):
    """The 2-head tiny model with degree 4: refused when the config is loaded, naming the field."""
    cfg = tiny_run_config(tiny_wan_dir, tmp_path / "out", parallel={"sequence_parallel_size": 4})
    with pytest.raises(ConfigError, match=r"^parallel.sequence_parallel_size: 4 does not divide the model's 2 "
                                          r"attention heads") as err:
        config_from_dict(cfg)
    assert err.value.field_name == "parallel.sequence_parallel_size"
    assert main(["fit", "--config", str(write_config(cfg, tmp_path / "run.yaml"))]) == 2
    assert "sparge-train fit: error: parallel.sequence_parallel_size: 4 does not divide" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"^parallel.sequence_parallel_size: must be >= 1, got 0"):
        config_from_dict(tiny_run_config(tiny_wan_dir, tmp_path / "out", parallel={"sequence_parallel_size": 0}))


def test_degree_must_divide_the_world_size():
    with pytest.raises(ConfigError, match=r"^parallel.sequence_parallel_size: 2 does not divide the world size \(3\)"):
        ParallelLayout.of(ParallelSection(sequence_parallel_size=2), world_size=3, rank=0)
    layout = ParallelLayout.of(ParallelSection(sequence_parallel_size=2), world_size=8, rank=5)
    assert (layout.data_parallel_size, layout.data_rank) == (4, 2)  # ranks 4, 5 form data-parallel group 2
