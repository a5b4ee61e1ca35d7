"""`SpargeWanAttnProcessor`: diffusers' `WanAttnProcessor` for self-attention, with sparge attention inside.

Same projections, q/k RMSNorm, rotary embedding and output projection as diffusers 0.42's WanAttnProcessor;
only the attention call changes, to `sparge_attention` on the (B, L, H, D) views (layout "NHD", no copies).
Dense calls (dense layers, dense steps) are delegated to the original processor, so they are diffusers' own.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models.transformers.transformer_wan import _get_qkv_projections

from sparge_kernels import BlockMask, sparge_attention

from .state import SpargeState

__all__ = ["SpargeWanAttnProcessor", "apply_rotary_emb", "project_qkv"]


def apply_rotary_emb(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Wan's interleaved rotary embedding, op for op as in diffusers' WanAttnProcessor (where it is a closure
    inside `__call__`, hence not importable): x (B, L, H, D), freqs (1, L, 1, D) repeat-interleaved."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


def project_qkv(attn: torch.nn.Module, hidden_states: torch.Tensor,
                rotary_emb: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, ...]:
    """Query, key, value (B, L, H, D) of Wan self-attention as diffusers computes them: projections, q/k RMSNorm,
    rotary embedding."""
    query, key, value = _get_qkv_projections(attn, hidden_states, None)
    query = attn.norm_q(query)
    key = attn.norm_k(key)
    query = query.unflatten(2, (attn.heads, -1))
    key = key.unflatten(2, (attn.heads, -1))
    value = value.unflatten(2, (attn.heads, -1))
    if rotary_emb is not None:
        query = apply_rotary_emb(query, *rotary_emb)
        key = apply_rotary_emb(key, *rotary_emb)
    return query, key, value


class SpargeWanAttnProcessor:
    """Self-attention (attn1) processor of one Wan block.

    Args:
        state: shared run-time state (config, step index, patch grid).
        layer: name of the block, e.g. "blocks.3", for statistics.
        dense_processor: the processor it replaces; runs the dense calls and is restored by `remove_sparge`.
        always_dense: the block is in `dense_layers`.
    """

    def __init__(self, state: SpargeState, layer: str, dense_processor: Any, always_dense: bool = False) -> None:
        self.state = state
        self.layer = layer
        self.dense_processor = dense_processor
        self.always_dense = always_dense

    def __call__(
        self,
        attn: torch.nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        return self.attend(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb, **kwargs)[0]

    def attend(
        self,
        attn: torch.nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, BlockMask | None]:
        """The self-attention output and the block mask it used (None for a dense call). `__call__` is this
        without the mask; the statistics hook (hooks.py) reads the mask."""
        if encoder_hidden_states is not None or getattr(attn, "add_k_proj", None) is not None:
            raise ValueError(f"{self.layer}: SpargeWanAttnProcessor serves self-attention (attn1) only")
        if attention_mask is not None:
            raise ValueError(f"{self.layer}: sparge self-attention does not take an attention_mask")
        state = self.state
        if self.always_dense or (state.config.dense_steps and state.dense_now):
            return self.dense_processor(attn, hidden_states, None, None, rotary_emb, **kwargs), None
        return self._sparse(attn, hidden_states, rotary_emb)

    def _sparse(
        self, attn: torch.nn.Module, hidden_states: torch.Tensor, rotary_emb: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, BlockMask]:
        config = self.state.config
        tiled = config.token_order == "tiled"
        if tiled:
            # Token-wise ops commute with the permutation: permute once before the projections, undo after.
            perm, inverse = self.state.permutation(hidden_states.shape[1])
            hidden_states = hidden_states.index_select(1, perm)
            if rotary_emb is not None:
                rotary_emb = tuple(f.index_select(1, perm) for f in rotary_emb)

        query, key, value = project_qkv(attn, hidden_states, rotary_emb)

        out, mask = sparge_attention(
            query, key, value, topk=config.topk, topp=config.topp, block_q=config.block_q, block_k=config.block_k,
            layout="NHD", return_mask=True,
        )
        out = out.flatten(2, 3).type_as(query)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if tiled:
            out = out.index_select(1, inverse)
        return out, mask
