"""The `sparge` custom ops: opcheck (schema, fake impls, autograd registration) and torch.compile."""

import pytest
import torch

import sparge_kernels as sk
from sparge_kernels import ops


def _qkv(b=1, h=2, lq=200, lk=150, d=16, dtype=torch.float32, requires_grad=False):
    return tuple(
        torch.randn(b, h, n, d, dtype=dtype, requires_grad=requires_grad) for n in (lq, lk, lk)
    )


def test_opcheck_predict_block_mask():
    q, k, _ = _qkv()
    torch.library.opcheck(ops.predict_block_mask_op, (q, k, 0.1, 0.3, 128, 64, 0.25, "HND"))
    nhd = (q.transpose(1, 2), k.transpose(1, 2))
    torch.library.opcheck(ops.predict_block_mask_op, (*nhd, 0.1, 0.3, 64, 32, 0.25, "NHD"))


@pytest.mark.parametrize("layout", ["HND", "NHD"])
def test_opcheck_block_sparse_attention(layout):
    q, k, v = _qkv(dtype=torch.float64, requires_grad=True)
    if layout == "NHD":
        q, k, v = (t.detach().transpose(1, 2).requires_grad_() for t in (q, k, v))
    mask = sk.predict_block_mask(q, k, topk=0.3, topp=0.3, layout=layout)
    args = (q, k, v, mask.kv_count, mask.kv_index, mask.q_count, mask.q_index, 128, 64, 0.25, layout, False)
    torch.library.opcheck(ops.block_sparse_attention_op, args)


def test_opcheck_backward():
    q, k, v = _qkv(dtype=torch.float64)
    mask = ops.predict_block_mask_op(q, k, 0.1, 0.2, 128, 64, 0.25, "HND")
    out, lse = ops.block_sparse_attention_op(q, k, v, *mask, 128, 64, 0.25, "HND", False)
    args = (torch.randn_like(out), q, k, v, out, lse, None, *mask, 128, 64, 0.25, "HND", False)
    torch.library.opcheck(ops.block_sparse_attention_backward_op, args)


def test_sparge_attention_is_predict_then_attend():
    """sparge_attention is the two ops in a row (no op of its own): same output, mask and gradients."""
    q, k, v = _qkv(dtype=torch.float64, requires_grad=True)
    out, mask = sk.sparge_attention(q, k, v, topk=0.1, topp=0.2, return_mask=True)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    expected_mask = sk.predict_block_mask(q, k, topk=0.1, topp=0.2)
    expected = sk.block_sparse_attention(q, k, v, expected_mask)
    expected_grads = torch.autograd.grad(expected.square().sum(), (q, k, v))
    assert torch.equal(out, expected) and torch.equal(mask.to_dense(), expected_mask.to_dense())
    for g, e in zip(grads, expected_grads):
        assert torch.equal(g, e)
    assert not hasattr(torch.ops.sparge, "sparge_attention")


class _TinyAttentionBlock(torch.nn.Module):
    def __init__(self, dim=32, heads=2):
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.proj = torch.nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).unbind(2)  # (B, L, H, D) views
        out = sk.sparge_attention(q, k, v, topk=0.2, topp=0.3, block_q=32, block_k=16, layout="NHD")
        return self.proj(out.reshape(b, n, c))


def test_torch_compile_fullgraph_forward_and_backward():
    torch._dynamo.reset()
    model = _TinyAttentionBlock()
    x = torch.randn(2, 100, 32)
    eager_out = model(x)
    eager_grads = torch.autograd.grad(eager_out.square().sum(), list(model.parameters()))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    torch.testing.assert_close(out, eager_out, rtol=1e-5, atol=1e-6)
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_torch_compile_inductor_fullgraph():
    torch._dynamo.reset()
    model = _TinyAttentionBlock()
    x = torch.randn(1, 70, 32)
    compiled = torch.compile(model, fullgraph=True)
    out = compiled(x)
    out.sum().backward()
    torch.testing.assert_close(out, model(x), rtol=1e-4, atol=1e-5)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
