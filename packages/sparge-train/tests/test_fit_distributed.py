"""End-to-end `sparge-train fit` on the CPU (gloo): ZeRO-2 and ZeRO-3 over 2 processes against 1 process at the
same global batch, a killed-and-resumed run against an uninterrupted one, and the exported weights.

All runs: the tiny Wan teacher (2 blocks), sparse student (top-k 0.1, top-p 0.3 over 2 × 4 blocks), velocity
loss, fp32, global batch 2, 4 steps, checkpoints every 2 steps.

Tolerances: the runs differ only in summation order (gradient all-reduce over 2 ranks vs. one batch of 2;
ZeRO-3's flat partitions), so per-step losses agree to float32 rounding amplified over 4 Adam steps: rtol 2e-5
(observed: 2e-6).
A resumed run replays the same arithmetic on the same ranks: rtol 1e-6 (observed: bitwise equal).
The crash is a SIGKILL of the whole process group from outside, at a random moment after the first checkpoint
(mid-step, mid-save or mid-log), like a node failure; nothing in the trainer cooperates with it.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from sparge_train.metrics import read_metrics

from .conftest import FitRuns, check_ok, deepspeed_shm_segments, kill_after_first_checkpoint, run_fit, start_fit

pytestmark = pytest.mark.multiprocess

STEPS = 4


class Runs(FitRuns):
    def _baseline(self):  # 1 process, micro-batch 2, ZeRO-2
        cfg, out = self._config("baseline", train={"micro_batch_size": 2})
        check_ok(run_fit(cfg))
        return out

    def _zero2_torchrun(self):
        cfg, out = self._config("zero2_torchrun", deepspeed={"zero_stage": 2})
        check_ok(run_fit(cfg, nprocs=2, launcher="torchrun"))
        return out

    def _zero3_deepspeed(self):
        cfg, out = self._config("zero3_deepspeed", deepspeed={"zero_stage": 3})
        before = deepspeed_shm_segments()
        check_ok(run_fit(cfg, nprocs=2, launcher="deepspeed"))  # LOCAL_SIZE = 2: DeepSpeed's SHM allreduce is on
        self.shm_segments_left = deepspeed_shm_segments() - before
        return out

    def _zero3_killed_then_resumed(self):
        # Constant lr and step-indexed data: steps 1..4 of a long run are those of the 4-step run.
        cfg, out = self._config("zero3_resume", deepspeed={"zero_stage": 3},
                                train={"max_steps": 10_000, "export_at_end": False})
        log = self.tmp / "zero3_resume_killed.log"
        proc = start_fit(cfg, log, nprocs=2, launcher="deepspeed")
        killed_rc, resume_step, delay = kill_after_first_checkpoint(proc, out, log)
        max_steps = max(STEPS, resume_step + 1)
        cfg, _ = self._config("zero3_resume", deepspeed={"zero_stage": 3},
                              train={"max_steps": max_steps, "export_at_end": False})  # same output_dir, auto
        resumed = check_ok(run_fit(cfg, nprocs=2, launcher="deepspeed"))
        return killed_rc, resumed, out, resume_step, max_steps, delay

@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_wan_dir):
    return Runs(tmp_path_factory.mktemp("fit"), tiny_wan_dir)


def losses(out):
    metrics = read_metrics(out / "metrics.jsonl")
    return torch.tensor([metrics[s]["loss"] for s in range(1, STEPS + 1)], dtype=torch.float64)


def test_baseline_logs_every_step_and_exports(runs):
    out = runs.get("baseline")
    metrics = read_metrics(out / "metrics.jsonl")
    assert sorted(metrics) == list(range(1, STEPS + 1))
    for rec in metrics.values():
        assert rec["loss"] > 0 and rec["loss"] == rec["loss_velocity"]
        assert rec["grad_norm"] > 0 and rec["lr"] == pytest.approx(1e-4)
    assert (out / "checkpoints" / "step_00000002").is_dir() and (out / "checkpoints" / "step_00000004").is_dir()
    assert (out / "export" / "diffusion_pytorch_model.safetensors").is_file()
    assert (out / "export" / "config.json").is_file()
    # the sparse student's export records the mask it trained under; sparge-pipelines serves it with that mask
    from sparge_pipelines.config import trained_sparge_fields

    assert trained_sparge_fields(out / "export") == {"topk": 0.1, "topp": 0.3, "dense_layers": (),
                                                     "token_order": "1d"}


def test_zero2_two_processes_match_one_process(runs):
    torch.testing.assert_close(losses(runs.get("zero2_torchrun")), losses(runs.get("baseline")), rtol=2e-5, atol=0)


def test_two_processes_leave_no_shared_memory_segments(runs):
    """DeepSpeed's CPU SHM allreduce creates a ~67 MB /dev/shm segment per rank and never removes it;
    init_distributed unlinks each rank's name once every rank has mapped it, so a run leaves none behind."""
    runs.get("zero3_deepspeed")
    assert runs.shm_segments_left == set()


def test_zero3_two_processes_match_one_process(runs):
    torch.testing.assert_close(losses(runs.get("zero3_deepspeed")), losses(runs.get("baseline")), rtol=2e-5, atol=0)


def test_zero3_export_matches_zero2_export(runs):
    """The ZeRO-3 export gathers the partitions: after identical training it equals the 1-process weights."""
    z3 = load_file(str(runs.get("zero3_deepspeed") / "export" / "diffusion_pytorch_model.safetensors"))
    base = load_file(str(runs.get("baseline") / "export" / "diffusion_pytorch_model.safetensors"))
    assert z3.keys() == base.keys()
    for key in base:
        torch.testing.assert_close(z3[key], base[key], rtol=1e-4, atol=1e-6, msg=key)


def test_exported_weights_load_in_diffusers_and_moved_from_the_teacher(runs, tiny_wan_dir):
    from diffusers import WanTransformer3DModel

    student = WanTransformer3DModel.from_pretrained(str(runs.get("baseline") / "export"))
    teacher = WanTransformer3DModel.from_pretrained(str(tiny_wan_dir))
    diffs = [(a - b).abs().max().item() for a, b in zip(student.parameters(), teacher.parameters(), strict=True)]
    assert max(diffs) > 0, "training did not change the student"
    assert max(diffs) < 0.05, "4 steps at lr 1e-4 cannot move a weight this far"


def test_killed_run_resumes_at_its_checkpoint_and_matches(runs):
    killed_rc, resumed, out, resume_step, max_steps, delay = runs.get("zero3_killed_then_resumed")
    assert killed_rc != 0, "the run finished before it was killed"
    log = resumed.stdout + resumed.stderr
    assert f"resumed from {out / 'checkpoints'}/step_{resume_step:08d} at step {resume_step}" in log, (delay, log)
    assert resume_step >= 2 and resume_step % 2 == 0  # an intact checkpoint, whatever the kill interrupted
    # Every step once: the records the killed run logged after its checkpoint were dropped, then re-logged.
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, max_steps + 1)), (delay, steps)
    uninterrupted = losses(runs.get("zero3_deepspeed"))
    torch.testing.assert_close(losses(out), uninterrupted, rtol=1e-6, atol=0)
