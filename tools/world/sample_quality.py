"""Sample-based quality of world models against the dense teacher: the same captions and noises for every model,
then caption accuracy (the world classifier), PSNR/SSIM vs the teacher's samples, and KID/Frechet distance of
classifier features against real held-out videos. Shared by gate_teacher.py, ablation.py and demo.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from sparge_pipelines import SpargeConfig, SpargeState, apply_sparge, remove_sparge
from sparge_pipelines.world import SpargeWorld, WorldSize
from sparge_pipelines.world.classifier import caption_accuracy, features
from sparge_pipelines.world.metrics import frechet_distance, kid, psnr_ssim
from sparge_pipelines.world.sampler import SamplerConfig, sample_noise, sample_videos


@dataclass
class SampleSet:
    """Held-out captions, their real videos and one starting noise each (seeded by the index)."""

    size: WorldSize
    count: int
    device: str
    sampler: SamplerConfig = SamplerConfig()
    batch: int = 16  # videos sampled together

    def __post_init__(self) -> None:
        world = SpargeWorld(self.size, split="heldout")
        self.indices = list(range(100_000, 100_000 + self.count))
        self.captions = world.captions(self.indices)
        self.real = world.videos(self.indices, device=self.device)
        self.noise = sample_noise([30_000 + i for i in self.indices], self.size, device=self.device)

    @property
    def batches(self) -> int:
        return -(-self.count // self.batch)

    def generate(self, model, on_step: Callable[[int], None] | None = None) -> torch.Tensor:
        """Every video of the set from its noise; `on_step(i)` after each sampler step of each batch."""
        b = self.batch
        out = [sample_videos(model, self.captions[i:i + b], self.noise[i:i + b], self.sampler, on_step=on_step)
               for i in range(0, self.count, b)]
        return torch.cat(out)


def generate_with_sparge(samples: SampleSet, model, config: SpargeConfig | None,
                         on_step: Callable[[int], None] | None = None) -> tuple[torch.Tensor, SpargeState | None]:
    """Every video of `samples` from `model` with sparge attention `config` installed for the run (None: the model
    as it is), and the run's sparge state (its stats and timer, as `config` opted in)."""
    if config is None:
        return samples.generate(model, on_step), None
    state = apply_sparge(model, config)
    try:
        return samples.generate(model, on_step), state
    finally:
        remove_sparge(model)


def quality(classifier, samples: SampleSet, videos: torch.Tensor, reference: torch.Tensor | None = None) -> dict:
    """Caption accuracy, KID/Frechet vs the real videos, and PSNR/SSIM vs `reference` (the teacher's samples)."""
    out = {"accuracy": caption_accuracy(classifier, videos, samples.captions)}
    fa, fb = features(classifier, videos).cpu().numpy(), features(classifier, samples.real).cpu().numpy()
    mean, std = kid(fa, fb, subset_size=min(len(fa), 1000))
    out.update({"kid": mean, "kid_std": std, "frechet": frechet_distance(fa, fb)})
    if reference is not None:
        psnr, ssim = psnr_ssim(videos, reference)
        out.update({"psnr": float(psnr.mean()), "ssim": float(ssim.mean())})
    return out
