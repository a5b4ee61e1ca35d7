"""Semantics of the hybrid Top-k ∪ Top-p block selection, on hand-built rows and predicted masks."""

import math

import pytest
import sparge_naive as naive
import torch

import sparge_kernels as sk
from sparge_kernels.reference import mean_pool_blocks, select_hybrid, topk_count


def _kept(mask_row: torch.Tensor) -> list[int]:
    return mask_row.nonzero().flatten().tolist()


def test_uniform_row_topk_keeps_ceil_k_n():
    probs = torch.full((1, 100), 0.01)
    assert _kept(select_hybrid(probs, 0.03, 0.0)[0]) == [0, 1, 2]  # ties: lowest indices first
    assert _kept(select_hybrid(probs, 0.031, 0.0)[0]) == [0, 1, 2, 3]  # ceil(3.1) = 4


def test_uniform_row_topp_keeps_about_p_n():
    probs = torch.full((1, 100), 0.01)
    kept = _kept(select_hybrid(probs, 0.0, 0.2)[0])
    # Shortest prefix with mass >= 0.2 is 20 blocks; float32 summation may land one either side of 0.2.
    assert kept == list(range(len(kept))) and 20 <= len(kept) <= 21


def test_skewed_row_topp_keeps_only_sink_and_hybrid_adds_topk():
    probs = torch.tensor([[0.6, 0.2, 0.1] + [0.1 / 97] * 97])
    assert _kept(select_hybrid(probs, 0.0, 0.2)[0]) == [0]
    assert _kept(select_hybrid(probs, 0.03, 0.2)[0]) == [0, 1, 2]
    # The block crossing topp is kept: mass 0.6 < 0.7, so the 0.2 block joins.
    assert _kept(select_hybrid(probs, 0.0, 0.7)[0]) == [0, 1]


def test_skewed_row_unsorted_positions():
    probs = torch.tensor([[0.05, 0.6, 0.05, 0.2, 0.1]])
    assert _kept(select_hybrid(probs, 0.0, 0.75)[0]) == [1, 3]
    assert _kept(select_hybrid(probs, 0.2, 0.0)[0]) == [1]
    assert _kept(select_hybrid(probs, 0.2, 0.85)[0]) == [1, 3, 4]


def test_union_property():
    probs = torch.softmax(torch.randn(4, 7, 50) * 3, dim=-1)
    for topk, topp in [(0.03, 0.2), (0.1, 0.5), (0.5, 0.05)]:
        hybrid = select_hybrid(probs, topk, topp)
        assert torch.equal(hybrid, select_hybrid(probs, topk, 0.0) | select_hybrid(probs, 0.0, topp))


def test_density_monotone_in_topk_and_topp():
    q, k = torch.randn(1, 3, 1000, 32), torch.randn(1, 3, 2000, 32)
    grid = [0.0, 0.01, 0.05, 0.1, 0.3, 0.6, 1.0]
    by_topk = [sk.predict_block_mask(q, k, topk=t, topp=0.2).density for t in grid]
    by_topp = [sk.predict_block_mask(q, k, topk=0.03, topp=p).density for p in grid]
    assert by_topk == sorted(by_topk) and by_topp == sorted(by_topp)
    assert by_topk[-1] == 1.0 and by_topp[-1] == 1.0


@pytest.mark.parametrize("topk,topp", [(1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (1.0, 0.2)])
def test_one_keeps_every_block(topk, topp):
    q, k = torch.randn(2, 2, 300, 16), torch.randn(2, 2, 500, 16)
    mask = sk.predict_block_mask(q, k, topk=topk, topp=topp)
    assert mask.density == 1.0


def test_topk_count_rule():
    assert topk_count(0.03, 512) == math.ceil(0.03 * 512) == 16
    assert topk_count(0.07, 100) == 7  # 0.07 * 100 = 7.000000000000001 in floats: not 8
    assert topk_count(0.001, 10) == 1  # at least one block
    assert topk_count(0.0, 10) == 0


def test_every_row_keeps_at_least_one_block():
    q, k = torch.randn(1, 4, 1000, 32), torch.randn(1, 4, 5000, 32)
    mask = sk.predict_block_mask(q, k, topk=0.0, topp=1e-6)
    assert int(mask.kv_count.min()) >= 1


def test_partial_last_block_is_mean_of_real_tokens():
    x = torch.randn(1, 2, 65, 8, dtype=torch.float64)
    pooled = mean_pool_blocks(x, 64)
    assert pooled.shape == (1, 2, 2, 8)
    torch.testing.assert_close(pooled[:, :, 1], x[:, :, 64], rtol=0, atol=0)
    torch.testing.assert_close(pooled, naive.pool(x, 64), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("lq,lk", [(1000, 1000), (65, 300), (256, 129)])
def test_predicted_mask_matches_naive_rowwise(lq, lk):
    q = torch.randn(2, 3, lq, 16, dtype=torch.float64)
    k = torch.randn(2, 3, lk, 16, dtype=torch.float64) * 2
    for topk, topp in [(0.03, 0.2), (0.2, 0.0), (0.0, 0.5), (0.1, 0.9)]:
        mask = sk.predict_block_mask(q, k, topk=topk, topp=topp, block_q=32, block_k=16)
        assert torch.equal(mask.to_dense(), naive.predict_dense(q, k, topk, topp, 32, 16))


def test_predicted_mask_layouts_agree_and_accept_strided_inputs():
    q, k = torch.randn(1, 500, 4, 32), torch.randn(1, 700, 4, 32)
    nhd = sk.predict_block_mask(q, k, layout="NHD")
    hnd = sk.predict_block_mask(q.transpose(1, 2), k.transpose(1, 2), layout="HND")  # strided views
    assert torch.equal(nhd.kv_index, hnd.kv_index) and torch.equal(nhd.q_index, hnd.q_index)
