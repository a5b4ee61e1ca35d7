"""The wheel/GPU/driver compatibility check (compat.py), on the CPU with faked device facts and a faked _C."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from sparge_kernels import backend as backend_mod
from sparge_kernels import compat
from sparge_kernels import cuda as cuda_mod

RELEASE = "80,86,89,90a,compute_90"  # _C.build_archs of a release wheel (SPARGE_CUDA_ARCHS=80;86;89;90a;PTX)


def check(**overrides):
    args = dict(build_cuda_version="13.0", build_archs=RELEASE, capability=(8, 0), driver_version=13000,
                device_name="NVIDIA A100", version="0.1.0+cu130")
    args.update(overrides)
    compat.check_runnable(**args)


@pytest.mark.parametrize("archs, capability, expected", [
    ("90a", (9, 0), "sass"),
    ("90a", (8, 0), None),                 # an sm_90a-only build has nothing for an A100
    ("90a", (10, 0), None),                # arch-specific SASS does not carry forward
    ("80", (8, 6), "sass"),                # sm_80 SASS runs on every 8.x
    ("80", (8, 9), "sass"),
    ("86", (8, 0), None),                  # ... but not on an older minor
    ("80", (9, 0), None),                  # ... nor another major
    ("80,90a,compute_90", (12, 0), "ptx"),  # newer GPUs JIT the PTX
    ("80,90a,compute_90", (8, 9), "sass"),
    ("80,compute_80", (7, 5), None),
    (RELEASE, (9, 0), "sass"),
])
def test_runnable_code(archs, capability, expected):
    assert compat.runnable_code(archs, capability) == expected


def test_parse_archs_rejects_garbage():
    with pytest.raises(ValueError, match="unrecognised entry 'sm_80'"):
        compat.parse_archs("sm_80")


def test_release_wheel_runs_on_every_supported_gpu():
    for capability in [(8, 0), (8, 6), (8, 9), (9, 0), (10, 0), (12, 0)]:
        check(capability=capability)  # no error


def test_cuda13_wheel_on_cuda12_driver_names_the_cuda12_wheel():
    with pytest.raises(RuntimeError) as info:
        check(driver_version=12080)
    msg = str(info.value)
    assert "built with CUDA 13.0" in msg and "supports CUDA 12.8 only" in msg and "NVIDIA A100" in msg
    # The CUDA 12 build is the unlabeled default wheel.
    assert "pip install 'sparge-kernels==0.1.0'" in msg


def test_cuda12_wheel_on_cuda13_driver_runs():
    check(build_cuda_version="12.9", driver_version=13000, version="0.1.0")  # drivers run older majors


def test_cuda12_wheel_on_cuda11_driver_says_no_wheel_fits():
    with pytest.raises(RuntimeError, match="no sparge-kernels wheel supports CUDA 11.*update the NVIDIA driver"):
        check(build_cuda_version="12.9", driver_version=11080, version="0.1.0")


def test_archs_missing_the_gpu_names_the_release_wheel_and_the_arch_option():
    with pytest.raises(RuntimeError) as info:
        check(build_archs="90a", capability=(8, 9), device_name="NVIDIA L40")
    msg = str(info.value)
    assert "GPU code for 90a only" in msg and "NVIDIA L40 (compute capability 8.9)" in msg
    assert "pip install 'sparge-kernels==0.1.0+cu130'" in msg and "SPARGE_CUDA_ARCHS=89" in msg
    with pytest.raises(RuntimeError, match="SPARGE_CUDA_ARCHS=90a"):
        check(build_archs="80", capability=(9, 0), device_name="NVIDIA H200")


def test_ptx_needs_a_driver_as_new_as_the_toolkit():
    # A 12.0 GPU has only the compute_90 PTX to run; a 12.8 driver cannot JIT PTX written by CUDA 12.9.
    with pytest.raises(RuntimeError, match="only PTX.*CUDA 12.8, older than the CUDA 12.9"):
        check(build_cuda_version="12.9", capability=(12, 0), driver_version=12080, version="0.1.0")
    check(build_cuda_version="12.9", capability=(8, 0), driver_version=12080, version="0.1.0")  # SASS: fine


def test_unknown_driver_version_skips_only_the_driver_checks():
    check(driver_version=0)
    with pytest.raises(RuntimeError, match="GPU code for 90a only"):
        check(driver_version=0, build_archs="90a")


def test_wheel_names_follow_the_default_cuda():
    assert compat.wheel_for_cuda_major(12, "0.2.0+cu130") == "sparge-kernels==0.2.0"
    assert compat.wheel_for_cuda_major(13, "0.2.0") == "sparge-kernels==0.2.0+cu130"
    assert compat.wheel_for_cuda_major(11, "0.2.0") is None
    assert compat.label("12.9") == "cu129"


@pytest.fixture
def fake_gpu(monkeypatch):
    """A fake _C and a fake device 0 behind the CUDA backend: set their facts through the returned dict."""
    facts = {"capability": (8, 0), "name": "NVIDIA A100", "archs": "90a", "cuda": "13.0", "driver": 13000}
    fake_c = SimpleNamespace()
    monkeypatch.setattr(cuda_mod, "_C", fake_c)

    def refresh():
        fake_c.build_archs, fake_c.build_cuda_version = facts["archs"], facts["cuda"]
        fake_c.driver_version = lambda: facts["driver"]

    refresh()
    facts["refresh"] = refresh
    monkeypatch.setattr(cuda_mod, "_devices_checked", set())
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: facts["capability"])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: facts["name"])
    monkeypatch.delenv("SPARGE_BACKEND", raising=False)
    return facts


def test_backend_for_raises_instead_of_falling_back(fake_gpu):
    with pytest.raises(RuntimeError, match="GPU code for 90a only.*NVIDIA A100.*SPARGE_CUDA_ARCHS=80"):
        backend_mod.backend_for(torch.device("cuda", 0))
    # Still an error on the next call: only a passing device is cached.
    with pytest.raises(RuntimeError, match="GPU code for 90a only"):
        backend_mod.backend_for(torch.device("cuda", 0))


def test_backend_for_passes_a_fitting_build_and_checks_once(fake_gpu):
    fake_gpu["archs"] = "80,90a"
    fake_gpu["refresh"]()
    assert backend_mod.backend_for(torch.device("cuda", 0)) is backend_mod.CUDA
    assert cuda_mod._devices_checked == {0}
    fake_gpu["archs"] = "90a"  # a passing device is not re-checked per op (the facts cannot change)
    fake_gpu["refresh"]()
    assert backend_mod.backend_for(torch.device("cuda", 0)) is backend_mod.CUDA


def test_backend_for_reports_the_driver_mismatch(fake_gpu):
    fake_gpu["archs"], fake_gpu["driver"] = "80,90a", 12040
    fake_gpu["refresh"]()
    with pytest.raises(RuntimeError, match="built with CUDA 13.0.*CUDA 12.4 only.*sparge-kernels==0.1.0'"):
        backend_mod.backend_for(torch.device("cuda", 0))


def test_explicit_reference_opt_in_skips_the_check(fake_gpu, monkeypatch):
    monkeypatch.setenv("SPARGE_BACKEND", "reference")
    assert backend_mod.backend_for(torch.device("cuda", 0)) is backend_mod.REFERENCE
