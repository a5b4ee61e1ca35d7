"""`BlockMask`: which key blocks each query block attends to, in both directions.

The forward pass walks `kv_index` (for each query block, its kept key blocks); the backward pass for dK/dV
walks `q_index` (for each key block, the query blocks that kept it). Both are stored so no kernel has to
transpose a mask on the fly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["BlockMask", "indices_from_dense"]


def indices_from_dense(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a bool mask (..., N) into (count int32 (...), index int32 (..., N)).

    `index` holds the kept positions in ascending order, padded with -1 after `count`.
    """
    n = dense.shape[-1]
    positions = torch.arange(n, device=dense.device, dtype=torch.int64)
    # Kept positions sort before dropped ones and keep their order; dropped ones go last.
    sort_key = torch.where(dense, positions, positions + n)
    order = torch.sort(sort_key, dim=-1).values
    count = dense.sum(dim=-1, dtype=torch.int32)
    index = torch.where(order < n, order, torch.full_like(order, -1))
    return count.contiguous(), index.to(torch.int32).contiguous()


def _dense_from_indices(count: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    valid = torch.arange(index.shape[-1], device=index.device) < count.unsqueeze(-1).to(torch.int64)
    dense = torch.zeros(*index.shape[:-1], n + 1, dtype=torch.bool, device=index.device)
    # Invalid slots scatter into the spare column n, which is dropped.
    target = torch.where(valid, index.to(torch.int64), torch.full_like(index, n, dtype=torch.int64))
    dense.scatter_(-1, target, True)
    return dense[..., :n]


@dataclass(frozen=True)
class BlockMask:
    """A block-sparse attention mask over (query block, key block) pairs, per batch and head.

    Attributes:
        kv_count: int32 (B, H, Nq), number of kept key blocks per query block.
        kv_index: int32 (B, H, Nq, Nk), kept key-block indices ascending, -1 after `kv_count`.
        q_count: int32 (B, H, Nk), number of query blocks that keep each key block.
        q_index: int32 (B, H, Nk, Nq), those query-block indices ascending, -1 after `q_count`.
        block_q, block_k: tokens per query block and per key block.
        seq_len_q, seq_len_k: token counts the mask was built for.
    """

    kv_count: torch.Tensor
    kv_index: torch.Tensor
    q_count: torch.Tensor
    q_index: torch.Tensor
    block_q: int
    block_k: int
    seq_len_q: int
    seq_len_k: int

    @property
    def num_q_blocks(self) -> int:
        return self.kv_index.shape[2]

    @property
    def num_k_blocks(self) -> int:
        return self.kv_index.shape[3]

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(B, H, Nq, Nk)."""
        return tuple(self.kv_index.shape)  # type: ignore[return-value]

    @classmethod
    def from_dense(
        cls,
        dense: torch.Tensor,
        *,
        block_q: int = 128,
        block_k: int = 64,
        seq_len_q: int | None = None,
        seq_len_k: int | None = None,
    ) -> BlockMask:
        """Build a mask from a user-supplied bool tensor (B, H, Nq, Nk).

        `seq_len_q`/`seq_len_k` default to the full blocks, Nq·block_q and Nk·block_k.
        """
        if not isinstance(dense, torch.Tensor):
            raise TypeError(f"dense must be a torch.Tensor, got {type(dense).__name__}")
        if dense.dim() != 4:
            raise ValueError(f"dense must have shape (B, H, Nq, Nk), got {tuple(dense.shape)}")
        if dense.dtype != torch.bool:
            raise TypeError(f"dense must be a bool tensor, got {dense.dtype}")
        for name, value in (("block_q", block_q), ("block_k", block_k)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        _, _, nq, nk = dense.shape
        if nq == 0 or nk == 0:
            raise ValueError(f"dense must have at least one query and one key block, got {tuple(dense.shape)}")
        seq_len_q = nq * block_q if seq_len_q is None else seq_len_q
        seq_len_k = nk * block_k if seq_len_k is None else seq_len_k
        if -(-seq_len_q // block_q) != nq:
            raise ValueError(f"seq_len_q={seq_len_q} needs {-(-seq_len_q // block_q)} query blocks, dense has {nq}")
        if -(-seq_len_k // block_k) != nk:
            raise ValueError(f"seq_len_k={seq_len_k} needs {-(-seq_len_k // block_k)} key blocks, dense has {nk}")
        kv_count, kv_index = indices_from_dense(dense)
        q_count, q_index = indices_from_dense(dense.transpose(-1, -2))
        return cls(kv_count, kv_index, q_count, q_index, block_q, block_k, seq_len_q, seq_len_k)

    def to_dense(self) -> torch.Tensor:
        """bool (B, H, Nq, Nk): True where the query block attends to the key block."""
        return _dense_from_indices(self.kv_count, self.kv_index, self.num_k_blocks)

    @property
    def density(self) -> float:
        """Fraction of (query block, key block) pairs kept, over all batches and heads."""
        return float(self.kv_count.sum(dtype=torch.float64) / self.kv_index.numel())

    @property
    def sparsity(self) -> float:
        return 1.0 - self.density

    @property
    def density_per_head(self) -> torch.Tensor:
        """float64 (B, H): fraction of block pairs kept in each head."""
        return self.kv_count.sum(dim=-1, dtype=torch.float64) / (self.num_q_blocks * self.num_k_blocks)

    def to(self, device: torch.device | str) -> BlockMask:
        return BlockMask(
            self.kv_count.to(device),
            self.kv_index.to(device),
            self.q_count.to(device),
            self.q_index.to(device),
            self.block_q,
            self.block_k,
            self.seq_len_q,
            self.seq_len_k,
        )
