"""Sparge self-attention under diffusers' Ulysses context parallelism: 2 and 4 processes (gloo, CPU, float32,
reference ops) against the same transformer run alone, and the errors for configurations it cannot run.

The multi-process runs launch `context_parallel_worker.py` under torchrun once per degree; every rank compares its
gathered output with a single-process run of the same random transformer it computed itself. Ulysses changes
only where tokens are projected (per rank) and adds exact data movement (all-to-all), so the outputs agree to
float32 rounding: rtol 1e-5.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import ContextParallelConfig, ParallelConfig

from sparge_pipelines import apply_sparge
from sparge_pipelines.parallel import check_context_parallel
from sparge_pipelines.testing import tiny_wan_transformer

WORKER = Path(__file__).with_name("context_parallel_worker.py")


def launch(degree: int, heads: int, out: Path) -> dict[int, dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(degree),
           str(WORKER), str(out), str(heads)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return {r: torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(degree)}


@pytest.fixture(scope="module", params=[2, 4], ids=["degree2", "degree4"])
def ranks(request, tmp_path_factory):
    return launch(request.param, heads=4, out=tmp_path_factory.mktemp(f"cp{request.param}"))


CASES = ("dense", "1d", "tiled", "dense_layers", "sparge_then_parallel")


@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_output_equals_single_process(ranks, case):
    for rank, results in ranks.items():
        got = results[case]
        torch.testing.assert_close(got["parallel"], got["single"], rtol=1e-5, atol=1e-5,
                                   msg=lambda m, rank=rank: f"rank {rank}, {case}: {m}")


@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.parametrize("case", ["1d", "tiled", "dense_layers"])
def test_density_stats_cover_all_heads(ranks, case):
    for results in ranks.values():
        single, parallel = results[case]["single_stats"], results[case]["parallel_stats"]
        assert parallel["layers"] == single["layers"]
        torch.testing.assert_close(torch.tensor(parallel["per_head"]), torch.tensor(single["per_head"]),
                                   rtol=0, atol=1e-12)
        assert len(parallel["per_head"][0][0]) == 4  # all heads, not the rank's share
    assert 0.2 < ranks[0]["1d"]["single_stats"]["overall"] < 0.9  # the runs are really sparse


@pytest.mark.multiprocess
@pytest.mark.slow
def test_sparse_cases_differ_from_dense(ranks):
    """Guards the comparisons above against a vacuous pass (sparge silently dense, or tiled silently 1-D)."""
    results = ranks[0]
    dense = results["dense"]["single"]
    for case in ("1d", "tiled"):
        assert (results[case]["single"] - dense).abs().max() > 1e-3
    assert (results["tiled"]["single"] - results["1d"]["single"]).abs().max() > 1e-3
    # Sparse calls under parallelism: 1d and tiled 2 blocks each, dense_layers 1, sparge_then_parallel 1.
    assert all(r["ulysses_calls"] == 6 for r in ranks.values())


@pytest.mark.multiprocess
@pytest.mark.slow
def test_gradients_equal_single_process(ranks):
    """Training under Ulysses: the parameter gradients, summed over the ranks (what ZeRO's reduction does), equal
    the single-process ones; through the sparse op (tiled order) and a dense layer's native backend."""
    for rank, results in ranks.items():
        single, parallel = results["gradients"]["single"], results["gradients"]["parallel"]
        assert single.keys() == parallel.keys()
        for name in single:
            torch.testing.assert_close(parallel[name], single[name], rtol=1e-5, atol=1e-6,
                                       msg=lambda m, rank=rank, name=name: f"rank {rank}, {name}: {m}")
        assert max(g.abs().max() for g in single.values()) > 0


def _ulysses(degree: int, **fields) -> ParallelConfig:
    """A config as `enable_parallelism` would record it, without a mesh: enough for the checks, no collective."""
    return ParallelConfig(context_parallel_config=ContextParallelConfig(ulysses_degree=degree, **fields))


def test_head_count_not_divisible_by_degree_is_a_clear_error():
    with pytest.raises(ValueError, match=r"blocks\.0: Ulysses degree 2 does not divide the 3 attention heads"):
        check_context_parallel(_ulysses(2), heads=3, where="blocks.0")
    model = tiny_wan_transformer(seed=0, num_attention_heads=3)
    apply_sparge(model, topk=0.5, topp=0.0, block_q=32, block_k=16)
    for block in model.blocks:  # what `enable_parallelism` does to every processor
        block.attn1.processor._parallel_config = _ulysses(2)
    assert model.blocks[0].attn1.processor.dense_processor._parallel_config is not None
    g = torch.Generator().manual_seed(1)
    with pytest.raises(ValueError, match="Ulysses degree 2 does not divide the 3 attention heads"), torch.no_grad():
        model(torch.randn(1, 4, 3, 16, 24, generator=g), torch.tensor([900.0]), torch.randn(1, 8, 32, generator=g))


def test_ring_attention_is_refused():
    assert check_context_parallel(None, heads=3) == 1
    assert check_context_parallel(_ulysses(2), heads=4) == 2
    with pytest.raises(NotImplementedError, match="Ulysses context parallelism only"):
        check_context_parallel(ParallelConfig(context_parallel_config=ContextParallelConfig(ring_degree=2)), heads=4)
