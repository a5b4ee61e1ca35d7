"""Quality metrics for the sparge world that need no downloaded network (issue 11, section 3).

- `velocity_rel_mse`: the distillation target itself, ||v_s - v_T||^2 / ||v_T||^2 per sample;
- `psnr_ssim`: same-noise samples of a student vs its teacher, frame by frame (scikit-image: the optional
  ``eval`` extra, ``pip install "sparge-pipelines[eval]"``);
- `kid`, `frechet_distance`: distances between feature sets (the world classifier's `features`, an FVD stand-in
  trained on the generator's labels only, so it does not favour distillation);
- `bootstrap_ci`: percentile bootstrap confidence intervals over seeds / samples.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["bootstrap_ci", "frechet_distance", "kid", "psnr_ssim", "velocity_rel_mse"]

ArrayLike = torch.Tensor | np.ndarray | Sequence[float]


def velocity_rel_mse(v_student: torch.Tensor, v_teacher: torch.Tensor) -> torch.Tensor:
    """(B,) float64 ||v_s - v_T||^2 / ||v_T||^2 per sample: scale-free, so sigma bins and sizes compare."""
    if not isinstance(v_student, torch.Tensor) or not isinstance(v_teacher, torch.Tensor):
        raise TypeError("v_student, v_teacher: expected tensors")
    if v_student.shape != v_teacher.shape or v_teacher.ndim < 1:
        raise ValueError(f"v_student: shape {tuple(v_student.shape)} must equal v_teacher's {tuple(v_teacher.shape)}")
    s, t = v_student.detach().double().flatten(1), v_teacher.detach().double().flatten(1)
    norm = (t * t).sum(dim=1)
    if bool((norm == 0).any()):
        raise ValueError("v_teacher: a sample has zero norm; the relative error is undefined")
    return ((s - t) ** 2).sum(dim=1) / norm


def _skimage_metrics() -> Any:
    try:
        from skimage import metrics
    except ImportError as e:  # pragma: no cover - depends on the installation
        raise ImportError('psnr_ssim needs scikit-image: pip install "sparge-pipelines[eval]" '
                          "(or pip install scikit-image)") from e
    return metrics


def _video_array(videos: torch.Tensor | np.ndarray, name: str) -> np.ndarray:
    arr = videos.detach().cpu().double().numpy() if isinstance(videos, torch.Tensor) else np.asarray(videos, float)
    if arr.ndim != 5 or arr.shape[1] != 3:
        raise ValueError(f"{name}: expected (B, 3, F, H, W) videos in [-1, 1], got shape {arr.shape}")
    return arr


def psnr_ssim(videos_a: torch.Tensor | np.ndarray, videos_b: torch.Tensor | np.ndarray, *,
              psnr_cap: float | None = 100.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-video PSNR (dB) and SSIM of two batches of (B, 3, F, H, W) videos in [-1, 1]: per frame, averaged over
    frames. Returns two (B,) float64 arrays.

    Both are computed on the videos mapped to [0, 1] ((x + 1) / 2) with data_range=1: PSNR does not change under
    that map (it is the same as data_range=2 on [-1, 1]), but SSIM's luminance term is not shift-invariant and
    assumes non-negative intensities, so SSIM on the raw [-1, 1] values would not be the standard SSIM. SSIM uses
    Wang et al.'s settings (11x11 Gaussian window, sigma 1.5, population covariance), over the RGB channels
    (channel_axis). Identical frames have infinite PSNR; `psnr_cap` (default 100 dB, None: no cap) caps each
    frame's PSNR so that means and confidence intervals stay finite.
    """
    metrics = _skimage_metrics()
    a, b = _video_array(videos_a, "videos_a"), _video_array(videos_b, "videos_b")
    if a.shape != b.shape:
        raise ValueError(f"videos_a: shape {a.shape} must equal videos_b's {b.shape}")
    if min(a.shape[3:]) < 11:
        raise ValueError(f"videos_a: frames of {a.shape[3]}x{a.shape[4]} are smaller than SSIM's 11x11 window")
    a = np.clip((a + 1.0) / 2.0, 0.0, 1.0).transpose(0, 2, 3, 4, 1)  # (B, F, H, W, 3)
    b = np.clip((b + 1.0) / 2.0, 0.0, 1.0).transpose(0, 2, 3, 4, 1)
    psnr = np.empty(a.shape[:2])
    ssim = np.empty(a.shape[:2])
    for i in range(a.shape[0]):
        for f in range(a.shape[1]):
            if np.array_equal(a[i, f], b[i, f]):
                psnr[i, f] = np.inf  # skimage would divide by zero (and warn)
            else:
                psnr[i, f] = metrics.peak_signal_noise_ratio(a[i, f], b[i, f], data_range=1.0)
            ssim[i, f] = metrics.structural_similarity(a[i, f], b[i, f], data_range=1.0, channel_axis=-1,
                                                       gaussian_weights=True, sigma=1.5,
                                                       use_sample_covariance=False)
    if psnr_cap is not None:
        psnr = np.minimum(psnr, psnr_cap)
    return psnr.mean(axis=1), ssim.mean(axis=1)


def _features(x: ArrayLike, name: str) -> np.ndarray:
    arr = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] < 2:
        raise ValueError(f"{name}: expected (N >= 2, D) features, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: features contain NaN or inf")
    return arr


def kid(features_a: ArrayLike, features_b: ArrayLike, *, subsets: int = 100, subset_size: int = 1000,
        degree: int = 3, coef0: float = 1.0, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al. 2018) on any features: the unbiased MMD^2 with the polynomial
    kernel k(x, y) = (x.y / D + coef0)^degree, averaged over `subsets` random subsets of min(subset_size, N_a,
    N_b) samples of each set (drawn without replacement, independently per set). Returns (mean, std over subsets).
    Unbiased: a set against another sample of its own distribution scores ~0 (either sign), not a positive bias.
    A set against itself shares samples between the two subsets, which biases it slightly below 0 (for a zero
    reference compare two disjoint halves of the real set).
    """
    a, b = _features(features_a, "features_a"), _features(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"features_a: dimension {a.shape[1]} differs from features_b's {b.shape[1]}")
    if subsets < 1:
        raise ValueError(f"subsets: must be >= 1, got {subsets}")
    if subset_size < 2:
        raise ValueError(f"subset_size: must be >= 2, got {subset_size}")
    m = min(subset_size, a.shape[0], b.shape[0])
    d = a.shape[1]
    rng = np.random.default_rng(seed)
    values = np.empty(subsets)
    for s in range(subsets):
        x = a[rng.choice(a.shape[0], m, replace=False)]
        y = b[rng.choice(b.shape[0], m, replace=False)]
        kxx = (x @ x.T / d + coef0) ** degree
        kyy = (y @ y.T / d + coef0) ** degree
        kxy = (x @ y.T / d + coef0) ** degree
        values[s] = ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                     - 2.0 * kxy.mean())
    return float(values.mean()), float(values.std(ddof=1)) if subsets > 1 else 0.0


def _trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """Tr(sqrtm(s1 @ s2)): scipy.linalg.sqrtm when scipy is installed (as the reference FID code does), else the
    eigenvalues of sqrt(s1) s2 sqrt(s1) (symmetric PSD: the same trace, numpy only)."""
    try:
        from scipy import linalg
    except ImportError:
        w, v = np.linalg.eigh(s1)
        root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        return float(np.sqrt(np.clip(np.linalg.eigvalsh(root @ s2 @ root), 0, None)).sum())
    # Fewer samples than feature dimensions (the CPU demo's few videos) make the product singular by construction:
    # scipy's warning about it would only be noise in the demo's output; non-finite results are regularised below.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():  # singular product: regularise as the reference implementation does
            offset = np.eye(s1.shape[0]) * 1e-6
            covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    return float(np.real(np.trace(covmean)))


def frechet_distance(features_a: ArrayLike, features_b: ArrayLike) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (as FID / FVD):
    ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)). Biased for small N (unlike `kid`): compare values at
    equal N only; N should exceed the feature dimension for a full-rank covariance."""
    a, b = _features(features_a, "features_a"), _features(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"features_a: dimension {a.shape[1]} differs from features_b's {b.shape[1]}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    value = float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2.0 * _trace_sqrt_product(s_a, s_b))
    return max(value, 0.0)  # rounding can leave -1e-12 for identical sets


def bootstrap_ci(values: ArrayLike, n: int = 1000, seed: int = 0, *, level: float = 0.95,
                 ) -> tuple[float, float, float]:
    """(mean, low, high): the mean of `values` (one per seed / sample) and its percentile-bootstrap confidence
    interval at `level` from `n` resamples with replacement."""
    arr = values.detach().cpu().double().numpy() if isinstance(values, torch.Tensor) else np.asarray(values, float)
    arr = arr.reshape(-1)
    if arr.size < 1:
        raise ValueError("values: empty")
    if not np.isfinite(arr).all():
        raise ValueError("values: contain NaN or inf (cap PSNR with psnr_cap)")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: must be a positive int, got {n!r}")
    if not 0 < level < 1:
        raise ValueError(f"level: must be in (0, 1), got {level!r}")
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, arr.size, size=(n, arr.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(arr.mean()), float(low), float(high)
