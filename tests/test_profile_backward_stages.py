"""tools/profile_backward_stages.py builds nothing: on an extension without the profiling entry (or none at all)
it stops with a message naming the CMake option SPARGE_PROFILE_STAGES."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOL = str(ROOT / "tools/profile_backward_stages.py")


def test_tool_without_a_profiling_build_names_the_cmake_option():
    from sparge_kernels import cuda

    if cuda._C is not None and hasattr(cuda._C, "attention_backward_stage_profile"):
        pytest.skip("this is a profiling build")
    proc = subprocess.run([sys.executable, TOOL, "--densities", "0.05"], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "SPARGE_PROFILE_STAGES=ON" in proc.stderr, proc.stderr[-2000:]
