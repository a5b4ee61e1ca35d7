"""Pure-PyTorch reference for mask prediction and block-sparse attention: the test oracle.

Runs on any device and dtype. Everything is computed in float32 (float64 for float64 inputs) and works
one query block at a time over the kept key blocks only, so the full Lq x Lk score matrix is never built.
All tensors here are in HND layout (B, H, L, D); callers pass transposed views for NHD.
"""

from __future__ import annotations

import math

import torch

from .block_mask import indices_from_dense
from .validation import num_blocks

__all__ = [
    "topk_count",
    "keeps_every_block",
    "mean_pool_blocks",
    "block_probabilities",
    "select_hybrid",
    "predict_block_mask",
    "predict_block_mask_indices",
    "attention_forward",
    "attention_backward",
]


# The selection rule's two host-side parts, here once; the CUDA mask glue uses them too.
def topk_count(topk: float, n: int) -> int:
    """Blocks Top-k keeps of a row of n: max(1, ceil(topk·n)) for topk > 0, else 0.

    A relative guard of 1e-9 keeps float round-up (0.07 * 100 = 7.000000000000001) from adding a block.
    """
    if topk <= 0.0:
        return 0
    return min(n, max(1, math.ceil(topk * n * (1.0 - 1e-9))))


def keeps_every_block(topk: float, topp: float) -> bool:
    """topk = 1 or topp = 1 keeps every block whatever the scores (Top-p: the full mass is only reached at the
    end of the row, and float rounding must not drop its tail)."""
    return topk >= 1.0 or topp >= 1.0


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def mean_pool_blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """Mean of each block of `block` tokens along dim 2; a partial last block averages its real tokens."""
    b, h, length, d = x.shape
    # A block longer than the sequence is one block of all tokens: never pad beyond the sequence.
    block = min(block, length)
    n = num_blocks(length, block)
    xf = x.to(_compute_dtype(x.dtype))
    pad = n * block - length
    if pad:
        xf = torch.cat([xf, xf.new_zeros(b, h, pad, d)], dim=2)
    sums = xf.reshape(b, h, n, block, d).sum(dim=3)
    counts = torch.full((n,), float(block), dtype=sums.dtype, device=x.device)
    counts[-1] = length - (n - 1) * block
    return sums / counts[:, None]


def block_probabilities(
    q: torch.Tensor, k: torch.Tensor, block_q: int, block_k: int, scale: float
) -> torch.Tensor:
    """P = softmax(pool(Q) · pool(K)ᵀ · scale) per query-block row: (B, H, Nq, Nk), float32 or float64."""
    qp = mean_pool_blocks(q, block_q)
    kp = mean_pool_blocks(k, block_k)
    return torch.softmax(qp @ kp.transpose(-1, -2) * scale, dim=-1)


def select_hybrid(probs: torch.Tensor, topk: float, topp: float) -> torch.Tensor:
    """Bool mask keeping Top-k ∪ Top-p of each row of `probs` (..., N).

    Top-k keeps max(1, ceil(topk·N)) entries; Top-p keeps the shortest prefix of the row sorted
    descending whose sum reaches topp, including the entry that crosses it. Ties: lower index first.
    """
    n = probs.shape[-1]
    if keeps_every_block(topk, topp):
        return torch.ones(probs.shape, dtype=torch.bool, device=probs.device)
    sorted_p, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    keep_sorted = torch.zeros(probs.shape, dtype=torch.bool, device=probs.device)
    kk = topk_count(topk, n)
    if kk:
        keep_sorted[..., :kk] = True
    if topp > 0.0:
        # Mass before each entry; an entry is kept while the mass before it is still short of topp.
        before = torch.cumsum(sorted_p, dim=-1) - sorted_p
        before[..., 0] = 0.0
        keep_sorted |= before < topp
    return torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)


def predict_block_mask(
    q: torch.Tensor, k: torch.Tensor, topk: float, topp: float, block_q: int, block_k: int, scale: float
) -> torch.Tensor:
    """Dense bool mask (B, H, Nq, Nk) of the hybrid Top-k ∪ Top-p selection."""
    return select_hybrid(block_probabilities(q, k, block_q, block_k, scale), topk, topp)


def predict_block_mask_indices(
    q: torch.Tensor, k: torch.Tensor, topk: float, topp: float, block_q: int, block_k: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`predict_block_mask` as (kv_count, kv_index, q_count, q_index), int32, in the `BlockMask` convention."""
    dense = predict_block_mask(q, k, topk, topp, block_q, block_k, scale)
    kv_count, kv_index = indices_from_dense(dense)
    q_count, q_index = indices_from_dense(dense.transpose(-1, -2))
    return kv_count, kv_index, q_count, q_index


def _kept_tokens(
    kv_count: torch.Tensor, kv_index: torch.Tensor, block_k: int, seq_len_k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token indices (B, H, T) of the kept key blocks of one query block, and which of them are real."""
    m = max(int(kv_count.max()), 1)
    block_k = min(block_k, seq_len_k)  # a block longer than the sequence holds only the real tokens
    blocks = kv_index[..., :m].to(torch.int64)  # (B, H, m)
    slot_valid = torch.arange(m, device=blocks.device) < kv_count.unsqueeze(-1).to(torch.int64)
    tokens = blocks.unsqueeze(-1) * block_k + torch.arange(block_k, device=blocks.device)  # (B, H, m, bk)
    valid = slot_valid.unsqueeze(-1) & (tokens < seq_len_k) & (tokens >= 0)
    tokens = torch.where(valid, tokens, torch.zeros_like(tokens))
    return tokens.flatten(2), valid.flatten(2)


def _gather_tokens(x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return torch.gather(x, 2, tokens.unsqueeze(-1).expand(-1, -1, -1, x.shape[-1]))


def attention_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_count: torch.Tensor,
    kv_index: torch.Tensor,
    block_q: int,
    block_k: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of each query block over its kept key blocks: (out like q, lse (B, H, Lq)).

    A query block with no kept key block gets out = 0 and lse = -inf.
    """
    cdt = _compute_dtype(q.dtype)
    b, h, lq, _ = q.shape
    lk = k.shape[2]
    kc, vc = k.to(cdt), v.to(cdt)
    out = torch.empty(b, h, lq, v.shape[-1], dtype=cdt, device=q.device)
    lse = torch.empty(b, h, lq, dtype=torch.float32 if cdt == torch.float32 else cdt, device=q.device)
    for i in range(num_blocks(lq, block_q)):
        rows = slice(i * block_q, min((i + 1) * block_q, lq))
        tokens, valid = _kept_tokens(kv_count[..., i], kv_index[..., i, :], block_k, lk)
        s = (q[:, :, rows].to(cdt) @ _gather_tokens(kc, tokens).transpose(-1, -2)) * scale
        s = s.masked_fill(~valid.unsqueeze(2), float("-inf"))
        row_lse = torch.logsumexp(s, dim=-1)
        p = torch.exp(s - row_lse.unsqueeze(-1).clamp_min(torch.finfo(cdt).min))
        out[:, :, rows] = p @ _gather_tokens(vc, tokens)
        lse[:, :, rows] = row_lse.to(lse.dtype)
    return out.to(q.dtype), lse


def attention_backward(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    dlse: torch.Tensor | None,
    kv_count: torch.Tensor,
    kv_index: torch.Tensor,
    block_q: int,
    block_k: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dq, dk, dv) of `attention_forward`, given dout and optionally d(lse)."""
    cdt = _compute_dtype(q.dtype)
    b, h, lq, d = q.shape
    lk = k.shape[2]
    kc, vc = k.to(cdt), v.to(cdt)
    dq = torch.empty(b, h, lq, d, dtype=cdt, device=q.device)
    # One spare row absorbs the scatter of padded (invalid) token slots.
    dk = torch.zeros(b, h, lk + 1, d, dtype=cdt, device=q.device)
    dv = torch.zeros(b, h, lk + 1, v.shape[-1], dtype=cdt, device=q.device)
    # delta_i = rowsum(dO ∘ O) − dlse_i: the softmax-Jacobian correction, with lse's own gradient folded in.
    delta = (dout.to(cdt) * out.to(cdt)).sum(-1)
    if dlse is not None:
        delta = delta - dlse.to(cdt)
    for i in range(num_blocks(lq, block_q)):
        rows = slice(i * block_q, min((i + 1) * block_q, lq))
        tokens, valid = _kept_tokens(kv_count[..., i], kv_index[..., i, :], block_k, lk)
        kg, vg = _gather_tokens(kc, tokens), _gather_tokens(vc, tokens)
        qi, doi = q[:, :, rows].to(cdt), dout[:, :, rows].to(cdt)
        s = (qi @ kg.transpose(-1, -2)) * scale
        row_lse = lse[:, :, rows].to(cdt).unsqueeze(-1)
        p = torch.exp(s - row_lse.clamp_min(torch.finfo(cdt).min))
        p = p.masked_fill(~valid.unsqueeze(2) | torch.isinf(row_lse), 0.0)
        ds = p * (doi @ vg.transpose(-1, -2) - delta[:, :, rows].unsqueeze(-1))
        dq[:, :, rows] = (ds @ kg) * scale
        target = torch.where(valid, tokens, torch.full_like(tokens, lk)).unsqueeze(-1)
        dk.scatter_add_(2, target.expand(-1, -1, -1, d), (ds.transpose(-1, -2) @ qi) * scale)
        dv.scatter_add_(2, target.expand(-1, -1, -1, dv.shape[-1]), p.transpose(-1, -2) @ doi)
    return dq.to(q.dtype), dk[:, :, :lk].to(k.dtype), dv[:, :, :lk].to(v.dtype)
