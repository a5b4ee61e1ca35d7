"""`sparge-train fit` end to end (CPU, 1 process) on the shipped tiny example: a diverging run stops with exit 3
and keeps its good checkpoint, a truncated checkpoint falls back to the previous one, a mismatched model or data
is refused at start-up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sparge_train.checkpoint import checkpoint_problem

from .conftest import check_ok

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tiny_cpu.yaml"


def fit_example(out: Path, *overrides: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """The README's command for the CPU example, with overrides."""
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    sets = [x for o in (f"train.output_dir={out}", "train.progress_bar=false", *overrides) for x in ("--set", o)]
    return subprocess.run([sys.executable, "-m", "sparge_train", "fit", "--config", str(EXAMPLE), *sets], env=env,
                          capture_output=True, text=True, timeout=timeout)


def steps_logged(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_example_runs_then_resumes_past_a_truncated_checkpoint(tmp_path):
    out = tmp_path / "run"
    check_ok(fit_example(out))
    ckpts = out / "checkpoints"
    assert (ckpts / "latest").read_text() == "step_00000004"
    assert not list(ckpts.glob(".tmp-*"))
    assert steps_logged(out) == [1, 2, 3, 4]
    with open(ckpts / "step_00000004" / "mp_rank_00_model_states.pt", "r+b") as f:
        f.truncate(1000)  # `truncate -s 1000`
    proc = check_ok(fit_example(out, "train.max_steps=5"))
    log = proc.stdout + proc.stderr
    assert "step_00000004/mp_rank_00_model_states.pt has 1000 bytes" in log
    assert "falling back to the newest intact checkpoint" in log and "resumed from" in log
    assert "step_00000002 at step 2" in log
    assert "Traceback" not in log and "weights_only" not in log
    assert steps_logged(out) == [1, 2, 3, 4, 5]  # the replayed steps 3, 4 appear once
    # The re-saved step 4 replaced the damaged one (intact again); step 5 is the newest.
    assert (ckpts / "latest").read_text() == "step_00000005"
    assert checkpoint_problem(ckpts / "step_00000004") is None


def test_diverging_run_stops_with_exit_3_and_keeps_the_good_checkpoint(tmp_path):
    out = tmp_path / "nan"
    proc = fit_example(out, "optim.lr=1e10", "train.save_every=1", "train.keep_last=1", "train.max_steps=20",
                       "train.max_nonfinite_steps=2")
    assert proc.returncode == 3, proc.stderr[-3000:]
    err = proc.stderr
    assert "sparge-train fit: error: step 4: 3 consecutive steps with a non-finite loss" in err, err[-3000:]
    assert "Traceback" not in err and "finished" not in err
    ckpts = out / "checkpoints"
    # Step 1's loss was finite (the huge update is what breaks step 2 on): its checkpoint is the only one, and
    # keep_last=1 did not rotate it out for a non-finite state.
    assert (ckpts / "latest").read_text() == "step_00000001"
    assert sorted(p.name for p in ckpts.glob("step_*")) == ["step_00000001"]
    assert "newest good checkpoint is" in err and "step_00000001" in err


def test_mismatched_model_and_data_are_refused_at_start_up(tmp_path):
    out = tmp_path / "run"
    check_ok(fit_example(out, "train.max_steps=2", "train.export_at_end=false"))
    proc = fit_example(out, "model.preset=wan2.1-1.3b", "data.synthetic.latent_channels=16",
                       "data.synthetic.text_dim=4096")
    assert proc.returncode == 2
    assert "sparge-train fit: error: model: the checkpoint was written by a different model" in proc.stderr
    assert "num_layers: 2 in the checkpoint, 30 now" in proc.stderr
    proc = fit_example(tmp_path / "fresh", "data.synthetic.latent_channels=16")
    assert proc.returncode == 2
    assert ("sparge-train fit: error: data.synthetic.latent_channels: the data has 16 latent channels but the "
            "model takes in_channels=4") in proc.stderr
    assert "Traceback" not in proc.stderr
