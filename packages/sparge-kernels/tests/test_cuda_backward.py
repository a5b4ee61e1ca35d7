"""CUDA block-sparse attention backward vs the float64 reference (GPU only).

The backward is tested on its own: out and lse come from the CUDA forward, and dq, dk, dv from
`cuda_backward.backward` are compared with `reference.attention_backward` run in float64 on the same (rounded)
inputs, out, lse, dout, dlse.

Error budgets (relative Frobenius error of each gradient, whole tensor and every (b, h) slice with a nonzero
reference): bf16 ≤ 2e-2, fp16 ≤ 5e-3 — the kernels round P and dS to the input dtype before the dV, dK, dQ GEMMs
(bf16 keeps 8 mantissa bits, fp16 11), accumulate in fp32. Where the reference gradient is exactly zero (query
blocks that kept no key, key blocks no query kept) the kernel's must be exactly zero.
Outputs are poisoned with NaN before every launch (KernelOptions.debug_fill) and must come back finite.
Every test runs on both dK/dV kernels (KernelOptions.backward_path "sm80" and "sm90"). deterministic=True with
"sm90" runs the Hopper dK/dV kernel without dQ, then the SM80 per-query-block dQ kernel (one CTA per key block
whatever the schedule, so its sm90-persistent copies skip). Variants this build or GPU lacks skip (conftest.py),
the sm90 path too where the GPU is not sm_90 or the build has no 90a.
"""

from __future__ import annotations

import dataclasses
import threading

import pytest
import torch

import sparge_kernels as sk
from sparge_kernels import KernelOptions, cuda, cuda_backward, cuda_forward, reference
from sparge_kernels.backend import MaskArgs
from sparge_kernels.block_mask import BlockMask
from sparge_kernels.options import current_kernel_options
from sparge_kernels.validation import KernelNotBuiltError, check_kernel_path, num_blocks

pytestmark = pytest.mark.gpu

REL_BUDGET = {torch.bfloat16: 2e-2, torch.float16: 5e-3}


@pytest.fixture(autouse=True, params=["sm80", "sm90-tile", "sm90-persistent"])
def backward_path(request, monkeypatch):
    """Runs each test on one dK/dV kernel, outputs poisoned with NaN; the Hopper one with both schedules (one CTA
    per key block; persistent, the default). A deterministic=True case on the Hopper path runs one CTA per key
    block whatever the schedule: its sm90-persistent copy skips instead of repeating sm90-tile. Yields the path."""
    path, _, schedule = request.param.partition("-")
    callspec = getattr(request.node, "callspec", None)
    if schedule == "persistent" and callspec is not None and callspec.params.get("deterministic") is True:
        pytest.skip(DETERMINISTIC_ONCE)
    if path == "sm90":  # (conftest skipped the test already where there is no GPU or no build)
        try:
            check_kernel_path("backward_path", "sm90", cuda._C.build_archs, torch.cuda.get_device_capability())
        except KernelNotBuiltError as exc:
            pytest.skip(f"no Hopper backward here: {exc}")
    monkeypatch.delenv("SPARGE_BACKEND", raising=False)
    schedule = schedule or KernelOptions().backward_schedule  # sm80 ignores it
    with sk.kernel_options(backward_path=path, backward_schedule=schedule, debug_fill=float("nan")):
        yield path


def with_current_schedule(**fields) -> KernelOptions:
    """KernelOptions with `fields`, keeping the backward schedule the fixture set (tests that pass options
    explicitly run on both Hopper schedules too)."""
    return KernelOptions(backward_schedule=current_kernel_options().backward_schedule, **fields)


DETERMINISTIC_ONCE = "deterministic=True runs one CTA per key block on the Hopper path: sm90-tile covers it"


def deterministic_once(backward_path):
    """For tests that only run deterministic=True: their sm90-persistent copy would repeat sm90-tile."""
    if backward_path == "sm90" and current_kernel_options().backward_schedule == "persistent":
        pytest.skip(DETERMINISTIC_ONCE)


def forward(q, k, v, mask, scale):
    """out, lse of the CUDA forward for HND views."""
    m = MaskArgs(mask.kv_count, mask.kv_index, mask.q_count, mask.q_index, 128, 64, scale)
    return cuda_forward.forward(q, k, v, m)


def make_inputs(b, h, lq, lk, d, dtype, layout="HND", seed=0, q_scale=1.0):
    """Fresh random q, k, v, dout as HND views (NHD memory when layout == 'NHD')."""
    g = torch.Generator(device="cuda").manual_seed(seed)

    def rand(n, s=1.0):
        shape = (b, h, n, d) if layout == "HND" else (b, n, h, d)
        x = (torch.randn(shape, generator=g, device="cuda") * s).to(dtype)
        return x if layout == "HND" else x.transpose(1, 2)

    return rand(lq, q_scale), rand(lk), rand(lk), rand(lq)


def random_mask(b, h, lq, lk, density, seed=0, empty_rows=0.0):
    g = torch.Generator(device="cuda").manual_seed(seed + 1)
    nq, nk = num_blocks(lq, 128), num_blocks(lk, 64)
    dense = torch.rand(b, h, nq, nk, generator=g, device="cuda") < density
    if empty_rows:
        dense &= ~(torch.rand(b, h, nq, 1, generator=g, device="cuda") < empty_rows)
    return BlockMask.from_dense(dense, block_q=128, block_k=64, seq_len_q=lq, seq_len_k=lk)


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.double() - ref).norm() / ref.norm().clamp_min(1e-300))


def check_gradient(name, got, ref, dtype):
    """got (dtype) vs ref (float64): finite, exact zeros where ref is zero, relative error within budget."""
    assert got.dtype == dtype and got.shape == ref.shape, name
    assert torch.isfinite(got).all(), f"{name}: NaN/inf (unwritten or overflowed elements)"
    zero = (ref == 0).all(dim=-1)
    assert (got[zero] == 0).all(), f"{name}: nonzero gradient where the reference is exactly zero"
    budget = REL_BUDGET[dtype]
    if ref.norm() > 0:
        err = rel_err(got, ref)
        assert err <= budget, f"{name}: relative error {err:.2e} > {budget:.0e}"
    b, h = ref.shape[:2]
    for i in range(b):
        for j in range(h):
            if ref[i, j].norm() > 0:
                err = rel_err(got[i, j], ref[i, j])
                assert err <= budget, f"{name}[{i},{j}]: relative error {err:.2e} > {budget:.0e}"


def run_case(b, h, lq, lk, d, dtype, *, density=0.3, layout="HND", dlse=True, deterministic=False,
             empty_rows=0.2, seed=0, scale=None, q_scale=1.0, mask=None):
    q, k, v, dout = make_inputs(b, h, lq, lk, d, dtype, layout, seed, q_scale)
    mask = mask if mask is not None else random_mask(b, h, lq, lk, density, seed, empty_rows)
    scale = d**-0.5 if scale is None else scale
    out, lse = forward(q, k, v, mask, scale)
    g = torch.Generator(device="cuda").manual_seed(seed + 7)
    dl = torch.randn(b, h, lq, generator=g, device="cuda") if dlse else None
    args = (mask.kv_count, mask.kv_index, mask.q_count, mask.q_index, 128, 64, scale)
    dq, dk, dv = cuda_backward.backward(dout, q, k, v, out, lse, dl, MaskArgs(*args, deterministic=deterministic))
    ref = reference.attention_backward(
        dout.double(), q.double(), k.double(), v.double(), out.double(), lse.double(),
        dl.double() if dl is not None else None, mask.kv_count, mask.kv_index, 128, 64, scale,
    )
    for name, got, r in zip(("dq", "dk", "dv"), (dq, dk, dv), ref):
        check_gradient(name, got, r, dtype)
    return (q, k, v), (dq, dk, dv)


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("layout", ["HND", "NHD"])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_random_masks_tails_layouts(dtype, d, layout, deterministic):
    # 700 = 5·128 + 60 query rows, 900 = 14·64 + 4 keys: partial last blocks on both sides; 20% empty rows.
    inputs, grads = run_case(2, 3, 700, 900, d, dtype, layout=layout, deterministic=deterministic)
    for x, gx in zip(inputs, grads):  # gradients come back in the inputs' memory layout
        assert gx.stride() == x.stride()


@pytest.mark.parametrize("d", [64, 128])
def test_atomic_dq_accumulation(d):
    """The 8-byte-atomic dQ path (the non-Hopper default, a benchmark knob on Hopper) against the reference."""
    with sk.kernel_options(dq_accumulate="atomic"):
        run_case(2, 3, 700, 900, d, torch.bfloat16, layout="NHD")


@pytest.mark.parametrize("lq,lk", [(65, 300), (300, 65), (128, 64), (1, 1), (1000, 130), (2048, 4096)])
@pytest.mark.parametrize("deterministic", [False, True])
def test_lengths_and_lq_ne_lk(lq, lk, deterministic):
    run_case(1, 2, lq, lk, 128, torch.bfloat16, density=0.5, empty_rows=0.1, deterministic=deterministic)


@pytest.mark.parametrize("deterministic", [False, True])
def test_full_mask_equals_dense_autograd(deterministic):
    """All blocks kept: gradients equal dense attention's autograd gradients in float64."""
    b, h, lq, lk, d = 1, 2, 500, 333, 64
    q, k, v, dout = make_inputs(b, h, lq, lk, d, torch.bfloat16)
    mask = random_mask(b, h, lq, lk, density=1.1)
    _, (dq, dk, dv) = run_case(b, h, lq, lk, d, torch.bfloat16, mask=mask, dlse=False, deterministic=deterministic)
    qd, kd, vd = (x.double().requires_grad_() for x in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(qd, kd, vd)
    out.backward(dout.double())
    for name, got, ref in (("dq", dq, qd.grad), ("dk", dk, kd.grad), ("dv", dv, vd.grad)):
        assert rel_err(got, ref) <= REL_BUDGET[torch.bfloat16], name


def test_one_block_per_row_and_large_scores():
    b, h, lq, lk = 1, 4, 1000, 1000
    g = torch.Generator(device="cuda").manual_seed(5)
    nq, nk = num_blocks(lq, 128), num_blocks(lk, 64)
    pick = torch.randint(0, nk, (b, h, nq, 1), generator=g, device="cuda")
    dense = torch.zeros(b, h, nq, nk, dtype=torch.bool, device="cuda").scatter_(-1, pick, True)
    mask = BlockMask.from_dense(dense, seq_len_q=lq, seq_len_k=lk)
    run_case(b, h, lq, lk, 128, torch.bfloat16, mask=mask)
    run_case(b, h, lq, lk, 128, torch.bfloat16, density=0.3, q_scale=8.0, seed=3)  # peaked softmax


def test_empty_mask_gives_exact_zeros():
    b, h, lq, lk, d = 1, 2, 300, 200, 128
    q, k, v, dout = make_inputs(b, h, lq, lk, d, torch.bfloat16)
    mask = random_mask(b, h, lq, lk, density=0.0)
    out, lse = forward(q, k, v, mask, 0.1)
    for det in (False, True):
        m = MaskArgs(mask.kv_count, mask.kv_index, mask.q_count, mask.q_index, 128, 64, 0.1, deterministic=det)
        dq, dk, dv = cuda_backward.backward(dout, q, k, v, out, lse, torch.randn_like(lse), m)
        for t in (dq, dk, dv):
            assert (t == 0).all()


def test_dlse_none_equals_zero_dlse(backward_path):
    deterministic_once(backward_path)
    b, h, lq, lk, d = 1, 2, 600, 600, 64
    q, k, v, dout = make_inputs(b, h, lq, lk, d, torch.float16)
    mask = random_mask(b, h, lq, lk, density=0.4)
    out, lse = forward(q, k, v, mask, 0.125)
    m = MaskArgs(mask.kv_count, mask.kv_index, mask.q_count, mask.q_index, 128, 64, 0.125, deterministic=True)
    a = cuda_backward.backward(dout, q, k, v, out, lse, None, m)
    z = cuda_backward.backward(dout, q, k, v, out, lse, torch.zeros_like(lse), m)
    for x, y in zip(a, z):
        assert torch.equal(x, y)


def test_deterministic_is_bitwise_reproducible(backward_path):
    """Twice the same bits; dK, dV also those of the same path's default mode (no atomics in either: the Hopper
    dK/dV kernel without dQ runs the same dK/dV arithmetic as the one with it)."""
    deterministic_once(backward_path)
    b, h, lq, lk, d = 2, 4, 1500, 1500, 128
    q, k, v, dout = make_inputs(b, h, lq, lk, d, torch.bfloat16, seed=11)
    mask = random_mask(b, h, lq, lk, density=0.5, seed=11)
    out, lse = forward(q, k, v, mask, d**-0.5)
    dlse = torch.randn_like(lse)
    args = (mask.kv_count, mask.kv_index, mask.q_count, mask.q_index, 128, 64, d**-0.5)
    first = cuda_backward.backward(dout, q, k, v, out, lse, dlse, MaskArgs(*args, deterministic=True))
    second = cuda_backward.backward(dout, q, k, v, out, lse, dlse, MaskArgs(*args, deterministic=True))
    for x, y in zip(first, second):
        assert torch.equal(x, y)
    # The atomic mode differs only in dQ's summation order; dK and dV never use atomics. (Options passed explicitly.)
    atomic = cuda_backward.backward(
        dout, q, k, v, out, lse, dlse, MaskArgs(*args, deterministic=False),
        options=KernelOptions(dq_accumulate="atomic", debug_fill=float("nan"), backward_path=backward_path),
    )
    assert torch.equal(atomic[1], first[1]) and torch.equal(atomic[2], first[2])
    assert rel_err(atomic[0], first[0].double()) <= 1e-2


def test_strided_and_odd_inputs():
    """Non-contiguous views (a slice of a wider head dim, a sliced sequence) are copied or read through strides."""
    b, h, lq, lk, d = 1, 2, 400, 300, 64
    g = torch.Generator(device="cuda").manual_seed(9)
    wide = torch.randn(b, h, lq + 5, 2 * d, generator=g, device="cuda").to(torch.bfloat16)
    q = wide[:, :, 3 : 3 + lq, :d]  # row stride 2d, odd row offset
    k = torch.randn(b, h, lk, d, generator=g, device="cuda").to(torch.bfloat16)
    v = torch.randn(b, lk, h, d, generator=g, device="cuda").to(torch.bfloat16).transpose(1, 2)
    dout = torch.randn(b, h, lq, d, generator=g, device="cuda").to(torch.bfloat16)
    mask = random_mask(b, h, lq, lk, density=0.5)
    out, lse = forward(q, k, v, mask, 0.2)
    m = MaskArgs(mask.kv_count, mask.kv_index, mask.q_count, mask.q_index, 128, 64, 0.2, deterministic=False)
    dq, dk, dv = cuda_backward.backward(dout, q, k, v, out, lse, None, m)
    ref = reference.attention_backward(dout.double(), q.double(), k.double(), v.double(), out.double(),
                                       lse.double(), None, mask.kv_count, mask.kv_index, 128, 64, 0.2)
    for name, got, r in zip(("dq", "dk", "dv"), (dq, dk, dv), ref):
        check_gradient(name, got, r, torch.bfloat16)


def test_bad_arguments_raise():
    q, k, v, dout = make_inputs(1, 1, 128, 64, 64, torch.bfloat16)
    mask = random_mask(1, 1, 128, 64, 1.0)
    lse = torch.zeros(1, 1, 128, device="cuda")
    idx = (mask.kv_count, mask.kv_index, mask.q_count, mask.q_index)
    with pytest.raises(ValueError, match="block_q"):
        cuda_backward.backward(dout, q, k, v, q, lse, None, MaskArgs(*idx, 64, 64, 0.1))
    with pytest.raises(TypeError, match="float16 or bfloat16"):
        cuda_backward.backward(dout.float(), q.float(), k.float(), v.float(), q.float(), lse, None,
                               MaskArgs(*idx, 128, 64, 0.1))
    with pytest.raises(ValueError, match="head dim"):
        q3, k3, v3, d3 = make_inputs(1, 1, 128, 64, 96, torch.bfloat16)
        cuda_backward.backward(d3, q3, k3, v3, q3, lse, None, MaskArgs(*idx, 128, 64, 0.1))


@pytest.mark.parametrize("dtype,d,layout", [(torch.bfloat16, 128, "HND"), (torch.float16, 64, "NHD"),
                                            (torch.bfloat16, 64, "NHD"), (torch.float16, 128, "HND")])
def test_sm80_and_sm90_agree(backward_path, dtype, d, layout):
    """The Hopper kernel against the SM80 one on the same inputs: both round P and dS to the input dtype, so they
    differ only by fp32 summation order (and the rare P/dS element that rounds the other way)."""
    if backward_path == "sm80":
        pytest.skip("compares both paths; runs once, as the sm90 case")
    b, h, lq, lk = 2, 3, 700, 900  # tails on both sides, Lq != Lk
    q, k, v, dout = make_inputs(b, h, lq, lk, d, dtype, layout, seed=4)
    mask = random_mask(b, h, lq, lk, density=0.3, seed=4, empty_rows=0.2)
    scale = d**-0.5
    out, lse = forward(q, k, v, mask, scale)
    dlse = torch.randn_like(lse)
    m = MaskArgs(mask.kv_count, mask.kv_index, mask.q_count, mask.q_index, 128, 64, scale, deterministic=False)
    grads = {
        path: cuda_backward.backward(
            dout, q, k, v, out, lse, dlse, m,
            options=with_current_schedule(backward_path=path, debug_fill=float("nan")),
        )
        for path in ("sm80", "sm90")
    }
    budget = {torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
    for name, x, y in zip(("dq", "dk", "dv"), grads["sm90"], grads["sm80"]):
        assert torch.isfinite(x).all(), f"{name}: NaN/inf from the sm90 kernel"
        assert (x[(y == 0).all(dim=-1)] == 0).all(), f"{name}: sm90 nonzero in rows where sm80 is exactly zero"
        err = rel_err(x, y.double())
        assert err <= budget, f"{name}: sm90 vs sm80 relative difference {err:.2e} > {budget:.0e}"


def small_case(deterministic: bool = False) -> tuple:
    """cuda_backward.backward's positional arguments for a small case (the kernel-name checks)."""
    q, k, v, dout = make_inputs(1, 2, 300, 200, 128, torch.bfloat16)
    mask = random_mask(1, 2, 300, 200, density=0.6)
    out, lse = forward(q, k, v, mask, 0.1)
    m = MaskArgs(mask.kv_count, mask.kv_index, mask.q_count, mask.q_index, 128, 64, 0.1, deterministic=deterministic)
    return dout, q, k, v, out, lse, None, m


def launched_kernels(args: tuple, options: KernelOptions) -> list[str]:
    """The CUDA kernel names one backward launches (torch.profiler); skips where it records no sm90 names."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        cuda_backward.backward(*args, options=options)
        torch.cuda.synchronize()
    names = sorted({e.name for e in prof.events()})
    if not any("attention_backward_sm90_kernel" in n for n in names):
        pytest.skip(f"torch.profiler recorded no sm90 kernel names here ({len(names)} events)")
    return names


# --------------------------------------------------------------------- dQ accumulation modes ("bulk", "atomic")
def mask_with_holes(b, h, lq, lk, density, seed):
    """A random block mask with an empty query block and an unattended key block in every (b, h) where there are
    enough blocks (exact-zero rows of dq and of dk/dv); the last query and key blocks (the tails) meet."""
    g = torch.Generator(device="cuda").manual_seed(seed + 11)
    nq, nk = num_blocks(lq, 128), num_blocks(lk, 64)
    dense = torch.rand(b, h, nq, nk, generator=g, device="cuda") < density
    if nq > 2:
        dense[:, :, 1] = False  # a query block that keeps nothing: dq = 0 there
    if nk > 3:
        dense[:, :, :, 2] = False  # a key block nobody keeps: dk = dv = 0 there
    dense[:, :, nq - 1, nk - 1] = True  # the two tail blocks meet (neither is an emptied one)
    return BlockMask.from_dense(dense, block_q=128, block_k=64, seq_len_q=lq, seq_len_k=lk)


# (lq, lk): tails on both sides with Lq > Lk and Lq < Lk; one key block walking 16 query blocks (the ring and the
# bulk staging reused many times); a single partial query block.
DQ_MODE_LENGTHS = [(700, 900), (900, 333), (2048, 1000), (100, 4100)]


@pytest.mark.parametrize("lq,lk", DQ_MODE_LENGTHS)
@pytest.mark.parametrize("dtype,d", [(torch.bfloat16, 128), (torch.bfloat16, 64), (torch.float16, 128),
                                     (torch.float16, 64)])
@pytest.mark.parametrize("dq_accumulate", ["bulk", "atomic", "spill"])
def test_dq_accumulate_modes_against_reference(dq_accumulate, dtype, d, lq, lk):
    """Both dQ accumulation modes of each dK/dV kernel (the sm90 one: per-warp bulk reduce-adds into a
    fragment-ordered buffer, or atomics into the row-major one) against the float64 reference; NaN-poisoned
    outputs (the fixture), exact zeros of empty rows and columns, per-(b, h) budgets (check_gradient)."""
    mask = mask_with_holes(2, 3, lq, lk, density=0.4, seed=lq + lk + d)
    with sk.kernel_options(dq_accumulate=dq_accumulate):
        run_case(2, 3, lq, lk, d, dtype, layout="NHD" if d == 64 else "HND", seed=lq + d, mask=mask)


@pytest.mark.parametrize("dtype,d", [(torch.bfloat16, 128), (torch.bfloat16, 64), (torch.float16, 128)])
def test_dq_bulk_and_atomic_agree(backward_path, dtype, d):
    """Same inputs through both modes: dk, dv never depend on how dQ is accumulated (on sm90 they must be
    bitwise equal: the bulk mode stages warpgroup 1's dQ in the P/dS buffers, so a race there would change
    them), dq differs by fp32 summation order only. A dense-ish mask keeps every key block's walk long."""
    b, h, lq, lk = 1, 4, 1500, 1100
    q, k, v, dout = make_inputs(b, h, lq, lk, d, dtype, "HND", seed=9)
    mask = mask_with_holes(b, h, lq, lk, density=0.9, seed=9)
    scale = d**-0.5
    out, lse = forward(q, k, v, mask, scale)
    dlse = torch.randn_like(lse)
    m = MaskArgs(mask.kv_count, mask.kv_index, mask.q_count, mask.q_index, 128, 64, scale, deterministic=False)
    grads = {}
    for mode in ("bulk", "atomic"):
        options = with_current_schedule(backward_path=backward_path, dq_accumulate=mode, debug_fill=float("nan"))
        grads[mode] = cuda_backward.backward(dout, q, k, v, out, lse, dlse, m, options=options)
    budget = {torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
    for name, x, y in zip(("dq", "dk", "dv"), grads["bulk"], grads["atomic"]):
        assert torch.isfinite(x).all() and torch.isfinite(y).all(), name
        if name != "dq" and backward_path == "sm90":
            assert torch.equal(x, y), f"{name}: differs between the dQ modes ({(x != y).sum().item()} elements)"
        assert (x[(y == 0).all(dim=-1)] == 0).all(), f"{name}: bulk nonzero where atomic is exactly zero"
        err = rel_err(x, y.double())
        assert err <= budget, f"{name}: bulk vs atomic relative difference {err:.2e} > {budget:.0e}"


def test_persistent_schedule_matches_tile_schedule(backward_path):
    """The Hopper dK/dV kernel's persistent schedule (one CTA per SM taking key blocks from an atomic counter, the
    next block's loads overlapping the current one) against one CTA per key block: dK and dV bitwise (each is one
    CTA's registers either way), dQ up to the fp32 order of its accumulation. Thousands of key blocks, kept counts
    from 0 to the whole column, tails on both sides; then fewer key blocks than SMs."""
    if backward_path != "sm90" or current_kernel_options().backward_schedule == "persistent":
        pytest.skip("compares the Hopper kernel's two schedules once")
    for b, h, lq, lk, density in ((2, 6, 9000 + 37, 20000 + 5, 0.15), (1, 1, 300, 1000, 0.6)):
        q, k, v, dout = make_inputs(b, h, lq, lk, 128, torch.bfloat16, seed=31)
        mask = random_mask(b, h, lq, lk, density=density, seed=31, empty_rows=0.1)
        scale = 128**-0.5
        out, lse = forward(q, k, v, mask, scale)
        m = MaskArgs(mask.kv_count, mask.kv_index, mask.q_count, mask.q_index, 128, 64, scale, deterministic=False)
        grads = {
            schedule: cuda_backward.backward(
                dout, q, k, v, out, lse, None, m,
                options=KernelOptions(backward_path="sm90", backward_schedule=schedule, debug_fill=float("nan")),
            )
            for schedule in ("tile", "persistent")
        }
        (dq_t, dk_t, dv_t), (dq_p, dk_p, dv_p) = grads["tile"], grads["persistent"]
        assert torch.equal(dk_t, dk_p) and torch.equal(dv_t, dv_p)
        assert torch.isfinite(dq_p).all()
        err = rel_err(dq_p, dq_t.double())
        assert err <= 1e-2, f"dq: persistent vs tile relative difference {err:.2e} > 1e-2"


@pytest.mark.parametrize("dq_accumulate", ["bulk", "atomic"])
def test_sm90_dq_mode_launches_its_convert_kernel(backward_path, dq_accumulate):
    """dq_accumulate reaches the Hopper backward: "bulk" runs the fragment-order dQ conversion (the bulk
    reduce-add kernel's layout), "atomic" the row-major one (CUDA kernel names from torch.profiler)."""
    if backward_path != "sm90":
        pytest.skip("checks the sm90 kernels' names")
    options = with_current_schedule(backward_path="sm90", dq_accumulate=dq_accumulate, debug_fill=float("nan"))
    names = launched_kernels(small_case(), options)
    want, other = "dq_convert_fragment_order_kernel", "dq_convert_rowmajor_kernel"
    if dq_accumulate == "atomic":
        want, other = other, want
    assert any(want in n for n in names) and not any(other in n for n in names), sorted(set(names))


@pytest.mark.parametrize("path", ["sm90", "auto"])
def test_sm90_deterministic_launches_dkdv_without_dq_then_the_dq_kernel(backward_path, path):
    """deterministic=True with dq_accumulate="bulk" and backward_path "sm90", and with "auto" on sm_90 (its default
    there since it ran 1.58x the SM80 pair, tools/results/bwd_deterministic_h200_2026-12-04.md): the Hopper dK/dV
    kernel without dQ
    (the KernelTraitsBwdSm90Stages instance that skips the dS·K GEMM), then the SM80 per-query-block dQ kernel; no
    dQ conversion, no SM80 dK/dV kernel (CUDA kernel names from torch.profiler)."""
    if backward_path != "sm90":
        pytest.skip("checks the sm90 kernels' names")
    deterministic_once(backward_path)
    names = launched_kernels(small_case(deterministic=True),
                             with_current_schedule(backward_path=path, dq_accumulate="bulk"))  # not the spill kernels
    assert any("attention_backward_sm90_kernel" in n and "KernelTraitsBwdSm90Stages" in n for n in names), names
    assert any("dq_kernel" in n for n in names), names
    assert not any("dq_convert" in n or "dkdv_kernel" in n for n in names), names


# ------------------------------------------------------------------------------------ dS spill ("spill")
def spill_budget(mask: BlockMask, fraction: float, itemsize: int = 2) -> int:
    """ds_spill_bytes that hold `fraction` of the mask's kept pairs (whole 128 x 64 tiles)."""
    return int(int(mask.q_count.sum()) * fraction) * 128 * 64 * itemsize


def spill_case(d: int, dtype: torch.dtype, layout: str, seed: int):
    """The spill tests' problem: (B, H, Lq, Lk) = (2, 3, 1500, 2007), a 35% mask with holes, its forward, a random
    dlse and the float64 reference gradients: (q, k, v, dout, mask, scale, out, lse, dlse, ref)."""
    b, h, lq, lk = 2, 3, 1500, 2000 + 7
    q, k, v, dout = make_inputs(b, h, lq, lk, d, dtype, layout, seed=seed)
    mask = mask_with_holes(b, h, lq, lk, density=0.35, seed=seed)
    scale = d**-0.5
    out, lse = forward(q, k, v, mask, scale)
    dlse = torch.randn_like(lse)
    ref = reference.attention_backward(dout.double(), q.double(), k.double(), v.double(), out.double(),
                                       lse.double(), dlse.double(), mask.kv_count, mask.kv_index, 128, 64, scale)
    return q, k, v, dout, mask, scale, out, lse, dlse, ref


@pytest.mark.parametrize("dtype,d,layout", [(torch.bfloat16, 128, "HND"), (torch.float16, 64, "NHD"),
                                            (torch.bfloat16, 64, "HND"), (torch.float16, 128, "NHD")])
def test_ds_spill_against_bulk_and_reference(backward_path, dtype, d, layout):
    """The Hopper dS spill mode with a buffer for every tile, for about half of them (key blocks past the budget
    take the bulk path and the dQ kernel adds their accumulator), for one and for none: against the float64 reference,
    dK/dV bitwise those of the bulk mode (the dK/dV arithmetic is the same), and with every tile spilled dQ bitwise
    reproducible (a fixed order, no atomics). Empty query blocks, unattended key blocks, tails on both sides."""
    if backward_path != "sm90":
        pytest.skip("the spill mode is the Hopper backward's (the SM80 kernels take the bulk path)")
    q, k, v, dout, mask, scale, out, lse, dlse, ref = spill_case(d, dtype, layout, seed=21)
    m = MaskArgs(mask.kv_count, mask.kv_index, mask.q_count, mask.q_index, 128, 64, scale, deterministic=False)

    def run(mode, budget=None):
        budget = KernelOptions().ds_spill_bytes if budget is None else budget
        options = with_current_schedule(backward_path="sm90", dq_accumulate=mode, ds_spill_bytes=budget,
                                        debug_fill=float("nan"))
        return cuda_backward.backward(dout, q, k, v, out, lse, dlse, m, options=options)

    bulk = run("bulk")
    # "one tile": the spill kernels run, yet (almost) every key block takes their bulk path; "none": no buffer at
    # all, so the glue runs the bulk kernels.
    runs = {"all": run("spill"), "half": run("spill", spill_budget(mask, 0.5)),
            "one tile": run("spill", 128 * 64 * q.element_size()), "none": run("spill", 0)}
    for label, grads in runs.items():
        for name, got, r in zip(("dq", "dk", "dv"), grads, ref):
            check_gradient(f"{label}: {name}", got, r, dtype)
        assert torch.equal(grads[1], bulk[1]) and torch.equal(grads[2], bulk[2]), f"{label}: dK/dV differ from bulk"
        err = rel_err(grads[0], bulk[0].double())
        assert err <= 1e-2, f"{label}: dq vs bulk relative difference {err:.2e}"
    assert torch.equal(run("spill")[0], runs["all"][0]), "every tile spilled: dq must be bitwise reproducible"


@pytest.mark.parametrize("fraction", [1.0, 0.5, 0.0])
def test_ds_spill_deterministic(backward_path, fraction):
    """deterministic=True in the spill mode, with a buffer for every tile, about half of them, none: query blocks
    whose key blocks all spilled get dQ from the Hopper dQ kernel, the others from the SM80 per-query-block kernel.
    Against the float64 reference, bitwise reproducible, dK/dV bitwise those of the default bulk mode."""
    if backward_path != "sm90":
        pytest.skip("the spill mode is the Hopper backward's")
    q, k, v, dout, mask, scale, out, lse, dlse, ref = spill_case(128, torch.bfloat16, "HND", seed=23)
    args = (mask.kv_count, mask.kv_index, mask.q_count, mask.q_index, 128, 64, scale)
    options = with_current_schedule(backward_path="sm90", dq_accumulate="spill", debug_fill=float("nan"),
                                    ds_spill_bytes=spill_budget(mask, fraction))
    runs = [cuda_backward.backward(dout, q, k, v, out, lse, dlse, MaskArgs(*args, deterministic=True),
                                   options=options) for _ in range(2)]
    for name, got, r in zip(("dq", "dk", "dv"), runs[0], ref):
        check_gradient(name, got, r, torch.bfloat16)
    for x, y in zip(*runs):
        assert torch.equal(x, y)
    bulk = cuda_backward.backward(dout, q, k, v, out, lse, dlse, MaskArgs(*args, deterministic=False),
                                  options=with_current_schedule(backward_path="sm90", debug_fill=float("nan")))
    assert torch.equal(runs[0][1], bulk[1]) and torch.equal(runs[0][2], bulk[2])


@pytest.mark.parametrize("deterministic", [False, True])
def test_ds_spill_head_groups(backward_path, deterministic):
    """KernelOptions.ds_spill_head_groups: the spill kernels run group after group on views of the operands and
    gradients (B > 1 and NHD memory: strided head slices), reusing one buffer. With a budget of the largest head's
    tiles, every tile fits once the groups are single heads, so the gradients are bitwise those of one group with
    a buffer for everything; two groups of a three-head problem fit only in part (dK/dV still bitwise). Against
    the float64 reference too."""
    if backward_path != "sm90":
        pytest.skip("the spill mode is the Hopper backward's")
    if deterministic and current_kernel_options().backward_schedule == "tile":
        pytest.skip("one schedule is enough for the deterministic case")
    q, k, v, dout, mask, scale, out, lse, dlse, ref = spill_case(64, torch.float16, "NHD", seed=25)
    m = MaskArgs(mask.kv_count, mask.kv_index, mask.q_count, mask.q_index, 128, 64, scale, deterministic=deterministic)
    one_head = int(mask.q_count.sum(dim=(0, 2)).max()) * 128 * 64 * q.element_size()  # a head's tiles, both batches

    def run(groups, budget=None):
        options = with_current_schedule(backward_path="sm90", dq_accumulate="spill", debug_fill=float("nan"),
                                        ds_spill_head_groups=groups, **({} if budget is None else
                                                                        dict(ds_spill_bytes=budget)))
        return cuda_backward.backward(dout, q, k, v, out, lse, dlse, m, options=options)

    whole = run(1)
    for label, grads in (("3 groups", run(3, one_head)), ("2 groups", run(2, one_head))):
        for name, got, r in zip(("dq", "dk", "dv"), grads, ref):
            check_gradient(f"{label}: {name}", got, r, torch.float16)
        assert torch.equal(grads[1], whole[1]) and torch.equal(grads[2], whole[2]), f"{label}: dK/dV differ"
        if label == "3 groups":  # every tile fits: each query block's dQ from the same tiles in the same order
            assert torch.equal(grads[0], whole[0]), f"{label}: dQ differs from one group's"


def test_ds_spill_many_key_blocks_per_query_block(backward_path):
    """A long walk on both sides (every query block keeps most of 80 key blocks, every key block most of 16 query
    blocks): the dQ kernel's ring wraps many times within one query block, and the dK/dV kernel's spill stores
    reuse sdS at every stage."""
    if backward_path != "sm90":
        pytest.skip("the spill mode is the Hopper backward's")
    with sk.kernel_options(dq_accumulate="spill"):
        run_case(1, 2, 2048, 5120, 128, torch.bfloat16, density=0.9, empty_rows=0.0, seed=5)


def test_ds_spill_buffers_on_the_sm80_kernels(backward_path, monkeypatch):
    """Spill buffers handed to the SM80 kernels (what "auto" does where the strides do not suit TMA): they take
    the bulk path and must zero the accumulator the spill mode leaves unzeroed (NaN-poisoned here by debug_fill)."""
    if backward_path != "sm80" or tuple(torch.cuda.get_device_capability()) != (9, 0):
        pytest.skip("needs an sm_90 GPU, on the sm80 path")
    real = cuda_backward._ds_spill_buffer

    def on_any_path(q, group_pairs, tiles, block_q, block_k, options, capability):
        return real(q, group_pairs, tiles, block_q, block_k, dataclasses.replace(options, backward_path="auto"),
                    capability)

    monkeypatch.setattr(cuda_backward, "_ds_spill_buffer", on_any_path)
    with sk.kernel_options(dq_accumulate="spill"):
        run_case(2, 3, 700, 900, 128, torch.bfloat16, density=0.4)


def test_ds_spill_launches_its_kernels(backward_path):
    """"spill" on the Hopper path runs the pair numbering and the dQ kernel, and no dQ conversion (CUDA kernel
    names from torch.profiler); a zero budget runs the bulk mode's kernels."""
    if backward_path != "sm90":
        pytest.skip("checks the sm90 kernels' names")
    args = small_case()
    for budget, want, other in ((1 << 30, "attention_backward_dq_sm90_kernel", "dq_convert_fragment_order_kernel"),
                                (0, "dq_convert_fragment_order_kernel", "attention_backward_dq_sm90_kernel")):
        options = with_current_schedule(backward_path="sm90", dq_accumulate="spill", ds_spill_bytes=budget)
        names = launched_kernels(args, options)
        assert any(want in n for n in names) and not any(other in n for n in names), (budget, names)
        assert any("spill_pairs_kernel" in n for n in names) == (budget > 0), (budget, names)


# ------------------------------------------------------------------------------ through the autograd of the ops
@pytest.mark.parametrize("layout", ["HND", "NHD"])
@pytest.mark.parametrize("deterministic", [False, True])
def test_autograd_with_lse_in_the_loss(monkeypatch, layout, deterministic):
    """return_lse=True and a loss that uses lse: dlse ≠ 0 reaches the kernels through the op's autograd."""
    b, h, lq, lk, d = 1, 3, 520, 450, 128
    q, k, v, _ = make_inputs(b, h, lq, lk, d, torch.bfloat16, layout)
    mask = random_mask(b, h, lq, lk, density=0.4, empty_rows=0.2)
    g = torch.Generator(device="cuda").manual_seed(3)
    w_out = torch.randn(b, h, lq, d, generator=g, device="cuda")
    w_lse = torch.randn(b, h, lq, generator=g, device="cuda")

    def grads(qq, kk, vv):
        qq, kk, vv = (x.detach().requires_grad_() for x in (qq, kk, vv))
        args = [x if layout == "HND" else x.transpose(1, 2) for x in (qq, kk, vv)]
        out, lse = sk.block_sparse_attention(*args, mask, layout=layout, return_lse=True,
                                             deterministic=deterministic)
        out = out if layout == "HND" else out.transpose(1, 2)
        lse_term = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse)).double()
        loss = (out.double() * w_out.double()).sum() + (lse_term * w_lse.double()).sum()
        loss.backward()
        return qq.grad, kk.grad, vv.grad

    got = grads(q, k, v)
    with monkeypatch.context() as env:  # float64 inputs through the reference ops on the GPU
        env.setenv("SPARGE_BACKEND", "reference")
        ref = grads(q.double(), k.double(), v.double())
    for name, x, r in zip(("dq", "dk", "dv"), got, ref):
        check_gradient(name, x, r, torch.bfloat16)


def test_torch_compile_fullgraph_traces_cuda_backward():
    b, h, lq, d = 1, 2, 384, 64
    q, k, v, dout = make_inputs(b, h, lq, lq, d, torch.float16)

    def f(q, k, v):
        return sk.sparge_attention(q, k, v, topk=0.3, topp=0.5)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    grads = []
    for fn in (f, compiled):
        qq, kk, vv = (x.detach().requires_grad_() for x in (q, k, v))
        fn(qq, kk, vv).backward(dout)
        grads.append((qq.grad, kk.grad, vv.grad))
    for x, y in zip(*grads):
        assert torch.isfinite(x).all()
        assert rel_err(x, y.double()) <= 1e-2


def test_options_reach_the_backward_run_by_autograd(monkeypatch, backward_path):
    """kernel_options() is process-wide: the autograd engine runs the backward of CUDA tensors in its own device
    thread, and the glue must see the scope's options there too."""
    seen = []
    real = cuda_backward.current_kernel_options

    def spy():
        seen.append((threading.get_ident(), real()))
        return seen[-1][1]

    monkeypatch.setattr(cuda_backward, "current_kernel_options", spy)
    q, k, v, dout = make_inputs(1, 2, 300, 300, 128, torch.bfloat16)
    q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
    mask = random_mask(1, 2, 300, 300, density=0.5)
    with sk.kernel_options(dq_accumulate="atomic"):
        sk.block_sparse_attention(q, k, v, mask).backward(dout)
    assert [(o.dq_accumulate, o.backward_path) for _, o in seen] == [("atomic", backward_path)]
    assert all(torch.isfinite(x.grad).all() for x in (q, k, v))
