"""The package imports with or without the compiled extension, and a missing kernel is a clear error."""

from __future__ import annotations

import importlib

import pytest
import torch

import sparge_kernels
from sparge_kernels import backend as backend_mod
from sparge_kernels import cuda as cuda_mod


def test_package_imports_and_exposes_api():
    for name in ("block_sparse_attention", "predict_block_mask", "sparge_attention", "BlockMask", "cuda_available",
                 "kernels_built"):
        assert hasattr(sparge_kernels, name)
    assert sparge_kernels.kernels_built() == (cuda_mod._C is not None)
    # cuda_available says what its name says: kernels AND a GPU (False on a CPU machine even with kernels).
    assert sparge_kernels.cuda_available() == (cuda_mod._C is not None and torch.cuda.is_available())


def test_cuda_available_is_false_without_a_gpu(monkeypatch):
    monkeypatch.setattr(cuda_mod, "_C", object())  # pretend the kernels are built
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert sparge_kernels.kernels_built() and not sparge_kernels.cuda_available()


def test_cpu_uses_reference():
    assert backend_mod.backend_for(torch.device("cpu")) is backend_mod.REFERENCE


def test_without_extension_cuda_tensor_raises_clear_error(monkeypatch):
    monkeypatch.setattr(backend_mod, "_cuda_backend", None)
    monkeypatch.setattr(backend_mod, "_cuda_error", "the compiled extension sparge_kernels._C is missing (test)")
    monkeypatch.delenv("SPARGE_BACKEND", raising=False)
    with pytest.raises(RuntimeError, match="no CUDA kernels.*_C is missing.*SPARGE_BACKEND=reference"):
        backend_mod.backend_for(torch.device("cuda", 0))
    # The explicit opt-in still selects the reference.
    monkeypatch.setenv("SPARGE_BACKEND", "reference")
    assert backend_mod.backend_for(torch.device("cuda", 0)) is backend_mod.REFERENCE


def test_missing_kernel_entry_raises_clear_error():
    fail = cuda_mod._missing("backward")
    with pytest.raises(RuntimeError, match="CUDA backward kernel not built"):
        fail()


def test_glue_module_absent_is_none_present_is_module():
    assert cuda_mod._glue_module("no_such_glue_module_xyz") is None
    assert cuda_mod._glue_module("reference") is importlib.import_module("sparge_kernels.reference")


@pytest.mark.skipif(cuda_mod._C is None, reason="sparge_kernels._C not built")
def test_extension_exposes_kernels():
    c = cuda_mod._C
    assert c.build_archs and c.build_head_dims and c.build_dtypes
    assert callable(c.attention_forward)
    registered = backend_mod._cuda_backend
    assert registered is not None and registered.name == "cuda"
    from sparge_kernels import cuda_forward

    assert registered.forward is cuda_forward.forward


def test_kernel_limits_name_the_kernel_and_argument():
    from sparge_kernels.cuda_limits import check_blocks_and_dtype

    check_blocks_and_dtype("block-sparse attention", 128, 64, torch.bfloat16)
    with pytest.raises(ValueError, match="CUDA block-sparse attention backward supports block_q=128 and block_k=64"):
        check_blocks_and_dtype("block-sparse attention backward", 64, 64, torch.float16)
    with pytest.raises(TypeError, match="float16 or bfloat16"):
        check_blocks_and_dtype("block-sparse attention", 128, 64, torch.float32)
