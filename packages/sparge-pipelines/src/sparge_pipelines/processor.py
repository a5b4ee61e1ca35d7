"""`SpargeWanAttnProcessor`: diffusers' `WanAttnProcessor` for self-attention, with sparge attention inside.

Same projections, q/k RMSNorm, rotary embedding and output projection as diffusers 0.42's WanAttnProcessor;
only the attention call changes, to `sparge_attention` on the (B, L, H, D) views (layout "NHD", no copies).
Dense calls (dense layers, dense steps) are delegated to the original processor, so they are diffusers' own.

Under diffusers' context parallelism (Ulysses, `parallel.py`) each rank projects its L/N tokens, and the sparse op
runs where diffusers' dispatch runs its backends: after the sequence->head all-to-all, on the whole sequence for
H/N heads. Token order "tiled" then permutes q, k, v of the whole sequence there (and un-permutes the output
before the head->sequence all-to-all): a tile spans several frames, i.e. tokens of several ranks' slices, so it
cannot be applied to a rank's slice of the hidden states, as the single-process path does.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models.transformers.transformer_wan import _get_qkv_projections

from sparge_kernels import BlockMask, sparge_attention

from .parallel import check_context_parallel, gather_heads, ulysses_sparge_attention
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

    `_parallel_config` is diffusers' context-parallel config (set by `transformer.enable_parallelism`, which sets it
    on every processor that has the attribute); it is shared with the dense processor, which is no longer the
    module's processor and so would not get it.
    """

    def __init__(self, state: SpargeState, layer: str, dense_processor: Any, always_dense: bool = False) -> None:
        self.state = state
        self.layer = layer
        self.dense_processor = dense_processor
        self.always_dense = always_dense
        self._parallel = getattr(dense_processor, "_parallel_config", None)

    @property
    def _parallel_config(self) -> Any | None:
        return self._parallel

    @_parallel_config.setter
    def _parallel_config(self, config: Any | None) -> None:
        self._parallel = config
        if hasattr(self.dense_processor, "_parallel_config"):
            self.dense_processor._parallel_config = config

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
        degree = check_context_parallel(self._parallel, attn.heads, self.layer)
        state = self.state
        if self.always_dense or (state.config.dense_steps and state.dense_now):
            return self.dense_processor(attn, hidden_states, None, None, rotary_emb, **kwargs), None
        return self._sparse(attn, hidden_states, rotary_emb, degree)

    def head_density(self, attn: torch.nn.Module, hidden_states: torch.Tensor, mask: BlockMask | None) -> torch.Tensor:
        """(B, H) block density of one call over all heads of the layer, for the statistics: 1.0 for a dense call;
        under Ulysses the masks of the H/N heads of each rank are gathered, so every rank records all heads."""
        if mask is None:
            return torch.ones(hidden_states.shape[0], attn.heads, dtype=torch.float64, device=hidden_states.device)
        density = mask.density_per_head
        if density.shape[1] != attn.heads:
            density = gather_heads(density, self._parallel)
        return density

    def _sparse(
        self, attn: torch.nn.Module, hidden_states: torch.Tensor, rotary_emb: tuple[torch.Tensor, torch.Tensor] | None,
        degree: int = 1,
    ) -> tuple[torch.Tensor, BlockMask]:
        config = self.state.config
        tiled = config.token_order == "tiled"
        if degree > 1:
            query, key, value = project_qkv(attn, hidden_states, rotary_emb)
            out, mask = ulysses_sparge_attention(query, key, value, self._parallel, self._attend_whole_sequence)
            if mask is None and self.state.stats is not None:  # never a dense density for a sparse call
                raise RuntimeError(f"{self.layer}: collect_stats under torch.compile with Ulysses sequence "
                                   "parallelism: the block masks stay inside the compiled attention; collect "
                                   "statistics in an eager run")
            return self._project_out(attn, out, query), mask
        if tiled:
            # Token-wise ops commute with the permutation: permute once before the projections, undo after.
            perm, inverse = self.state.permutation(hidden_states.shape[1])
            hidden_states = hidden_states.index_select(1, perm)
            if rotary_emb is not None:
                rotary_emb = tuple(f.index_select(1, perm) for f in rotary_emb)

        query, key, value = project_qkv(attn, hidden_states, rotary_emb)

        out, mask = self._sparge(query, key, value)
        out = self._project_out(attn, out, query)
        if tiled:
            out = out.index_select(1, inverse)
        return out, mask

    def _sparge(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, BlockMask]:
        config = self.state.config
        return sparge_attention(
            query, key, value, topk=config.topk, topp=config.topp, block_q=config.block_q, block_k=config.block_k,
            layout="NHD", return_mask=True,
        )

    def _attend_whole_sequence(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, BlockMask]:
        """Sparse attention of (B, L, H/N, D) whole-sequence q, k, v on one Ulysses rank (raster token order, as
        diffusers gathers the ranks' slices in rank order), in the configured token order."""
        if self.state.config.token_order != "tiled":
            return self._sparge(query, key, value)
        # q, k, v are token-wise functions of the hidden states and rotary tables (projections, RMSNorm over the
        # heads of one token, rotary), so permuting them equals permuting the hidden states before the projections.
        perm, inverse = self.state.permutation(query.shape[1])
        out, mask = self._sparge(*(x.index_select(1, perm) for x in (query, key, value)))
        return out.index_select(1, inverse), mask

    @staticmethod
    def _project_out(attn: torch.nn.Module, out: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        out = out.flatten(2, 3).type_as(query)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)
