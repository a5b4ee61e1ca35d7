"""The package imports with or without the compiled extension, and a missing kernel is a clear error."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import sparge_kernels
from sparge_kernels import backend as backend_mod
from sparge_kernels import cuda as cuda_mod
from sparge_kernels.validation import (
    KernelNotBuiltError,
    check_attention_kernel_args,
    check_kernel_path,
)


def test_package_imports_and_exposes_api():
    for name in ("block_sparse_attention", "predict_block_mask", "sparge_attention", "BlockMask", "cuda_available",
                 "kernels_built", "kernel_options", "KernelOptions"):
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
    monkeypatch.setattr(cuda_mod, "_C", None)
    monkeypatch.setattr(cuda_mod, "MISSING_REASON", "the compiled extension sparge_kernels._C is missing (test)")
    monkeypatch.delenv("SPARGE_BACKEND", raising=False)
    with pytest.raises(RuntimeError, match="no CUDA kernels.*_C is missing.*SPARGE_BACKEND=reference"):
        backend_mod.backend_for(torch.device("cuda", 0))
    # The explicit opt-in still selects the reference.
    monkeypatch.setenv("SPARGE_BACKEND", "reference")
    assert backend_mod.backend_for(torch.device("cuda", 0)) is backend_mod.REFERENCE


def test_the_cuda_backend_is_the_glue():
    from sparge_kernels import cuda_backward, cuda_forward, cuda_mask

    assert backend_mod.CUDA == backend_mod.Backend(cuda_mask.predict, cuda_forward.forward, cuda_backward.backward)


def test_mask_defaults_are_the_measured_choices_for_the_wan_shapes():
    """cuda_mask.predict's automatic tuning (tools/results/mask_tensor_scores_h200_2026-12-04.md): the 1.3B shape
    (0.2 GB of Q+K) without head-group overlap and with fp32 FMA scores, the 14B shape (1.5 GB) with 4 head
    groups, tensor-core scores and the last group's CTAs as the others'; rows in registers where Nk <= 512
    (tools/results/mask_defaults_h200_2026-12-04.md)."""
    from sparge_kernels import cuda_mask

    qk_1p3b, qk_14b = 2 * 12 * 32760 * 128 * 2, 2 * 40 * 75600 * 128 * 2  # bf16 bytes
    assert cuda_mask.default_head_groups(12, qk_1p3b) == 1 and not cuda_mask.default_tensor_scores(qk_1p3b)
    assert cuda_mask.default_head_groups(40, qk_14b) == 3 and cuda_mask.default_tensor_scores(qk_14b)
    assert cuda_mask.default_tail_rows_per_cta(True) == 0 and cuda_mask.default_tail_rows_per_cta(False) == 8
    assert cuda_mask.default_register_rows(512) and not cuda_mask.default_register_rows(1182)
    assert cuda_mask.default_register_rows(1182, tensor_scores=True)
    assert not cuda_mask.default_register_rows(1300, tensor_scores=True)
    # the fused kernel: 16-word rows in registers, longer ones in shared memory; fused for the 14B shape only
    assert cuda_mask.default_register_rows(512, True, fused=True)
    assert not cuda_mask.default_register_rows(1182, True, fused=True)
    assert cuda_mask.default_fused(qk_14b) and not cuda_mask.default_fused(qk_1p3b)
    assert cuda_mask.schedule_fuses("auto", qk_14b) and not cuda_mask.schedule_fuses("auto", qk_1p3b)
    assert cuda_mask.schedule_fuses("fused", qk_1p3b) and not cuda_mask.schedule_fuses("separate", qk_14b)


@pytest.mark.skipif(cuda_mod._C is None, reason="sparge_kernels._C not built")
def test_extension_exposes_kernels():
    c = cuda_mod._C
    assert c.build_archs and c.build_head_dims and c.build_dtypes
    for name in ("attention_forward", "attention_backward", "mask_predict"):
        assert callable(getattr(c, name))


@pytest.mark.skipif(cuda_mod._C is None, reason="sparge_kernels._C not built")
def test_every_entry_takes_tensors_and_rejects_bad_arguments_before_touching_a_device():
    """All three families take tensors through the one caster (pointer, dtype, shape, strides). Each call below
    fails on its arguments, before any CUDA call, so it runs on a CPU machine too."""
    c = cuda_mod._C
    q = torch.zeros(1, 1, 8, 64, dtype=torch.bfloat16)
    lse = torch.zeros(1, 1, 8)
    kv_count, kv_index = torch.zeros(1, 1, 1, dtype=torch.int32), torch.zeros(1, 1, 1, 1, dtype=torch.int32)
    fwd = dict(block_q=128, block_k=64, scale=0.125, stream=0)
    with pytest.raises(TypeError):  # not a tensor
        c.attention_forward(q.data_ptr(), q, q, q, lse, kv_count, kv_index, **fwd)
    with pytest.raises(TypeError):  # rank 5 is no tensor argument
        c.attention_forward(q[None], q, q, q, lse, kv_count, kv_index, **fwd)
    with pytest.raises(ValueError, match="block_q=128 and block_k=64"):
        c.attention_forward(q, q, q, q, lse, kv_count, kv_index, **{**fwd, "block_q": 64})
    with pytest.raises(ValueError, match="unit stride"):
        c.attention_forward(q.transpose(2, 3), q, q, q, lse, kv_count, kv_index, **fwd)
    with pytest.raises(ValueError, match="bfloat16 or float16"):  # the dtype comes from q (float64 here)
        c.attention_forward(*(q.double(),) * 4, lse, kv_count, kv_index, **fwd)
    with pytest.raises(TypeError):  # None only where the binding says so (dlse, dq_accum)
        c.attention_forward(q, q, q, None, lse, kv_count, kv_index, **fwd)

    bwd = dict(block_q=128, block_k=64, scale=0.125, deterministic=True, dq_bulk_reduce=False, stream=0)
    tensors = dict(q=q, k=q, v=q, out=q, dout=q, lse=lse, dlse=None, kv_count=kv_count, kv_index=kv_index,
                   q_count=kv_count, q_index=kv_index, dq=q, dk=q, dv=q, lse_log2=lse, delta=lse, dq_accum=None)
    with pytest.raises(ValueError, match="block_q=128 and block_k=64"):
        c.attention_backward(**tensors, **{**bwd, "block_k": 128})
    with pytest.raises(ValueError, match="dq_accum is a null pointer"):
        c.attention_backward(**tensors, **{**bwd, "deterministic": False})
    with pytest.raises(ValueError, match="dk must have a unit stride"):
        c.attention_backward(**{**tensors, "dk": q.transpose(2, 3)}, **bwd)
    with pytest.raises(ValueError, match="lse_log2 must be contiguous"):  # the kernels index buffers row-major
        c.attention_backward(**{**tensors, "lse_log2": torch.zeros(1, 1, 16)[..., ::2]}, **bwd)
    # The dS spill buffers: all three or none, their shapes and dtypes (checked before any launch).
    spill = dict(ds_spill=torch.zeros(2, 128, 64, dtype=torch.bfloat16), q_end=kv_count, kv_pair=kv_index)
    default_mode = {**bwd, "deterministic": False}
    with_accum = {**tensors, "dq_accum": torch.zeros(1, 1, 128, 64)}
    with pytest.raises(ValueError, match="ds_spill, q_end and kv_pair go together"):
        c.attention_backward(**with_accum, **default_mode, ds_spill=spill["ds_spill"])
    with pytest.raises(ValueError, match="ds_spill must be a contiguous"):
        c.attention_backward(**with_accum, **default_mode, **{**spill, "ds_spill": torch.zeros(2, 64, 128,
                                                                                             dtype=torch.bfloat16)})
    with pytest.raises(ValueError, match="ds_spill must be a contiguous"):  # q's dtype
        c.attention_backward(**with_accum, **default_mode, **{**spill, "ds_spill": torch.zeros(2, 128, 64,
                                                                                             dtype=torch.float16)})
    with pytest.raises(ValueError, match=r"q_end must be a contiguous int32 \(B, H, Nk\)"):
        c.attention_backward(**with_accum, **default_mode, **{**spill, "q_end": kv_index})
    with pytest.raises(ValueError, match=r"kv_pair must be a contiguous int32 \(B, H, Nq, Nk\)"):
        c.attention_backward(**with_accum, **default_mode, **{**spill, "kv_pair": kv_count})
    # Two heads: the right shapes with a head stride the kernels would not follow.
    q2, lse2 = torch.zeros(1, 2, 8, 64, dtype=torch.bfloat16), torch.zeros(1, 2, 8)
    count2, index2 = torch.zeros(1, 2, 1, dtype=torch.int32), torch.zeros(1, 2, 1, 1, dtype=torch.int32)
    heads2 = dict(q=q2, k=q2, v=q2, out=q2, dout=q2, lse=lse2, dlse=None, kv_count=count2, kv_index=index2,
                  q_count=count2, q_index=index2, dq=q2, dk=q2, dv=q2, lse_log2=lse2, delta=lse2,
                  dq_accum=torch.zeros(1, 2, 128, 64))
    spill2 = dict(ds_spill=torch.zeros(2, 128, 64, dtype=torch.bfloat16), q_end=count2, kv_pair=index2)
    strided_q_end = torch.zeros(1, 2, 2, dtype=torch.int32)[..., :1]
    strided_kv_pair = torch.zeros(1, 2, 1, 2, dtype=torch.int32)[..., :1]
    with pytest.raises(ValueError, match=r"q_end must be a contiguous int32 \(B, H, Nk\)"):
        c.attention_backward(**heads2, **default_mode, **{**spill2, "q_end": strided_q_end})
    with pytest.raises(ValueError, match=r"kv_pair must be a contiguous int32 \(B, H, Nq, Nk\)"):
        c.attention_backward(**heads2, **default_mode, **{**spill2, "kv_pair": strided_kv_pair})

    pooled = torch.zeros(1, 1, 1, 64)
    with pytest.raises(ValueError, match="q must have 4 dims"):
        c.mask_pool_blocks(q[0], q, 128, 64, pooled, pooled, 0)
    with pytest.raises(ValueError, match="k must have unit stride along D"):  # read as contiguous rows otherwise
        c.mask_pool_blocks(q, torch.zeros(1, 1, 64, 8, dtype=torch.bfloat16).transpose(2, 3), 128, 64, pooled,
                           pooled, 0)
    with pytest.raises(ValueError, match="kv_index must have 4 dims"):
        c.mask_select_blocks(pooled, pooled, 0.125, 1, 0.0, 1, kv_count, kv_count, pooled, 0, 0)
    with pytest.raises(ValueError, match="q_count must have 3 dims"):
        c.mask_transpose(pooled, kv_index, kv_index, 0)
    total = c.mask_workspace_layout(1, 1, 1, 1, 64)[0]
    workspace = torch.zeros(total)
    predict_args = (128, 64, 0.125, 1, 0.0, 1)
    with pytest.raises(ValueError, match="q must have 4 dims"):
        c.mask_predict(q[0], q, *predict_args, workspace, kv_count, kv_index, kv_count, kv_index, 1, 0, 0, 0)
    with pytest.raises(ValueError, match="kv_index must be"):  # 8 tokens at block_q 4 are 2 query blocks, not 1
        c.mask_predict(q, q, 4, 64, *predict_args[2:], workspace, kv_count, kv_index, kv_count, kv_index, 1, 0, 0, 0)
    with pytest.raises(ValueError, match=f"workspace must be a contiguous float32 vector of at least .* {total}"):
        c.mask_predict(q, q, *predict_args, workspace[1:], kv_count, kv_index, kv_count, kv_index, 1, 0, 0, 0)
    with pytest.raises(ValueError, match="workspace must be a contiguous float32"):
        c.mask_predict(q, q, *predict_args, workspace.double(), kv_count, kv_index, kv_count, kv_index, 1, 0, 0, 0)
    with pytest.raises(ValueError, match="fused must be 0, 1 or 2"):
        c.mask_predict(q, q, *predict_args, workspace, kv_count, kv_index, kv_count, kv_index, 1, 0, 0, 0, fused=3)


def test_mask_workspace_views_follow_the_extension_layout():
    """MaskWorkspace's views and the bare buffer of `predict` come from one layout: 512-byte-aligned offsets,
    k_ld a multiple of 32 key blocks, no overlap."""
    if cuda_mod._C is None:
        pytest.skip("sparge_kernels._C not built")
    from sparge_kernels import cuda_mask

    b, h, nq, nk, d = 2, 3, 5, 40, 64
    total, q_at, k_at, bits_at, k_ld, words, counters_at = cuda_mod._C.mask_workspace_layout(b, h, nq, nk, d)
    assert (k_ld, words) == (64, 2) and q_at == 0
    assert k_at >= b * h * nq * d and bits_at >= k_at + b * h * d * k_ld
    assert counters_at >= bits_at + b * h * nq * words and total >= counters_at + 1 + b * h  # the fused kernel's
    assert k_at % 128 == 0 and bits_at % 128 == 0 and counters_at % 128 == 0 and total % 128 == 0
    assert cuda_mask.workspace_floats(b, h, nq, nk, d) == total
    ws = cuda_mask.MaskWorkspace.allocate(b, h, nq, nk, d, torch.device("cpu"))
    base = ws.q_pooled.untyped_storage().data_ptr()
    assert ws.k_pooled_t.data_ptr() - base == 4 * k_at and ws.row_bits.data_ptr() - base == 4 * bits_at
    assert ws.k_pooled_t.shape == (b, h, d, k_ld) and ws.row_bits.shape == (b, h, nq, words)
    assert ws.row_bits.dtype == torch.int32 and ws.q_pooled.untyped_storage().nbytes() == 4 * total


BUILT = SimpleNamespace(build_head_dims="128", build_dtypes="bf16")  # a one-variant build


def test_kernel_limits_name_the_kernel_and_argument():
    assert check_attention_kernel_args("block-sparse attention", torch.bfloat16, 128, 128, 64, BUILT) == "bfloat16"
    with pytest.raises(ValueError, match="CUDA block-sparse attention backward supports block_q=128 and block_k=64"):
        check_attention_kernel_args("block-sparse attention backward", torch.bfloat16, 128, 64, 64, BUILT)
    with pytest.raises(TypeError, match="float16 or bfloat16"):
        check_attention_kernel_args("block-sparse attention", torch.float32, 128, 128, 64, BUILT)
    with pytest.raises(ValueError, match="head dim 96") as bad_dim:
        check_attention_kernel_args("block-sparse attention", torch.bfloat16, 96, 128, 64, BUILT)
    assert not isinstance(bad_dim.value, KernelNotBuiltError)  # no build has it: a bad argument, not a rebuild


@pytest.mark.parametrize("dtype,head_dim", [(torch.bfloat16, 64), (torch.float16, 128)])
def test_a_variant_left_out_of_the_build_says_so(dtype, head_dim):
    with pytest.raises(KernelNotBuiltError, match="no compiled CUDA block-sparse attention kernel in this build"):
        check_attention_kernel_args("block-sparse attention", dtype, head_dim, 128, 64, BUILT)


@pytest.mark.parametrize("option", ["forward_path", "backward_path"])
def test_the_sm90_paths_need_a_hopper_build_and_gpu(option):
    check_kernel_path(option, "sm90", "80,90a", (9, 0))
    for path in ("auto", "sm80"):
        check_kernel_path(option, path, "80", (8, 0))
    for archs, capability in (("80,86", (9, 0)), ("80,90a", (8, 0)), ("90a", (10, 0))):
        with pytest.raises(KernelNotBuiltError, match=f"{option}='sm90' needs an sm_90 GPU and a build for 90a"):
            check_kernel_path(option, "sm90", archs, capability)


# CPython's unchecked macros (PyTuple_GET_ITEM, PyList_SET_ITEM, PyBytes_AS_STRING, ...), the PySequence_Fast
# family and private _Py* functions: none exists in the limited API.
_NOT_IN_LIMITED_API = re.compile(
    r"\b(Py[A-Za-z]+_GET_[A-Z_]+|Py[A-Za-z]+_SET_ITEM|Py[A-Za-z]+_AS_[A-Z_]+|PySequence_Fast[A-Za-z_]*|_Py[A-Za-z_]+)"
    r"\s*\("
)


def test_extension_sources_use_only_the_limited_api():
    """The cp312-abi3 wheel compiles the extension against the stable ABI (nanobind STABLE_ABI, Py_LIMITED_API),
    where the names above do not exist; CI's Python 3.11 build is not limited-API and would compile them, so a
    3.12 build broke unseen once (9eace68's tensor caster). The sources are scanned for them instead."""
    csrc = Path(__file__).resolve().parents[1] / "csrc"
    sources = [p for p in csrc.rglob("*") if p.suffix in (".h", ".cpp", ".cu", ".cuh")]
    assert sources, f"no extension sources under {csrc}"
    found = [f"{p.relative_to(csrc)}:{n}: {m.group(1)}" for p in sources
             for n, line in enumerate(p.read_text().splitlines(), 1) for m in _NOT_IN_LIMITED_API.finditer(line)]
    assert not found, "not in the limited API: " + "; ".join(found)
