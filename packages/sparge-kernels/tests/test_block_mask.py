"""BlockMask: index/transpose consistency, dense round trip, density accounting."""

import pytest
import torch

import sparge_kernels as sk
from sparge_kernels import BlockMask


def test_from_dense_round_trip_and_transpose():
    dense = torch.rand(2, 3, 9, 17) < 0.3
    dense[0, 0, 4] = False  # an empty row
    mask = BlockMask.from_dense(dense, block_q=128, block_k=64)
    assert torch.equal(mask.to_dense(), dense)
    assert mask.kv_count.dtype == torch.int32 and mask.kv_index.dtype == torch.int32
    assert torch.equal(mask.kv_count, dense.sum(-1).int())
    assert torch.equal(mask.q_count, dense.sum(-2).int())
    # Indices ascending, padded with -1 after the count.
    for b, h, i in [(0, 0, 4), (1, 2, 3), (0, 1, 8)]:
        n = int(mask.kv_count[b, h, i])
        row = mask.kv_index[b, h, i]
        assert row[:n].tolist() == dense[b, h, i].nonzero().flatten().tolist()
        assert (row[n:] == -1).all()
    back = BlockMask.from_dense(dense.transpose(-1, -2).contiguous())
    assert torch.equal(back.kv_index, mask.q_index)


def test_density_overall_and_per_head():
    dense = torch.zeros(1, 2, 4, 5, dtype=torch.bool)
    dense[0, 0] = True
    dense[0, 1, 0, 0] = True
    mask = BlockMask.from_dense(dense)
    assert mask.density == pytest.approx(21 / 40)
    assert mask.sparsity == pytest.approx(19 / 40)
    torch.testing.assert_close(mask.density_per_head, torch.tensor([[1.0, 1 / 20]], dtype=torch.float64))


def test_predicted_mask_indices_are_consistent():
    q, k = torch.randn(2, 2, 1000, 32), torch.randn(2, 2, 1500, 32)
    mask = sk.predict_block_mask(q, k)
    dense = mask.to_dense()
    assert dense.shape == (2, 2, 8, 24) and mask.shape == (2, 2, 8, 24)
    assert torch.equal(BlockMask.from_dense(dense, seq_len_q=1000, seq_len_k=1500).q_index, mask.q_index)
    assert (mask.seq_len_q, mask.seq_len_k, mask.block_q, mask.block_k) == (1000, 1500, 128, 64)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(dense=torch.ones(2, 3, 4)), ValueError, "dense"),
        (dict(dense=torch.ones(1, 1, 2, 2)), TypeError, "bool"),
        (dict(dense=torch.ones(1, 1, 2, 2, dtype=torch.bool), block_q=0), ValueError, "block_q"),
        (dict(dense=torch.ones(1, 1, 2, 2, dtype=torch.bool), seq_len_q=1000), ValueError, "seq_len_q"),
        (dict(dense=torch.ones(1, 1, 0, 2, dtype=torch.bool)), ValueError, "dense"),
    ],
)
def test_from_dense_rejects_bad_input(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        BlockMask.from_dense(**kwargs)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(seq_len_q=1000), ValueError, "seq_len_q=1000 needs 8 query blocks, kv_index has 2"),
        (dict(seq_len_k=0), ValueError, "seq_len_k"),
        (dict(seq_len_k=True), TypeError, "seq_len_k"),
        (dict(block_k=-64), ValueError, "block_k"),
    ],
)
def test_from_indices_rejects_bad_sizes(kwargs, exc, match):
    """from_indices builds a trusted mask (no second metadata check), so it checks the sizes it is given itself."""
    kv_count = torch.tensor([[[1, 2]]], dtype=torch.int32)
    kv_index = torch.tensor([[[[0, -1], [0, 1]]]], dtype=torch.int32)
    with pytest.raises(exc, match=match):
        BlockMask.from_indices(kv_count, kv_index, **kwargs)
    assert BlockMask.from_indices(kv_count, kv_index, seq_len_q=200, seq_len_k=65).seq_len_k == 65
