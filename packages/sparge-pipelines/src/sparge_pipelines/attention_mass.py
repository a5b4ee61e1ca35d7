"""How concentrated a Wan transformer's self-attention is, in the blocks sparse attention works on.

For each layer, the exact softmax attention of every query is summed per key block (64 tokens) and averaged per
query block (128 tokens): M[b, h, i, j] is the attention mass query block i puts on key block j (rows sum to 1).
From M: the share of the mass in the top x% of key blocks of each row (the structure Top-k relies on; x% would be
uniform), and the mass recall of a block mask (the share of the mass inside the kept blocks).

`AttentionMassProbe` observes; it does not change the output (it calls the layer's own processor afterwards).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch

from .processor import project_qkv

__all__ = ["AttentionMassProbe", "block_attention_mass", "top_share", "mask_recall"]


@torch.no_grad()
def block_attention_mass(q: torch.Tensor, k: torch.Tensor, *, block_q: int = 128, block_k: int = 64,
                         scale: float | None = None, chunk: int = 2048) -> torch.Tensor:
    """M (B, H, Nq, Nk) float32 from q, k (B, L, H, D) ("NHD"); tails are partial blocks."""
    b, lq, h, d = q.shape
    lk = k.shape[1]
    scale = scale if scale is not None else 1.0 / math.sqrt(d)
    nq, nk = math.ceil(lq / block_q), math.ceil(lk / block_k)
    qh = q.transpose(1, 2).float()
    kh = k.transpose(1, 2).float()
    key_block = torch.arange(lk, device=q.device) // block_k
    out = torch.zeros(b, h, nq, nk, device=q.device, dtype=torch.float32)
    chunk = max(block_q, chunk // block_q * block_q)
    for start in range(0, lq, chunk):
        p = torch.softmax(qh[:, :, start:start + chunk] @ kh.transpose(-1, -2) * scale, dim=-1)  # (B, H, c, Lk)
        per_key_block = torch.zeros(*p.shape[:-1], nk, device=q.device).index_add_(-1, key_block, p)
        rows = torch.arange(start, start + p.shape[2], device=q.device) // block_q
        out.index_add_(2, rows, per_key_block)
    counts = torch.bincount(torch.arange(lq, device=q.device) // block_q, minlength=nq).float()
    return out / counts.view(1, 1, nq, 1)


def top_share(mass: torch.Tensor, fraction: float) -> torch.Tensor:
    """(B, H) mean over rows of the mass in each row's top ceil(fraction·Nk) key blocks."""
    n = max(1, math.ceil(fraction * mass.shape[-1] - 1e-9))
    return mass.topk(n, dim=-1).values.sum(-1).mean(-1)


def mask_recall(mass: torch.Tensor, dense_mask: torch.Tensor) -> torch.Tensor:
    """(B, H) mean over rows of the mass inside `dense_mask` (B, H, Nq, Nk) bool."""
    return (mass * dense_mask).sum(-1).mean(-1)


class AttentionMassProbe:
    """Context manager over a WanTransformer3DModel: while active, every self-attention call records, per layer,
    the top-share of its block mass (median over heads, mean over the batch) for `fractions`, and for each named
    `masks` entry (a callable (q, k) -> BlockMask, e.g. predict_block_mask with some topk/topp) its density and
    mass recall. `results()` averages over the calls seen."""

    def __init__(self, transformer: Any, *, fractions: tuple[float, ...] = (0.05, 0.1, 0.2),
                 masks: dict[str, Callable[[torch.Tensor, torch.Tensor], Any]] | None = None,
                 block_q: int = 128, block_k: int = 64) -> None:
        self.transformer = getattr(transformer, "_orig_mod", transformer)
        self.fractions = fractions
        self.masks = masks or {}
        self.block_q, self.block_k = block_q, block_k
        self._sums: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self._calls: dict[str, int] = defaultdict(int)
        self._originals: list[Any] = []

    def __enter__(self) -> AttentionMassProbe:
        for i, block in enumerate(self.transformer.blocks):
            original = block.attn1.processor
            self._originals.append(original)
            block.attn1.set_processor(self._wrap(f"blocks.{i}", original))
        return self

    def __exit__(self, *exc: object) -> None:
        for block, original in zip(self.transformer.blocks, self._originals, strict=True):
            block.attn1.set_processor(original)
        self._originals = []

    def _wrap(self, layer: str, original: Any) -> Callable[..., torch.Tensor]:
        def processor(attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None,
                      **kwargs):
            q, k, _ = project_qkv(attn, hidden_states, rotary_emb)
            self._record(layer, q, k)
            return original(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb, **kwargs)

        return processor

    def _record(self, layer: str, q: torch.Tensor, k: torch.Tensor) -> None:
        mass = block_attention_mass(q, k, block_q=self.block_q, block_k=self.block_k)
        sums = self._sums[layer]
        for fraction in self.fractions:
            sums[f"top{fraction:g}"] += float(top_share(mass, fraction).median(dim=1).values.mean())
        for name, make_mask in self.masks.items():
            mask = make_mask(q, k)
            dense = mask.to_dense().to(mass.device)
            sums[f"{name}.recall"] += float(mask_recall(mass, dense).median(dim=1).values.mean())
            sums[f"{name}.density"] += float(mask.density)
        self._calls[layer] += 1

    def results(self) -> dict[str, dict[str, float]]:
        """layer -> metric -> mean over calls; key "mean" averages the layers."""
        out = {layer: {k: v / self._calls[layer] for k, v in sums.items()} for layer, sums in self._sums.items()}
        if out:
            keys = next(iter(out.values())).keys()
            out["mean"] = {k: sum(r[k] for r in out.values()) / len(out) for k in keys}
        return out
