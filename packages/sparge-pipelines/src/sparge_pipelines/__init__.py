"""sparge-pipelines: SpargeAttention2 for diffusers Wan2.1 pipelines."""

from ._version import __version__
from .apply import apply_sparge, remove_sparge, sparge_state
from .config import SpargeConfig
from .processor import SpargeWanAttnProcessor
from .state import SpargeState
from .stats import DensityStats

__all__ = [
    "DensityStats",
    "SpargeConfig",
    "SpargeState",
    "SpargeWanAttnProcessor",
    "apply_sparge",
    "remove_sparge",
    "sparge_state",
    "__version__",
]
