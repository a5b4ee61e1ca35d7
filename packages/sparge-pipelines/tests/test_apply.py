"""apply_sparge / remove_sparge on a tiny random Wan transformer (CPU, reference ops)."""

from __future__ import annotations

import pytest
import torch

from sparge_pipelines import SpargeWanAttnProcessor, apply_sparge, remove_sparge, sparge_state
from sparge_pipelines.testing import tiny_wan_transformer

# 3x8x12 = 288 tokens; with blocks of 32 queries / 16 keys that is 9 x 18 blocks.
BLOCKS = dict(block_q=32, block_k=16)


def run(model, inputs):
    with torch.no_grad():
        return model(*inputs, return_dict=False)[0]


@pytest.mark.parametrize("token_order", ["1d", "tiled"])
def test_topk_one_matches_dense(model, inputs, token_order):
    dense = run(model, inputs)
    apply_sparge(model, topk=1.0, token_order=token_order, **BLOCKS)
    try:
        sparse = run(model, inputs)
    finally:
        remove_sparge(model)
    # All blocks kept: the same attention, summed in another order (reference vs SDPA math), float32 rounding only.
    assert torch.isfinite(sparse).all()
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=2e-5)


def test_sparse_differs_but_stays_close(model, inputs):
    dense = run(model, inputs)
    state = apply_sparge(model, topk=0.5, topp=0.0, collect_stats=True, **BLOCKS)
    try:
        sparse = run(model, inputs)
    finally:
        remove_sparge(model)
    assert state.stats.summary()["overall"] == pytest.approx(0.5)
    rel = ((sparse - dense).norm() / dense.norm()).item()
    assert 1e-4 < rel < 0.5, rel


@pytest.mark.parametrize("token_order", ["1d", "tiled"])
def test_inference_mode_matches_no_grad(model, inputs, token_order):
    # Pipelines and benchmarks run under torch.inference_mode: masks of inference tensors must work there.
    state = apply_sparge(model, topk=0.5, topp=0.0, token_order=token_order, collect_stats=True, **BLOCKS)
    try:
        expected = run(model, inputs)
        with torch.inference_mode():
            got = model(*inputs, return_dict=False)[0]
    finally:
        remove_sparge(model)
    assert state.stats.summary()["overall"] == pytest.approx(0.5)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_remove_restores_processors_exactly(model, inputs):
    before = [(b.attn1.processor, b.attn2.processor) for b in model.blocks]
    dense = run(model, inputs)
    apply_sparge(model, topk=0.2, token_order="tiled", dense_steps=1, collect_stats=True, **BLOCKS)
    assert all(isinstance(b.attn1.processor, SpargeWanAttnProcessor) for b in model.blocks)
    # Cross-attention (attn2) keeps its processor.
    assert [b.attn2.processor for b in model.blocks] == [p2 for _, p2 in before]
    assert sparge_state(model) is not None
    run(model, inputs)
    remove_sparge(model)
    after = [(b.attn1.processor, b.attn2.processor) for b in model.blocks]
    assert [id(p) for pair in after for p in pair] == [id(p) for pair in before for p in pair]
    assert sparge_state(model) is None
    assert not model._forward_pre_hooks
    assert torch.equal(run(model, inputs), dense)
    remove_sparge(model)  # idempotent


def test_apply_twice_raises(model):
    apply_sparge(model)
    try:
        with pytest.raises(RuntimeError, match="already applied"):
            apply_sparge(model)
    finally:
        remove_sparge(model)


def test_dense_layers_run_dense(model, inputs):
    state = apply_sparge(model, topk=0.1, topp=0.0, dense_layers=(1,), collect_stats=True, **BLOCKS)
    try:
        run(model, inputs)
    finally:
        remove_sparge(model)
    summary = state.stats.summary()
    assert summary["layers"] == ["blocks.0", "blocks.1"]
    (sparse_layer, dense_layer), = summary["per_head"]
    assert dense_layer == [1.0, 1.0]
    assert all(d < 0.5 for d in sparse_layer)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        (dict(topk=1.5), "topk"),
        (dict(topp=-0.1), "topp"),
        (dict(topk="a"), "topk"),
        (dict(dense_steps=-1), "dense_steps"),
        (dict(dense_steps=1.5), "dense_steps"),
        (dict(dense_layers=(7,)), "dense_layers"),
        (dict(dense_layers=(-1,)), "dense_layers"),
        (dict(dense_layers="0"), "dense_layers"),
        (dict(token_order="zigzag"), "token_order"),
        (dict(collect_stats=1), "collect_stats"),
        (dict(block_q=0), "block_q"),
        (dict(block_k=2.0), "block_k"),
        (dict(tile=(4, 4)), "tile"),
        (dict(tile=(4, 0, 8)), "tile"),
    ],
)
def test_bad_arguments_name_the_argument(model, kwargs, name):
    with pytest.raises((ValueError, TypeError), match=name):
        apply_sparge(model, **kwargs)
    assert sparge_state(model) is None


def test_bad_target_raises():
    with pytest.raises(TypeError, match="pipe_or_transformer"):
        apply_sparge(torch.nn.Linear(2, 2))


def test_bare_transformer_step_follows_timesteps(model, inputs):
    latents, _, text = inputs
    state = apply_sparge(model, topk=0.2, topp=0.0, dense_steps=2, collect_stats=True, **BLOCKS)
    try:
        with torch.no_grad():
            # Batched CFG (one call per step), then CFG as two calls per step, then a new run from the top.
            for t in (900.0, 700.0, 700.0, 500.0, 500.0, 900.0):
                model(latents, torch.tensor([t, t]), text)
                state.record_density("marker", torch.tensor([[float(state.step)]]))
    finally:
        remove_sparge(model)
    summary = state.stats.summary()
    assert summary["steps"] == [0, 1, 2]
    marker = summary["layers"].index("marker")
    assert [row[marker] for row in summary["mean"]] == [0.0, 1.0, 2.0]
    block0 = summary["layers"].index("blocks.0")
    dense_0, dense_1, sparse_2 = (row[block0] for row in summary["mean"])
    assert dense_0 == dense_1 == 1.0  # dense_steps=2 (step 0 also ran again at the restart)
    assert sparse_2 < 0.5


def test_i2v_transformer_self_attention_only():
    """Wan2.1 I2V: image tokens go through attn2 (added K/V); the sparge processor sits on attn1 only."""
    model = tiny_wan_transformer(seed=3, image_dim=16, added_kv_proj_dim=32)
    g = torch.Generator().manual_seed(4)
    latents = torch.randn(1, 4, 3, 16, 24, generator=g)
    # diffusers' processor assumes 512 text tokens behind the image tokens.
    kwargs = dict(encoder_hidden_states=torch.randn(1, 512, 32, generator=g),
                  encoder_hidden_states_image=torch.randn(1, 4, 16, generator=g), return_dict=False)
    with torch.no_grad():
        dense = model(latents, torch.tensor([500.0]), **kwargs)[0]
        cross = [b.attn2.processor for b in model.blocks]
        state = apply_sparge(model, topk=1.0, collect_stats=True, **BLOCKS)
        try:
            assert [b.attn2.processor for b in model.blocks] == cross
            sparse = model(latents, torch.tensor([500.0]), **kwargs)[0]
        finally:
            remove_sparge(model)
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=2e-5)
    assert state.stats.summary()["layers"] == ["blocks.0", "blocks.1"]


def test_processor_rejects_cross_attention(model):
    apply_sparge(model)
    try:
        attn = model.blocks[0].attn1
        x = torch.randn(1, 8, 32)
        with pytest.raises(ValueError, match="self-attention"):
            attn.processor(attn, x, encoder_hidden_states=x)
    finally:
        remove_sparge(model)
