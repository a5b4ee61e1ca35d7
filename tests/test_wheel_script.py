"""ci/build_wheels.sh and the runtime check (sparge_kernels.compat) agree on which CUDA build is unlabeled."""

from __future__ import annotations

import re
from pathlib import Path

from sparge_kernels import compat

SCRIPT = Path(__file__).resolve().parents[1] / "ci" / "build_wheels.sh"


def test_wheel_script_agrees_on_the_default_cuda():
    text = SCRIPT.read_text()
    m = re.search(r"WHEEL_DEFAULT_CUDA:-([0-9.]+)", text)
    assert m is not None, "ci/build_wheels.sh no longer sets WHEEL_DEFAULT_CUDA"
    assert m.group(1) == compat.DEFAULT_WHEEL_CUDA
    # Every CUDA version the error messages point to is one the script builds.
    for cuda in compat.WHEEL_CUDA.values():
        assert f"cu{cuda.replace('.', '')}" in text, f"ci/build_wheels.sh builds no {cuda} wheel"
