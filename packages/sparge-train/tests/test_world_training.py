"""Pretraining on the sparge world: the world data source, caption dropout, EMA export, the time budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from sparge_train.config import ConfigError, config_from_dict, load_config
from sparge_train.data import build_dataset
from sparge_train.data.sampler import MicroBatch
from sparge_train.metrics import read_metrics
from sparge_train.training_batch import caption_dropout_mask, make_training_batch

from .conftest import check_ok, run_fit, write_config

STAGE1 = "packages/sparge-train/examples/world_teacher_lowres.yaml"
STAGE2 = "packages/sparge-train/examples/world_teacher.yaml"
STUDENT = "packages/sparge-train/examples/world_student.yaml"


def world_run(out, **train) -> dict:
    """The teacher's stage-1 config at a tiny size, on the CPU."""
    with open(STAGE1) as f:
        cfg = yaml.safe_load(f)
    cfg["model"]["compile"] = False
    cfg["data"]["world"]["sizes"] = [[2, 16, 16], [2, 8, 8]]
    cfg["deepspeed"]["precision"] = "fp32"
    cfg["train"].update({"output_dir": str(out), "max_steps": 4, "micro_batch_size": 2, "global_batch_size": 2,
                         "log_every": 1, "save_every": 2, "max_time_s": 0, **train})
    return cfg


def test_example_config_loads_and_uses_the_world():
    cfg = load_config(STAGE1)
    assert cfg.data.source == "world" and cfg.loss.kind == "diffusion" and not cfg.sparge.enabled
    assert cfg.model.preset == "sparge-world" and cfg.train.ema_decay > 0


def test_stage2_config_continues_from_the_shipped_stage1_teacher():
    stage1 = load_config(STAGE1)
    cfg = load_config(STAGE2)  # run from the repo root, as CI does: the relative path must exist
    shipped = Path(__file__).resolve().parents[3] / "packages/sparge-pipelines/src/sparge_pipelines/world/weights"
    assert Path(cfg.model.pretrained).resolve() == (shipped / "teacher").resolve()
    assert (Path(cfg.model.pretrained) / "diffusion_pytorch_model.safetensors").is_file()
    assert cfg.flow.shift == stage1.flow.shift  # one sampler shift serves every size
    assert cfg.data.source == "world" and cfg.loss.kind == "diffusion" and not cfg.sparge.enabled
    assert [16, 96, 96] in cfg.data.world.sizes and cfg.train.output_dir != stage1.train.output_dir


def test_student_config_distils_the_shipped_teacher_at_the_demo_sizes():
    teacher = load_config(STAGE1)
    cfg = load_config(STUDENT)
    assert (Path(cfg.model.pretrained) / "config.json").is_file()  # the shipped teacher, from the repo root
    assert cfg.loss.kind == "velocity" and cfg.sparge.enabled and cfg.sparge.token_order == "tiled"
    assert cfg.flow.shift == teacher.flow.shift and cfg.data.world.split == "base"
    assert [16, 64, 64] in cfg.data.world.sizes and [8, 64, 64] in cfg.data.world.sizes  # GPU demo, CPU main job
    assert cfg.train.ema_decay > 0 and cfg.train.max_time_s > 0
    from sparge_pipelines.world.sampler import SamplerConfig

    assert cfg.loss.guidance_scale == SamplerConfig().guidance  # distils the guided velocity the demo samples with


def test_shipped_student_records_the_mask_of_its_config():
    """The demo reads its default mask from the config and sparge-generate from the shipped sparge.json: one mask."""
    from sparge_pipelines.model_source import shipped_world_models

    if "student" not in shipped_world_models():
        pytest.skip("no shipped world student")
    trained = json.loads((shipped_world_models()["student"] / "sparge.json").read_text())
    cfg = load_config(STUDENT).sparge
    assert (trained["topk"], trained["topp"], trained["token_order"]) == (cfg.topk, cfg.topp, cfg.token_order)


@pytest.mark.parametrize("field,value,match", [
    ("sizes", [], "data.world.sizes"),
    ("sizes", [[16, 96]], r"data.world.sizes\[0\]"),
    ("sizes", [[16, 90, 96]], "multiples of the 4x4 patch"),
    ("caption_dropout", 1.0, "data.world.caption_dropout"),
    ("split", "train", "data.world.split"),
])
def test_world_config_errors_name_the_field(tmp_path, field, value, match):
    cfg = world_run(tmp_path)
    cfg["data"]["world"][field] = value
    with pytest.raises(ConfigError, match=match):
        config_from_dict(cfg)


def test_ema_and_time_budget_errors(tmp_path):
    cfg = world_run(tmp_path, ema_decay=1.0)
    with pytest.raises(ConfigError, match="train.ema_decay"):
        config_from_dict(cfg)
    cfg = world_run(tmp_path, max_time_s=-1)
    with pytest.raises(ConfigError, match="train.max_time_s"):
        config_from_dict(cfg)
    cfg = world_run(tmp_path)
    cfg["deepspeed"]["zero_stage"] = 3
    with pytest.raises(ConfigError, match="zero_stage <= 2"):
        config_from_dict(cfg)


def test_caption_dropout_is_deterministic_and_near_its_rate():
    positions = list(range(4000))
    a = caption_dropout_mask(positions, 0.1, seed=0)
    assert torch.equal(a, caption_dropout_mask(positions, 0.1, seed=0))
    assert not torch.equal(a, caption_dropout_mask(positions, 0.1, seed=1))
    assert 0.08 < a.float().mean() < 0.12
    assert not caption_dropout_mask(positions, 0.0, seed=0).any()


def test_world_batches_cycle_sizes_and_drop_captions(tmp_path):
    cfg = config_from_dict(world_run(tmp_path))
    cfg.data.world.caption_dropout = 0.5
    dataset = build_dataset(cfg.data)
    micro = MicroBatch(indices=list(range(16)), positions=list(range(16)))
    big = make_training_batch(dataset, micro, cfg, torch.device("cpu"), torch.float32, size_index=0)
    small = make_training_batch(dataset, micro, cfg, torch.device("cpu"), torch.float32, size_index=1)
    assert big.x_t.shape == (16, 3, 2, 16, 16) and small.x_t.shape == (16, 3, 2, 8, 8)
    assert big.tokens == 16 * 2 * 4 * 4
    dropped = caption_dropout_mask(micro.positions, 0.5, cfg.train.seed)
    assert dropped.any() and not dropped.all()
    assert not big.text[dropped].any() and bool((big.text[~dropped].abs().sum((1, 2)) > 0).all())
    # the same samples and positions give the same batch
    again = make_training_batch(dataset, micro, cfg, torch.device("cpu"), torch.float32, size_index=0)
    assert torch.equal(big.x_t, again.x_t) and torch.equal(big.target, again.target)


def test_guidance_scale_repeats_each_sample_with_the_null_caption(tmp_path):
    cfg = config_from_dict(world_run(tmp_path))
    dataset = build_dataset(cfg.data)
    micro = MicroBatch(indices=list(range(3)), positions=list(range(3)))
    plain = make_training_batch(dataset, micro, cfg, torch.device("cpu"), torch.float32)
    cfg.loss.kind, cfg.loss.guidance_scale = "velocity", 4.0
    both = make_training_batch(dataset, micro, cfg, torch.device("cpu"), torch.float32)
    assert both.x_t.shape[0] == 6 and both.tokens == 2 * plain.tokens
    for name in ("x_t", "timesteps", "target", "sigmas"):
        a, b = getattr(both, name).chunk(2)
        assert torch.equal(a, b) and torch.equal(a, getattr(plain, name)), name
    assert torch.equal(both.text[:3], plain.text) and not both.text[3:].any()
    bad = world_run(tmp_path)
    bad["loss"] = {"kind": "velocity", "guidance_scale": 4.0}
    bad["data"] = {"source": "synthetic"}
    with pytest.raises(ConfigError, match="loss.guidance_scale: needs the null caption"):
        config_from_dict(bad)


def test_guided_distillation_fits_and_logs_both_velocity_terms(tmp_path):
    cfg = world_run(tmp_path / "run", max_steps=2, ema_decay=0.0)
    cfg["loss"] = {"kind": "velocity", "guidance_scale": 4.0}
    cfg["sparge"] = {"enabled": True, "topk": 0.5, "topp": 0.0}
    check_ok(run_fit(write_config(cfg, tmp_path / "guided.yaml")))
    metrics = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert sorted(metrics) == [1, 2]
    for row in metrics.values():
        assert row["loss"] == pytest.approx(0.5 * (row["loss_velocity"] + row["loss_guided"]), rel=1e-5)
        assert row["loss_guided"] > 0


@pytest.mark.slow
def test_pretrain_exports_the_ema_and_resumes_after_the_time_budget(tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "run"
    # A budget of 1e-9 s stops after the first step, saving a checkpoint that holds the EMA.
    check_ok(run_fit(write_config(world_run(out, max_time_s=1e-9), tmp_path / "a.yaml")))
    metrics = read_metrics(out / "metrics.jsonl")
    assert sorted(metrics) == [1]
    assert (out / "checkpoints" / "step_00000001" / "ema.safetensors").is_file()
    # Rerun without a budget: resumes at step 1, runs to max_steps, exports the EMA weights.
    proc = check_ok(run_fit(write_config(world_run(out), tmp_path / "b.yaml")))
    assert "resumed from" in proc.stderr + proc.stdout
    assert sorted(read_metrics(out / "metrics.jsonl")) == [1, 2, 3, 4]
    ema = load_file(str(out / "checkpoints" / "step_00000004" / "ema.safetensors"))
    exported = load_file(str(out / "export" / "diffusion_pytorch_model.safetensors"))
    assert ema.keys() <= exported.keys()
    for name, value in ema.items():
        torch.testing.assert_close(exported[name].float(), value, msg=name)
    raw = torch.load(out / "checkpoints" / "step_00000004" / "mp_rank_00_model_states.pt", weights_only=False)
    name = "blocks.0.attn1.to_q.weight"
    assert not torch.equal(raw["module"][name].float(), ema[name])  # the export is the average, not the last step
    assert not (out / "export" / "sparge.json").exists()  # a dense teacher records no mask to serve with
