"""Bad input raises ValueError/TypeError naming the argument, for every public entry point."""

import math

import pytest
import torch

import sparge_kernels as sk
from sparge_kernels import BlockMask

Q = torch.randn(1, 2, 100, 16)
K = torch.randn(1, 2, 80, 16)
V = torch.randn(1, 2, 80, 16)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(topk=-0.1), ValueError, "topk"),
        (dict(topk=1.5), ValueError, "topk"),
        (dict(topp=math.nan), ValueError, "topp"),
        (dict(topp="0.2"), TypeError, "topp"),
        (dict(topk=0.0, topp=0.0), ValueError, "both 0"),
        (dict(block_q=0), ValueError, "block_q"),
        (dict(block_k=-64), ValueError, "block_k"),
        (dict(block_k=64.0), TypeError, "block_k"),
        (dict(layout="BHLD"), ValueError, "layout"),
        (dict(scale=0.0), ValueError, "scale"),
        (dict(scale=math.inf), ValueError, "scale"),
    ],
)
def test_predict_rejects_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        sk.predict_block_mask(Q, K, **kwargs)
    with pytest.raises(exc, match=match):
        sk.sparge_attention(Q, K, V, **kwargs)


@pytest.mark.parametrize(
    "q,k,v,match",
    [
        (Q[0], K, V, "q must be 4-D"),
        (Q, K[..., :8], V, "head dim"),
        (Q, K, V[:, :1], "v must have the shape of k"),
        (Q, torch.randn(1, 3, 80, 16), V, "k has \\(batch, heads\\)"),
        (Q[:, :, :0], K, V, "empty sequence"),
        (Q, K[:, :, :0], V[:, :, :0], "empty sequence"),
        ("q", K, V, "q must be a torch.Tensor"),
    ],
)
def test_attention_rejects_bad_shapes(q, k, v, match):
    with pytest.raises((ValueError, TypeError), match=match):
        sk.sparge_attention(q, k, v)


def test_dtype_and_device_mismatch():
    with pytest.raises(TypeError, match="k has dtype"):
        sk.sparge_attention(Q, K.double(), V)
    with pytest.raises(TypeError, match="q must be float16"):
        sk.sparge_attention(Q.int(), K.int(), V.int())
    meta = torch.randn(1, 2, 80, 16, device="meta")
    with pytest.raises(ValueError, match="k is on meta"):
        sk.sparge_attention(Q, meta, V)


def test_mask_that_does_not_fit():
    mask = sk.predict_block_mask(Q, K)
    with pytest.raises(ValueError, match="mask was built for"):
        sk.block_sparse_attention(Q[:, :, :50], K, V, mask)
    with pytest.raises(ValueError, match="mask has shape"):
        q3, k3 = torch.randn(1, 3, 100, 16), torch.randn(1, 3, 80, 16)
        sk.block_sparse_attention(q3, k3, k3, mask)
    with pytest.raises(TypeError, match="mask must be a sparge_kernels.BlockMask"):
        sk.block_sparse_attention(Q, K, V, mask.to_dense())
    other_blocks = BlockMask.from_dense(torch.ones(1, 2, 4, 3, dtype=torch.bool), block_q=32, block_k=32,
                                        seq_len_q=100, seq_len_k=80)
    out = sk.block_sparse_attention(Q, K, V, other_blocks)  # user block sizes are honoured
    assert out.shape == Q.shape


def test_nhd_layout_shape_errors_mention_layout():
    with pytest.raises(ValueError, match="NHD"):
        sk.predict_block_mask(Q[0], K, layout="NHD")
