"""sparge-pipelines: SpargeAttention2 for diffusers Wan2.1 pipelines."""
from ._version import __version__

__all__ = ["__version__"]
