"""The CUDA backward's torch glue on the CPU (no kernel runs): `cuda_backward.backward` with a stand-in for `_C`
that records what `attention_backward` is handed, on an sm_90 capability and a 90a build. Which workspace, dS spill
buffers and tile counter each KernelOptions / deterministic combination gets, their shapes and dtypes, what the
debug fill poisons."""

from __future__ import annotations

import contextlib

import pytest
import torch

from sparge_kernels import KernelOptions, cuda_backward
from sparge_kernels.backend import MaskArgs
from sparge_kernels.block_mask import BlockMask

B, H, LQ, LK, D = 1, 2, 300, 200, 128
NQ, NK = 3, 4


class RecordingExtension:
    """What the glue reads of `_C`, and an attention_backward that keeps its keyword arguments."""

    build_head_dims = "64,128"
    build_dtypes = "bf16,fp16"

    def __init__(self, archs: str) -> None:
        self.build_archs = archs
        self.calls: list[dict] = []

    def attention_backward(self, **kwargs) -> None:
        self.calls.append(kwargs)


@pytest.fixture
def run(monkeypatch):
    """run(options, deterministic=False, capability=(9, 0), archs="80,90a") -> the kwargs of the one
    attention_backward call; with calls="all": (the kwargs of every call, the inputs)."""

    def go(options: KernelOptions, deterministic: bool = False, capability=(9, 0), archs: str = "80,90a",
           calls: str | None = None):
        ext = RecordingExtension(archs)
        monkeypatch.setattr(cuda_backward, "_C", ext)
        monkeypatch.setattr(cuda_backward, "current_stream", lambda device: 0)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
        g = torch.Generator().manual_seed(0)
        q, k, v, dout = (torch.randn(B, H, n, D, generator=g).to(torch.bfloat16) for n in (LQ, LK, LK, LQ))
        dense = torch.rand(B, H, NQ, NK, generator=g) < 0.6
        dense[..., 0] = True
        mask = BlockMask.from_dense(dense, seq_len_q=LQ, seq_len_k=LK)
        lse = torch.randn(B, H, LQ)
        m = MaskArgs(mask.kv_count, mask.kv_index, mask.q_count, mask.q_index, 128, 64, 0.1,
                     deterministic=deterministic)
        cuda_backward.backward(dout, q, k, v, q, lse, None, m, options=options)
        for call in ext.calls:  # what the binding checks of every buffer and operand
            for name, value in call.items():
                if isinstance(value, torch.Tensor):
                    assert value.data_ptr() % 16 == 0, f"{name} is not 16-byte aligned"
        if calls is not None:  # every call, with the inputs they were cut from
            return ext.calls, dict(q=q, k=k, v=v, dout=dout, lse=lse, mask=mask)
        assert len(ext.calls) == 1
        call = ext.calls[0]
        call["mask"] = mask
        return call

    return go


def test_bulk_mode_hands_a_zeroed_accumulator_and_no_spill(run):
    call = run(KernelOptions(dq_accumulate="bulk", debug_fill=float("nan")))
    assert "ds_spill" not in call and call["dq_bulk_reduce"] is True
    assert call["dq_accum"].shape == (B, H, NQ * 128, D) and call["dq_accum"].dtype == torch.float32
    assert (call["dq_accum"] == 0).all()
    assert call["tile_counter"] != 0  # the persistent schedule (the default)
    assert torch.isnan(call["dq"]).all() and torch.isnan(call["dk"]).all()


def test_spill_mode_buffers(run):
    call = run(KernelOptions(dq_accumulate="spill", debug_fill=float("nan")))
    mask = call["mask"]
    assert call["ds_spill"].shape == (B * H * NQ * NK, 128, 64) and call["ds_spill"].dtype == torch.bfloat16
    assert torch.equal(call["q_end"], torch.cumsum(mask.q_count.view(-1), 0).view(B, H, NK).int())
    assert call["q_end"].dtype == torch.int32
    assert call["kv_pair"].shape == (B, H, NQ, NK) and call["kv_pair"].dtype == torch.int32
    # The kernels zero the accumulator blocks they use: the glue leaves it unzeroed and the debug fill poisons it.
    assert torch.isnan(call["dq_accum"]).all()
    assert call["tile_counter"] != 0
    assert call["dq_bulk_reduce"] is True  # key blocks past the buffer take the bulk path


def test_atomic_mode(run):
    call = run(KernelOptions(dq_accumulate="atomic"))
    assert "ds_spill" not in call and call["dq_bulk_reduce"] is False and (call["dq_accum"] == 0).all()


def test_spill_buffer_follows_the_budget(run):
    tile = 128 * 64 * 2
    call = run(KernelOptions(dq_accumulate="spill", ds_spill_bytes=5 * tile + 1))
    assert call["ds_spill"].shape[0] == 5
    for options in (KernelOptions(dq_accumulate="spill", ds_spill_bytes=tile - 1),
                    KernelOptions(dq_accumulate="spill", backward_path="sm80")):
        call = run(options)
        assert "ds_spill" not in call and (call["dq_accum"] == 0).all(), options
        assert call["dq_bulk_reduce"] is True, options  # the bulk mode, not atomics


@pytest.mark.parametrize("capability,archs", [((8, 0), "80,90a"), ((9, 0), "80"), ((10, 0), "80,90a,100a")])
def test_spill_needs_the_hopper_backward(run, capability, archs):
    call = run(KernelOptions(dq_accumulate="spill"), capability=capability, archs=archs)
    assert "ds_spill" not in call and (call["dq_accum"] == 0).all() and call["dq_bulk_reduce"] is True


def test_deterministic_modes(run):
    call = run(KernelOptions(dq_accumulate="bulk", debug_fill=float("nan")), deterministic=True)
    assert call["dq_accum"] is None and "ds_spill" not in call and call["tile_counter"] == 0
    call = run(KernelOptions(dq_accumulate="spill", debug_fill=float("nan")), deterministic=True)
    assert call["dq_accum"] is None and call["deterministic"] is True
    assert call["ds_spill"].shape == (B * H * NQ * NK, 128, 64)
    assert call["tile_counter"] != 0  # the spill kernels keep the persistent schedule in this mode


@pytest.mark.parametrize("deterministic", [False, True])
def test_spill_head_groups_launch_once_per_group_on_views(run, deterministic):
    """ds_spill_head_groups=2 with H=2: one call per head, each on that head's views of the operands and gradients
    (the same storage), its own mask rows, pair numbering, workspace and tile counter, and one dS buffer for both,
    sized for one head."""
    calls, inputs = run(KernelOptions(dq_accumulate="spill", ds_spill_head_groups=2), deterministic=deterministic,
                        calls="all")
    assert len(calls) == H == 2
    mask = inputs["mask"]
    assert calls[0]["ds_spill"] is calls[1]["ds_spill"] and calls[0]["ds_spill"].shape[0] == B * 1 * NQ * NK
    for head, call in enumerate(calls):
        for name in ("q", "k", "v", "dout"):
            assert call[name].shape[1] == 1 and torch.equal(call[name], inputs[name][:, head:head + 1]), name
        assert torch.equal(call["lse"], inputs["lse"][:, head:head + 1])
        for name in ("kv_count", "kv_index", "q_count", "q_index"):
            assert torch.equal(call[name], getattr(mask, name)[:, head:head + 1]), name
        assert torch.equal(call["q_end"], torch.cumsum(mask.q_count[:, head].reshape(-1), 0).view(B, 1, NK).int())
        assert call["kv_pair"].shape == (B, 1, NQ, NK) and call["lse_log2"].shape == (B, 1, NQ * 128)
        assert (call["dq_accum"] is None) == deterministic
        assert call["tile_counter"] != 0
    # the gradients are views of one tensor per operand: head 1's start one head after head 0's
    for name in ("dq", "dk", "dv"):
        first, second = calls[0][name], calls[1][name]
        assert first.shape[1] == 1 and second.data_ptr() - first.data_ptr() == first.stride(1) * first.element_size()


def test_head_groups_only_for_spill(run):
    for options in (KernelOptions(dq_accumulate="bulk", ds_spill_head_groups=2),
                    KernelOptions(dq_accumulate="spill", ds_spill_head_groups=2, ds_spill_bytes=0),  # no buffer
                    KernelOptions(dq_accumulate="spill", ds_spill_head_groups=2, backward_path="sm80")):
        calls, _ = run(options, calls="all")  # one call over all heads
        assert len(calls) == 1 and calls[0]["q"].shape[1] == H and "ds_spill" not in calls[0], options

