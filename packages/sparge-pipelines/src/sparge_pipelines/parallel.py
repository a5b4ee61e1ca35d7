"""Sequence parallelism (Ulysses) for sparge self-attention, through diffusers' context parallelism.

diffusers 0.42 splits a Wan transformer's sequence across the ranks of a `ContextParallelConfig(ulysses_degree=N)`
(hooks from the model's `_cp_plan`: the block input and the rotary tables are split by tokens, the output is
gathered) and, inside attention, its dispatch runs `_templated_context_parallel_attention`: an all-to-all turns
each rank's (B, L/N, H, D) q, k, v into (B, L, H/N, D) — the whole sequence for H/N heads — the backend's
forward op attends, and a second all-to-all returns (B, L/N, H, D). The sparge processor hands that same function
its own forward op (`ulysses_sparge_attention`), so the block mask is predicted and the block-sparse attention
computed over the whole sequence, exactly as on one GPU: no approximation, only diffusers' transport.

Training works through the same function: diffusers' Ulysses attention is an autograd Function whose backward
all-to-alls the output gradient to (whole sequence, H/N heads), calls the backend's backward op (here: the sparse
attention recomputed from the saved q, k, v and differentiated, as diffusers' native backend does) and
all-to-alls the q, k, v gradients back to this rank's tokens. The split of the block input and the gather of the
output (diffusers' `_cp_plan` hooks) are differentiable too: a loss computed on the gathered output gives each rank
the gradients of its own tokens, and the ranks' parameter gradients sum to the single-process ones.

On a CPU-only torch (tests, gloo), diffusers 0.42.1's `enable_parallelism` computes the device index as
`rank % torch.accelerator.device_count()`, which divides by zero; `enable_context_parallel` counts one device
while it runs (the CPU has one; nothing else reads the count), and is otherwise `enable_parallelism` itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any
from unittest import mock

import torch

from sparge_kernels import BlockMask

__all__ = ["check_context_parallel", "enable_context_parallel", "gather_heads", "ulysses_sparge_attention"]

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, BlockMask]]


def check_context_parallel(parallel_config: Any | None, heads: int, where: str = "") -> int:
    """The Ulysses degree of diffusers' `ParallelConfig` (1 without context parallelism), checked for sparge:
    plain Ulysses only (ring attention would show each rank a part of the keys, and the block mask needs them
    all), and a degree that divides the head count (each rank attends over heads/degree heads)."""
    cp = getattr(parallel_config, "context_parallel_config", None)
    if cp is None:
        return 1
    prefix = f"{where}: " if where else ""
    if cp.ring_degree > 1 or cp.ulysses_anything or cp.ring_anything:
        raise NotImplementedError(
            f"{prefix}sparge attention supports Ulysses context parallelism only (ContextParallelConfig("
            f"ulysses_degree=N)); got ring_degree={cp.ring_degree}, ulysses_anything={cp.ulysses_anything}, "
            f"ring_anything={cp.ring_anything}")
    if heads % cp.ulysses_degree:
        raise ValueError(
            f"{prefix}Ulysses degree {cp.ulysses_degree} does not divide the {heads} attention heads: each rank "
            f"attends over heads/degree heads of the whole sequence; use a degree that divides {heads}")
    return cp.ulysses_degree


def enable_context_parallel(pipe_or_transformer: Any, config: Any) -> None:
    """`transformer.enable_parallelism(config=config)` (a diffusers `ContextParallelConfig` or `ParallelConfig`) on
    a Wan transformer or on every transformer of a Wan pipeline, after checking the config against the head count;
    also on a CPU-only torch (see the module doc). `torch.distributed` must be initialized. Works before or after
    `apply_sparge`."""
    from diffusers import ContextParallelConfig, ParallelConfig

    from .apply import _transformers

    as_parallel = ParallelConfig(context_parallel_config=config) if isinstance(config, ContextParallelConfig) \
        else config
    models, _ = _transformers(pipe_or_transformer)
    for prefix, model in models:
        check_context_parallel(as_parallel, model.config.num_attention_heads, prefix.rstrip(".") or "transformer")
    cpu_only = torch._C._get_accelerator().type == "cpu"
    with mock.patch.object(torch.accelerator, "device_count", lambda: 1) if cpu_only else contextlib.nullcontext():
        for _, model in models:
            model.enable_parallelism(config=config)


def ulysses_sparge_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, parallel_config: Any,
                             attention: Attention) -> tuple[torch.Tensor, BlockMask | None]:
    """`attention` (whole-sequence q, k, v (B, L, h, D) -> output, block mask) run where diffusers' dispatch runs
    an attention backend under Ulysses: between its sequence->head and head->sequence all-to-alls.
    Differentiable: diffusers' `TemplatedUlyssesAttention` runs the all-to-alls of the gradients in backward (the
    transposed exchange), around `attention`'s own backward (recomputed, see `backward_op`).

    query, key, value: this rank's (B, L/N, H, D) shard. Returns this rank's (B, L/N, H, D) output shard and the
    block mask of this rank's H/N heads (rank r holds heads r·H/N .. (r+1)·H/N − 1); None under torch.compile."""
    from diffusers.models.attention_dispatch import _templated_context_parallel_attention

    masks: list[BlockMask] = []

    def forward_op(ctx, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, return_lse,
                   _save_ctx=True, _parallel_config=None):
        if _save_ctx:
            ctx.save_for_backward(query, key, value)
        out, mask = attention(query, key, value)
        # Under torch.compile this function is traced as a subgraph whose tensors may leave it only as outputs:
        # the mask (for statistics) is kept in eager runs only.
        if not torch.compiler.is_compiling():
            masks.append(mask)
        return out

    def backward_op(ctx, grad_out, *args, **kwargs):
        # diffusers' Function runs this between its two backward all-to-alls (grad_out: whole sequence, H/N heads)
        # and expects the gradients of the whole-sequence q, k, v. Like its native backend's backward op, it
        # recomputes the attention from the saved q, k, v: the mask prediction is deterministic, so the recomputed
        # selection is the forward's, and sparge's op differentiates through the kept blocks.
        query, key, value = (x.detach().requires_grad_(True) for x in ctx.saved_tensors)
        with torch.enable_grad():
            out, _ = attention(query, key, value)
        return torch.autograd.grad(out, (query, key, value), grad_out)

    out = _templated_context_parallel_attention(
        query, key, value, None, 0.0, False, None, False, False,
        forward_op=forward_op, backward_op=backward_op, _parallel_config=parallel_config)
    return out, (masks[0] if masks else None)


def gather_heads(per_head: torch.Tensor, parallel_config: Any) -> torch.Tensor:
    """All-gather (B, H/N) per-head values of the Ulysses group into (B, H) in head order."""
    import torch.distributed._functional_collectives as funcol

    group = parallel_config.context_parallel_config._ulysses_mesh.get_group()
    gathered = funcol.all_gather_tensor(per_head.contiguous(), gather_dim=1, group=group)
    return funcol.wait_tensor(gathered) if isinstance(gathered, funcol.AsyncCollectiveTensor) else gathered
