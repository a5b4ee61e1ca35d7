"""Losses of the student's velocity prediction. All reduce in float32 to a mean over every element."""

from __future__ import annotations

import torch

from .config import LossConfig

__all__ = ["velocity_distill_loss", "guided_velocity", "flow_matching_loss", "distillation_objective"]


def velocity_distill_loss(v_student: torch.Tensor, v_teacher: torch.Tensor) -> torch.Tensor:
    """mean ‖v_student − v_teacher‖² (the paper's velocity distillation); the teacher is a constant."""
    if v_student.shape != v_teacher.shape:
        raise ValueError(f"v_teacher: shape {tuple(v_teacher.shape)} != v_student {tuple(v_student.shape)}")
    return (v_student.float() - v_teacher.detach().float()).pow(2).mean()


def guided_velocity(v_cond: torch.Tensor, v_null: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: v(∅) + w·(v(c) − v(∅)), in float32."""
    return v_null.float() + scale * (v_cond.float() - v_null.float())


def flow_matching_loss(v_student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean ‖v_student − (ε − x0)‖² (the diffusion-loss ablation)."""
    if v_student.shape != target.shape:
        raise ValueError(f"target: shape {tuple(target.shape)} != v_student {tuple(v_student.shape)}")
    return (v_student.float() - target.float()).pow(2).mean()


def distillation_objective(
    cfg: LossConfig,
    v_student: torch.Tensor,
    v_teacher: torch.Tensor | None,
    target: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The configured loss and its parts (detached, for logging). With cfg.guidance_scale the batch rows are
    [captioned; null-captioned] (make_training_batch): the velocity term also matches the guided velocity."""
    parts: dict[str, torch.Tensor] = {}
    total = v_student.new_zeros((), dtype=torch.float32)
    if cfg.guidance_scale > 0:
        if v_student.shape[0] % 2:
            raise ValueError("v_student: loss.guidance_scale needs [captioned; null] rows, "
                             f"got batch {v_student.shape[0]}")
        v_student, v_student_null = v_student.chunk(2)
        target = target.chunk(2)[0]
        if v_teacher is not None:
            v_teacher, v_teacher_null = v_teacher.chunk(2)
    if cfg.needs_teacher:
        if v_teacher is None:
            raise ValueError("v_teacher: required for loss.kind velocity/mix")
        velocity = velocity_distill_loss(v_student, v_teacher)
        parts["loss_velocity"] = velocity.detach()
        if cfg.guidance_scale > 0:
            guided = velocity_distill_loss(guided_velocity(v_student, v_student_null, cfg.guidance_scale),
                                           guided_velocity(v_teacher, v_teacher_null, cfg.guidance_scale))
            parts["loss_guided"] = guided.detach()
            velocity = 0.5 * (velocity + guided)
        total = total + (velocity if cfg.kind == "velocity" else cfg.velocity_weight * velocity)
    if cfg.kind == "diffusion" or (cfg.kind == "mix" and cfg.diffusion_weight > 0):
        diffusion = flow_matching_loss(v_student, target)
        parts["loss_diffusion"] = diffusion.detach()
        total = total + (diffusion if cfg.kind == "diffusion" else cfg.diffusion_weight * diffusion)
    return total, parts
