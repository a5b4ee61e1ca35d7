"""CUDA mask prediction (csrc/mask, cuda_mask.py) against the float64 reference.

The kernel pools in fp32, computes scores with fp32 FMAs and softmax with fp32 `__expf`, and sums cumulative
masses in fp32, so its selected set may legitimately differ from the exact (float64) rule only where the
decision is within rounding:
  * Top-k: entries whose probability is within a relative 1e-4 (REL_TOL) of the k-th largest;
  * Top-p: entries whose exclusive cumulative mass (in sorted order, allowing reorderings of entries within
    REL_TOL of each other) is within MASS_TOL = 1.2e-4 of topp.
Everything outside that band must match the float64 rule exactly (`_decided_bounds`), the fp32 PyTorch
reference must fall in the same band, and the band itself must stay small. Exact ties of the probabilities go
to the lower key-block index (test_exact_ties_keep_lower_indices checks it bit-exactly). Output buffers are
poisoned before every launch, and kv_index / q_index must be exactly the canonical ascending, -1-padded
encoding of the same mask, q_* its transpose.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import sparge_kernels
from sparge_kernels import backend, cuda_mask, reference
from sparge_kernels.block_mask import indices_from_dense
from sparge_kernels.reference import topk_count
from sparge_kernels.validation import num_blocks

pytestmark = pytest.mark.gpu

REL_TOL = 1e-4  # relative error budget of a kernel probability (fp32 pooling, dot products, __expf)
MASS_TOL = 1.2e-4  # absolute error budget of a kernel cumulative mass (REL_TOL of the mass + fp32 summation)
MAX_UNDECIDED = 0.05  # the tolerance band may cover at most this fraction of (query block, key block) pairs
POISON = -123_456_789


# ------------------------------------------------------------------------------------------------- inputs
def _smooth(b: int, h: int, length: int, d: int, gen: torch.Generator) -> torch.Tensor:
    """(B, H, L, D) float32: a random field varying smoothly along the tokens (period ~100 tokens)."""
    coarse = torch.randn(b * h, d, length // 96 + 2, generator=gen, device="cuda")
    field = F.interpolate(coarse, size=length, mode="linear", align_corners=True)
    return field.reshape(b, h, d, length).transpose(-1, -2)


def make_qk(b, h, lq, lk, d, *, kind="structured", dtype=torch.bfloat16, layout="HND", seed=0):
    """q, k as HND views (NHD: transposed views of contiguous (B, L, H, D) tensors)."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    if kind == "random":
        q = torch.randn(b, h, lq, d, generator=gen, device="cuda")
        k = torch.randn(b, h, lk, d, generator=gen, device="cuda")
    else:
        # q and k share a smooth field (as after projection of the same video tokens) plus noise: peaked rows.
        n = max(lq, lk)
        shared = _smooth(b, h, n, d, gen)
        def noise(length):
            return 0.3 * torch.randn(b, h, length, d, generator=gen, device="cuda")

        q = shared[:, :, :lq] + 0.5 * _smooth(b, h, lq, d, gen) + noise(lq)
        k = shared[:, :, :lk] + 0.5 * _smooth(b, h, lk, d, gen) + noise(lk)
    q, k = q.to(dtype), k.to(dtype)
    if layout == "NHD":
        q, k = q.transpose(1, 2).contiguous().transpose(1, 2), k.transpose(1, 2).contiguous().transpose(1, 2)
    return q, k


def _poisoned_outputs(b, h, nq, nk):
    return (
        torch.full((b, h, nq), POISON, dtype=torch.int32, device="cuda"),
        torch.full((b, h, nq, nk), POISON, dtype=torch.int32, device="cuda"),
        torch.full((b, h, nk), POISON, dtype=torch.int32, device="cuda"),
        torch.full((b, h, nk, nq), POISON, dtype=torch.int32, device="cuda"),
    )


def run_kernel(q, k, topk, topp, block_q, block_k, scale, **kwargs):
    b, h, lq, _ = q.shape
    nq, nk = num_blocks(lq, block_q), num_blocks(k.shape[2], block_k)
    out = _poisoned_outputs(b, h, nq, nk)
    result = cuda_mask.predict(q, k, topk, topp, block_q, block_k, scale, out=out, **kwargs)
    torch.cuda.synchronize()
    assert all(r is o for r, o in zip(result, out))
    return result


# ------------------------------------------------------------------------------------------------- checks
def check_encoding(kv_count, kv_index, q_count, q_index) -> torch.Tensor:
    """kv_* is the canonical ascending, -1-padded encoding of a mask and q_* exactly its transpose; returns it."""
    nk = kv_index.shape[-1]
    assert not (kv_index == POISON).any() and not (q_index == POISON).any(), "index entries left unwritten"
    assert not (kv_count == POISON).any() and not (q_count == POISON).any(), "count entries left unwritten"
    assert ((kv_index >= -1) & (kv_index < nk)).all()
    valid = torch.arange(nk, device=kv_index.device) < kv_count.unsqueeze(-1)
    dense = torch.zeros(*kv_index.shape[:-1], nk + 1, dtype=torch.bool, device=kv_index.device)
    dense.scatter_(-1, torch.where(valid, kv_index.long(), nk), True)
    dense = dense[..., :nk]
    count, index = indices_from_dense(dense)
    assert torch.equal(kv_count, count), "kv_count differs from the number of kept blocks"
    assert torch.equal(kv_index, index), "kv_index is not ascending kept indices followed by -1"
    t_count, t_index = indices_from_dense(dense.transpose(-1, -2))
    assert torch.equal(q_count, t_count), "q_count is not the transpose's count"
    assert torch.equal(q_index, t_index), "q_index is not exactly the transpose of kv_index"
    return dense


def _decided_bounds(p64: torch.Tensor, kk: int, topp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(must_keep, may_keep) of the hybrid rule on float64 probabilities, under the stated error budgets."""
    n = p64.shape[-1]
    asc = torch.sort(p64, dim=-1).values
    prefix = F.pad(torch.cumsum(asc, dim=-1), (1, 0))  # prefix[i] = sum of the i smallest
    total = prefix[..., -1:]
    loose = torch.searchsorted(asc, p64 * (1.0 - REL_TOL), side="left")  # entries that may rank at or above j
    strict = torch.searchsorted(asc, p64 * (1.0 + REL_TOL), side="right")  # entries that surely rank above j
    count_loose, count_strict = n - loose, n - strict
    mass_loose = total - torch.gather(prefix, -1, loose)
    mass_strict = total - torch.gather(prefix, -1, strict)
    must = torch.zeros_like(p64, dtype=torch.bool)
    may = torch.zeros_like(must)
    if kk > 0:
        must |= count_loose <= kk
        may |= count_strict < kk
    if topp > 0:
        must |= (mass_loose - p64) < topp - MASS_TOL
        may |= mass_strict < topp + MASS_TOL
    return must, may


def check_semantics(q, k, dense, topk, topp, block_q, block_k, scale) -> dict:
    nk = dense.shape[-1]
    kk = topk_count(topk, nk)
    p64 = reference.block_probabilities(q.double(), k.double(), block_q, block_k, scale)
    if topk >= 1.0 or topp >= 1.0:
        assert dense.all()
        return {"undecided": 0.0}
    must, may = _decided_bounds(p64, kk, topp)
    missing, extra = must & ~dense, dense & ~may
    assert not missing.any(), f"{int(missing.sum())} surely-kept blocks dropped, at {missing.nonzero()[:3].tolist()}"
    assert not extra.any(), f"{int(extra.sum())} surely-dropped blocks kept, at {extra.nonzero()[:3].tolist()}"
    undecided = may & ~must
    frac = float(undecided.float().mean())
    assert frac <= MAX_UNDECIDED, f"tolerance band covers {frac:.3%} of the pairs: the test would prove little"
    # The fp32 PyTorch reference on the same inputs agrees with the kernel outside the band.
    ref32 = reference.predict_block_mask(q, k, topk, topp, block_q, block_k, scale)
    assert not ((ref32 ^ dense) & ~undecided).any(), "kernel and fp32 reference differ outside the rounding band"
    agree = float((ref32 == dense).float().mean())
    return {"undecided": frac, "agree_ref32": agree, "density": float(dense.float().mean())}


def check_prediction(q, k, topk, topp, block_q=128, block_k=64, scale=None, **kwargs):
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    result = run_kernel(q, k, topk, topp, block_q, block_k, scale, **kwargs)
    dense = check_encoding(*result)
    return check_semantics(q, k, dense, topk, topp, block_q, block_k, scale)


# -------------------------------------------------------------------------------------------------- tests
CASES = [
    # (B, H, Lq, Lk, D, block_q, block_k, layout, dtype, kind, topk, topp)
    (2, 3, 1000, 1000, 64, 128, 64, "HND", torch.bfloat16, "random", 0.03, 0.2),
    (2, 3, 1000, 1000, 128, 128, 64, "NHD", torch.bfloat16, "structured", 0.03, 0.2),
    (1, 2, 65, 65, 128, 128, 64, "NHD", torch.float16, "structured", 0.1, 0.5),
    (1, 4, 1000, 3000, 128, 128, 64, "NHD", torch.bfloat16, "structured", 0.03, 0.2),
    (1, 4, 3000, 1000, 128, 128, 64, "HND", torch.float16, "random", 0.05, 0.3),
    (1, 3, 2048, 2048, 128, 128, 64, "HND", torch.bfloat16, "structured", 0.0, 0.2),
    (1, 3, 2048, 2048, 128, 128, 64, "NHD", torch.bfloat16, "structured", 0.05, 0.0),
    (1, 3, 2048, 2048, 128, 128, 64, "HND", torch.bfloat16, "structured", 0.5, 0.9),
    (1, 2, 777, 1234, 96, 100, 50, "NHD", torch.float32, "structured", 0.03, 0.2),
    (1, 2, 513, 4000, 32, 64, 128, "HND", torch.float32, "random", 0.02, 0.5),
    (1, 1, 2000, 75600, 128, 128, 64, "HND", torch.bfloat16, "structured", 0.03, 0.2),  # Nk = 1182
    (1, 2, 32760, 32760, 128, 128, 64, "NHD", torch.bfloat16, "structured", 0.03, 0.2),
]


SCORES = {  # the ways to the pooled scores: (predict's arguments, kernel_options)
    "fma-scores": (dict(tensor_scores=False), {}),
    "tf32x3-scores": (dict(tensor_scores=True), {}),
    # the fused pooling + selection kernel where it takes the inputs (3xTF32 scores), else separate launches
    "fused": ({}, dict(mask_schedule="fused")),
}


@pytest.mark.parametrize("scores", list(SCORES))
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(x).replace("torch.", "") for x in c))
def test_mask_matches_float64_rule(case, scores):
    """Every way of computing the pooled scores (fp32 FMAs; 3xTF32 tensor-core MMAs, the automatic choice for
    Q+K >= 1 GiB; the fused kernel) decides every pair outside the rounding band as the float64 rule does."""
    b, h, lq, lk, d, bq, bk, layout, dtype, kind, topk, topp = case
    q, k = make_qk(b, h, lq, lk, d, kind=kind, dtype=dtype, layout=layout)
    arguments, options = SCORES[scores]
    with sparge_kernels.kernel_options(**options):
        stats = check_prediction(q, k, topk, topp, bq, bk, **arguments)
    print(case, scores, stats)


@pytest.mark.parametrize("rows_per_cta", [4, 8, 16, 32])
def test_tensor_scores_every_cta_size(rows_per_cta):
    """The 3xTF32 scores pad the CTA's rows to 16-row MMA tiles (4 and 8 rows: half or more of a tile is zero; 32:
    two tiles) and key blocks to 8-key tiles: at every CTA size, with Nq and Nk multiples of neither, the encoding
    is canonical and every pair outside the rounding band is decided as the float64 rule decides it."""
    q, k = make_qk(1, 3, 2900, 4100, 128, kind="structured", seed=5)
    stats = check_prediction(q, k, 0.03, 0.2, rows_per_cta=rows_per_cta, head_groups=1, tensor_scores=True)
    print(rows_per_cta, stats)


@pytest.mark.parametrize("layout", ["HND", "NHD"])
def test_wan_1_3b_shape(layout):
    q, k = make_qk(1, 12, 32760, 32760, 128, kind="structured", layout=layout, seed=3)
    stats = check_prediction(q, k, 0.03, 0.2)
    print(layout, stats)
    assert 0.0 < stats["density"] < 0.5


@pytest.mark.parametrize("topk,topp", [(1.0, 0.2), (0.03, 1.0), (1.0, 1.0)])
def test_keep_all(topk, topp):
    q, k = make_qk(1, 2, 1000, 700, 64)
    kv_count, kv_index, q_count, q_index = run_kernel(q, k, topk, topp, 128, 64, 0.125)
    dense = check_encoding(kv_count, kv_index, q_count, q_index)
    assert dense.all()


@pytest.mark.parametrize(
    "tuning",
    [
        {"head_groups": 1, "rows_per_cta": 4},
        {"head_groups": 1, "rows_per_cta": 8},
        {"head_groups": 1, "rows_per_cta": 16},
        {"head_groups": 1, "rows_per_cta": 32},
        {"head_groups": 1, "rows_per_cta": 8, "compact": False},
        {"head_groups": 1, "rows_per_cta": 32, "compact": False},
        {"head_groups": 2, "rows_per_cta": 16, "tail_rows_per_cta": 8},
        {"head_groups": 3, "rows_per_cta": 0, "tail_rows_per_cta": 4},
        {"head_groups": 5, "rows_per_cta": 8, "tail_rows_per_cta": 0},
        {"head_groups": 1, "rows_per_cta": 8, "register_rows": True},
        {"head_groups": 3, "rows_per_cta": 16, "register_rows": True, "compact": False},
    ],
    ids=str,
)
def test_tuning_variants_agree(tuning):
    """Head groups (overlap on a side stream), CTA sizes and candidate gathering never change the result."""
    q, k = make_qk(2, 5, 3000, 5000, 128, seed=1, layout="NHD")
    scale = 128 ** -0.5
    base = run_kernel(q, k, 0.03, 0.2, 128, 64, scale, head_groups=1, rows_per_cta=16)
    other = run_kernel(q, k, 0.03, 0.2, 128, 64, scale, **tuning)
    for x, y in zip(base, other):
        assert torch.equal(x, y)
    check_semantics(q, k, check_encoding(*other), 0.03, 0.2, 128, 64, scale)


@pytest.mark.parametrize("tensor_scores", [False, True], ids=["fma-scores", "tf32x3-scores"])
@pytest.mark.parametrize("nk", [79, 512, 513, 700, 1182, 1280, 1281])
def test_register_rows_match_shared_rows(nk, tensor_scores):
    """Score rows kept in registers during the selection (16 words per lane up to Nk = 512, 40 words up to 1280
    with at most 16 rows per CTA, shared memory beyond) decide bitwise as rows in shared memory: at every CTA
    size, with both bisection endings, and where most probabilities underflow to exactly 0, so that the cut falls
    on a tie at 0 next to the register rows' padding (which holds probability 0 too)."""
    q, k = make_qk(1, 2, 1100, nk * 64, 128, kind="structured", seed=11)
    for scale, topk, topp in ((128**-0.5, 0.03, 0.2), (1000.0, 0.5, 0.0), (1000.0, 0.0, 0.99)):
        for rows in (4, 8, 16, 32):
            for compact in (True, False):
                tuning = dict(rows_per_cta=rows, head_groups=1, compact=compact, tensor_scores=tensor_scores)
                shared = run_kernel(q, k, topk, topp, 128, 64, scale, register_rows=False, **tuning)
                registers = run_kernel(q, k, topk, topp, 128, 64, scale, register_rows=True, **tuning)
                assert all(torch.equal(x, y) for x, y in zip(shared, registers)), (scale, topk, topp, rows, compact)
        check_encoding(*registers)
    p32 = reference.block_probabilities(q.float(), k.float(), 128, 64, 1000.0)
    assert (p32 == 0).float().mean() > 0.5, "the large scale was meant to underflow most probabilities to 0"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
# 496: the fused kernel's dynamic shared memory just past 48 KB at D=128 (the opt-in threshold)
@pytest.mark.parametrize("nk", [79, 496, 512, 700, 1281])
def test_fused_matches_separate_launches(nk, dtype):
    """The fused pooling + selection kernel (one persistent launch whose CTAs take pooling and selection tasks from
    a ticket counter) decides bitwise as the separate launches with tensor-core scores and 16-row CTAs: rows in 16
    register words (Nk <= 512), 40 (Nk <= 1280) or shared memory, B > 1, NHD views, partial last blocks."""
    q, k = make_qk(2, 3, 1100, nk * 64 - 17, 128, dtype=dtype, layout="NHD", seed=12)
    scale = 128**-0.5
    for register_rows in (True, False):
        fused = run_kernel(q, k, 0.03, 0.2, 128, 64, scale, fused=True, register_rows=register_rows)
        separate = run_kernel(q, k, 0.03, 0.2, 128, 64, scale, fused=False, tensor_scores=True, rows_per_cta=16,
                              head_groups=1, register_rows=register_rows)
        assert all(torch.equal(x, y) for x, y in zip(fused, separate)), register_rows
    check_semantics(q, k, check_encoding(*fused), 0.03, 0.2, 128, 64, scale)


def test_fused_zeroes_its_counters_and_replays_in_a_graph():
    """The fused kernel's ticket counters live in the workspace and are zeroed by the launch itself (a memset node
    under capture): a workspace full of -1 bits (counters past the last ticket) gives the same result, and so does
    every replay of a captured prediction."""
    from sparge_kernels.cuda import _C, current_stream

    q, k = make_qk(1, 4, 2000, 3000, 128, seed=13)
    q, k = q.contiguous(), k.contiguous()  # the binding takes unit-stride rows (cuda_mask.predict copies others)
    b, h, lq, d = q.shape
    nq, nk = num_blocks(lq, 128), num_blocks(k.shape[2], 64)
    expected = run_kernel(q, k, 0.03, 0.2, 128, 64, 0.1, fused=True)
    workspace = torch.full((cuda_mask.workspace_floats(b, h, nq, nk, d),), -1, dtype=torch.int32, device="cuda")
    out = _poisoned_outputs(b, h, nq, nk)
    _C.mask_predict(q, k, 128, 64, 0.1, topk_count(0.03, nk), 0.2, 1, workspace.view(torch.float32), *out, 1, 0, 0,
                    current_stream(q.device), tensor_scores=1, register_rows=1, fused=2)
    torch.cuda.synchronize()
    assert all(torch.equal(x, y) for x, y in zip(expected, out))

    out = _poisoned_outputs(b, h, nq, nk)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        cuda_mask.predict(q, k, 0.03, 0.2, 128, 64, 0.1, out=out, fused=True)  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        cuda_mask.predict(q, k, 0.03, 0.2, 128, 64, 0.1, out=out, fused=True)
    for _ in range(3):
        for t in out:
            t.fill_(POISON)
        graph.replay()
        torch.cuda.synchronize()
        assert all(torch.equal(x, y) for x, y in zip(expected, out))


def test_fused_when_required_or_not_possible():
    """fused=True raises where the fused kernel does not take the inputs; the "fused" mask schedule falls back to
    the separate launches there (with the same tensor-core scores)."""
    q, k = make_qk(1, 2, 700, 900, 128, dtype=torch.float32, seed=14)
    with pytest.raises(ValueError, match="fused kernel takes float16/bfloat16"):
        cuda_mask.predict(q, k, 0.03, 0.2, 128, 64, 0.1, fused=True)
    with pytest.raises(ValueError, match="fused=True: the fused kernel takes float16/bfloat16"):
        cuda_mask.predict(q.double(), k.double(), 0.03, 0.2, 128, 64, 0.1, fused=True)  # no reference fallback
    half = q.to(torch.bfloat16), k.to(torch.bfloat16)
    with pytest.raises(ValueError, match="tensor_scores must be None or True"):
        cuda_mask.predict(*half, 0.03, 0.2, 128, 64, 0.1, fused=True, tensor_scores=False)
    base = torch.randn(1, 2, 900, 129, device="cuda").to(torch.bfloat16)
    misaligned = base[..., 1:]  # rows off 16-byte boundaries: no 16-byte loads
    with pytest.raises(ValueError, match="16-byte loads"):
        cuda_mask.predict(misaligned, misaligned, 0.03, 0.2, 128, 64, 0.1, fused=True)
    with sparge_kernels.kernel_options(mask_schedule="fused"):
        fallback = run_kernel(misaligned, misaligned, 0.03, 0.2, 128, 64, 0.1)  # separate launches
        aligned = run_kernel(misaligned.contiguous(), misaligned.contiguous(), 0.03, 0.2, 128, 64, 0.1)  # fused
    assert all(torch.equal(x, y) for x, y in zip(fallback, aligned))
    assert all(torch.equal(x, y) for x, y in zip(aligned, run_kernel(misaligned.contiguous(),
                                                                     misaligned.contiguous(), 0.03, 0.2, 128, 64,
                                                                     0.1, fused=True)))


def test_side_stream_output_is_ordered_on_the_callers_stream():
    """With head groups, outputs written on the side stream are complete for later work on a user stream."""
    q, k = make_qk(1, 8, 8192, 8192, 128, seed=8)
    expected = run_kernel(q, k, 0.03, 0.2, 128, 64, 0.1, head_groups=1)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            result = cuda_mask.predict(q, k, 0.03, 0.2, 128, 64, 0.1, head_groups=4)
            snapshot = [t.clone() for t in result]  # runs on `stream` right after the prediction
    torch.cuda.synchronize()
    for x, y in zip(expected, snapshot):
        assert torch.equal(x, y)


def test_deterministic():
    q, k = make_qk(1, 4, 4096, 4096, 128, seed=2)
    first = run_kernel(q, k, 0.03, 0.2, 128, 64, 0.1)
    for _ in range(3):
        again = run_kernel(q, k, 0.03, 0.2, 128, 64, 0.1)
        for x, y in zip(first, again):
            assert torch.equal(x, y)


def test_exact_ties_keep_lower_indices():
    """Identical key blocks give bitwise-equal probabilities 1/64: Top-k and Top-p take the lowest indices."""
    b, h, nk = 1, 2, 64
    gen = torch.Generator(device="cuda").manual_seed(5)
    q = torch.randn(b, h, 300, 64, generator=gen, device="cuda").to(torch.bfloat16)
    token = torch.randn(1, 1, 1, 64, generator=gen, device="cuda").to(torch.bfloat16)
    for k in (token.expand(b, h, nk * 64, 64), token.expand(b, h, nk * 64, 64).contiguous()):  # stride 0 too
        for topk, topp, kept in ((0.1, 0.2, 13), (0.5, 0.2, 32), (0.0, 0.5, 32), (0.05, 0.0, 4)):
            # topp=0.2 over 1/64 each: exclusive masses 0, 1/64, ..., 12/64 < 0.2 -> 13 blocks (exact in fp32)
            kv_count, kv_index, q_count, q_index = run_kernel(q, k, topk, topp, 128, 64, 0.125)
            check_encoding(kv_count, kv_index, q_count, q_index)
            plain = run_kernel(q, k, topk, topp, 128, 64, 0.125, compact=False)
            assert all(torch.equal(x, y) for x, y in zip(plain, (kv_count, kv_index, q_count, q_index)))
            assert (kv_count == kept).all(), (topk, topp, kv_count.unique().tolist())
            assert (kv_index[..., :kept] == torch.arange(kept, device="cuda", dtype=torch.int32)).all()
            ref = reference.predict_block_mask(q, k, topk, topp, 128, 64, 0.125)
            assert torch.equal(ref.sum(-1), kv_count.long())


@pytest.mark.parametrize("compact", [True, False])
def test_many_exact_ties(compact):
    """Key blocks drawn from 4 integer patterns: every row has 4 distinct, exactly computed scores.

    The kept set must be a prefix of the (probability descending, index ascending) order, of the float64 rule's
    length up to one entry (a cumulative mass on a tie group can sit within rounding of topp).
    """
    gen = torch.Generator(device="cuda").manual_seed(9)
    b, h, nk, d = 1, 4, 128, 64
    q = torch.randint(-2, 3, (b, h, 1024, d), generator=gen, device="cuda").to(torch.bfloat16)
    patterns = torch.randint(-2, 3, (4, d), generator=gen, device="cuda").to(torch.bfloat16)
    choice = torch.randint(0, 4, (b, h, nk), generator=gen, device="cuda")
    k = patterns[choice].unsqueeze(3).expand(b, h, nk, 64, d).reshape(b, h, nk * 64, d)
    scale = 0.125
    for topk, topp in ((0.1, 0.5), (0.3, 0.0), (0.0, 0.4)):
        dense = check_encoding(*run_kernel(q, k, topk, topp, 128, 64, scale, compact=compact))
        p64 = reference.block_probabilities(q.double(), k.double(), 128, 64, scale)
        order = torch.sort(p64, dim=-1, descending=True, stable=True).indices
        kept_sorted = dense.gather(-1, order).int()
        assert (kept_sorted[..., :-1] >= kept_sorted[..., 1:]).all(), "kept set is not a prefix of the tie order"
        expected = reference.select_hybrid(p64, topk, topp).sum(-1)
        assert ((dense.sum(-1) - expected).abs() <= 1).all()


def test_pooled_means_and_stages_with_poisoned_workspace():
    """The three launches one by one, every intermediate NaN/garbage-filled first; pooled means vs float64."""
    q, k = make_qk(2, 3, 1000, 1500, 128, layout="NHD", seed=4)
    b, h, lq, d = q.shape
    nq, nk = num_blocks(lq, 128), num_blocks(k.shape[2], 64)
    ws = cuda_mask.MaskWorkspace.allocate(b, h, nq, nk, d, q.device)
    ws.q_pooled.fill_(float("nan"))
    ws.k_pooled_t.fill_(float("nan"))
    ws.row_bits.fill_(-1)
    cuda_mask.pool(q, k, 128, 64, ws)
    torch.cuda.synchronize()
    qp64 = reference.mean_pool_blocks(q.double(), 128)
    kp64 = reference.mean_pool_blocks(k.double(), 64)
    torch.testing.assert_close(ws.q_pooled.double(), qp64, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ws.k_pooled_t[..., :nk].double(), kp64.transpose(-1, -2), rtol=1e-5, atol=1e-6)
    out = _poisoned_outputs(b, h, nq, nk)
    cuda_mask.select(ws, nk, 0.1, topk_count(0.03, nk), 0.2, out[0], out[1])
    cuda_mask.transpose(ws, nk, out[2], out[3])
    torch.cuda.synchronize()
    dense = check_encoding(*out)
    check_semantics(q, k, dense, 0.03, 0.2, 128, 64, 0.1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_misaligned_views_use_narrow_loads(dtype):
    """Views whose rows start off 16-byte boundaries (D offset 1, odd L stride) still pool exactly."""
    gen = torch.Generator(device="cuda").manual_seed(6)
    base_q = torch.randn(1, 2, 700, 129, generator=gen, device="cuda").to(dtype)
    base_k = torch.randn(1, 2, 900, 129, generator=gen, device="cuda").to(dtype)
    q, k = base_q[..., 1:], base_k[..., 1:]  # D=128, stride_l=129, pointer off by one element
    check_prediction(q, k, 0.05, 0.3)


def test_public_api_uses_the_kernel():
    assert backend.backend_for(torch.device("cuda")).predict is cuda_mask.predict
    q, k = make_qk(1, 2, 1500, 1500, 128, layout="NHD", seed=7)
    q_nhd, k_nhd = q.transpose(1, 2), k.transpose(1, 2)
    mask = sparge_kernels.predict_block_mask(q_nhd, k_nhd, topk=0.03, topp=0.2, layout="NHD")
    direct = run_kernel(q, k, 0.03, 0.2, 128, 64, 128 ** -0.5)
    for name, t in zip(("kv_count", "kv_index", "q_count", "q_index"), direct):
        assert torch.equal(getattr(mask, name), t), name


def test_bad_inputs():
    """Arguments are checked once, by the public API, before the glue; float64 goes to the reference, warning."""
    q, k = make_qk(1, 1, 256, 256, 64)
    with pytest.raises(TypeError, match="dtype"):
        sparge_kernels.predict_block_mask(q, k.float())
    with pytest.raises(ValueError, match="both 0"):
        sparge_kernels.predict_block_mask(q, k, topk=0.0, topp=0.0)
    with pytest.warns(UserWarning, match="reference"):
        result = cuda_mask.predict(q.double(), k.double(), 0.03, 0.2, 128, 64, 0.1)
    check_encoding(*result)
