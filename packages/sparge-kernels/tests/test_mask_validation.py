"""A hand-built BlockMask is validated before it can reach a kernel; library masks skip the content check."""

from __future__ import annotations

import pytest
import torch

import sparge_kernels as sk
from sparge_kernels import BlockMask
from sparge_kernels import block_mask as bm

Q = torch.randn(1, 2, 256, 16)
K = torch.randn(1, 2, 256, 16)
V = torch.randn(1, 2, 256, 16)


def _fields(mask: BlockMask) -> dict:
    return {name: getattr(mask, name).clone() for name in ("kv_count", "kv_index", "q_count", "q_index")} | dict(
        block_q=mask.block_q, block_k=mask.block_k, seq_len_q=mask.seq_len_q, seq_len_k=mask.seq_len_k
    )


@pytest.fixture
def good() -> dict:
    dense = torch.rand(1, 2, 2, 4, generator=torch.Generator().manual_seed(0)) < 0.5
    dense[..., 0] = True  # every row keeps block 0, so row (0, 0, 0) has at least one used slot
    dense[0, 0, 0, 1] = True
    return _fields(BlockMask.from_dense(dense, seq_len_q=256, seq_len_k=256))


def test_valid_hand_built_mask_is_accepted_and_matches_from_dense(good):
    mask = BlockMask(**good)
    out = sk.block_sparse_attention(Q, K, V, mask)
    ref = sk.block_sparse_attention(Q, K, V, BlockMask.from_dense(mask.to_dense(), seq_len_q=256, seq_len_k=256))
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def _set(fields: dict, name: str, pos: tuple, value: int) -> dict:
    fields[name][pos] = value
    return fields


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda f: _set(f, "kv_index", (0, 0, 0, 0), 4), r"kv_index\[0, 0, 0, 0\] = 4 is outside \[0, 4\)"),
        (lambda f: _set(f, "kv_index", (0, 0, 0, 0), -3), r"kv_index\[0, 0, 0, 0\] = -3 is outside"),
        (lambda f: _set(f, "kv_index", (0, 0, 0, 1), 0), r"kv_index\[0, 0, 0\] must hold .* unique ascending"),
        (lambda f: _set(f, "kv_count", (0, 1, 1), -1), r"kv_count\[0, 1, 1\] = -1 is outside \[0, 4\]"),
        (lambda f: _set(f, "kv_count", (0, 1, 1), 5), r"kv_count\[0, 1, 1\] = 5 is outside \[0, 4\]"),
        (lambda f: _set(f, "q_count", (0, 0, 0), 3), r"q_count\[0, 0, 0\] = 3 is outside \[0, 2\]"),
        (lambda f: _set(f, "q_index", (0, 0, 0, 0), 7), r"q_index\[0, 0, 0, 0\] = 7 is outside \[0, 2\)"),
    ],
)
def test_bad_contents_are_rejected(good, edit, match):
    with pytest.raises(ValueError, match=match):
        BlockMask(**edit(good))


def test_q_index_must_be_the_transpose(good):
    # Drop key block 0 from query block 0's q-side list only: the backward would miss dK/dV contributions.
    f = good
    f["q_index"][0, 0, 0, 0] = 1
    f["q_count"][0, 0, 0] = 1
    with pytest.raises(ValueError, match="q_index is not the transpose of kv_index.*query block 0 keeps key block 0"):
        BlockMask(**f)


@pytest.mark.parametrize(
    "edit,exc,match",
    [
        (lambda f: f | dict(kv_count=f["kv_count"][..., :1]), ValueError, r"kv_count has shape \(1, 2, 1\)"),
        (lambda f: f | dict(q_index=f["q_index"].transpose(-1, -2)), ValueError, "q_index has shape"),
        (lambda f: f | dict(kv_index=f["kv_index"].long()), TypeError, "kv_index must be int32"),
        (lambda f: f | dict(kv_count=f["kv_count"].tolist()), TypeError, "kv_count must be a torch.Tensor"),
        (lambda f: f | dict(kv_index=f["kv_index"][0]), ValueError, "kv_index must be 4-D"),
        (lambda f: f | dict(block_q=0), ValueError, "block_q must be a positive int"),
        (lambda f: f | dict(block_q="128"), TypeError, "block_q must be a positive int, got str"),
        (lambda f: f | dict(block_k=True), TypeError, "block_k"),
        (lambda f: f | dict(seq_len_q=1000), ValueError, "seq_len_q=1000 with block size 128 needs 8 blocks"),
        (lambda f: f | dict(seq_len_k=0), ValueError, "seq_len_k must be a positive int"),
        (lambda f: f | dict(q_count=f["q_count"].to("meta")), ValueError, "q_count is on meta"),
    ],
)
def test_bad_metadata_is_rejected(good, edit, exc, match):
    with pytest.raises(exc, match=match):
        BlockMask(**edit(good))


def test_from_indices_builds_the_transpose_and_validates():
    dense = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(1)) < 0.4
    ref = BlockMask.from_dense(dense, block_q=32, block_k=16, seq_len_q=150, seq_len_k=100)
    mask = BlockMask.from_indices(ref.kv_count, ref.kv_index, block_q=32, block_k=16, seq_len_q=150, seq_len_k=100)
    assert torch.equal(mask.q_count, ref.q_count) and torch.equal(mask.q_index, ref.q_index)
    assert torch.equal(mask.to_dense(), dense)
    bad = ref.kv_index.clone()
    row = (ref.kv_count > 0).nonzero()[0].tolist()
    bad[tuple(row) + (0,)] = 7
    with pytest.raises(ValueError, match=r"kv_index\[.*\] = 7 is outside \[0, 7\)"):
        BlockMask.from_indices(ref.kv_count, bad, block_q=32, block_k=16, seq_len_q=150, seq_len_k=100)
    with pytest.raises(ValueError, match="kv_count has shape"):
        BlockMask.from_indices(ref.kv_count[:, :1], ref.kv_index, block_q=32, block_k=16)
    with pytest.raises(TypeError, match="block_q must be a positive int, got str"):
        BlockMask.from_indices(ref.kv_count, ref.kv_index, block_q="32")


def test_library_masks_skip_the_content_check(monkeypatch):
    calls = []
    monkeypatch.setattr(BlockMask, "_check_contents", lambda self: calls.append(self))
    mask = sk.predict_block_mask(Q, K)
    _, mask2 = sk.sparge_attention(Q, K, V, return_mask=True)
    sk.block_sparse_attention(Q, K, V, mask)
    mask.to("cpu")
    BlockMask.from_dense(mask.to_dense(), seq_len_q=256, seq_len_k=256)
    assert calls == []  # no content pass (the one that would sync a GPU) on any library path
    BlockMask(**_fields(mask))
    assert len(calls) == 1  # a user-built one does get it


def test_in_place_edit_after_validation_is_caught_before_the_kernel():
    mask = sk.predict_block_mask(Q, K, topk=0.5)
    sk.block_sparse_attention(Q, K, V, mask)
    mask.kv_index[0, 0, 0, 0] = 99  # bumps the tensor's version counter
    with pytest.raises(ValueError, match=r"kv_index\[0, 0, 0, 0\] = 99 is outside"):
        sk.block_sparse_attention(Q, K, V, mask)
    with pytest.raises(ValueError, match="kv_index"):
        mask.to("cpu")


def test_inference_mode_masks_work_inside_and_outside_inference_mode(good):
    # Inference tensors have no version counter: the in-place check must not read one (it used to raise).
    with torch.inference_mode():
        out, mask = sk.sparge_attention(Q, K, V, return_mask=True)
        user_mask = BlockMask(**good)
        sk.block_sparse_attention(Q, K, V, user_mask)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(sk.block_sparse_attention(Q, K, V, mask), out)
    sk.block_sparse_attention(Q, K, V, user_mask)


def test_validation_syncs_once(good, monkeypatch):
    """The content check copies its flags to the host in one go (one sync on a GPU), not one per check."""
    copies = []
    real_stack = torch.stack

    class Flags:
        def __init__(self, t):
            self.t = t

        def tolist(self):
            copies.append(self.t.numel())
            return self.t.tolist()

    monkeypatch.setattr(bm.torch, "stack", lambda ts, *a, **k: Flags(real_stack(ts, *a, **k)))
    BlockMask(**good)
    assert copies == [7]  # 3 checks per direction + the transpose


@pytest.mark.parametrize("block", [10**9, 2**31 - 1])
def test_block_beyond_the_sequence_is_one_block_without_padding(block):
    """block_q/block_k beyond the sequence give the single-block mask; nothing is padded to the block size."""
    mask = sk.predict_block_mask(Q, K, block_q=block, block_k=block)
    assert mask.shape == (1, 2, 1, 1) and bool(mask.to_dense().all())
    out = sk.block_sparse_attention(Q, K, V, mask)
    dense = torch.nn.functional.scaled_dot_product_attention(Q, K, V)
    torch.testing.assert_close(out, dense, rtol=1e-5, atol=1e-5)
    same = sk.predict_block_mask(Q, K, block_q=256, block_k=256)
    assert torch.equal(mask.to_dense(), same.to_dense())


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(block_q=0), ValueError, "block_q must be a positive int"),
        (dict(block_q="128"), TypeError, "block_q must be a positive int, got str"),
        (dict(block_k=2**31), ValueError, "block_k must be a positive int at most 2147483647"),
        (dict(block_q=128.0), TypeError, "block_q"),
    ],
)
def test_block_size_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        sk.predict_block_mask(Q, K, **kwargs)
    with pytest.raises(exc, match=match):
        sk.sparge_attention(Q, K, V, **kwargs)


def test_compiled_sparge_attention_returns_a_mask():
    """The BlockMask built inside a fullgraph-compiled function (metadata checks only) still traces."""
    torch._dynamo.reset()

    def f(q, k, v):
        return sk.sparge_attention(q, k, v, topk=0.3, topp=0.3, block_q=64, block_k=32, return_mask=True)

    out, mask = torch.compile(f, fullgraph=True, backend="aot_eager")(Q, K, V)
    eager_out, eager_mask = f(Q, K, V)
    torch.testing.assert_close(out, eager_out)
    assert torch.equal(mask.to_dense(), eager_mask.to_dense())
    sk.block_sparse_attention(Q, K, V, mask)  # usable eagerly afterwards


@pytest.mark.gpu
def test_gpu_bad_index_never_reaches_a_kernel(monkeypatch):
    import dataclasses

    from sparge_kernels import backend as backend_mod

    launched = []
    real = backend_mod.CUDA
    spy = dataclasses.replace(real, forward=lambda *a: launched.append("forward") or real.forward(*a),
                              backward=lambda *a: launched.append("backward") or real.backward(*a))
    monkeypatch.setattr(backend_mod, "CUDA", spy)
    monkeypatch.delenv("SPARGE_BACKEND", raising=False)
    q, k, v = (torch.randn(1, 2, 512, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    good = sk.predict_block_mask(q, k, topk=0.5)
    sk.block_sparse_attention(q, k, v, good)
    assert launched == ["forward"]
    launched.clear()

    fields = _fields(good)
    fields["kv_index"][0, 0, 0, 0] = 10**6  # far out of bounds: an out-of-bounds GPU read if launched
    with pytest.raises(ValueError, match="is outside"):
        sk.block_sparse_attention(q, k, v, BlockMask(**fields))
    full = BlockMask.from_dense(torch.ones(1, 2, 4, 8, dtype=torch.bool, device="cuda"), seq_len_q=512, seq_len_k=512)
    fields = _fields(full)
    fields["q_index"][0, 1, 2, 0] = 1  # a duplicate: the dK/dV backward would count query block 1 twice
    with pytest.raises(ValueError, match=r"q_index\[0, 1, 2\] must hold 4 unique ascending"):
        BlockMask(**fields)
    good.kv_index[0, 1, 0, 0] = -5  # in-place edit after the library built it
    with pytest.raises(ValueError, match="is outside"):
        sk.block_sparse_attention(q, k, v, good)
    assert launched == []
