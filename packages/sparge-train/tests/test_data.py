"""Data: deterministic sharded sampling, latent shards, synthetic data, collate, and `sparge-train prepare`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sparge_train.data import (
    DeterministicBatchSampler,
    LatentShardDataset,
    ShardWriter,
    SyntheticLatentDataset,
    collate_samples,
)


def _global_view(n, gbs, mb, world, seed=0):
    """{step: (indices in global order, positions)} assembled from every rank's micro-batches."""
    out = {}
    samplers = [DeterministicBatchSampler(n, global_batch_size=gbs, micro_batch_size=mb, world_size=world,
                                          rank=r, seed=seed) for r in range(world)]
    for step in range(7):
        slots = {}
        for s in samplers:
            for micro in s.micro_batches(step):
                for idx, pos in zip(micro.indices, micro.positions, strict=True):
                    slots[pos] = idx
        out[step] = [slots[p] for p in sorted(slots)], sorted(slots)
    return out


@pytest.mark.parametrize(("mb", "world"), [(1, 1), (2, 2), (1, 4), (4, 1), (2, 1)])
def test_same_global_batch_for_any_layout(mb, world):
    reference = _global_view(30, 4, 4, 1)
    assert _global_view(30, 4, mb, world) == reference
    for step, (indices, positions) in reference.items():
        assert positions == list(range(step * 4, step * 4 + 4))
        assert len(set(indices)) == 4


def test_epochs_cover_the_data_and_reshuffle():
    s = DeterministicBatchSampler(12, global_batch_size=4, micro_batch_size=2, world_size=2, rank=0, seed=3)
    assert s.steps_per_epoch == 3 and s.grad_accum == 1
    epoch0 = sum((s.global_batch(i) for i in range(3)), [])
    epoch1 = sum((s.global_batch(i) for i in range(3, 6)), [])
    assert sorted(epoch0) == sorted(epoch1) == list(range(12))
    assert epoch0 != epoch1
    # a fresh sampler (a resumed process) gives the same batches
    fresh = DeterministicBatchSampler(12, global_batch_size=4, micro_batch_size=2, world_size=2, rank=0, seed=3)
    assert fresh.global_batch(4) == s.global_batch(4)
    ordered = DeterministicBatchSampler(12, global_batch_size=4, micro_batch_size=4, world_size=1, rank=0, seed=3,
                                        shuffle=False)
    assert ordered.global_batch(1) == [4, 5, 6, 7]


def test_sampler_errors():
    with pytest.raises(ValueError, match="num_samples"):
        DeterministicBatchSampler(3, global_batch_size=4, micro_batch_size=1, world_size=1, rank=0, seed=0)
    with pytest.raises(ValueError, match="global_batch_size"):
        DeterministicBatchSampler(30, global_batch_size=6, micro_batch_size=4, world_size=1, rank=0, seed=0)
    with pytest.raises(ValueError, match="rank"):
        DeterministicBatchSampler(30, global_batch_size=4, micro_batch_size=1, world_size=2, rank=2, seed=0)


def test_synthetic_is_deterministic_per_index():
    a = SyntheticLatentDataset(5, (4, 3, 8, 8), text_tokens=6, text_dim=16, seed=1)
    b = SyntheticLatentDataset(5, (4, 3, 8, 8), text_tokens=6, text_dim=16, seed=1)
    torch.testing.assert_close(a[2]["latents"], b[2]["latents"], rtol=0, atol=0)
    assert not torch.equal(a[2]["latents"], a[3]["latents"])
    assert a[0]["latents"].shape == (4, 3, 8, 8) and a[0]["text_embeds"].shape == (6, 16)
    with pytest.raises(IndexError):
        a[5]


def test_collate_pads_text_with_zeros():
    samples = [{"latents": torch.randn(4, 2, 4, 4), "text_embeds": torch.randn(n, 8)} for n in (3, 7)]
    batch = collate_samples(samples, text_len=5)
    assert batch["latents"].shape == (2, 4, 2, 4, 4) and batch["text_embeds"].shape == (2, 5, 8)
    torch.testing.assert_close(batch["text_embeds"][0, :3], samples[0]["text_embeds"])
    assert bool((batch["text_embeds"][0, 3:] == 0).all())
    torch.testing.assert_close(batch["text_embeds"][1], samples[1]["text_embeds"][:5])
    with pytest.raises(ValueError, match="share a shape"):
        collate_samples([samples[0], {"latents": torch.randn(4, 3, 4, 4), "text_embeds": torch.randn(2, 8)}], 5)


def test_shards_round_trip(tmp_path):
    writer = ShardWriter(tmp_path / "shards", samples_per_shard=2, extra_index={"note": "test"})
    originals = []
    for i in range(5):
        lat, txt = torch.randn(4, 2, 4, 4), torch.randn(3 + i, 8)
        writer.add(lat, txt, caption=f"caption {i}", source=f"v{i}.mp4")
        originals.append((lat, txt))
    writer.close()
    index = json.loads((tmp_path / "shards" / "index.json").read_text())
    assert index["num_samples"] == 5 and [s["num_samples"] for s in index["shards"]] == [2, 2, 1]
    ds = LatentShardDataset(tmp_path / "shards")
    assert len(ds) == 5
    for i, (lat, txt) in enumerate(originals):
        torch.testing.assert_close(ds[i]["latents"], lat, rtol=0, atol=0)
        torch.testing.assert_close(ds[i]["text_embeds"], txt.bfloat16(), rtol=0, atol=0)
        assert ds.caption(i) == f"caption {i}"
    with pytest.raises(FileExistsError):
        ShardWriter(tmp_path / "shards")
    with pytest.raises(ValueError, match="latents: expected"):
        ShardWriter(tmp_path / "other").add(torch.randn(4, 4, 4), torch.randn(2, 8))


# --------------------------------------------------------------------------------------------------------------
# sparge-train prepare with a tiny Wan VAE + UMT5 (random weights, built offline)


def write_video(path, frames, seed):
    import imageio.v3 as iio

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(1, 48, 64, 3))
    video = np.clip(base + rng.integers(-20, 20, size=(frames, 48, 64, 3)), 0, 255).astype(np.uint8)
    iio.imwrite(path, video, extension=path.suffix, **({"fps": 8} if path.suffix == ".mp4" else {"loop": 0}))


def test_prepare_encodes_like_the_wan_pipeline(tmp_path, tiny_wan_components):
    from sparge_train.cli import main
    from sparge_train.data.prepare import load_video
    from sparge_train.presets import VideoShape

    model_dir, vae, pipe = tiny_wan_components
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "a.mp4", 12, 0)
    write_video(videos / "b.gif", 9, 1)
    write_video(videos / "short.gif", 5, 2)  # fewer than 9 frames: skipped
    (videos / "b.txt").write_text("a dog runs on the beach")
    (videos / "short.txt").write_text("a cat")
    captions = tmp_path / "captions.jsonl"
    captions.write_text(json.dumps({"file": "a.mp4", "caption": "a red cat jumps in the grass"}) + "\n")

    out = tmp_path / "shards"
    assert main(["prepare", "--videos", str(videos), "--captions", str(captions), "--model", str(model_dir),
                 "--out", str(out), "--height", "32", "--width", "48", "--frames", "9", "--device", "cpu"]) == 0
    ds = LatentShardDataset(out)
    assert len(ds) == 2 and ds.index["latent_shape"] == [4, 3, 4, 6]
    assert [ds.caption(i) for i in range(2)] == ["a red cat jumps in the grass", "a dog runs on the beach"]

    # latents: VAE posterior mean, normalised with the VAE's latents_mean / latents_std
    video = load_video(videos / "a.mp4", VideoShape(9, 32, 48))
    assert video.shape == (3, 9, 32, 48) and float(video.min()) >= -1 and float(video.max()) <= 1
    with torch.no_grad():
        z = vae.encode(video[None]).latent_dist.mode()
    mean = torch.tensor([0.1, -0.2, 0.3, 0.0]).view(1, 4, 1, 1, 1)
    std = torch.tensor([2.0, 0.5, 1.0, 1.5]).view(1, 4, 1, 1, 1)
    torch.testing.assert_close(ds[0]["latents"], ((z - mean) / std)[0], rtol=1e-5, atol=1e-5)

    # text: what WanPipeline feeds its transformer, up to the prompt's length (the rest are zeros)
    with torch.no_grad():
        ref, _ = pipe.encode_prompt("a red cat jumps in the grass", do_classifier_free_guidance=False,
                                    max_sequence_length=512, device=torch.device("cpu"))
    text = ds[0]["text_embeds"].float()
    n = text.shape[0]
    assert n == 8  # 7 words + </s>
    torch.testing.assert_close(text, ref[0, :n].float(), rtol=1e-2, atol=1e-2)  # stored as bfloat16
    assert bool((ref[0, n:] == 0).all())


def test_prepare_errors(tmp_path, tiny_wan_components):
    from sparge_train.data.prepare import PrepareOptions, prepare_shards, read_captions

    model_dir, _, _ = tiny_wan_components
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "x.gif", 9, 0)
    with pytest.raises(FileNotFoundError, match="captions: no caption for x.gif"):
        read_captions([videos / "x.gif"], videos, None)
    with pytest.raises(ValueError, match="frames: Wan needs 4k\\+1 frames"):
        prepare_shards(PrepareOptions(videos=videos, model=model_dir, out=tmp_path / "o", frames=8))
    with pytest.raises(FileNotFoundError, match="model: .* has no vae/"):
        prepare_shards(PrepareOptions(videos=videos, model=tmp_path, out=tmp_path / "o", frames=9, height=32,
                                      width=48))
