"""Training data: precomputed Wan latents + UMT5 text embeddings (shards) or a synthetic stand-in."""

from .batching import collate_samples
from .sampler import DeterministicBatchSampler
from .shards import LatentShardDataset, ShardWriter
from .synthetic import SyntheticLatentDataset

__all__ = [
    "collate_samples",
    "DeterministicBatchSampler",
    "LatentShardDataset",
    "ShardWriter",
    "SyntheticLatentDataset",
    "build_dataset",
]


def build_dataset(cfg):
    """The dataset named by a `DataConfig`."""
    if cfg.source == "synthetic":
        s = cfg.synthetic
        return SyntheticLatentDataset(
            num_samples=s.num_samples, latent_shape=(s.latent_channels, s.latent_frames, s.latent_height,
                                                     s.latent_width),
            text_tokens=s.text_tokens, text_dim=s.text_dim, seed=s.seed,
        )
    if cfg.source == "world":
        from sparge_pipelines.world import SpargeWorld, WorldSize

        w = cfg.world
        return SpargeWorld(WorldSize(*w.sizes[0]), split=w.split, seed=w.seed)
    return LatentShardDataset(cfg.path)
