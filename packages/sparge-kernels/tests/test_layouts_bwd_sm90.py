"""The Hopper backward's layout algebra, checked on the host (no GPU): tests/csrc/check_layouts_bwd_sm90.cu is
compiled with nvcc against csrc/ and the CUTLASS headers and run. Skips without nvcc or the nvidia-cutlass wheel."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
CSRC = HERE.parent / "csrc"


def _nvcc() -> str | None:
    for candidate in (os.environ.get("CUDACXX"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def _cutlass_include() -> Path | None:
    spec = importlib.util.find_spec("cutlass_library")
    if spec is None or spec.origin is None:
        return None
    include = Path(spec.origin).parent / "source" / "include"
    return include if (include / "cute" / "tensor.hpp").is_file() else None


@pytest.mark.slow
def test_layouts_of_the_hopper_backward(tmp_path):
    nvcc, cutlass = _nvcc(), _cutlass_include()
    if nvcc is None or cutlass is None:
        pytest.skip(f"needs nvcc ({nvcc}) and the nvidia-cutlass headers ({cutlass})")
    exe = tmp_path / "check_layouts_bwd_sm90"
    build = subprocess.run(
        [nvcc, "-std=c++17", "--expt-relaxed-constexpr", "-gencode=arch=compute_90a,code=sm_90a",
         f"-I{CSRC}", f"-I{cutlass}", str(HERE / "csrc" / "check_layouts_bwd_sm90.cu"), "-o", str(exe)],
        capture_output=True, text=True, timeout=600,
    )
    assert build.returncode == 0, f"nvcc failed:\n{build.stderr[-4000:]}"
    result = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(": 0 mismatches") == 8
