"""Flow matching (Wan's convention) and the distillation losses."""

from __future__ import annotations

import math

import pytest
import torch

from sparge_train.config import ConfigError, FlowConfig, LossConfig
from sparge_train.flow_matching import (
    add_noise,
    noise_for_positions,
    sample_sigmas,
    shift_sigmas,
    sigmas_to_timesteps,
    velocity_target,
)
from sparge_train.losses import distillation_objective, flow_matching_loss, velocity_distill_loss


def test_shift_matches_flow_match_scheduler():
    """Same formula as diffusers' FlowMatchEulerDiscreteScheduler(shift=...) applies to its sigmas."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=5.0)
    base = torch.linspace(1.0, 1 / 1000, 1000, dtype=torch.float64)
    torch.testing.assert_close(shift_sigmas(base, 5.0).float(), sched.sigmas.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sigmas_to_timesteps(sched.sigmas, 1000), sched.timesteps, rtol=1e-5, atol=1e-3)


def test_shift_endpoints_and_monotone():
    s = torch.linspace(0, 1, 101, dtype=torch.float64)
    for shift in (1.0, 3.0, 5.0):
        out = shift_sigmas(s, shift)
        assert out[0] == 0 and out[-1] == 1 and bool((out.diff() > 0).all())
    assert bool((shift_sigmas(s[1:-1], 5.0) > s[1:-1]).all())  # shift > 1 adds noise


def test_velocity_is_the_derivative_of_x_t():
    """v = ε − x0 is d x_t / dσ, and an Euler step along it from σ=1 lands on x0 exactly."""
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 3, 8, 8, generator=g), torch.randn(2, 4, 3, 8, 8, generator=g)
    sigma = torch.tensor([0.3, 0.8])
    h = 1e-3
    fd = (add_noise(x0, eps, sigma + h) - add_noise(x0, eps, sigma - h)) / (2 * h)
    torch.testing.assert_close(fd, velocity_target(x0, eps), rtol=1e-3, atol=1e-3)
    x1 = add_noise(x0, eps, torch.ones(2))
    torch.testing.assert_close(x1 - 1.0 * velocity_target(x0, eps), x0)


@pytest.mark.parametrize("sampling", ["uniform", "logit_normal"])
def test_sample_sigmas_range_and_shift(sampling):
    g = torch.Generator().manual_seed(0)
    plain = sample_sigmas(20000, FlowConfig(shift=1.0, timestep_sampling=sampling), g)
    g = torch.Generator().manual_seed(0)
    shifted = sample_sigmas(20000, FlowConfig(shift=5.0, timestep_sampling=sampling), g)
    assert plain.dtype == torch.float32 and float(plain.min()) > 0 and float(plain.max()) <= 1
    torch.testing.assert_close(shifted, shift_sigmas(plain.double(), 5.0).float(), rtol=1e-5, atol=1e-6)
    if sampling == "uniform":
        assert abs(float(plain.mean()) - 0.5) < 0.01
        # P(σ' ≤ 0.5) under shift 5 = P(σ ≤ 1/6)
        assert abs(float((shifted <= 0.5).float().mean()) - 1 / 6) < 0.01


def test_noise_depends_on_position_only():
    cfg = FlowConfig()
    a_noise, a_sig = noise_for_positions([3, 4, 5], (2, 2, 4, 4), cfg, seed=7)
    b_noise, b_sig = noise_for_positions([5], (2, 2, 4, 4), cfg, seed=7)
    torch.testing.assert_close(a_noise[2], b_noise[0], rtol=0, atol=0)
    torch.testing.assert_close(a_sig[2], b_sig[0], rtol=0, atol=0)
    assert not torch.equal(a_noise[0], a_noise[1])
    c_noise, _ = noise_for_positions([5], (2, 2, 4, 4), cfg, seed=8)
    assert not torch.equal(b_noise, c_noise)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_noise_on_the_gpu_depends_on_position_only_and_sigmas_match_the_cpu():
    cfg = FlowConfig(shift=3.0, timestep_sampling="logit_normal")
    a_noise, a_sig = noise_for_positions([3, 4, 5], (2, 2, 4, 4), cfg, seed=7, device="cuda")
    b_noise, b_sig = noise_for_positions([5], (2, 2, 4, 4), cfg, seed=7, device="cuda")
    assert a_noise.is_cuda and torch.equal(a_noise[2], b_noise[0]) and not torch.equal(a_noise[0], a_noise[1])
    _, cpu_sig = noise_for_positions([3, 4, 5], (2, 2, 4, 4), cfg, seed=7)
    assert torch.equal(a_sig, cpu_sig) and torch.equal(a_sig[2], b_sig[0])
    assert abs(float(a_noise.std()) - 1) < 0.3


def test_losses_values_and_gradients():
    g = torch.Generator().manual_seed(1)
    vs = torch.randn(2, 4, 3, 4, 4, generator=g, requires_grad=True)
    vt = torch.randn(2, 4, 3, 4, 4, generator=g)
    target = torch.randn(2, 4, 3, 4, 4, generator=g)
    torch.testing.assert_close(velocity_distill_loss(vs, vt), ((vs - vt) ** 2).mean())
    torch.testing.assert_close(flow_matching_loss(vs, target), ((vs - target) ** 2).mean())
    loss, parts = distillation_objective(LossConfig("mix", 0.25, 2.0), vs, vt, target)
    torch.testing.assert_close(loss, 0.25 * parts["loss_velocity"] + 2.0 * parts["loss_diffusion"])
    loss.backward()
    expected = (0.25 * 2 * (vs - vt) + 2.0 * 2 * (vs - target)).detach() / vs.numel()
    torch.testing.assert_close(vs.grad, expected)
    # bf16 predictions are compared in float32
    lo = velocity_distill_loss(vs.detach().bfloat16(), vt.bfloat16())
    assert lo.dtype == torch.float32 and math.isfinite(float(lo))


def test_guided_velocity_loss_matches_cfg_by_hand():
    g = torch.Generator().manual_seed(3)
    # rows [captioned; null-captioned] of 2 samples, as make_training_batch lays them out with guidance_scale
    vs = torch.randn(4, 3, 2, 4, 4, generator=g, requires_grad=True)
    vt = torch.randn(4, 3, 2, 4, 4, generator=g)
    target = torch.randn(4, 3, 2, 4, 4, generator=g)
    w = 4.0
    loss, parts = distillation_objective(LossConfig("velocity", guidance_scale=w), vs, vt, target)
    cond = ((vs[:2] - vt[:2]) ** 2).mean()
    guided = (((vs[2:] + w * (vs[:2] - vs[2:])) - (vt[2:] + w * (vt[:2] - vt[2:]))) ** 2).mean()
    torch.testing.assert_close(parts["loss_velocity"], cond.detach())
    torch.testing.assert_close(parts["loss_guided"], guided.detach())
    torch.testing.assert_close(loss, 0.5 * (cond + guided))
    loss.backward()
    assert vs.grad[2:].abs().sum() > 0  # the null rows learn through the guided term
    # mix: the diffusion part sees the captioned rows and their target only
    loss, parts = distillation_objective(LossConfig("mix", 1.0, 1.0, guidance_scale=w), vs, vt, target)
    torch.testing.assert_close(parts["loss_diffusion"], ((vs[:2] - target[:2]) ** 2).mean().detach())
    with pytest.raises(ValueError, match="v_student: loss.guidance_scale needs"):
        distillation_objective(LossConfig("velocity", guidance_scale=w), vs[:3], vt[:3], target[:3])


def test_guidance_scale_errors_name_the_field():
    for bad in (-1.0, float("nan")):
        with pytest.raises(ConfigError, match="loss.guidance_scale"):
            LossConfig("velocity", guidance_scale=bad).validate()
    with pytest.raises(ConfigError, match="loss.guidance_scale.*needs kind velocity"):
        LossConfig("diffusion", guidance_scale=4.0).validate()
    LossConfig("velocity", guidance_scale=4.0).validate()


def test_loss_errors():
    with pytest.raises(ValueError, match="v_teacher: shape"):
        velocity_distill_loss(torch.zeros(1, 2), torch.zeros(2, 1))
    with pytest.raises(ValueError, match="v_teacher: required"):
        distillation_objective(LossConfig("velocity"), torch.zeros(1), None, torch.zeros(1))
    assert not LossConfig("diffusion").needs_teacher
    assert not LossConfig("mix", velocity_weight=0.0, diffusion_weight=1.0).needs_teacher
