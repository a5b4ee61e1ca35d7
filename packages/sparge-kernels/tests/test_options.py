"""Kernel choices as one frozen KernelOptions, set for a scope by kernel_options() (CPU: no kernel runs)."""

from __future__ import annotations

import dataclasses
import threading

import pytest
import torch

import sparge_kernels as sk
from sparge_kernels.options import current_kernel_options


def test_defaults(monkeypatch):
    monkeypatch.delenv("SPARGE_FORWARD_PATH", raising=False)
    monkeypatch.delenv("SPARGE_BACKWARD_PATH", raising=False)
    monkeypatch.delenv("SPARGE_DQ_ACCUMULATE", raising=False)
    assert current_kernel_options() == sk.KernelOptions("auto", "spill", None)
    assert current_kernel_options().mask_schedule == "auto"
    monkeypatch.setenv("SPARGE_FORWARD_PATH", "sm80")
    assert current_kernel_options().forward_path == "sm80"
    monkeypatch.setenv("SPARGE_FORWARD_PATH", "sm70")
    with pytest.raises(ValueError, match="SPARGE_FORWARD_PATH must be one of"):
        current_kernel_options()


def test_backward_path_default_and_env(monkeypatch):
    """backward_path: SPARGE_BACKWARD_PATH, else "auto" (the Hopper kernel where it can run, else
    SM80); independent of forward_path; positional KernelOptions(forward, dq, fill) keeps its meaning."""
    monkeypatch.delenv("SPARGE_FORWARD_PATH", raising=False)
    monkeypatch.delenv("SPARGE_BACKWARD_PATH", raising=False)
    assert current_kernel_options().backward_path == "auto"
    assert sk.KernelOptions("sm80", "atomic", None).backward_path == "auto"
    monkeypatch.setenv("SPARGE_BACKWARD_PATH", "sm90")
    assert current_kernel_options() == sk.KernelOptions(backward_path="sm90")
    with sk.kernel_options(forward_path="sm80") as scoped:  # a scope starts from the env defaults
        assert scoped.backward_path == "sm90" and scoped.forward_path == "sm80"
    with sk.kernel_options(backward_path="sm80") as scoped:
        assert current_kernel_options().backward_path == "sm80"
    monkeypatch.setenv("SPARGE_BACKWARD_PATH", "hopper")
    with pytest.raises(ValueError, match="SPARGE_BACKWARD_PATH must be one of"):
        current_kernel_options()


@pytest.mark.parametrize(
    "fields,exc,match",
    [
        (dict(forward_path="sm75"), ValueError, "KernelOptions.forward_path must be one of"),
        (dict(backward_path="sm100"), ValueError, "KernelOptions.backward_path must be one of"),
        (dict(backward_path=None), ValueError, "KernelOptions.backward_path must be one of"),
        (dict(dq_accumulate="fast"), ValueError, "KernelOptions.dq_accumulate must be one of"),
        (dict(backward_schedule="static"), ValueError, "KernelOptions.backward_schedule must be one of"),
        (dict(mask_schedule="overlap"), ValueError, "KernelOptions.mask_schedule must be one of"),
        (dict(debug_fill="nan"), TypeError, "KernelOptions.debug_fill must be a float or None, got str"),
        (dict(debug_fill=True), TypeError, "KernelOptions.debug_fill"),
        (dict(ds_spill_bytes=-1), ValueError, "KernelOptions.ds_spill_bytes must be >= 0"),
        (dict(ds_spill_bytes=1.5), TypeError, "KernelOptions.ds_spill_bytes must be an int, got float"),
        (dict(ds_spill_bytes=True), TypeError, "KernelOptions.ds_spill_bytes must be an int, got bool"),
        (dict(ds_spill_head_groups=-1), ValueError, "KernelOptions.ds_spill_head_groups must be >= 0"),
        (dict(ds_spill_head_groups=2.0), TypeError, "KernelOptions.ds_spill_head_groups must be an int, got float"),
    ],
)
def test_bad_values_name_the_field(fields, exc, match):
    with pytest.raises(exc, match=match):
        sk.KernelOptions(**fields)
    with pytest.raises(exc, match=match):
        with sk.kernel_options(**fields):
            pass
    assert current_kernel_options() == sk.KernelOptions()


def test_unknown_field_is_named():
    with pytest.raises(TypeError, match="unknown field 'forward'"):
        with sk.kernel_options(forward="sm80"):
            pass


def test_frozen_and_debug_fill_is_a_float():
    options = sk.KernelOptions(debug_fill=0)
    assert options.debug_fill == 0.0 and isinstance(options.debug_fill, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.forward_path = "sm80"


def test_scopes_nest_and_restore_on_exit_and_on_error():
    with sk.kernel_options(forward_path="sm80") as outer:
        assert current_kernel_options() is outer
        with sk.kernel_options(dq_accumulate="atomic") as inner:
            assert inner == sk.KernelOptions("sm80", "atomic", None)  # fields not given are kept
        assert current_kernel_options() == outer
        with pytest.raises(RuntimeError, match="boom"):
            with sk.kernel_options(debug_fill=float("nan")):
                raise RuntimeError("boom")
        assert current_kernel_options() == outer
        with sk.kernel_options(sk.KernelOptions(dq_accumulate="atomic")) as given:  # a whole options object
            assert given == sk.KernelOptions("auto", "atomic", None)
    assert current_kernel_options() == sk.KernelOptions()


def test_scope_is_seen_by_other_threads():
    """Process-wide on purpose: the autograd engine runs CUDA backward ops in its own threads."""
    seen = []
    with sk.kernel_options(dq_accumulate="atomic"):
        worker = threading.Thread(target=lambda: seen.append(current_kernel_options()))
        worker.start()
        worker.join()
    assert seen == [sk.KernelOptions(dq_accumulate="atomic")]


def test_compiled_call_inside_a_scope():
    """The options are never read in traced code: a fullgraph-compiled call inside a scope traces as usual."""
    torch._dynamo.reset()
    q, k, v = (torch.randn(1, 2, 100, 16) for _ in range(3))
    f = torch.compile(lambda q, k, v: sk.sparge_attention(q, k, v, topk=0.3, topp=0.3, block_q=32, block_k=16),
                      fullgraph=True, backend="aot_eager")
    with sk.kernel_options(forward_path="sm80", dq_accumulate="atomic"):
        out = f(q, k, v)
    torch.testing.assert_close(out, sk.sparge_attention(q, k, v, topk=0.3, topp=0.3, block_q=32, block_k=16))


def test_ds_spill_tiles_follow_the_budget_and_the_dense_bound():
    """The dS spill buffer holds what the budget allows in whole (block_q x block_k) tiles, never more tiles than a
    dense mask has (query block, key block) pairs."""
    from sparge_kernels.cuda_backward import ds_spill_tiles

    tile = 128 * 64 * 2
    assert ds_spill_tiles(1, 12, 256, 512, 128, 64, 2, 2 << 30) == (2 << 30) // tile  # 1.3B: the budget binds
    assert ds_spill_tiles(1, 2, 3, 5, 128, 64, 2, 2 << 30) == 30  # small: the dense bound binds
    assert ds_spill_tiles(1, 12, 256, 512, 128, 64, 2, tile - 1) == 0
    assert ds_spill_tiles(2, 3, 4, 5, 128, 64, 2, 7 * tile + 5) == 7
    assert sk.KernelOptions().ds_spill_bytes == 2 << 30
    assert sk.KernelOptions().ds_spill_head_groups == 0  # automatic
    from sparge_kernels.cuda_backward import auto_spill_head_groups

    # a 5% mask's tiles with 25% to spare: one group at 1.3B (1.6 of 2 GiB), 14 at 14B (28.6 GB)
    assert auto_spill_head_groups(1, 12, 256, 512, 128, 64, 2, 2 << 30) == 1
    assert auto_spill_head_groups(1, 40, 591, 1182, 128, 64, 2, 2 << 30) == 14
    assert auto_spill_head_groups(1, 40, 591, 1182, 128, 64, 2, 0) == 40  # at most one group per head


def test_spill_head_groups():
    from sparge_kernels.cuda_backward import spill_head_groups

    assert spill_head_groups(12, 1) == [(0, 12)]
    assert spill_head_groups(40, 12) == [(0, 3), (3, 6), (6, 10), (10, 13), (13, 16), (16, 20), (20, 23), (23, 26),
                                         (26, 30), (30, 33), (33, 36), (36, 40)]
    assert spill_head_groups(3, 5) == [(0, 1), (1, 2), (2, 3)]  # at most one group per head


def test_dq_accumulate_default_from_the_environment(monkeypatch):
    """SPARGE_DQ_ACCUMULATE sets the default dQ mode (how a training process is switched, e.g. bench_train's
    sparse-bulk mode); a scope still overrides it; a bad value names the variable; unset, "spill"."""
    monkeypatch.setenv("SPARGE_DQ_ACCUMULATE", "bulk")
    assert current_kernel_options().dq_accumulate == "bulk"
    with sk.kernel_options(dq_accumulate="atomic") as scoped:
        assert scoped.dq_accumulate == "atomic"
    monkeypatch.setenv("SPARGE_DQ_ACCUMULATE", "fast")
    with pytest.raises(ValueError, match="SPARGE_DQ_ACCUMULATE must be one of"):
        current_kernel_options()
    monkeypatch.delenv("SPARGE_DQ_ACCUMULATE")
    assert current_kernel_options().dq_accumulate == "spill"
