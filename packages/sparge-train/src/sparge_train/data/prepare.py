"""`sparge-train prepare`: videos + captions → latent shards, with the Wan VAE and UMT5 text encoder.

Videos are read with imageio, resized (shorter side) and center-cropped to height × width, the first
`frames` frames (every `frame_stride`-th) are kept. Latents are the VAE posterior mean normalised as WanPipeline
expects, (z − latents_mean) / latents_std; text embeddings follow WanPipeline._get_t5_prompt_embeds (cleaned
prompt, 512 tokens, kept up to the prompt's length; the collate step zero-pads them back).
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..presets import VideoShape, latent_shape
from .shards import ShardWriter

__all__ = ["PrepareOptions", "find_videos", "read_captions", "load_video", "prepare_shards"]

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".gif")


@dataclass
class PrepareOptions:
    videos: Path
    model: Path  # a Wan diffusers pipeline folder (vae/, text_encoder/, tokenizer/)
    out: Path
    captions: Path | None = None  # .jsonl {"file","caption"}, .csv (file,caption), or a folder of <stem>.txt
    height: int = 480
    width: int = 832
    frames: int = 81
    frame_stride: int = 1
    max_text_len: int = 512
    samples_per_shard: int = 64
    device: str = "auto"
    sample_posterior: bool = False  # False: posterior mean (deterministic)
    seed: int = 0


def find_videos(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"videos: {folder} is not a directory")
    videos = sorted(p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
    if not videos:
        raise FileNotFoundError(f"videos: no {'/'.join(VIDEO_SUFFIXES)} files under {folder}")
    return videos


def read_captions(videos: list[Path], videos_root: Path, captions: Path | None) -> dict[Path, str]:
    """Caption of each video; a missing caption is an error naming the video."""
    found: dict[str, str] = {}
    if captions is not None and captions.is_file() and captions.suffix == ".jsonl":
        for line_no, line in enumerate(captions.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                row = json.loads(line)
                if "file" not in row or "caption" not in row:
                    raise ValueError(f"captions: {captions}:{line_no} needs keys 'file' and 'caption'")
                found[row["file"]] = row["caption"]
    elif captions is not None and captions.is_file() and captions.suffix == ".csv":
        with open(captions, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                if "file" not in row or "caption" not in row:
                    raise ValueError(f"captions: {captions} needs columns 'file' and 'caption'")
                found[row["file"]] = row["caption"]
    elif captions is not None and not captions.is_dir():
        raise ValueError(f"captions: {captions} must be a .jsonl file, a .csv file or a folder of <video stem>.txt")
    out = {}
    text_dir = captions if captions is not None and captions.is_dir() else None
    for video in videos:
        rel = video.relative_to(videos_root).as_posix()
        if rel in found or video.name in found:
            out[video] = found.get(rel, found.get(video.name))
            continue
        txt = (text_dir / rel).with_suffix(".txt") if text_dir else video.with_suffix(".txt")
        if not txt.is_file():
            raise FileNotFoundError(f"captions: no caption for {rel} (looked for {txt} and in --captions)")
        out[video] = txt.read_text(encoding="utf-8").strip()
    return out


def load_video(path: Path, shape: VideoShape, frame_stride: int = 1) -> torch.Tensor | None:
    """(3, frames, height, width) float32 in [-1, 1], or None when the video is too short."""
    import imageio.v3 as iio

    frames = iio.imread(path, index=None)  # (T, H, W, C) uint8
    if frames.ndim == 3:  # a single image
        frames = frames[None]
    frames = frames[::frame_stride, ..., :3]
    if frames.shape[0] < shape.frames:
        return None
    video = torch.from_numpy(frames[: shape.frames].copy()).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    h, w = video.shape[-2:]
    scale = max(shape.height / h, shape.width / w)
    new_h, new_w = max(shape.height, round(h * scale)), max(shape.width, round(w * scale))
    video = F.interpolate(video, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
    top, left = (new_h - shape.height) // 2, (new_w - shape.width) // 2
    video = video[:, :, top:top + shape.height, left:left + shape.width].clamp_(-1, 1)
    return video.permute(1, 0, 2, 3).contiguous()


class WanEncoders:
    """The Wan VAE and UMT5 text encoder of a diffusers pipeline folder."""

    def __init__(self, model_dir: Path, device: torch.device, max_text_len: int):
        from diffusers import AutoencoderKLWan
        from transformers import AutoTokenizer, UMT5EncoderModel

        for sub in ("vae", "text_encoder", "tokenizer"):
            if not (model_dir / sub).is_dir():
                raise FileNotFoundError(f"model: {model_dir} has no {sub}/ folder (expected a Wan diffusers pipeline)")
        self.device = device
        self.max_text_len = max_text_len
        text_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        self.vae = AutoencoderKLWan.from_pretrained(model_dir, subfolder="vae", torch_dtype=torch.float32).to(device)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, subfolder="tokenizer")
        self.text_encoder = UMT5EncoderModel.from_pretrained(model_dir, subfolder="text_encoder",
                                                             torch_dtype=text_dtype).to(device)
        self.vae.eval().requires_grad_(False)
        self.text_encoder.eval().requires_grad_(False)
        z = self.vae.config.z_dim
        self.latents_mean = torch.tensor(self.vae.config.latents_mean, dtype=torch.float32).view(1, z, 1, 1, 1)
        self.latents_std = torch.tensor(self.vae.config.latents_std, dtype=torch.float32).view(1, z, 1, 1, 1)

    @torch.no_grad()
    def encode_video(self, video: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        dist = self.vae.encode(video[None].to(self.device, torch.float32)).latent_dist
        z = dist.sample(generator) if generator is not None else dist.mode()
        z = z.float().cpu()
        return ((z - self.latents_mean) / self.latents_std)[0]

    @torch.no_grad()
    def encode_text(self, caption: str) -> torch.Tensor:
        from diffusers.pipelines.wan.pipeline_wan import prompt_clean

        tokens = self.tokenizer([prompt_clean(caption)], padding="max_length", max_length=self.max_text_len,
                                truncation=True, add_special_tokens=True, return_attention_mask=True,
                                return_tensors="pt")
        mask = tokens.attention_mask
        n = int(mask.gt(0).sum())
        out = self.text_encoder(tokens.input_ids.to(self.device), mask.to(self.device)).last_hidden_state
        return out[0, :n].float().cpu()


def _iter_encoded(opts: PrepareOptions, encoders: WanEncoders) -> Iterator[tuple[torch.Tensor, torch.Tensor, str, str]]:
    shape = VideoShape(opts.frames, opts.height, opts.width)
    videos = find_videos(opts.videos)
    captions = read_captions(videos, opts.videos, opts.captions)
    generator = torch.Generator(encoders.device).manual_seed(opts.seed) if opts.sample_posterior else None
    for video_path in videos:
        video = load_video(video_path, shape, opts.frame_stride)
        rel = video_path.relative_to(opts.videos).as_posix()
        if video is None:
            log.warning("skipping %s: fewer than %d frames (stride %d)", rel, opts.frames, opts.frame_stride)
            continue
        yield encoders.encode_video(video, generator), encoders.encode_text(captions[video_path]), \
            captions[video_path], rel


def prepare_shards(opts: PrepareOptions) -> Path:
    """Encode every video under opts.videos and write shards + index.json to opts.out; returns the index."""
    from tqdm import tqdm

    shape = VideoShape(opts.frames, opts.height, opts.width)
    expected = latent_shape(shape)  # validates frames/height/width
    device = torch.device("cuda" if opts.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if opts.device == "auto" else opts.device))
    encoders = WanEncoders(opts.model, device, opts.max_text_len)
    writer = ShardWriter(opts.out, opts.samples_per_shard, extra_index={
        "video": {"frames": opts.frames, "height": opts.height, "width": opts.width,
                  "frame_stride": opts.frame_stride},
        "latent_shape": [encoders.vae.config.z_dim, *expected],
        "text_dim": int(encoders.text_encoder.config.d_model),
        "model": str(opts.model),
        "latents": "sample" if opts.sample_posterior else "mean",
    })
    for latents, text, caption, rel in tqdm(_iter_encoded(opts, encoders), desc="encoding", unit="video"):
        if tuple(latents.shape[1:]) != expected:
            raise RuntimeError(f"VAE produced latents {tuple(latents.shape)} for {rel}, expected (C, {expected})")
        writer.add(latents, text, caption=caption, source=rel)
    if writer.num_samples + len(writer._pending) == 0:
        raise RuntimeError(f"videos: none of the videos under {opts.videos} had {opts.frames} frames")
    return writer.close()
