"""Deliberately naive oracles for the tests: explicit loops, the full score matrix, float64."""

from __future__ import annotations

import math

import torch


def pool(x: torch.Tensor, block: int) -> torch.Tensor:
    """Mean of each block of tokens along dim 2, partial last block averaging its real tokens."""
    chunks = [x[:, :, s : s + block].double().mean(dim=2) for s in range(0, x.shape[2], block)]
    return torch.stack(chunks, dim=2)


def select_row(probs: list[float], topk: float, topp: float) -> set[int]:
    """Top-k ∪ Top-p of one row, written out with Python sorting (ties: lower index first)."""
    n = len(probs)
    order = sorted(range(n), key=lambda j: (-probs[j], j))
    keep: set[int] = set()
    if topk >= 1 or topp >= 1:
        return set(range(n))
    if topk > 0:
        keep |= set(order[: min(n, max(1, math.ceil(topk * n * (1 - 1e-9))))])
    if topp > 0:
        mass = 0.0
        for j in order:
            keep.add(j)
            mass += probs[j]
            if mass >= topp:
                break
    return keep


def predict_dense(q, k, topk, topp, block_q, block_k, scale=None) -> torch.Tensor:
    """Dense bool (B, H, Nq, Nk) mask for HND q, k, row by row."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    probs = torch.softmax(pool(q, block_q) @ pool(k, block_k).transpose(-1, -2) * scale, dim=-1)
    b, h, nq, nk = probs.shape
    dense = torch.zeros(b, h, nq, nk, dtype=torch.bool)
    for idx in torch.cartesian_prod(torch.arange(b), torch.arange(h), torch.arange(nq)).tolist():
        for j in select_row(probs[tuple(idx)].tolist(), topk, topp):
            dense[tuple(idx) + (j,)] = True
    return dense


def token_mask(dense: torch.Tensor, block_q: int, block_k: int, lq: int, lk: int) -> torch.Tensor:
    return dense.repeat_interleave(block_q, dim=2)[:, :, :lq].repeat_interleave(block_k, dim=3)[:, :, :, :lk]


def attention(q, k, v, dense, block_q, block_k, scale=None):
    """Full-matrix softmax attention with -inf on masked blocks, in float64; empty rows give 0 and -inf."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    q, k, v = q.double(), k.double(), v.double()
    s = (q @ k.transpose(-1, -2)) * scale
    s = s.masked_fill(~token_mask(dense, block_q, block_k, q.shape[2], k.shape[2]), float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    p = torch.nan_to_num(torch.exp(s - lse.unsqueeze(-1)), nan=0.0)
    return p @ v, lse
