"""model.student_init: the student starts from another export (continuing a distillation on a fresh machine) while
the teacher stays model.pretrained; bad folders are errors that name the field."""

from __future__ import annotations

import pytest
import torch

from sparge_train.config import ConfigError, config_from_dict
from sparge_train.models import build_student_teacher

from .conftest import save_tiny_wan, tiny_run_config


def build(cfg_dict):
    cfg = config_from_dict(cfg_dict)
    return build_student_teacher(cfg, student_ds={}, teacher_ds=None, sharded_teacher=False, rank=0,
                                 dtype=torch.float32)


def test_student_starts_from_student_init_and_the_teacher_from_pretrained(tmp_path, tiny_wan_dir):
    from diffusers import WanTransformer3DModel

    init_dir = save_tiny_wan(tmp_path / "student_export", seed=7)
    models = build(tiny_run_config(tiny_wan_dir, tmp_path / "run", model={"student_init": str(init_dir)}))
    init = WanTransformer3DModel.from_pretrained(str(init_dir)).state_dict()
    pretrained = WanTransformer3DModel.from_pretrained(str(tiny_wan_dir)).state_dict()
    student, teacher = dict(models.student.named_parameters()), dict(models.teacher.named_parameters())
    assert student.keys() == teacher.keys()
    for name in student:
        torch.testing.assert_close(student[name].detach(), init[name], rtol=0, atol=0)
        torch.testing.assert_close(teacher[name].detach(), pretrained[name], rtol=0, atol=0)
    assert any(not torch.equal(init[n], pretrained[n]) for n in student)  # the two really differ
    assert all(p.requires_grad for p in models.student.parameters())
    assert not any(p.requires_grad for p in models.teacher.parameters())


def test_student_init_errors_name_the_field(tmp_path, tiny_wan_dir):
    with pytest.raises(ConfigError, match="model.student_init"):
        build(tiny_run_config(tiny_wan_dir, tmp_path / "run", model={"student_init": str(tmp_path / "nowhere")}))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="model.student_init"):
        build(tiny_run_config(tiny_wan_dir, tmp_path / "run", model={"student_init": str(tmp_path / "empty")}))
    other = save_tiny_wan(tmp_path / "other_arch", ffn_dim=48)
    with pytest.raises(ValueError, match="model.student_init: .* has shape"):
        build(tiny_run_config(tiny_wan_dir, tmp_path / "run", model={"student_init": str(other)}))
