"""Exponential moving average of the student's weights, kept in fp32 beside the (16-bit) training module.

Owns its cadence: `update()` after every optimizer step, `save()`/`load()` beside each checkpoint, and
`state_dict()` for the export. Stage <= 2 only (whole parameters on every rank; config validation says so).
"""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["EMA", "EMA_FILE"]

EMA_FILE = "ema.safetensors"


class EMA:
    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.params = {name: p for name, p in module.named_parameters() if p.requires_grad}
        self.shadow = {name: p.detach().float().clone() for name, p in self.params.items()}
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        # Warm-up of the decay (as in timm/diffusers EMA): early averages do not drag the random init along.
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for name, p in self.params.items():
            self.shadow[name].lerp_(p.detach().float(), 1.0 - decay)

    def state_dict(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        return {k: (v.to(dtype) if dtype else v).cpu().contiguous() for k, v in self.shadow.items()}

    def save(self, checkpoint_dir: Path) -> None:
        from safetensors.torch import save_file

        tmp = checkpoint_dir / f".{EMA_FILE}.tmp"
        save_file(self.state_dict(), str(tmp), metadata={"updates": str(self.updates)})
        tmp.replace(checkpoint_dir / EMA_FILE)

    def load(self, checkpoint_dir: Path) -> None:
        from safetensors import safe_open

        path = checkpoint_dir / EMA_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the checkpoint has no EMA weights but train.ema_decay > 0")
        with safe_open(str(path), framework="pt") as f:
            self.updates = int(f.metadata().get("updates", 0))
            for name in self.shadow:
                self.shadow[name].copy_(f.get_tensor(name))
