"""Latent shards: safetensors files of VAE latents + text embeddings, plus an index.json.

Layout of a shard folder (written by `sparge-train prepare`):
    index.json                 {"format", "num_samples", "shards": [{"file", "num_samples"}], ...}
    shard_00000.safetensors    tensors "<i>.latents" (C, F, H, W) float32, "<i>.text_embeds" (T_i, D) bfloat16,
                               metadata {"format", "captions": JSON list, "sources": JSON list}
Only safetensors and JSON are read: loading never unpickles anything.
"""

from __future__ import annotations

import json
import os
from bisect import bisect_right
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset

__all__ = ["SHARD_FORMAT", "ShardWriter", "LatentShardDataset"]

SHARD_FORMAT = "sparge-latents-v1"


class ShardWriter:
    """Accumulates samples and writes a shard every `samples_per_shard`; `close()` writes index.json."""

    def __init__(self, out_dir: str | os.PathLike, samples_per_shard: int = 64, extra_index: dict | None = None):
        if samples_per_shard < 1:
            raise ValueError(f"samples_per_shard: must be >= 1, got {samples_per_shard}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if (self.out_dir / "index.json").exists():
            raise FileExistsError(f"out: {self.out_dir} already holds an index.json; choose an empty folder")
        self.samples_per_shard = samples_per_shard
        self.extra_index = dict(extra_index or {})
        self._pending: list[tuple[torch.Tensor, torch.Tensor, str, str]] = []
        self._shards: list[dict[str, Any]] = []
        self.num_samples = 0

    def add(self, latents: torch.Tensor, text_embeds: torch.Tensor, caption: str = "", source: str = "") -> None:
        if latents.ndim != 4:
            raise ValueError(f"latents: expected (C, F, H, W), got shape {tuple(latents.shape)}")
        if text_embeds.ndim != 2:
            raise ValueError(f"text_embeds: expected (tokens, dim), got shape {tuple(text_embeds.shape)}")
        self._pending.append((latents.detach().float().cpu().contiguous(),
                              text_embeds.detach().to(torch.bfloat16).cpu().contiguous(), caption, source))
        if len(self._pending) >= self.samples_per_shard:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        name = f"shard_{len(self._shards):05d}.safetensors"
        tensors = {}
        for i, (lat, txt, _, _) in enumerate(self._pending):
            tensors[f"{i}.latents"] = lat
            tensors[f"{i}.text_embeds"] = txt
        meta = {"format": SHARD_FORMAT,
                "captions": json.dumps([p[2] for p in self._pending]),
                "sources": json.dumps([p[3] for p in self._pending])}
        save_file(tensors, str(self.out_dir / name), metadata=meta)
        self._shards.append({"file": name, "num_samples": len(self._pending)})
        self.num_samples += len(self._pending)
        self._pending = []

    def close(self) -> Path:
        self._flush()
        index = {"format": SHARD_FORMAT, "num_samples": self.num_samples, "shards": self._shards,
                 **self.extra_index}
        path = self.out_dir / "index.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(index, indent=2))
        tmp.replace(path)
        return path


class LatentShardDataset(Dataset):
    """Random access over the samples of all shards listed in index.json (files opened lazily per process)."""

    def __init__(self, path: str | os.PathLike):
        self.root = Path(path)
        index_path = self.root / "index.json"
        if not index_path.is_file():
            raise FileNotFoundError(f"path: {self.root} has no index.json")
        self.index = json.loads(index_path.read_text())
        if self.index.get("format") != SHARD_FORMAT:
            raise ValueError(f"path: {index_path} has format {self.index.get('format')!r}, expected {SHARD_FORMAT}")
        self.shards = self.index["shards"]
        self._starts = []
        total = 0
        for shard in self.shards:
            self._starts.append(total)
            total += int(shard["num_samples"])
        if total != self.index["num_samples"] or total == 0:
            raise ValueError(f"path: {index_path} lists {total} samples in shards, index says "
                             f"{self.index['num_samples']}")
        self.num_samples = total
        self._handles: dict[int, Any] = {}

    def __len__(self) -> int:
        return self.num_samples

    def _handle(self, shard: int):
        if shard not in self._handles:
            self._handles[shard] = safe_open(str(self.root / self.shards[shard]["file"]), framework="pt")
        return self._handles[shard]

    def locate(self, index: int) -> tuple[int, int]:
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        shard = bisect_right(self._starts, index) - 1
        return shard, index - self._starts[shard]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        shard, local = self.locate(index)
        f = self._handle(shard)
        return {"latents": f.get_tensor(f"{local}.latents"), "text_embeds": f.get_tensor(f"{local}.text_embeds")}

    def caption(self, index: int) -> str:
        shard, local = self.locate(index)
        return json.loads(self._handle(shard).metadata()["captions"])[local]

    def __getstate__(self):  # file handles do not cross process boundaries
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state
