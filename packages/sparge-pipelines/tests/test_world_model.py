"""The world model's sampler and the attention-mass probe, on the CPU."""

from __future__ import annotations

import math

import pytest
import torch

from sparge_kernels import predict_block_mask
from sparge_pipelines.attention_mass import AttentionMassProbe, block_attention_mass, mask_recall, top_share
from sparge_pipelines.model_source import WORLD_WEIGHTS_DIR, shipped_world_models
from sparge_pipelines.world import SpargeWorld, WorldSize
from sparge_pipelines.world.model import WORLD_TRANSFORMER_CONFIG, load_world_transformer, new_world_transformer
from sparge_pipelines.world.sampler import SamplerConfig, sample_noise, sample_videos, sigma_schedule


def _naive_block_mass(q, k, bq, bk):
    """(B, H, Nq, Nk) from the full float64 attention matrix."""
    qh, kh = q.transpose(1, 2).double(), k.transpose(1, 2).double()
    p = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    lq, lk = p.shape[-2:]
    nq, nk = math.ceil(lq / bq), math.ceil(lk / bk)
    out = torch.zeros(*p.shape[:2], nq, nk, dtype=torch.float64)
    for i in range(nq):
        for j in range(nk):
            out[:, :, i, j] = p[:, :, i * bq:(i + 1) * bq, j * bk:(j + 1) * bk].sum(-1).mean(-1)
    return out


@pytest.mark.parametrize("lq,lk,chunk", [(300, 260, 2048), (256, 200, 128)])
def test_block_attention_mass_matches_the_dense_attention(lq, lk, chunk):
    g = torch.Generator().manual_seed(lq)
    q = torch.randn(2, lq, 3, 16, generator=g)
    k = torch.randn(2, lk, 3, 16, generator=g) * 2
    mass = block_attention_mass(q, k, block_q=128, block_k=64, chunk=chunk)
    ref = _naive_block_mass(q, k, 128, 64)
    assert mass.shape == ref.shape == (2, 3, math.ceil(lq / 128), math.ceil(lk / 64))
    torch.testing.assert_close(mass.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mass.sum(-1), torch.ones_like(mass.sum(-1)), rtol=1e-5, atol=1e-5)


def test_top_share_and_recall_on_known_masses():
    uniform = torch.full((1, 2, 3, 20), 1 / 20)
    torch.testing.assert_close(top_share(uniform, 0.05), torch.full((1, 2), 1 / 20))
    torch.testing.assert_close(top_share(uniform, 0.2), torch.full((1, 2), 4 / 20))
    peaked = torch.zeros(1, 1, 2, 20)
    peaked[..., 3] = 0.7
    peaked[..., 5:] = 0.3 / 15
    torch.testing.assert_close(top_share(peaked, 0.05), torch.full((1, 1), 0.7))
    keep = torch.zeros(1, 1, 2, 20, dtype=torch.bool)
    keep[..., 3] = True
    torch.testing.assert_close(mask_recall(peaked, keep), torch.full((1, 1), 0.7))
    torch.testing.assert_close(mask_recall(peaked, torch.ones_like(keep)), torch.ones(1, 1))


def test_probe_observes_without_changing_the_output():
    model = new_world_transformer(seed=0).eval()
    size = WorldSize(2, 32, 32)  # 2 x 8 x 8 = 128 tokens: 1 query block, 2 key blocks
    world = SpargeWorld(size)
    x = world.videos([0, 1])
    text = world.text([0, 1])
    t = torch.tensor([500.0, 700.0])
    with torch.no_grad():
        plain = model(x, t, text, return_dict=False)[0]
        masks = {"topk": lambda q, k: predict_block_mask(q, k, topk=0.5, topp=0.0, layout="NHD")}
        with AttentionMassProbe(model, masks=masks) as probe:
            probed = model(x, t, text, return_dict=False)[0]
        after = model(x, t, text, return_dict=False)[0]
    torch.testing.assert_close(probed, plain)
    torch.testing.assert_close(after, plain)
    res = probe.results()
    assert set(res) == {f"blocks.{i}" for i in range(WORLD_TRANSFORMER_CONFIG["num_layers"])} | {"mean"}
    for row in res.values():
        assert 0.5 - 1e-6 <= row["top0.05"] <= 1.0  # one of two key blocks holds at least half the mass
        assert row["topk.density"] == pytest.approx(0.5)
        assert row["top0.05"] == pytest.approx(row["topk.recall"], abs=1e-5)  # topk 0.5 keeps the larger block


def test_sigma_schedule_runs_from_one_to_zero_and_shifts_to_high_noise():
    plain = sigma_schedule(SamplerConfig(steps=10, shift=1.0))
    shifted = sigma_schedule(SamplerConfig(steps=10, shift=3.0))
    assert plain[0] == shifted[0] == 1.0 and plain[-1] == shifted[-1] == 0.0
    assert bool((plain.diff() < 0).all()) and bool((shifted[1:-1] > plain[1:-1]).all())


class _OracleVelocity(torch.nn.Module):
    """Predicts the exact flow velocity towards a known x0: v = (x_σ − x0) / σ."""

    def __init__(self, x0: torch.Tensor):
        super().__init__()
        self.patch_embedding = torch.nn.Conv3d(3, 1, 1)
        self.x0 = x0
        self.texts: list[torch.Tensor] = []

    def forward(self, x, t, text, return_dict=False):
        self.texts.append(text)
        sigma = (t / 1000.0).view(-1, 1, 1, 1, 1)
        return ((x - self.x0.repeat(x.shape[0] // self.x0.shape[0], 1, 1, 1, 1)) / sigma,)


def test_sampler_integrates_an_exact_velocity_to_its_target():
    size = WorldSize(2, 16, 16)
    world = SpargeWorld(size)
    x0 = world.videos([3, 4]) * 0.9  # inside (-1, 1): the final clamp changes nothing
    oracle = _OracleVelocity(x0)
    noise = sample_noise([1, 2], size)
    out = sample_videos(oracle, world.captions([3, 4]), noise, SamplerConfig(steps=7, guidance=3.0))
    torch.testing.assert_close(out, x0, rtol=1e-4, atol=1e-4)
    # CFG: conditional and null (all-zero) captions in one batch
    assert oracle.texts[0].shape[0] == 4 and not oracle.texts[0][2:].any() and oracle.texts[0][:2].any()


def test_sample_noise_is_per_seed_and_device_independent():
    size = WorldSize(2, 8, 8)
    a = sample_noise([5, 6], size)
    b = sample_noise([6], size)
    torch.testing.assert_close(a[1:], b)
    assert not torch.equal(a[0], a[1])


def test_sampler_rejects_bad_arguments():
    with pytest.raises(ValueError, match="steps"):
        SamplerConfig(steps=0)
    with pytest.raises(ValueError, match="guidance"):
        SamplerConfig(guidance=-1.0)
    oracle = _OracleVelocity(torch.zeros(1, 3, 2, 8, 8))
    with pytest.raises(ValueError, match="captions"):
        sample_videos(oracle, SpargeWorld().captions([0, 1]), sample_noise([0], WorldSize(2, 8, 8)))


def test_load_world_transformer_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a shipped world model"):
        load_world_transformer(tmp_path / "nothing")


def test_load_world_transformer_round_trips_a_saved_model(tmp_path):
    model = new_world_transformer(seed=3)
    model.save_pretrained(tmp_path / "m")
    loaded = load_world_transformer(tmp_path / "m")
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert not any(p.requires_grad for p in loaded.parameters())


def test_shipped_weights_fit_the_repository_budget():
    """Issue 11: every shipped weight file <= 15 MB and all of them together <= 32 MB (the device tree's cap)."""
    files = sorted(WORLD_WEIGHTS_DIR.glob("*/*.safetensors"))
    assert files and all(f.stat().st_size <= 15 * 2**20 for f in files), [(f.name, f.stat().st_size) for f in files]
    assert sum(f.stat().st_size for f in files) <= 32 * 2**20


@pytest.mark.skipif("student" not in shipped_world_models(), reason="no shipped world student")
def test_shipped_student_loads_offline_as_the_teachers_architecture():
    student, teacher = load_world_transformer("student"), load_world_transformer("teacher")
    arch = [{k: v for k, v in m.config.items() if k != "_name_or_path"} for m in (student, teacher)]
    assert arch[0] == arch[1]
    pairs = zip(student.state_dict().items(), teacher.state_dict().items(), strict=True)
    assert any(not torch.equal(a, b) for (_, a), (_, b) in pairs)  # distilled weights, not the teacher's copy
    assert all(torch.isfinite(p).all() for p in student.parameters())
