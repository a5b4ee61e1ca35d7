"""apply_sparge / remove_sparge on a tiny random Wan transformer (CPU, reference ops)."""

from __future__ import annotations

import pytest
import torch
from sparge_pipelines import SpargeWanAttnProcessor, apply_sparge, remove_sparge, sparge_state
from sparge_pipelines.testing import tiny_wan_transformer

# 3x8x12 = 288 tokens; with blocks of 32 queries / 16 keys that is 9 x 18 blocks.
BLOCKS = dict(block_q=32, block_k=16)


@pytest.fixture(scope="module")
def model():
    return tiny_wan_transformer(seed=0)


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 4, 3, 16, 24, generator=g)
    return latents, torch.tensor([900.0, 900.0]), torch.randn(2, 8, 32, generator=g)


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
