"""Bad input and damaged state fail early and clearly (no fit needed): config fields, plan arguments, checkpoint
verification and fallback, metrics truncation on resume, the start-up data/model and resume checks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from sparge_train.checkpoint import (
    MANIFEST,
    CheckpointError,
    SafeTorchCheckpointEngine,
    checkpoint_problem,
    find_resume_point,
)
from sparge_train.cli import main
from sparge_train.config import ConfigError, config_from_dict, load_config
from sparge_train.guards import NonFiniteGuard, TrainingStopped
from sparge_train.metrics import MetricsLogger, read_metrics
from sparge_train.preflight import check_data, check_resume, run_info

from .conftest import TINY_LATENT

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tiny_cpu.yaml"


def tiny_preset_config(**overrides) -> dict:
    cfg = {"model": {"preset": "tiny"},
           "data": {"source": "synthetic", "text_len": 16, "synthetic": {"num_samples": 4, **TINY_LATENT}},
           "train": {"output_dir": "unused"}}
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        cfg.setdefault(section, {})[key] = value
    return cfg


# --------------------------------------------------------------------------------------------- config load
@pytest.mark.parametrize(
    "overrides,field",
    [({"sparge__token_order": "diagonal"}, "sparge.token_order"),
     ({"sparge__dense_layers": [99]}, "sparge.dense_layers"),
     ({"sparge__dense_layers": [0, 2]}, "sparge.dense_layers"),
     ({"train__max_nonfinite_steps": -1}, "train.max_nonfinite_steps")],
)
def test_bad_fields_name_the_field_at_load(overrides, field):
    with pytest.raises(ConfigError, match=f"^{field}: ") as err:
        config_from_dict(tiny_preset_config(**overrides))
    assert err.value.field_name == field


def test_dense_layers_in_range_and_tiled_order_are_accepted():
    cfg = config_from_dict(tiny_preset_config(sparge__dense_layers=[1], sparge__token_order="tiled"))
    assert cfg.sparge.dense_layers == [1]


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    bad = tmp_path / "run.yaml"
    bad.write_text("model:\n  preset: tiny\n bad: [\n")
    with pytest.raises(ConfigError, match=r"run.yaml: YAML syntax error at line 3, column 2"):
        load_config(bad)
    good = tmp_path / "good.yaml"
    good.write_text(json.dumps(tiny_preset_config()))
    with pytest.raises(ConfigError, match=r"^sparge.dense_layers: --set value '\[1,' is not valid YAML"):
        load_config(good, ["sparge.dense_layers=[1,"])


def test_example_cpu_config_loads_with_the_tiny_model():
    cfg = load_config(EXAMPLE)
    assert cfg.model.preset == "tiny" and cfg.data.source == "synthetic"
    assert cfg.data.synthetic.latent_channels == 4 and cfg.data.synthetic.text_dim == 32


# ------------------------------------------------------------------------------------------------ plan CLI
@pytest.mark.parametrize(
    "args,message",
    [(["--model", "wan2.1-7b"], "argument --model: invalid choice: 'wan2.1-7b'"),
     (["--gpus-per-node", "0"], "argument --gpus-per-node: must be >= 1, got 0"),
     (["--frames", "10"], "argument --frames: frames must be 4k\\+1"),
     (["--height", "100"], "argument --height: must be a multiple of 16"),
     (["--nodes", "x"], "argument --nodes: expected an integer"),
     (["--gpu-mem-gib", "-1"], "argument --gpu-mem-gib: must be a finite number > 0")],
)
def test_plan_argument_errors_are_usage_errors(args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["plan", *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("sparge-train plan: error: ")
    assert __import__("re").search(message, err), err
    assert "Traceback" not in err


# ------------------------------------------------------------------------------- checkpoints on disk only
def fake_checkpoint(root: Path, step: int, *, manifest: bool = True, run: dict | None = None) -> Path:
    folder = root / f"step_{step:08d}"
    folder.mkdir(parents=True)
    torch.save({"module": {"w": torch.full((64,), float(step))}}, folder / "mp_rank_00_model_states.pt")
    (folder / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"x" * 100)
    if manifest:
        files = {p.name: p.stat().st_size for p in folder.iterdir()}
        (folder / MANIFEST).write_text(json.dumps({"tag": folder.name, "step": step, "files": files,
                                                   "run": run or {}}))
    (root / "latest").write_text(folder.name)
    return folder


def test_truncated_checkpoint_falls_back_to_the_newest_intact(tmp_path, caplog):
    root = tmp_path / "checkpoints"
    fake_checkpoint(root, 2)
    fake_checkpoint(root, 4)
    newest = fake_checkpoint(root, 6)
    assert find_resume_point("auto", root) == (root, "step_00000006")
    with open(newest / "mp_rank_00_model_states.pt", "r+b") as f:
        f.truncate(100)  # what `truncate -s` does to a file
    with caplog.at_level("WARNING"):
        assert find_resume_point("auto", root) == (root, "step_00000004")
    log = caplog.text
    assert "step_00000006/mp_rank_00_model_states.pt has 100 bytes" in log
    assert "falling back to the newest intact checkpoint" in log and "step_00000004" in log
    # An explicit train.resume is not silently swapped for another checkpoint.
    with pytest.raises(CheckpointError, match="train.resume: .*step_00000006/mp_rank_00_model_states.pt has 100"):
        find_resume_point(str(newest), root)


def test_dangling_latest_and_missing_files(tmp_path, caplog):
    root = tmp_path / "checkpoints"
    fake_checkpoint(root, 2)
    (root / "latest").write_text("step_00000009")
    with caplog.at_level("WARNING"):
        assert find_resume_point("auto", root) == (root, "step_00000002")
    assert "latest names step_00000009, which does not exist" in caplog.text
    (root / "step_00000002" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").unlink()
    with pytest.raises(CheckpointError, match="no intact checkpoint under .*optim_states.pt is missing"):
        find_resume_point("auto", root)
    assert find_resume_point("auto", tmp_path / "fresh") is None
    assert find_resume_point("none", root) is None


def test_half_written_temporary_checkpoint_is_ignored(tmp_path):
    root = tmp_path / "checkpoints"
    fake_checkpoint(root, 2)
    (root / ".tmp-step_00000004").mkdir()  # a save killed before its rename: never named by `latest`
    (root / ".tmp-step_00000004" / "mp_rank_00_model_states.pt").write_bytes(b"partial")
    assert find_resume_point("auto", root) == (root, "step_00000002")


def test_checkpoint_without_manifest_is_accepted_only_with_model_states(tmp_path):
    legacy = fake_checkpoint(tmp_path, 2, manifest=False)
    assert checkpoint_problem(legacy) is None
    (legacy / "mp_rank_00_model_states.pt").unlink()
    assert "no sparge_manifest.json" in checkpoint_problem(legacy)


def test_corrupted_file_error_names_it_without_unsafe_advice(tmp_path):
    path = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": {"w": torch.ones(1000)}}, path)
    with open(path, "r+b") as f:
        f.truncate(1000)
    with pytest.raises(CheckpointError) as err:
        SafeTorchCheckpointEngine().load(str(path), map_location="cpu")
    message = str(err.value)
    assert str(path) in message and "cannot be loaded" in message
    assert "weights_only=False" not in message and "weights_only" not in message


# --------------------------------------------------------------------------------------- start-up checks
def test_resume_with_a_different_model_says_what_differs(tmp_path):
    small = config_from_dict(tiny_preset_config())
    root = tmp_path / "checkpoints"
    fake_checkpoint(root, 2, run=run_info(small))
    check_resume(small, (root, "step_00000002"))  # same model: fine
    other = tiny_preset_config()
    other["model"] = {"preset": "wan2.1-1.3b"}
    other["data"]["synthetic"].update(latent_channels=16, text_dim=4096)
    with pytest.raises(ConfigError, match=r"^model: the checkpoint was written by a different model: .*"
                                          r"num_layers: 2 in the checkpoint, 30 now"):
        check_resume(config_from_dict(other), (root, "step_00000002"))
    zero3 = tiny_preset_config(deepspeed__zero_stage=3)
    with pytest.raises(ConfigError, match=r"^deepspeed.zero_stage: .*ZeRO stage 2, this run uses 3"):
        check_resume(config_from_dict(zero3), (root, "step_00000002"))


def test_resume_check_reads_the_old_config_yaml_without_a_manifest(tmp_path):
    import yaml

    out = tmp_path / "run"
    fake_checkpoint(out / "checkpoints", 2, manifest=False)
    (out / "config.yaml").write_text(yaml.safe_dump({"model": {"preset": "wan2.1-1.3b"},
                                                     "deepspeed": {"zero_stage": 2}}))
    with pytest.raises(ConfigError, match="num_layers: 30 in the checkpoint, 2 now"):
        check_resume(config_from_dict(tiny_preset_config()), (out / "checkpoints", "step_00000002"))


class _OneSample:
    def __init__(self, latents, text):
        self.sample = {"latents": torch.zeros(latents), "text_embeds": torch.zeros(text)}

    def __getitem__(self, i):
        return self.sample


@pytest.mark.parametrize(
    "latents,text,field,message",
    [((16, 4, 16, 16), (8, 32), "data.synthetic.latent_channels", "16 latent channels but the model takes "
      "in_channels=4"),
     ((4, 4, 16, 16), (8, 4096), "data.synthetic.text_dim", "4096 wide but the model takes text_dim=32"),
     ((4, 4, 15, 16), (8, 32), "data.synthetic.latent_height", "15 is not a multiple of the model's patch size 2")],
)
def test_data_must_match_the_model(latents, text, field, message):
    from sparge_train.preflight import architecture

    cfg = config_from_dict(tiny_preset_config())
    with pytest.raises(ConfigError, match=f"^{field}: .*{message}"):
        check_data(cfg, _OneSample(latents, text), architecture(cfg.model))
    check_data(cfg, _OneSample((4, 4, 16, 16), (8, 32)), architecture(cfg.model))


def test_shard_data_mismatch_names_the_data_path():
    from sparge_train.preflight import architecture

    cfg = config_from_dict(tiny_preset_config())
    cfg.data.source, cfg.data.path = "shards", "/data/latents"
    with pytest.raises(ConfigError, match=r"^data.path \(/data/latents\): latent_channels of the prepared latents"):
        check_data(cfg, _OneSample((16, 4, 16, 16), (8, 32)), architecture(cfg.model))


# ------------------------------------------------------------------------------------- guard and metrics
def test_guard_counts_consecutive_bad_steps_and_stops(tmp_path):
    module = torch.nn.Linear(2, 2)
    guard = NonFiniteGuard(1, tmp_path)
    assert guard.check(1, 0.5, 1.0, module) and not guard.last_step_bad
    assert not guard.check(2, math.nan, 1.0, module) and guard.last_step_bad
    assert guard.check(3, 0.4, 2.0, module)  # a good step resets the count
    assert not guard.check(4, 0.4, math.inf, module, update_applied=False)
    with pytest.raises(TrainingStopped, match=r"step 5: 2 consecutive .*loss=inf.*max_nonfinite_steps=1.*start again"):
        guard.check(5, math.inf, None, module)


def test_guard_stops_at_once_when_the_weights_are_non_finite(tmp_path):
    module = torch.nn.Linear(2, 2)
    with torch.no_grad():
        module.weight[0, 0] = math.nan
    (tmp_path / "latest").write_text("step_00000004")
    with pytest.raises(TrainingStopped, match=r"weights are no longer finite.*step_00000004; lower optim.lr"):
        NonFiniteGuard(10, tmp_path).check(5, math.nan, math.nan, module, update_applied=True)


def test_metrics_are_truncated_to_the_resumed_step(tmp_path):
    logger = MetricsLogger(tmp_path, enabled=True, tensorboard=False)
    for step in (0, 1, 2, 3):
        logger.log(step, {"loss": float(step)})
    logger.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "loss"')  # torn by a kill mid-write
    logger = MetricsLogger(tmp_path, enabled=True, tensorboard=False, resume_step=2)
    logger.log(3, {"loss": 30.0})
    logger.close()
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3]
    assert read_metrics(tmp_path / "metrics.jsonl")[3]["loss"] == 30.0
