"""sparge-train: velocity-distillation fine-tuning with DeepSpeed ZeRO."""
from ._version import __version__

__all__ = ["__version__"]
