"""One SpargeConfig for every entry point, the shared Timer, and statistics/timing as hooks beside the processor
(also under torch.compile(fullgraph=True)). CPU, tiny random Wan."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from sparge_pipelines import SpargeConfig, SpargeWanAttnProcessor, apply_sparge, remove_sparge
from sparge_pipelines.config import (
    TRAINED_FIELDS,
    TRAINED_SPARGE_FILE,
    SpargeConfigError,
    default_tile,
    trained_sparge_fields,
)
from sparge_pipelines.hooks import STATS_HOOK, TIMING_HOOK
from sparge_pipelines.testing import tiny_wan_transformer
from sparge_pipelines.timing import AttentionTimer, Timer

BLOCKS = dict(block_q=32, block_k=16)


def run(model, inputs):
    with torch.no_grad():
        return model(*inputs, return_dict=False)[0]


# -- one config -------------------------------------------------------------------------------------------------


def test_config_object_and_keywords_are_the_same(model, inputs):
    config = SpargeConfig(topk=0.3, topp=0.0, collect_stats=True, **BLOCKS)
    state = apply_sparge(model, config)
    try:
        by_object = run(model, inputs)
    finally:
        remove_sparge(model)
    assert state.config is config
    state_kw = apply_sparge(model, topk=0.3, topp=0.0, collect_stats=True, **BLOCKS)
    try:
        by_keywords = run(model, inputs)
    finally:
        remove_sparge(model)
    assert state_kw.config == config
    assert torch.equal(by_object, by_keywords)
    assert state.stats.summary() == state_kw.stats.summary()


def test_keywords_override_the_config_object(model):
    config = SpargeConfig(topk=0.3, **BLOCKS)
    state = apply_sparge(model, config, topk=1.0, dense_steps=2)
    remove_sparge(model)
    assert (state.config.topk, state.config.dense_steps, state.config.block_q) == (1.0, 2, 32)
    assert config.topk == 0.3  # frozen: the caller's object is unchanged


@pytest.mark.parametrize(("args", "kwargs", "match"), [
    (({"topk": 0.1},), {}, "config must be a SpargeConfig"),
    ((), {"top_k": 0.1}, "top_k"),
    ((SpargeConfig(),), {"top_k": 0.1}, "top_k"),
    ((SpargeConfig(),), {"topk": 2.0}, "topk"),
])
def test_bad_config_arguments(model, args, kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        apply_sparge(model, *args, **kwargs)
    assert not hasattr(model, "_sparge_state")


@pytest.mark.parametrize(("kwargs", "field", "kind"), [
    (dict(topk=1.5), "topk", ValueError),
    (dict(topk="a"), "topk", TypeError),
    (dict(topp=-0.1), "topp", ValueError),
    (dict(topk=0.0, topp=0.0), "topk", ValueError),
    (dict(dense_steps=-1), "dense_steps", ValueError),
    (dict(dense_layers="0"), "dense_layers", TypeError),
    (dict(token_order="zigzag"), "token_order", ValueError),
    (dict(collect_stats=1), "collect_stats", TypeError),
    (dict(block_k=2.0), "block_k", TypeError),
    (dict(tile=(4, 0, 8)), "tile", ValueError),
])
def test_config_errors_name_the_field(kwargs, field, kind):
    with pytest.raises(SpargeConfigError) as info:
        SpargeConfig(**kwargs)
    assert isinstance(info.value, kind)  # still the ValueError / TypeError it always was
    assert info.value.field == field
    assert str(info.value).startswith(field)
    assert not info.value.reason.startswith(f"{field} must")


def test_dense_layers_beyond_the_model_name_the_field(model):
    with pytest.raises(SpargeConfigError) as info:
        apply_sparge(model, SpargeConfig(dense_layers=(7,)))
    assert info.value.field == "dense_layers"


def test_merged_rederives_a_default_tile():
    config = SpargeConfig(block_q=128)
    assert config.tile == default_tile(128)
    assert config.merged(block_q=64).tile == default_tile(64)
    assert SpargeConfig(tile=(2, 8, 8)).merged(block_q=64).tile == (2, 8, 8)  # an explicit tile stays


def test_cli_and_generate_defaults_come_from_sparge_config():
    from sparge_pipelines.cli import build_parser
    from sparge_pipelines.generate import GenerateConfig

    args = build_parser().parse_args(["--model", "m", "--prompt", "p"])
    defaults = SpargeConfig()
    for name in ("dense_steps", "block_q", "block_k"):
        assert getattr(args, name) == getattr(defaults, name), name
    for name in TRAINED_FIELDS:  # the model's trained mask first: unset until the model is known
        assert getattr(args, name) is None, name
    generate = GenerateConfig(model="m", prompt="p")  # a model without sparge.json: SpargeConfig's defaults
    assert generate.sparge_config() == defaults
    assert generate.with_defaults("cpu").topk == defaults.topk


def _student_folder(tmp_path, recorded: dict) -> Path:
    """A world-model folder (config only: nothing here loads weights) with sparge-train's sparge.json."""
    import json

    from sparge_pipelines.world.model import WORLD_TRANSFORMER_CONFIG

    folder = tmp_path / "student"
    folder.mkdir()
    config = {"_class_name": "WanTransformer3DModel", **WORLD_TRANSFORMER_CONFIG,
              "patch_size": list(WORLD_TRANSFORMER_CONFIG["patch_size"])}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / TRAINED_SPARGE_FILE).write_text(json.dumps(recorded))
    return folder


def test_a_distilled_student_serves_with_its_trained_mask_unless_told_otherwise(tmp_path):
    from sparge_pipelines.generate import GenerateConfig

    folder = _student_folder(tmp_path, {"topk": 0.05, "topp": 0.14, "token_order": "tiled", "dense_layers": [0],
                                        "trained_by": "sparge-train"})
    assert trained_sparge_fields(folder) == {"topk": 0.05, "topp": 0.14, "token_order": "tiled",
                                             "dense_layers": (0,)}
    assert trained_sparge_fields(tmp_path) == {}  # no sparge.json: nothing recorded
    caption = "a red 3 moving left on clouds"
    served = GenerateConfig(model=str(folder), prompt=caption, out=str(tmp_path / "v.gif"))
    assert served.sparge_config() == SpargeConfig(topk=0.05, topp=0.14, token_order="tiled", dense_layers=(0,))
    filled = served.with_defaults("cpu")
    assert (filled.topk, filled.topp, filled.token_order, filled.dense_layers) == (0.05, 0.14, "tiled", (0,))
    told = GenerateConfig(model=str(folder), prompt=caption, out=str(tmp_path / "v.gif"), topp=0.3,
                          token_order="1d")
    assert told.sparge_config() == SpargeConfig(topk=0.05, topp=0.3, token_order="1d", dense_layers=(0,))


def test_a_bad_trained_mask_names_the_field_and_the_file(tmp_path):
    folder = _student_folder(tmp_path, {"topk": 1.5})
    with pytest.raises(ValueError, match=r"topk.*1\.5.*sparge\.json") as info:
        trained_sparge_fields(folder)
    assert info.value.field == "topk"
    (folder / TRAINED_SPARGE_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="sparge.json: not valid JSON"):
        trained_sparge_fields(folder)


# -- hooks beside the processor ---------------------------------------------------------------------------------


def test_hooks_only_when_asked_and_removed_without_trace(model, inputs):
    apply_sparge(model)
    try:
        assert all(not hasattr(b.attn1, "_diffusers_hook") for b in model.blocks)
    finally:
        remove_sparge(model)
    before = [dict(b.attn1.__dict__) for b in model.blocks]
    apply_sparge(model, collect_stats=True, time_attention=True, **BLOCKS)
    try:
        for block in model.blocks:
            assert isinstance(block.attn1.processor, SpargeWanAttnProcessor)
            assert set(block.attn1._diffusers_hook.hooks) == {STATS_HOOK, TIMING_HOOK}
        run(model, inputs)
    finally:
        remove_sparge(model)
    assert [dict(b.attn1.__dict__) for b in model.blocks] == before


def test_timing_hook_times_each_step(model, inputs):
    latents, _, text = inputs
    state = apply_sparge(model, topk=0.5, topp=0.0, time_attention=True, **BLOCKS)
    try:
        with torch.no_grad():
            for t in (900.0, 700.0, 500.0):
                model(latents, torch.tensor([t, t]), text)
    finally:
        remove_sparge(model)
    totals = state.timer.totals()
    assert list(totals) == [0, 1, 2]
    assert all(ms > 0 for ms in totals.values())
    assert len(state.timer.intervals_ms()) == 3 * len(model.blocks)  # one interval per attention call


@pytest.mark.parametrize("token_order", ["1d", "tiled"])
def test_stats_with_blocks_compiled_fullgraph(inputs, token_order):
    """Statistics used to break torch.compile(fullgraph=True): the density is now a graph output, filed outside."""
    eager_model = tiny_wan_transformer(seed=0)
    config = SpargeConfig(topk=0.3, topp=0.0, dense_layers=(1,), collect_stats=True, token_order=token_order,
                          **BLOCKS)
    eager = apply_sparge(eager_model, config)
    expected = run(eager_model, inputs)

    torch._dynamo.reset()
    compiled_model = tiny_wan_transformer(seed=0)
    state = apply_sparge(compiled_model, config)
    for block in compiled_model.blocks:
        block.compile(fullgraph=True, backend="aot_eager")
    latents, _, text = inputs
    with torch.no_grad():
        out = compiled_model(*inputs, return_dict=False)[0]
        compiled_model(latents, torch.tensor([700.0, 700.0]), text)  # the next step, same graphs
    torch.testing.assert_close(out, expected)
    summary, reference = state.stats.summary(), eager.stats.summary()
    assert summary["steps"] == [0, 1] and summary["layers"] == ["blocks.0", "blocks.1"]
    assert summary["per_head"][0] == reference["per_head"][0]
    assert summary["per_head"][0][1] == [1.0, 1.0]  # the dense layer
    assert 0.0 < summary["mean"][0][0] < 0.5
    torch._dynamo.reset()


# -- the timer --------------------------------------------------------------------------------------------------


def test_timer_intervals_laps_and_totals():
    timer = Timer()
    outer = timer.start()
    inner = timer.start()
    time.sleep(0.01)
    timer.stop("b", inner)
    timer.stop("a", outer)  # interleaved intervals with explicit tokens
    timer.start()
    timer.lap(1)
    time.sleep(0.005)
    timer.lap(0)
    intervals = timer.intervals_ms()
    assert [key for key, _ in intervals] == ["b", "a", 1, 0]
    ms = dict(intervals)
    assert ms["a"] >= ms["b"] >= 10.0 and ms[0] >= 5.0
    timer.start()
    timer.lap(0)
    assert list(timer.totals_ms()) == ["b", "a", 1, 0]  # first-seen order, summed
    assert timer.totals_ms()[0] >= ms[0]
    timer.reset()
    assert timer.intervals_ms() == [] and timer.totals() == {}
    with pytest.raises(RuntimeError, match="before any start"):
        timer.lap("x")
    assert AttentionTimer is Timer


def test_timer_totals_sorted_by_step():
    timer = Timer()
    for step in (2, 0, 1, 0):
        timer.stop(step, timer.start())
    assert list(timer.totals()) == [0, 1, 2]  # ms per step, as SpargeState.timer reports it
    assert list(timer.totals_ms()) == [2, 0, 1]

