"""Property-based tests: random shapes, block sizes, topk/topp and layouts against the naive oracles."""

import sparge_naive as naive
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import sparge_kernels as sk


def _near_topp_boundary(q, k, topp, block_q, block_k) -> bool:
    """True if some row's sorted prefix mass lies within rounding of topp (the selection is then ill-posed)."""
    if topp <= 0 or topp >= 1:
        return False
    scale = q.shape[-1] ** -0.5
    probs = torch.softmax(naive.pool(q, block_q) @ naive.pool(k, block_k).transpose(-1, -2) * scale, dim=-1)
    mass = torch.sort(probs, dim=-1, descending=True).values.cumsum(-1)
    return bool(((mass - topp).abs() < 1e-9).any())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    b=st.integers(1, 2),
    h=st.integers(1, 3),
    lq=st.integers(1, 300),
    lk=st.integers(1, 300),
    d=st.sampled_from([4, 8, 16]),
    block_q=st.sampled_from([16, 32, 64, 128]),
    block_k=st.sampled_from([8, 16, 64]),
    topk=st.floats(0.0, 1.0),
    topp=st.floats(0.0, 1.0),
    layout=st.sampled_from(["HND", "NHD"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_sparge_attention_matches_naive(b, h, lq, lk, d, block_q, block_k, topk, topp, layout, seed):
    assume(topk > 0 or topp > 0)
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, d, generator=gen, dtype=torch.float64) for n in (lq, lk, lk))
    assume(not _near_topp_boundary(q, k, topp, block_q, block_k))
    args = (q, k, v) if layout == "HND" else tuple(t.transpose(1, 2) for t in (q, k, v))
    out, mask = sk.sparge_attention(*args, topk=topk, topp=topp, block_q=block_q, block_k=block_k,
                                    layout=layout, return_mask=True)
    dense = naive.predict_dense(q, k, topk, topp, block_q, block_k)
    assert torch.equal(mask.to_dense(), dense)
    assert (mask.kv_count >= 1).all()
    ref, _ = naive.attention(q, k, v, dense, block_q, block_k)
    out_hnd = out if layout == "HND" else out.transpose(1, 2)
    assert torch.isfinite(out_hnd).all()
    torch.testing.assert_close(out_hnd, ref, rtol=1e-10, atol=1e-10)


@settings(max_examples=25, deadline=None)
@given(
    lq=st.integers(1, 200),
    lk=st.integers(1, 200),
    block_q=st.sampled_from([16, 128]),
    block_k=st.sampled_from([16, 64]),
    density=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_block_sparse_gradients_match_dense_autograd(lq, lk, block_q, block_k, density, seed):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 2, n, 8, generator=gen, dtype=torch.float64, requires_grad=True) for n in (lq, lk, lk))
    nq, nk = -(-lq // block_q), -(-lk // block_k)
    dense = torch.rand(1, 2, nq, nk, generator=gen) < density
    mask = sk.BlockMask.from_dense(dense, block_q=block_q, block_k=block_k, seq_len_q=lq, seq_len_k=lk)
    dout = torch.randn(1, 2, lq, 8, generator=gen, dtype=torch.float64)
    grads = torch.autograd.grad(sk.block_sparse_attention(q, k, v, mask), (q, k, v), dout, allow_unused=True)
    ref = torch.autograd.grad(naive.attention(q, k, v, dense, block_q, block_k)[0], (q, k, v), dout,
                              allow_unused=True)
    for g, r in zip(grads, ref):
        r = torch.zeros_like(g) if r is None else torch.nan_to_num(r)
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-9)
