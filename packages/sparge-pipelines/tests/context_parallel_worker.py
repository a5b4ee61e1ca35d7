"""Run under `torchrun --nproc_per_node N` (gloo, CPU) by test_context_parallel.py; not a test module itself.

Each rank builds the same tiny random Wan transformer twice: one copy runs alone (the single-process reference,
no collective), the other under diffusers' Ulysses context parallelism of degree N (the world size). For every
case both run the same input; the rank saves both outputs and both density summaries to OUT/rank{r}.pt, and
the test compares them. Usage: context_parallel_worker.py OUT HEADS
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from diffusers import ContextParallelConfig

from sparge_pipelines import apply_sparge, enable_context_parallel, processor, remove_sparge
from sparge_pipelines.testing import tiny_wan_transformer

# Density ≈ 0.3-0.6 over 9 query x 18 key blocks of the 288-token input: sparse enough that a wrong mask shows.
SPARGE = dict(topk=0.2, topp=0.3, block_q=32, block_k=16, collect_stats=True)
CASES = {
    "1d": dict(SPARGE),
    "tiled": dict(SPARGE, token_order="tiled"),
    "dense_layers": dict(SPARGE, dense_layers=(0,)),
}


def inputs() -> tuple[torch.Tensor, ...]:
    """latents (2, 4, 3, 16, 24) -> 3x8x12 = 288 tokens (divisible by 2 and 4), timesteps, text (2, 8, 32)."""
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 4, 3, 16, 24, generator=g), torch.tensor([900.0, 900.0]), torch.randn(2, 8, 32, generator=g)


def run(model: torch.nn.Module, fields: dict | None) -> tuple[torch.Tensor, dict | None]:
    state = apply_sparge(model, **fields) if fields is not None else None
    try:
        with torch.no_grad():
            out = model(*inputs(), return_dict=False)[0]
        return out, (state.stats.summary() if state is not None and state.stats is not None else None)
    finally:
        if state is not None:
            remove_sparge(model)


def gradients(model: torch.nn.Module, fields: dict, reduce: bool) -> dict[str, torch.Tensor]:
    """Parameter gradients of a loss on the whole (gathered) output, with sparge (`fields`) applied. Under Ulysses
    a rank's gradients cover its own tokens (and heads); summed over the ranks they are the single-process ones."""
    apply_sparge(model, **fields)
    try:
        model.zero_grad()
        out = model(*inputs(), return_dict=False)[0]
        out.square().mean().backward()
        grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
        if reduce:
            for grad in grads.values():
                dist.all_reduce(grad)
        return grads
    finally:
        remove_sparge(model)


def count_ulysses_calls() -> list[int]:
    """Wrap the processor's Ulysses entry point to count the sparse calls that really went through it."""
    calls, original = [0], processor.ulysses_sparge_attention

    def counted(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    processor.ulysses_sparge_attention = counted
    return calls


def main(out_dir: str, heads: int) -> None:
    dist.init_process_group("gloo")
    ulysses_calls = count_ulysses_calls()
    torch.set_num_threads(1)
    degree = dist.get_world_size()
    results: dict[str, dict] = {}
    single = tiny_wan_transformer(seed=0, num_attention_heads=heads)
    parallel = tiny_wan_transformer(seed=0, num_attention_heads=heads)
    enable_context_parallel(parallel, ContextParallelConfig(ulysses_degree=degree))
    results["dense"] = dict(zip(("single", "parallel"), (run(single, None)[0], run(parallel, None)[0]), strict=True))
    for name, fields in CASES.items():
        (out_1, stats_1), (out_n, stats_n) = run(single, fields), run(parallel, fields)
        results[name] = dict(single=out_1, parallel=out_n, single_stats=stats_1, parallel_stats=stats_n)
    # The other order: sparge first, then parallelism (the dense processor must get diffusers' config too).
    late = tiny_wan_transformer(seed=0, num_attention_heads=heads)
    apply_sparge(late, **CASES["tiled"], dense_layers=(1,))
    enable_context_parallel(late, ContextParallelConfig(ulysses_degree=degree))
    with torch.no_grad():
        results["sparge_then_parallel"] = dict(single=run(single, dict(CASES["tiled"], dense_layers=(1,)))[0],
                                               parallel=late(*inputs(), return_dict=False)[0])
    results["ulysses_calls"] = ulysses_calls[0]
    # Backward through both all-to-alls: sparse layer (tiled order) and dense layer (diffusers' native backend).
    backward = dict(CASES["tiled"], dense_layers=(0,), collect_stats=False)
    results["gradients"] = dict(single=gradients(single, backward, reduce=False),
                                parallel=gradients(parallel, backward, reduce=True))
    torch.save(results, Path(out_dir) / f"rank{dist.get_rank()}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
