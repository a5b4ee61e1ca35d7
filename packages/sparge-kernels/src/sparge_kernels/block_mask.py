"""`BlockMask`: which key blocks each query block attends to, in both directions.

The forward pass walks `kv_index` (for each query block, its kept key blocks); the backward pass for dK/dV
walks `q_index` (for each key block, the query blocks that kept it). Both are stored so no kernel has to
transpose a mask on the fly.

Validation. The kernels read `kv_index[slot]` / `q_index[slot]` for every slot below the count without bounds
checks, so a mask's contents must be valid before it reaches them. Two tiers keep that cheap:
  - metadata (shapes, dtypes, devices, block sizes, sequence lengths): checked on every construction, host-only;
  - contents (0 <= count <= N, indices in range, strictly ascending, q_index the transpose of kv_index): checked
    for masks built from user data (the constructor, `from_indices`) with one device->host copy of a few flags.
    Masks the library builds itself (`predict_block_mask`, `sparge_attention`, `from_dense`, `to`) are valid by
    construction and skip it, so the hot path never syncs. Each mask remembers its tensors' version counters
    (host-side ints); an attention call re-checks the contents only if a tensor was modified in place since.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .validation import check_block_size

__all__ = ["BlockMask", "indices_from_dense"]

_INDEX_NAMES = ("kv_count", "kv_index", "q_count", "q_index")


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


def _slot_valid(count: torch.Tensor, n_slots: int) -> torch.Tensor:
    return torch.arange(n_slots, device=count.device) < count.unsqueeze(-1).to(torch.int64)


def _first_bad(bad: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in bad.nonzero()[0].tolist())


def _index_violations(prefix: str, count: torch.Tensor, index: torch.Tensor, n: int) -> list[tuple[torch.Tensor, str]]:
    """(ok flag tensor, what it checks) for one direction: counts in [0, n], used slots in [0, n) and ascending."""
    valid = _slot_valid(count, index.shape[-1])
    idx = index.to(torch.int64)
    in_range = (idx >= 0) & (idx < n)
    ascending = idx[..., 1:] > idx[..., :-1]
    return [
        (((count >= 0) & (count <= n)).all(), f"{prefix}count"),
        ((in_range | ~valid).all(), f"{prefix}index range"),
        ((ascending | ~valid[..., 1:]).all(), f"{prefix}index order"),
    ]


def _describe(what: str, count: torch.Tensor, index: torch.Tensor, n: int) -> str:
    """The error message for the first violation of `what` (slow path: only after a check failed)."""
    prefix = what.split("_")[0]
    c, i = f"{prefix}_count", f"{prefix}_index"
    if what.endswith("count"):
        pos = _first_bad((count < 0) | (count > n))
        return f"{c}{list(pos)} = {int(count[pos])} is outside [0, {n}] (the number of blocks it can keep)"
    valid = _slot_valid(count, index.shape[-1])
    idx = index.to(torch.int64)
    if what.endswith("range"):
        pos = _first_bad(((idx < 0) | (idx >= n)) & valid)
        return (
            f"{i}{list(pos)} = {int(idx[pos])} is outside [0, {n}) (slot {pos[-1]} < {c} = "
            f"{int(count[pos[:-1]])}, so the kernels would read it)"
        )
    pos = _first_bad((idx[..., 1:] <= idx[..., :-1]) & valid[..., 1:])
    row = idx[pos[:-1]][: int(count[pos[:-1]])].tolist()
    return f"{i}{list(pos[:-1])} must hold {int(count[pos[:-1]])} unique ascending block indices, got {row}"


def _resolve_seq_len(name: str, value: int | None, block: int, n: int, kind: str, source: str) -> int:
    """A constructor's seq_len argument: n full blocks when None, else a positive int that needs n blocks."""
    if value is None:
        return n * block
    check_block_size(name, value)
    if -(-value // block) != n:
        raise ValueError(f"{name}={value} needs {-(-value // block)} {kind} blocks, {source} has {n}")
    return value


@dataclass(frozen=True)
class BlockMask:
    """A block-sparse attention mask over (query block, key block) pairs, per batch and head.

    Attributes:
        kv_count: int32 (B, H, Nq), number of kept key blocks per query block.
        kv_index: int32 (B, H, Nq, Nk), kept key-block indices strictly ascending in the first `kv_count` slots;
            the slots after the count are ignored (the library writes -1 there).
        q_count: int32 (B, H, Nk), number of query blocks that keep each key block.
        q_index: int32 (B, H, Nk, Nq), those query-block indices, same convention: the transpose of kv_index.
        block_q, block_k: tokens per query block and per key block (positive ints).
        seq_len_q, seq_len_k: token counts the mask was built for; Nq = ceil(seq_len_q / block_q), same for k.

    Building one directly validates every invariant (see the module docstring; raises ValueError/TypeError
    naming the field). `from_dense` and `from_indices` build the transpose for you.
    """

    kv_count: torch.Tensor
    kv_index: torch.Tensor
    q_count: torch.Tensor
    q_index: torch.Tensor
    block_q: int
    block_k: int
    seq_len_q: int
    seq_len_k: int
    # Set only by the library for masks valid by construction (op outputs for arguments it has checked): skips
    # the checks, the content check's device sync and ~5 µs of host time per mask in the metadata check.
    _trusted: bool = field(default=False, repr=False, compare=False, kw_only=True)

    def __post_init__(self) -> None:
        if not self._trusted:
            self._check_metadata()
            self._check_contents()
        self._record_versions()

    # ------------------------------------------------------------------------------------------- validation
    def _check_metadata(self) -> None:
        for name in _INDEX_NAMES:
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"BlockMask.{name} must be a torch.Tensor, got {type(t).__name__}")
            if t.dtype != torch.int32:
                raise TypeError(f"BlockMask.{name} must be int32, got {t.dtype}")
            if t.device != self.kv_index.device:
                raise ValueError(f"BlockMask.{name} is on {t.device} but kv_index is on {self.kv_index.device}")
        if self.kv_index.dim() != 4:
            raise ValueError(f"BlockMask.kv_index must be 4-D (B, H, Nq, Nk), got shape {tuple(self.kv_index.shape)}")
        b, h, nq, nk = self.kv_index.shape
        if nq == 0 or nk == 0:
            raise ValueError(f"BlockMask needs at least one query and one key block, got (Nq, Nk) = ({nq}, {nk})")
        for name, expected in (("kv_count", (b, h, nq)), ("q_count", (b, h, nk)), ("q_index", (b, h, nk, nq))):
            got = tuple(getattr(self, name).shape)
            if got != expected:
                raise ValueError(
                    f"BlockMask.{name} has shape {got}, expected {expected} from kv_index (B, H, Nq, Nk) = "
                    f"{(b, h, nq, nk)}"
                )
        block_q, block_k = check_block_size("block_q", self.block_q), check_block_size("block_k", self.block_k)
        for name, length, block, n in (("seq_len_q", self.seq_len_q, block_q, nq),
                                       ("seq_len_k", self.seq_len_k, block_k, nk)):
            check_block_size(name, length)
            if -(-length // block) != n:
                raise ValueError(
                    f"BlockMask.{name}={length} with block size {block} needs {-(-length // block)} blocks, "
                    f"the index tensors have {n}"
                )

    def _check_contents(self) -> None:
        """Counts, index range and order in both directions, and q_index == transpose(kv_index); one sync."""
        if torch.compiler.is_compiling():
            return  # data-dependent checks cannot be traced; the mask was checked when built outside the graph
        nq, nk = self.num_q_blocks, self.num_k_blocks
        checks = _index_violations("kv_", self.kv_count, self.kv_index, nk)
        checks += _index_violations("q_", self.q_count, self.q_index, nq)
        # Out-of-range slots are clamped here only so this pass cannot fail; they are reported above first.
        forward = _dense_from_indices(self.kv_count.clamp(0, nk), self.kv_index.clamp(0, nk - 1), nk)
        backward = _dense_from_indices(self.q_count.clamp(0, nq), self.q_index.clamp(0, nq - 1), nq)
        checks.append(((forward == backward.transpose(-1, -2)).all(), "transpose"))
        ok = torch.stack([flag for flag, _ in checks]).tolist()  # the one device->host copy
        for good, (_, what) in zip(ok, checks):
            if good:
                continue
            if what == "transpose":
                pos = _first_bad(forward != backward.transpose(-1, -2))
                b, h, i, j = pos
                kept = "keeps" if bool(forward[pos]) else "does not keep"
                raise ValueError(
                    f"BlockMask.q_index is not the transpose of kv_index: in (batch {b}, head {h}) query block {i} "
                    f"{kept} key block {j} by kv_index, but q_index of key block {j} says the opposite "
                    "(use BlockMask.from_indices to build q_count/q_index from kv_count/kv_index)"
                )
            if what.startswith("kv_"):
                raise ValueError("BlockMask." + _describe(what, self.kv_count, self.kv_index, nk))
            raise ValueError("BlockMask." + _describe(what, self.q_count, self.q_index, nq))

    def _versions(self) -> tuple[int, ...]:
        return tuple(getattr(self, name)._version for name in _INDEX_NAMES)

    def _record_versions(self) -> None:
        # Version counters are host-side ints bumped by every in-place op: reading them costs no sync. Tensors
        # made under torch.inference_mode have none, so an in-place edit of such a mask cannot be detected.
        tracked = not torch.compiler.is_compiling() and not any(
            getattr(self, name).is_inference() for name in _INDEX_NAMES
        )
        versions = self._versions() if tracked else None
        object.__setattr__(self, "_checked_versions", versions)

    def check_unmodified(self) -> None:
        """Re-validate the contents if an index tensor was modified in place since the last check.

        Called by `block_sparse_attention` before every launch; costs four host-side int reads otherwise.
        """
        if torch.compiler.is_compiling():
            return
        recorded = getattr(self, "_checked_versions", None)
        if recorded is not None and recorded != self._versions():
            self._check_contents()
            self._record_versions()

    # ------------------------------------------------------------------------------------------- properties
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

    # ----------------------------------------------------------------------------------------- constructors
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
        block_q, block_k = check_block_size("block_q", block_q), check_block_size("block_k", block_k)
        _, _, nq, nk = dense.shape
        if nq == 0 or nk == 0:
            raise ValueError(f"dense must have at least one query and one key block, got {tuple(dense.shape)}")
        seq_len_q = _resolve_seq_len("seq_len_q", seq_len_q, block_q, nq, "query", "dense")
        seq_len_k = _resolve_seq_len("seq_len_k", seq_len_k, block_k, nk, "key", "dense")
        kv_count, kv_index = indices_from_dense(dense)
        q_count, q_index = indices_from_dense(dense.transpose(-1, -2))
        # Valid by construction: indices_from_dense writes sorted, unique, in-range indices and their transpose.
        return cls(kv_count, kv_index, q_count, q_index, block_q, block_k, seq_len_q, seq_len_k, _trusted=True)

    @classmethod
    def from_indices(
        cls,
        kv_count: torch.Tensor,
        kv_index: torch.Tensor,
        *,
        block_q: int = 128,
        block_k: int = 64,
        seq_len_q: int | None = None,
        seq_len_k: int | None = None,
    ) -> BlockMask:
        """Build a mask from user-supplied forward indices, computing q_count/q_index (the transpose).

        kv_count int32 (B, H, Nq) and kv_index int32 (B, H, Nq, Nk) as in the class docstring; validated
        (counts in [0, Nk], used slots in [0, Nk), strictly ascending) with one device sync.
        """
        for name, t, dims in (("kv_count", kv_count, 3), ("kv_index", kv_index, 4)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            if t.dtype != torch.int32:
                raise TypeError(f"{name} must be int32, got {t.dtype}")
            if t.dim() != dims:
                raise ValueError(f"{name} must be {dims}-D, got shape {tuple(t.shape)}")
        if kv_count.device != kv_index.device:
            raise ValueError(f"kv_count is on {kv_count.device} but kv_index is on {kv_index.device}")
        if tuple(kv_count.shape) != tuple(kv_index.shape[:3]):
            raise ValueError(
                f"kv_count has shape {tuple(kv_count.shape)}, expected {tuple(kv_index.shape[:3])} from kv_index"
            )
        _, _, nq, nk = kv_index.shape
        if nq == 0 or nk == 0:
            raise ValueError(f"kv_index needs at least one query and one key block, got shape {tuple(kv_index.shape)}")
        block_q, block_k = check_block_size("block_q", block_q), check_block_size("block_k", block_k)
        seq_len_q = _resolve_seq_len("seq_len_q", seq_len_q, block_q, nq, "query", "kv_index")
        seq_len_k = _resolve_seq_len("seq_len_k", seq_len_k, block_k, nk, "key", "kv_index")
        checks = _index_violations("kv_", kv_count, kv_index, nk)
        ok = torch.stack([flag for flag, _ in checks]).tolist()  # one device->host copy
        for good, (_, what) in zip(ok, checks):
            if not good:
                raise ValueError(_describe(what, kv_count, kv_index, nk))
        dense = _dense_from_indices(kv_count, kv_index, nk)
        q_count, q_index = indices_from_dense(dense.transpose(-1, -2))
        return cls(kv_count.contiguous(), kv_index.contiguous(), q_count, q_index, block_q, block_k, seq_len_q,
                   seq_len_k, _trusted=True)

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
        self.check_unmodified()  # the copy is trusted, so the source must still hold what was validated
        return BlockMask(
            self.kv_count.to(device),
            self.kv_index.to(device),
            self.q_count.to(device),
            self.q_index.to(device),
            self.block_q,
            self.block_k,
            self.seq_len_q,
            self.seq_len_k,
            _trusted=True,
        )
