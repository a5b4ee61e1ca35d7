"""The profiling variants of the Hopper backward (issue 13) are generated, listed once, and off by default: the
generator's STAGE_VARIANTS, the files in csrc/profile/ and the list the binding reads agree, and only a
SPARGE_PROFILE_STAGES=ON build compiles them (CMakeLists.txt, pyproject.toml)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from sparge_kernels import cuda as cuda_mod

PACKAGE = Path(__file__).resolve().parents[1]
CSRC = PACKAGE / "csrc"


def _generator():
    spec = importlib.util.spec_from_file_location("generate_instantiations", CSRC / "generate_instantiations.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_variants_match_the_generator():
    gen = _generator()
    names = [name for name, _ in gen.STAGE_VARIANTS]
    assert names[0] == "full" and gen.STAGE_VARIANTS[0][1] == "kSkipNone" and len(set(names)) == len(names)
    files = sorted(p.name for p in (CSRC / "profile").glob("bwd_stages_*.cu"))
    assert files == sorted(f"bwd_stages_{n}_hdim{gen.STAGE_HEAD_DIM}_{gen.STAGE_DTYPE}_sm90.cu" for n in names)
    for name, bits in gen.STAGE_VARIANTS:
        text = (CSRC / "profile" / f"bwd_stages_{name}_hdim128_bf16_sm90.cu").read_text()
        assert f"run_bwd_sm90_stages<128, DType::kBFloat16, {bits}>" in text
    listed = re.findall(r"^\s+X\((\w+), ([^)]+)\)", (CSRC / "profile" / "bwd_stage_variants.h").read_text(), re.M)
    assert listed == list(gen.STAGE_VARIANTS)
    # Every bit a variant names exists in the header that defines them.
    defined = set(re.findall(r"^\s*(k[A-Z]\w+) = ", (CSRC / "backward" / "stage_skip_bwd_sm90.h").read_text(), re.M))
    assert "kDqBulkReduce" in defined  # the one mode bit (bulk_dq), not a skip
    for _, bits in gen.STAGE_VARIANTS:
        assert set(re.findall(r"k[A-Z]\w+", bits)) <= defined


def test_profiling_build_is_off_by_default():
    cmake = (PACKAGE / "CMakeLists.txt").read_text()
    assert re.search(r'option\(SPARGE_PROFILE_STAGES "[^"]*" OFF\)', cmake)
    assert 'src MATCHES "/csrc/profile/" AND NOT SPARGE_PROFILE_STAGES' in cmake
    pyproject = (PACKAGE / "pyproject.toml").read_text()
    assert 'SPARGE_PROFILE_STAGES = { env = "SPARGE_PROFILE_STAGES", default = "OFF" }' in pyproject


@pytest.mark.skipif(cuda_mod._C is None, reason="sparge_kernels._C not built")
def test_profiling_entry_only_with_its_variants():
    c = cuda_mod._C
    if hasattr(c, "attention_backward_stage_profile"):
        assert {"full", "side_kernels_only"} <= set(c.stage_profile_variants)
    else:
        assert not hasattr(c, "stage_profile_variants")
