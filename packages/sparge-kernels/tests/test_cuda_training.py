"""A tiny 2-layer transformer trained with the CUDA sparge ops tracks the same model trained on the reference ops.

Same init, same data, same fixed block mask, 20 Adam steps; attention runs in bf16 (NHD layout, as in diffusers)
through `block_sparse_attention`'s autograd in both runs. The runs differ only in the attention implementation:
CUDA kernels (they round P and dS to bf16 inside the backward) vs SPARGE_BACKEND=reference (fp32 compute).
Tolerance: at every step |loss_cuda − loss_ref| ≤ 2e-2 · loss_ref, and both runs must actually learn (final loss
≤ 0.9 × initial). GPU only.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import sparge_kernels as sk
from sparge_kernels import backend as backend_mod
from sparge_kernels import cuda, cuda_backward
from sparge_kernels.block_mask import BlockMask
from sparge_kernels.validation import check_kernel_path, num_blocks

pytestmark = pytest.mark.gpu

STEPS = 20
LOSS_REL_TOL = 2e-2
DIM, HEADS, HEAD_DIM, IO_DIM = 128, 2, 64, 16
BATCH, SEQ = 2, 1000  # 1000 = 7·128 + 104 = 15·64 + 40: tails on both block sizes


class Block(nn.Module):
    def __init__(self, attend):
        super().__init__()
        self.attend = attend
        self.norm1, self.norm2 = nn.LayerNorm(DIM), nn.LayerNorm(DIM)
        self.qkv, self.proj = nn.Linear(DIM, 3 * DIM), nn.Linear(DIM, DIM)
        self.mlp = nn.Sequential(nn.Linear(DIM, 2 * DIM), nn.GELU(), nn.Linear(2 * DIM, DIM))

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, HEADS, HEAD_DIM).unbind(2)  # NHD views
        x = x + self.proj(self.attend(q, k, v).reshape(b, n, DIM))
        return x + self.mlp(self.norm2(x))


class TinyTransformer(nn.Module):
    def __init__(self, attend):
        super().__init__()
        self.embed = nn.Linear(IO_DIM, DIM)
        self.blocks = nn.ModuleList([Block(attend), Block(attend)])
        self.head = nn.Linear(DIM, IO_DIM)

    def forward(self, x):
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def _sparse_attention(mask):
    def attend(q, k, v):
        dtype = q.dtype
        out = sk.block_sparse_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask, layout="NHD")
        return out.to(dtype)

    return attend


def _dense_attention(q, k, v):
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    return nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2)


def _train(mask, data, target, init_state) -> list[float]:
    model = TinyTransformer(_sparse_attention(mask)).cuda()
    model.load_state_dict(init_state)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(STEPS):
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(model(data), target)
        loss.backward()
        for p in model.parameters():
            assert torch.isfinite(p.grad).all()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("backward_path,dq_accumulate", [("sm80", "bulk"), ("sm90", "bulk"), ("sm90", "spill")])
def test_training_tracks_reference(monkeypatch, backward_path, dq_accumulate):
    """backward_path="sm90" skips where the GPU or build has no Hopper backward (conftest.py); "spill" is its dS
    spill mode (KernelOptions.dq_accumulate)."""
    check_kernel_path("backward_path", backward_path, cuda._C.build_archs, torch.cuda.get_device_capability())
    torch.manual_seed(0)
    g = torch.Generator(device="cuda").manual_seed(0)
    nq, nk = num_blocks(SEQ, 128), num_blocks(SEQ, 64)
    dense = torch.rand(BATCH, HEADS, nq, nk, generator=g, device="cuda") < 0.3
    dense[..., 0] = True  # every query block keeps at least one key block
    mask = BlockMask.from_dense(dense, seq_len_q=SEQ, seq_len_k=SEQ)

    data = torch.randn(BATCH, SEQ, IO_DIM, generator=g, device="cuda")
    teacher = TinyTransformer(_dense_attention).cuda()
    with torch.no_grad():
        target = teacher(data)
    init_state = {k: v.clone() for k, v in TinyTransformer(_dense_attention).cuda().state_dict().items()}

    # CUDA run: the CUDA backend; count backward calls to be sure the kernels ran.
    calls = []

    def counted_backward(*args):
        calls.append(1)
        return cuda_backward.backward(*args)

    monkeypatch.delenv("SPARGE_BACKEND", raising=False)
    monkeypatch.setattr(backend_mod, "CUDA", dataclasses.replace(backend_mod.CUDA, backward=counted_backward))
    with sk.kernel_options(backward_path=backward_path, dq_accumulate=dq_accumulate):
        cuda_losses = _train(mask, data, target, init_state)
    assert len(calls) == 2 * STEPS  # two attention layers per step

    monkeypatch.setenv("SPARGE_BACKEND", "reference")
    ref_losses = _train(mask, data, target, init_state)

    print("step  loss_cuda  loss_reference")
    for i, (a, b) in enumerate(zip(cuda_losses, ref_losses)):
        print(f"{i:4d}  {a:.6f}  {b:.6f}")
    for i, (a, b) in enumerate(zip(cuda_losses, ref_losses)):
        assert abs(a - b) <= LOSS_REL_TOL * b, f"step {i}: cuda {a:.6f} vs reference {b:.6f}"
    assert cuda_losses[-1] <= 0.9 * cuda_losses[0] and ref_losses[-1] <= 0.9 * ref_losses[0]
