"""CUDA block-sparse attention forward vs the float64 reference (GPU only).

Error budgets (out vs reference.attention_forward on the same inputs cast to float64):
  relative Frobenius error per (b, h): bf16 ≤ 1e-2, fp16 ≤ 2e-3   (the kernel rounds P to the input dtype)
  lse: |Δ| ≤ 1e-3 on rows with kept keys (fp32 accumulation of exact products); -inf exactly on empty rows
  empty query blocks: out exactly 0
Outputs are poisoned with NaN before every launch (KernelOptions.debug_fill) and must come back finite.
Variants this build or GPU lacks skip (conftest.py).
"""

from __future__ import annotations

import math

import pytest
import torch

import sparge_kernels as sk
from sparge_kernels import reference
from sparge_kernels.block_mask import BlockMask
from sparge_kernels.validation import num_blocks

pytestmark = pytest.mark.gpu

REL_BUDGET = {torch.bfloat16: 1e-2, torch.float16: 2e-3}
LSE_BUDGET = 1e-3


@pytest.fixture(autouse=True, params=["sm80", "sm90"])
def kernel_path(request, monkeypatch):
    """Every test runs on both kernels: the portable mma.sync one and the Hopper wgmma/TMA one (which skips
    where the GPU or build has no sm_90 kernel). Yields the forward path."""
    monkeypatch.delenv("SPARGE_BACKEND", raising=False)
    with sk.kernel_options(forward_path=request.param, debug_fill=float("nan")):
        yield request.param


def make_qkv(b, h, lq, lk, d, dtype, layout="HND", seed=0, scale_v=1.0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    shape = (lambda n: (b, h, n, d)) if layout == "HND" else (lambda n: (b, n, h, d))
    q = torch.randn(shape(lq), generator=g, device="cuda", dtype=torch.float32).to(dtype)
    k = torch.randn(shape(lk), generator=g, device="cuda", dtype=torch.float32).to(dtype)
    v = (torch.randn(shape(lk), generator=g, device="cuda", dtype=torch.float32) * scale_v).to(dtype)
    return q, k, v


def random_mask(b, h, lq, lk, density, seed=0, empty_rows=0.0, block_q=128, block_k=64):
    g = torch.Generator(device="cuda").manual_seed(seed + 1)
    nq, nk = num_blocks(lq, block_q), num_blocks(lk, block_k)
    dense = torch.rand(b, h, nq, nk, generator=g, device="cuda") < density
    if empty_rows:
        dense &= ~(torch.rand(b, h, nq, 1, generator=g, device="cuda") < empty_rows)
    return BlockMask.from_dense(dense, block_q=block_q, block_k=block_k, seq_len_q=lq, seq_len_k=lk)


def one_block_mask(b, h, lq, lk, seed=0):
    """Exactly one kept key block per row, chosen at random (the last, partial block included)."""
    g = torch.Generator(device="cuda").manual_seed(seed + 2)
    nq, nk = num_blocks(lq, 128), num_blocks(lk, 64)
    pick = torch.randint(0, nk, (b, h, nq, 1), generator=g, device="cuda")
    dense = torch.zeros(b, h, nq, nk, dtype=torch.bool, device="cuda").scatter_(-1, pick, True)
    return BlockMask.from_dense(dense, seq_len_q=lq, seq_len_k=lk)


def structured_qk(b, h, d, grid=(21, 30, 52), dtype=torch.bfloat16, seed=0, noise=0.3):
    """Q, K as smooth random fields over a (T, H, W) token grid plus noise: neighbouring tokens correlate."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    coarse = tuple(max(2, n // 4) for n in grid)

    def field():
        low = torch.randn(b * h, d, *coarse, generator=g, device="cuda")
        smooth = torch.nn.functional.interpolate(low, size=grid, mode="trilinear", align_corners=False)
        x = smooth.reshape(b, h, d, -1).transpose(-1, -2)
        return (x + noise * torch.randn(x.shape, generator=g, device="cuda")).to(dtype)

    return field(), field()


def check_against_reference(q, k, v, mask, layout="HND", scale=None):
    d = q.shape[-1]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    out, lse = sk.block_sparse_attention(q, k, v, mask, layout=layout, return_lse=True, scale=scale)
    assert out.dtype == q.dtype and out.shape == q.shape and lse.dtype == torch.float32
    assert torch.isfinite(out).all(), "out has non-finite values (unwritten poisoned rows?)"
    assert not torch.isnan(lse).any(), "lse has NaN (unwritten poisoned rows?)"
    to_hnd = (lambda x: x.transpose(1, 2)) if layout == "NHD" else (lambda x: x)
    qh, kh, vh = (to_hnd(t).double() for t in (q, k, v))
    ref_out, ref_lse = reference.attention_forward(qh, kh, vh, mask.kv_count, mask.kv_index, 128, 64, scale)
    out_h = to_hnd(out).double()
    err = (out_h - ref_out).flatten(2).norm(dim=-1)
    ref_norm = ref_out.flatten(2).norm(dim=-1).clamp_min(1e-30)
    rel = (err / ref_norm)[ref_out.flatten(2).norm(dim=-1) > 0]
    budget = REL_BUDGET[q.dtype]
    assert rel.numel() == 0 or rel.max().item() <= budget, f"relative error {rel.max().item():.3e} > {budget}"
    # Rows with nothing kept: out exactly 0, lse exactly -inf.
    empty = torch.isinf(ref_lse)
    assert torch.equal(torch.isinf(lse) & (lse < 0), empty)
    assert (out_h[empty] == 0).all()
    finite = ~empty
    if finite.any():
        lse_err = (lse.double()[finite] - ref_lse[finite]).abs().max().item()
        assert lse_err <= LSE_BUDGET, f"lse error {lse_err:.3e} > {LSE_BUDGET}"
    return out, lse


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("layout", ["HND", "NHD"])
def test_random_density_tails(dtype, d, layout):
    b, h, lq, lk = 2, 3, 1000, 1000
    q, k, v = make_qkv(b, h, lq, lk, d, dtype, layout, seed=d)
    check_against_reference(q, k, v, random_mask(b, h, lq, lk, 0.3, seed=d), layout)


@pytest.mark.parametrize("lq,lk", [(65, 65), (300, 1000), (1000, 130), (128, 64), (1, 1), (4096, 777)])
def test_lengths_and_lq_ne_lk(lq, lk):
    q, k, v = make_qkv(1, 2, lq, lk, 128, torch.bfloat16, seed=lq + lk)
    check_against_reference(q, k, v, random_mask(1, 2, lq, lk, 0.5, seed=lq))


@pytest.mark.parametrize("layout", ["HND", "NHD"])
def test_full_rows_equal_dense_attention(layout):
    b, h, lq, lk, d = 1, 4, 1000, 1100, 128
    q, k, v = make_qkv(b, h, lq, lk, d, torch.bfloat16, layout, seed=3)
    mask = random_mask(b, h, lq, lk, 1.0)
    assert mask.density == 1.0
    out, _ = check_against_reference(q, k, v, mask, layout)
    to_hnd = (lambda x: x.transpose(1, 2)) if layout == "NHD" else (lambda x: x)
    sdpa = torch.nn.functional.scaled_dot_product_attention(*(to_hnd(t).float() for t in (q, k, v)))
    assert (to_hnd(out).float() - sdpa).norm() / sdpa.norm() <= 1e-2


def test_one_block_per_row():
    q, k, v = make_qkv(2, 2, 1000, 1000, 64, torch.bfloat16, seed=4)
    check_against_reference(q, k, v, one_block_mask(2, 2, 1000, 1000))


def test_empty_rows_give_zero_and_minus_inf():
    q, k, v = make_qkv(1, 3, 1000, 2000, 128, torch.bfloat16, seed=5)
    mask = random_mask(1, 3, 1000, 2000, 0.2, empty_rows=0.4, seed=5)
    assert (mask.kv_count == 0).any() and (mask.kv_count > 0).any()
    check_against_reference(q, k, v, mask)
    all_empty = BlockMask.from_dense(torch.zeros(1, 3, 8, 32, dtype=torch.bool, device="cuda"),
                                     seq_len_q=1000, seq_len_k=2000)
    out, lse = sk.block_sparse_attention(q, k, v, all_empty, return_lse=True)
    assert (out == 0).all() and torch.isneginf(lse).all()


@pytest.mark.parametrize("d,dtype", [(128, torch.bfloat16), (64, torch.float16)])
def test_pipeline_ends(d, dtype):
    # The first and last stages of the Hopper mainloop: one kept block (the partial Lk tail block alone), two kept
    # blocks, full rows next to empty rows, and every block kept.
    lq, lk = 300, 1000
    nq, nk = num_blocks(lq, 128), num_blocks(lk, 64)
    q, k, v = make_qkv(1, 2, lq, lk, d, dtype, seed=8)
    tail_only = torch.zeros(1, 2, nq, nk, dtype=torch.bool, device="cuda")
    tail_only[..., nk - 1] = True
    two = tail_only.clone()
    two[..., 0] = True
    mixed = torch.ones_like(tail_only)
    mixed[0, 0, 1] = False
    mixed[0, 1, 0] = False
    mixed[0, 1, 2] = False
    for dense in (tail_only, two, mixed, torch.ones_like(tail_only)):
        check_against_reference(q, k, v, BlockMask.from_dense(dense, seq_len_q=lq, seq_len_k=lk))


def kept_count_mask(b, h, lq, lk, count, with_tail, seed=0):
    """`count` kept key blocks per query block, chosen at random; with_tail: the partial Lk tail block is one of
    them (the last in the ascending list), else it is left out."""
    g = torch.Generator().manual_seed(seed + 3)
    nq, nk = num_blocks(lq, 128), num_blocks(lk, 64)
    dense = torch.zeros(b, h, nq, nk, dtype=torch.bool)
    for row in dense.view(-1, nk):
        others = torch.randperm(nk - 1, generator=g)[: count - 1 if with_tail else count]
        row[others] = True
        if with_tail:
            row[nk - 1] = True
    return BlockMask.from_dense(dense.cuda(), seq_len_q=lq, seq_len_k=lk)


@pytest.mark.parametrize("d,dtype", [(128, torch.bfloat16), (128, torch.float16), (64, torch.bfloat16),
                                     (64, torch.float16)])
@pytest.mark.parametrize("count", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("with_tail", [False, True])
def test_kept_block_pairs(d, dtype, count, with_tail):
    # The Hopper mainloop loads kept blocks two per stage: an odd count's last stage has one block (its second half
    # a masked repeat); the tail block (the last kept one) lands in the first half of a stage for odd counts and in
    # the second for even ones. Lk = 64·9 + 1 makes the tail block 1 key; Lk = 1000 makes it 40.
    for lk in (1000, 64 * 9 + 1):
        q, k, v = make_qkv(1, 2, 300, lk, d, dtype, seed=count + lk)
        check_against_reference(q, k, v, kept_count_mask(1, 2, 300, lk, count, with_tail, seed=count))


@pytest.mark.parametrize("d,dtype", [(128, torch.bfloat16), (64, torch.float16)])
def test_keys_shorter_than_one_block(d, dtype):
    # Lk < 64: the only key block is the tail, alone in its stage.
    for lk in (1, 50):
        q, k, v = make_qkv(1, 2, 200, lk, d, dtype, seed=lk)
        check_against_reference(q, k, v, random_mask(1, 2, 200, lk, 1.0))


@pytest.mark.parametrize("d,dtype", [(128, torch.float16), (64, torch.bfloat16)])
def test_pairs_next_to_empty_rows(d, dtype):
    # Odd and even counts (up to every block) in neighbouring query blocks, some rows with nothing kept.
    q, k, v = make_qkv(2, 3, 1000, 777, d, dtype, seed=11)
    mask = random_mask(2, 3, 1000, 777, 0.5, empty_rows=0.3, seed=11)
    counts = set(mask.kv_count.flatten().tolist())
    assert 0 in counts and any(c % 2 for c in counts) and any(c and c % 2 == 0 for c in counts)
    check_against_reference(q, k, v, mask)


def test_running_max_grows_block_to_block():
    # Keys scaled up block by block: every kept block raises the row max, so each one rescales the output.
    lq, lk = 256, 1024
    q, k, v = make_qkv(1, 2, lq, lk, 128, torch.bfloat16, seed=9)
    growth = torch.arange(lk, device="cuda").div(64, rounding_mode="floor").float().mul(0.25).add(1.0)
    k = (k.float() * growth[:, None]).to(torch.bfloat16)
    check_against_reference(q, k, v, random_mask(1, 2, lq, lk, 1.0))


def test_large_values_are_stable():
    # Scores of magnitude ~100: the online softmax must rescale, not overflow.
    q, k, v = make_qkv(1, 2, 700, 900, 64, torch.bfloat16, seed=6)
    check_against_reference(q * 8, k * 8, v, random_mask(1, 2, 700, 900, 0.6, seed=6))


def test_strided_and_odd_inputs():
    # q/k/v slices of larger buffers (row strides != D) read in place; a non-unit last stride is copied.
    base = torch.randn(1, 2, 600, 192, device="cuda").to(torch.bfloat16)
    q, k, v = base[..., :64], base[..., 64:128], base[..., 128:]
    check_against_reference(q, k, v, random_mask(1, 2, 600, 600, 0.5, seed=7))
    wide = torch.randn(1, 2, 600, 256, device="cuda").to(torch.bfloat16)
    check_against_reference(wide[..., ::2], k.contiguous()[..., :64].repeat(1, 1, 1, 2), wide[..., 1::2],
                            random_mask(1, 2, 600, 600, 0.5, seed=8))


def test_custom_scale():
    q, k, v = make_qkv(1, 2, 500, 500, 128, torch.float16, seed=9)
    check_against_reference(q, k, v, random_mask(1, 2, 500, 500, 0.5, seed=9), scale=0.3)


def test_predicted_mask_structured_inputs():
    b, h, d = 1, 2, 64
    q, k = structured_qk(b, h, d, grid=(5, 12, 26), dtype=torch.bfloat16, seed=10)
    v = torch.randn_like(q)
    mask = sk.predict_block_mask(q, k, topk=0.03, topp=0.2)
    assert 0 < mask.density < 1
    check_against_reference(q, k, v, mask)
    out = sk.sparge_attention(q, k, v, topk=0.03, topp=0.2)
    assert torch.equal(out, sk.block_sparse_attention(q, k, v, mask))


def test_wan_1p3b_480p_shape():
    b, h, d = 1, 12, 128
    q, k = structured_qk(b, h, d, dtype=torch.bfloat16, seed=11)
    assert q.shape == (1, 12, 32760, 128)
    v = torch.randn_like(q)
    mask = sk.predict_block_mask(q, k, topk=0.03, topp=0.2)
    check_against_reference(q, k, v, mask)
    check_against_reference(q, k, v, random_mask(b, h, 32760, 32760, 0.05, seed=11))


def test_block_sizes_other_than_128_64_rejected():
    q, k, v = make_qkv(1, 1, 256, 256, 64, torch.bfloat16)
    for bq, bk in ((64, 64), (128, 128)):
        dense = torch.ones(1, 1, 256 // bq, 256 // bk, dtype=torch.bool, device="cuda")
        mask = BlockMask.from_dense(dense, block_q=bq, block_k=bk)
        with pytest.raises(ValueError, match="block_q=128 and block_k=64"):
            sk.block_sparse_attention(q, k, v, mask)


def test_unsupported_dtype_and_head_dim_rejected():
    mask = random_mask(1, 1, 256, 256, 1.0)
    q, k, v = make_qkv(1, 1, 256, 256, 64, torch.float32)
    with pytest.raises(TypeError, match="float16 or bfloat16"):
        sk.block_sparse_attention(q, k, v, mask)
    q, k, v = make_qkv(1, 1, 256, 256, 96, torch.bfloat16)
    with pytest.raises(ValueError, match="head dim 96"):
        sk.block_sparse_attention(q, k, v, mask)


def test_runs_on_current_stream():
    q, k, v = make_qkv(1, 2, 1000, 1000, 128, torch.bfloat16, seed=12)
    mask = random_mask(1, 2, 1000, 1000, 0.5, seed=12)
    expected = sk.block_sparse_attention(q, k, v, mask)
    stream = torch.cuda.Stream()
    # The inputs were written on the default stream: without this wait the side stream may read them half-written
    # (seen on a busy H200: NaN and 1e36 in `out`), which says nothing about which stream the kernel used.
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        out = sk.block_sparse_attention(q, k, v, mask)
    stream.synchronize()
    assert torch.equal(out, expected)


def test_options_are_read_at_launch_under_compile(monkeypatch, kernel_path):
    """The glue reads the options when a kernel launches, inside the op, never while tracing: a compiled function
    follows the scope it runs in."""
    from sparge_kernels import cuda_forward

    seen = []
    real = cuda_forward.current_kernel_options
    monkeypatch.setattr(cuda_forward, "current_kernel_options", lambda: seen.append(real()) or seen[-1])
    q, k, v = make_qkv(1, 2, 300, 500, 128, torch.bfloat16, seed=13)
    mask = random_mask(1, 2, 300, 500, 0.5, seed=13)
    compiled = torch.compile(lambda q, k, v: sk.block_sparse_attention(q, k, v, mask), fullgraph=True,
                             backend="aot_eager")
    expected = compiled(q, k, v)  # in the fixture's scope (debug_fill NaN)
    reads = len(seen)
    with sk.kernel_options(debug_fill=1.0):
        assert torch.equal(compiled(q, k, v), expected)
    assert len(seen) > reads and seen[-1].debug_fill == 1.0  # read on each run, not baked in when traced
    assert all(o.forward_path == kernel_path for o in seen)


def test_cuda_graph_capture_of_sparge_attention():
    """Prediction and attention (two ops) capture into one CUDA graph; a replay equals the eager result."""
    q, k = structured_qk(1, 2, 128, grid=(5, 12, 26), dtype=torch.bfloat16, seed=14)
    v = torch.randn_like(q)
    expected = sk.sparge_attention(q, k, v, topk=0.03, topp=0.2)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
        for _ in range(2):
            sk.sparge_attention(q, k, v, topk=0.03, topp=0.2)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = sk.sparge_attention(q, k, v, topk=0.03, topp=0.2)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, expected)


def test_many_more_query_blocks_than_sms(kernel_path):
    """The Hopper kernel is persistent (one CTA per SM takes query blocks from an atomic counter and loads the
    next one's Q and K/V while finishing the current one): thousands of blocks per launch, kept counts from 0 to
    the whole row in any order, tails on both sides, and fewer blocks than SMs."""
    for b, h, lq, lk in ((2, 6, 20000 + 37, 9000 + 5), (1, 1, 300, 1000)):
        q, k, v = make_qkv(b, h, lq, lk, 128, torch.bfloat16, seed=21)
        g = torch.Generator(device="cuda").manual_seed(22)
        nq, nk = num_blocks(lq, 128), num_blocks(lk, 64)
        row_density = torch.rand(b, h, nq, 1, generator=g, device="cuda") ** 2  # many sparse rows, some dense
        row_density[torch.rand(b, h, nq, 1, generator=g, device="cuda") < 0.1] = 0.0  # empty rows in between
        row_density[..., :1, :] = 1.0
        dense = torch.rand(b, h, nq, nk, generator=g, device="cuda") < row_density
        mask = BlockMask.from_dense(dense, seq_len_q=lq, seq_len_k=lk)
        check_against_reference(q, k, v, mask)


def test_hopper_kernel_requires_a_tile_counter(kernel_path):
    """The binding refuses a Hopper launch without the persistent schedule's counter, naming the argument."""
    if kernel_path != "sm90":
        pytest.skip("the portable kernel takes no tile counter")
    from sparge_kernels.cuda import _C, current_stream

    q, k, v = make_qkv(1, 1, 256, 256, 128, torch.bfloat16)
    out, lse = torch.empty_like(q), torch.empty(1, 1, 256, device="cuda")
    kv_count = torch.full((1, 1, 2), 4, dtype=torch.int32, device="cuda")
    kv_index = torch.arange(4, dtype=torch.int32, device="cuda").expand(1, 1, 2, 4).contiguous()
    with pytest.raises(ValueError, match="tile_counter"):
        _C.attention_forward(q, k, v, out, lse, kv_count, kv_index, block_q=128, block_k=64, scale=0.1,
                             stream=current_stream(q.device), path="sm90", tile_counter=0)
