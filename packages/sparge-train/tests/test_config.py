"""Run configs: YAML → dataclasses, overrides, and errors that name the offending field."""

from __future__ import annotations

import pytest

from sparge_train.cli import main
from sparge_train.config import ConfigError, apply_overrides, config_from_dict, load_config

from .conftest import tiny_run_config, write_config


def _cfg(tmp_path, model_dir, **sections):
    return tiny_run_config(model_dir, tmp_path / "out", **sections)


def test_example_run_yaml_loads():
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "run.yaml"
    cfg = load_config(example, ["data.source=synthetic"])  # its shard folder exists only on a training node
    assert cfg.model.preset == "wan2.1-1.3b" and cfg.loss.kind == "velocity"
    assert cfg.deepspeed.zero_stage in (2, 3)


def test_yaml_round_trip_and_override(tmp_path, tiny_wan_dir):
    path = write_config(_cfg(tmp_path, tiny_wan_dir), tmp_path / "run.yaml")
    cfg = load_config(path, ["train.max_steps=7", "optim.lr=3e-5", "sparge.dense_layers=[0]"])
    assert cfg.train.max_steps == 7 and cfg.optim.lr == pytest.approx(3e-5) and cfg.sparge.dense_layers == [0]
    assert cfg.train.batch_layout(data_parallel_size=2) == (2, 1)
    assert cfg.train.batch_layout(data_parallel_size=1) == (2, 2)


@pytest.mark.parametrize(
    ("section", "values", "field"),
    [
        ("train", {"max_stepz": 3}, "train.max_stepz"),  # unknown key
        ("train", {"max_steps": 0}, "train.max_steps"),
        ("train", {"max_steps": "ten"}, "train.max_steps"),  # wrong type
        ("train", {"micro_batch_size": 1.5}, "train.micro_batch_size"),
        ("train", {"resume": "/does/not/exist"}, "train.resume"),
        ("train", {"eval_every": 5, "eval_samples": 0}, "train.eval_samples"),
        ("train", {"eval_every": 5, "eval_samples": 100}, "train.eval_samples"),
        ("loss", {"kind": "kl"}, "loss.kind"),
        ("loss", {"kind": "mix", "velocity_weight": 0.0, "diffusion_weight": 0.0}, "loss.velocity_weight"),
        ("loss", {"velocity_weight": -1.0}, "loss.velocity_weight"),
        ("sparge", {"topk": 1.5}, "sparge.topk"),
        ("sparge", {"topk": 0.0, "topp": 0.0}, "sparge.topk"),
        ("sparge", {"dense_layers": [-1]}, "sparge.dense_layers"),
        ("flow", {"shift": 0.0}, "flow.shift"),
        ("flow", {"timestep_sampling": "cosine"}, "flow.timestep_sampling"),
        ("optim", {"lr": -1.0}, "optim.lr"),
        ("optim", {"betas": [0.9]}, "optim.betas"),
        ("deepspeed", {"zero_stage": 4}, "deepspeed.zero_stage"),
        ("deepspeed", {"offload_param": "cpu", "zero_stage": 2}, "deepspeed.offload_param"),
        ("deepspeed", {"offload_optimizer": "nvme"}, "deepspeed.offload_optimizer"),
        ("deepspeed", {"precision": "fp16"}, "deepspeed.precision"),
        ("data", {"source": "shards", "path": None}, "data.path"),
        ("data", {"source": "shards", "path": "/nonexistent"}, "data.path"),
        ("data", {"synthetic": {"latent_frames": 0}}, "data.synthetic.latent_frames"),
        ("model", {"preset": "wan2.1-14b"}, "model.preset"),  # both preset and pretrained
        ("model", {"pretrained": "/nonexistent"}, "model.pretrained"),
    ],
)
def test_bad_config_names_the_field(tmp_path, tiny_wan_dir, section, values, field):
    cfg = _cfg(tmp_path, tiny_wan_dir, **{section: values})
    with pytest.raises(ConfigError) as err:
        config_from_dict(cfg)
    assert err.value.field_name == field
    assert str(err.value).startswith(field)


def test_unknown_preset(tmp_path):
    cfg = tiny_run_config(tmp_path, tmp_path / "out", model={"pretrained": None, "preset": "wan9"})
    with pytest.raises(ConfigError, match="model.preset: unknown preset 'wan9'"):
        config_from_dict(cfg)


def test_global_batch_must_divide(tmp_path, tiny_wan_dir):
    cfg = config_from_dict(_cfg(tmp_path, tiny_wan_dir, train={"global_batch_size": 3}))
    with pytest.raises(ConfigError, match="train.global_batch_size: 3 is not a multiple"):
        cfg.train.batch_layout(data_parallel_size=2)


def test_override_syntax_error():
    with pytest.raises(ConfigError, match="override must look like"):
        apply_overrides({}, ["train.max_steps"])


def test_cli_reports_config_errors(tmp_path, tiny_wan_dir, capsys):
    path = write_config(_cfg(tmp_path, tiny_wan_dir, optim={"lr": 0.0}), tmp_path / "bad.yaml")
    assert main(["fit", "--config", str(path)]) == 2
    assert "optim.lr: must be > 0" in capsys.readouterr().err


# -- the sparge section is the pipelines' SpargeConfig plus `enabled` --------------------------------------------


@pytest.mark.parametrize(
    ("values", "field", "message"),
    [
        ({"topk": 1.5}, "sparge.topk", "sparge.topk: must be in [0, 1], got 1.5"),
        ({"topp": -0.5}, "sparge.topp", "sparge.topp: must be in [0, 1], got -0.5"),
        ({"topk": 0.0, "topp": 0.0}, "sparge.topk", "sparge.topk: topk and topp are both 0"),
        ({"dense_steps": -1}, "sparge.dense_steps", "sparge.dense_steps: must be >= 0, got -1"),
        ({"dense_layers": [-1]}, "sparge.dense_layers", "sparge.dense_layers: must hold non-negative"),
        ({"token_order": "zigzag"}, "sparge.token_order", "sparge.token_order: must be one of ('1d', 'tiled')"),
    ],
)
def test_sparge_section_errors_come_from_the_pipelines_config(tmp_path, tiny_wan_dir, values, field, message):
    with pytest.raises(ConfigError) as err:
        config_from_dict(_cfg(tmp_path, tiny_wan_dir, sparge=values))
    assert err.value.field_name == field
    assert str(err.value).startswith(message), str(err.value)


def test_sparge_section_defaults_and_config_object(tmp_path, tiny_wan_dir):
    from sparge_pipelines import SpargeConfig as PipelineSpargeConfig
    from sparge_train.config import SpargeConfig

    section = SpargeConfig()
    assert section.pipeline_config() == PipelineSpargeConfig()  # same defaults, one declaration
    cfg = config_from_dict(_cfg(tmp_path, tiny_wan_dir, sparge={"dense_layers": [1, 0], "dense_steps": 2}))
    built = cfg.sparge.pipeline_config()
    assert isinstance(built, PipelineSpargeConfig)
    assert built.dense_layers == (0, 1) and built.dense_steps == 2 and built.topk == cfg.sparge.topk
    assert cfg.to_dict()["sparge"]["dense_layers"] == [1, 0]  # the YAML form (config.yaml) stays a list


def test_disabled_sparge_section_may_turn_both_rules_off(tmp_path, tiny_wan_dir):
    cfg = config_from_dict(_cfg(tmp_path, tiny_wan_dir, sparge={"enabled": False, "topk": 0.0, "topp": 0.0}))
    assert not cfg.sparge.enabled
    with pytest.raises(ConfigError, match="sparge.token_order"):  # the other fields are still checked
        config_from_dict(_cfg(tmp_path, tiny_wan_dir, sparge={"enabled": False, "topk": 0.0, "topp": 0.0,
                                                               "token_order": "zigzag"}))


def test_install_sparge_passes_the_config_object(tmp_path, tiny_wan_dir):
    from sparge_pipelines import remove_sparge
    from sparge_pipelines.testing import tiny_wan_transformer
    from sparge_train.models import install_sparge

    cfg = config_from_dict(_cfg(tmp_path, tiny_wan_dir, sparge={"topk": 0.25, "dense_layers": [1]}))
    model = tiny_wan_transformer()
    state = install_sparge(model, cfg.sparge)
    try:
        assert state.config == cfg.sparge.pipeline_config()
    finally:
        remove_sparge(model)


def test_kill_hook_is_gone(tmp_path, tiny_wan_dir):
    """Crash tests kill the run from outside (test_fit_distributed.py); the product has no kill switch."""
    with pytest.raises(ConfigError, match="train.kill_after_step: unknown field"):
        config_from_dict(_cfg(tmp_path, tiny_wan_dir, train={"kill_after_step": 3}))
