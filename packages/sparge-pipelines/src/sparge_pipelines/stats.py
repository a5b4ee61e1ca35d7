"""`DensityStats`: achieved block density per denoising step, layer and head; JSON and heatmap export.

Recording stays on the device (a running sum per (step, layer)); the only host sync is in `summary()`.
`defer(layer, density)` only queues a tensor (safe inside a compiled graph: a list append becomes a graph output);
`flush(step)` files the queue, outside the graph (the transformer's forward hook does, once per call).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

__all__ = ["DensityStats"]


class DensityStats:
    def __init__(self) -> None:
        self._sums: dict[tuple[int, str], torch.Tensor] = {}  # float64 (H,) summed over calls and batch
        self._counts: dict[tuple[int, str], int] = {}
        self._layers: list[str] = []
        self._pending: list[tuple[str, torch.Tensor]] = []

    def declare_layers(self, names: list[str]) -> None:
        """Fix the row order of the exports (install order), before any call is recorded."""
        self._layers = list(names)

    def record(self, step: int, layer: str, density_per_head: torch.Tensor) -> None:
        """Add one attention call's (B, H) densities (1.0 for a dense call)."""
        key = (step, layer)
        summed = density_per_head.detach().sum(dim=0, dtype=torch.float64)
        if key in self._sums:
            self._sums[key] += summed
        else:
            self._sums[key] = summed
        self._counts[key] = self._counts.get(key, 0) + density_per_head.shape[0]
        if layer not in self._layers:
            self._layers.append(layer)

    def defer(self, layer: str, density_per_head: torch.Tensor) -> None:
        """Queue one call's (B, H) densities for the next `flush` (no dict lookups, no step: compile-safe)."""
        self._pending.append((layer, density_per_head))

    def flush(self, step: int) -> None:
        """Record the queued densities under `step`."""
        pending, self._pending = self._pending, []
        for layer, density in pending:
            self.record(step, layer, density)

    def reset(self) -> None:
        self._pending.clear()
        self._sums.clear()
        self._counts.clear()

    def __len__(self) -> int:
        return len(self._sums)

    def summary(self) -> dict:
        """{"steps", "layers", "per_head": [step][layer] -> list | None, "mean": [step][layer] -> float | None,
        "mean_per_step", "overall"}. Layers not run in a step (e.g. the other expert of Wan2.2) are None."""
        keys = list(self._sums)
        steps = sorted({s for s, _ in keys})
        # One stack and one device-to-host copy for everything.
        means = [self._sums[k] / self._counts[k] for k in keys]
        flat = torch.cat(means).cpu().tolist() if keys else []
        offsets = [0]
        for m in means:
            offsets.append(offsets[-1] + m.numel())
        values = [flat[a:b] for a, b in zip(offsets, offsets[1:], strict=False)]
        by_key = dict(zip(keys, values, strict=True))
        per_head = [[by_key.get((s, layer)) for layer in self._layers] for s in steps]
        mean = [[None if v is None else sum(v) / len(v) for v in row] for row in per_head]
        mean_per_step = [_mean([v for v in row if v is not None]) for row in mean]
        return {
            "steps": steps,
            "layers": list(self._layers),
            "per_head": per_head,
            "mean": mean,
            "mean_per_step": mean_per_step,
            "overall": _mean([v for row in mean for v in row if v is not None]),
        }

    def save_json(self, path: str | Path, summary: dict | None = None) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary or self.summary(), indent=1))
        return path

    def save_heatmap(self, path: str | Path, summary: dict | None = None, title: str = "") -> Path:
        """PNG of the head-mean density, layers (rows) x steps (columns)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        summary = summary or self.summary()
        grid = [[math.nan if v is None else v for v in row] for row in summary["mean"]]
        data = torch.tensor(grid, dtype=torch.float64).T.numpy() if grid else torch.zeros(0, 0).numpy()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        n_layers, n_steps = (data.shape if data.size else (1, 1))
        fig, ax = plt.subplots(figsize=(max(5.0, 0.2 * n_steps + 2.5), max(3.0, 0.18 * n_layers + 1.5)))
        image = ax.imshow(data, aspect="auto", origin="lower", cmap="viridis", vmin=0.0, vmax=1.0,
                          interpolation="nearest")
        ax.set_xlabel("denoising step")
        ax.set_ylabel("layer (self-attention)")
        if summary["steps"]:
            ax.set_xticks(range(n_steps), [str(s) for s in summary["steps"]], fontsize=6)
        if summary["layers"]:
            labels = [name.removeprefix("blocks.") for name in summary["layers"]]
            ax.set_yticks(range(n_layers), labels, fontsize=6)
        ax.set_title(title or f"block density, head mean (overall {summary['overall']:.3f})", fontsize=9)
        fig.colorbar(image, ax=ax, label="density")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan
