"""sparge-pipelines: SpargeAttention2 for diffusers Wan2.1 pipelines.

The public names are imported on first use (PEP 562), so `sparge-generate --help` and argument errors do not
pay for importing torch and diffusers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from .apply import apply_sparge, remove_sparge, sparge_state
    from .config import SpargeConfig
    from .parallel import enable_context_parallel
    from .processor import SpargeWanAttnProcessor
    from .state import SpargeState
    from .stats import DensityStats

_LAZY = {
    "apply_sparge": "apply",
    "remove_sparge": "apply",
    "sparge_state": "apply",
    "SpargeConfig": "config",
    "enable_context_parallel": "parallel",
    "SpargeWanAttnProcessor": "processor",
    "SpargeState": "state",
    "DensityStats": "stats",
}

__all__ = [
    "DensityStats",
    "SpargeConfig",
    "SpargeState",
    "SpargeWanAttnProcessor",
    "apply_sparge",
    "enable_context_parallel",
    "remove_sparge",
    "sparge_state",
    "__version__",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sparge_pipelines' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
