"""`sparge-train plan`: parameter counts, ZeRO sharding arithmetic, the activation tracer, the CLI."""

from __future__ import annotations

import pytest
import torch

from sparge_train.cli import main
from sparge_train.plan import GIB, PlanRequest, block_activation_bytes, memory_plan, model_param_counts
from sparge_train.presets import VideoShape, sequence_length, wan_config


def test_sequence_lengths_of_wan_resolutions():
    assert sequence_length(VideoShape(81, 480, 832)) == 32760
    assert sequence_length(VideoShape(81, 720, 1280)) == 75600
    with pytest.raises(ValueError, match="frames"):
        sequence_length(VideoShape(80, 480, 832))


@pytest.mark.parametrize(("preset", "billions", "dim", "layers"),
                         [("wan2.1-1.3b", 1.419, 1536, 30), ("wan2.1-14b", 14.288, 5120, 40)])
def test_preset_sizes(preset, billions, dim, layers):
    arch = wan_config(preset)
    assert arch["num_attention_heads"] * arch["attention_head_dim"] == dim and arch["num_layers"] == layers
    total, block, largest = model_param_counts(arch)
    assert total / 1e9 == pytest.approx(billions, abs=5e-4)
    # a block: self-attn + cross-attn (4 d² each) + FFN (2 d f) + norms/biases
    assert block == pytest.approx(8 * dim**2 + 2 * dim * arch["ffn_dim"], rel=0.01)
    assert largest == 6 * dim * dim + 6 * dim  # the time projection to 6 modulation vectors


def _plan(**kw):
    return memory_plan(PlanRequest(**kw))


def test_zero3_shards_params_by_world_size():
    one = _plan(model="wan2.1-14b", gpus_per_node=1, nodes=1, zero_stage=3)
    sixteen = _plan(model="wan2.1-14b", gpus_per_node=8, nodes=2, zero_stage=3)
    for name in ("student params (bf16)", "teacher params (bf16)", "optimizer (fp32 master + Adam m, v)"):
        assert sixteen.gpu_bytes[name] == pytest.approx(one.gpu_bytes[name] / 16, rel=1e-6)
    assert sixteen.gpu_bytes["student params (bf16)"] == pytest.approx(2 * sixteen.total_params / 16, rel=1e-6)
    # activations do not shard
    key = "activations: one block recomputed"
    assert sixteen.backward_only[key] == one.backward_only[key]
    assert one.total_gpu_bytes == max(one.backward_peak_bytes, one.step_peak_bytes)


def test_zero2_replicates_params_and_shards_optimizer():
    p = _plan(model="wan2.1-1.3b", gpus_per_node=8, nodes=1, zero_stage=2, height=480, width=832)
    assert p.gpu_bytes["student params (bf16)"] == 2 * p.total_params
    assert p.gpu_bytes["teacher params (bf16)"] == 2 * p.total_params
    assert p.gpu_bytes["optimizer (fp32 master + Adam m, v)"] == pytest.approx(12 * p.total_params / 8, rel=1e-6)


def test_offload_moves_states_to_the_host():
    p = _plan(model="wan2.1-14b", gpus_per_node=8, nodes=2, zero_stage=3, offload="cpu")
    assert p.gpu_bytes["optimizer (fp32 master + Adam m, v)"] == 0 and p.gpu_bytes["student params (bf16)"] == 0
    assert p.step_only["student fp32 grads (optimizer step only)"] == 0
    assert p.cpu_bytes_per_node > 18 * p.total_params / 2 * 0.99


def test_model_states_agree_with_deepspeeds_estimator():
    for stage in (2, 3):
        p = _plan(model="wan2.1-14b", gpus_per_node=8, nodes=2, zero_stage=stage)
        states = {**p.gpu_bytes, **p.step_only}
        ours = sum(v for k, v in states.items() if k.startswith(("student", "optimizer")))
        assert ours == pytest.approx(p.deepspeed_estimate["gpu_bytes"], rel=0.25), stage


def test_activation_tracer_matches_a_real_cpu_backward_graph():
    """The meta-device trace (flash-style attention stand-in) counts what a real CPU forward saves with PyTorch's
    flash attention for CPU, which also saves q, k, v, out and the log-sum-exp."""
    from diffusers.models.transformers.transformer_wan import WanTransformerBlock

    arch = {**wan_config("tiny"), "attention_head_dim": 32, "num_attention_heads": 2, "ffn_dim": 96}
    seq = 256
    traced, _ = block_activation_bytes(arch, seq, batch=1, dtype=torch.float32)

    torch.manual_seed(0)
    block = WanTransformerBlock(64, 96, 2, arch["qk_norm"], True, 1e-6, None)
    params = {p.untyped_storage()._cdata for p in block.parameters()}
    saved = {}

    def pack(t):
        if t.untyped_storage()._cdata not in params:
            saved[t.untyped_storage()._cdata] = t.untyped_storage().nbytes()
        return t

    x = torch.randn(1, seq, 64, requires_grad=True)
    rope = (torch.randn(1, seq, 1, 32), torch.randn(1, seq, 1, 32))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        block(x, torch.randn(1, 512, 64), torch.randn(1, 6, 64), rope)
    assert traced == pytest.approx(sum(saved.values()), rel=0.05)


def test_activations_grow_linearly_with_tokens():
    arch = wan_config("wan2.1-1.3b")
    a, _ = block_activation_bytes(arch, 8192)
    b, _ = block_activation_bytes(arch, 16384)
    assert b / a == pytest.approx(2.0, rel=0.05)  # only the 512 text tokens' share is constant


def test_plan_cli_14b_on_two_nodes(capsys):
    code = main(["plan", "--model", "wan2.1-14b", "--gpus-per-node", "8", "--nodes", "2", "--zero", "3",
                 "--gpu-mem-gib", "141"])
    out = capsys.readouterr().out
    assert code == 0 and "fits" in out and "75600 tokens" in out and "ZeRO-3" in out
    p = _plan(model="wan2.1-14b", gpus_per_node=8, nodes=2, zero_stage=3, gpu_mem_gib=141)
    assert p.fits and 40 * GIB < p.total_gpu_bytes < 141 * GIB
    assert main(["plan", "--model", "wan2.1-14b", "--gpus-per-node", "1", "--zero", "3", "--gpu-mem-gib", "80"]) == 2
    with pytest.raises(ValueError, match="preset"):
        _plan(model="wan3")


def test_sequence_parallel_divides_activations_not_model_states():
    one = _plan(model="wan2.1-14b", gpus_per_node=8, nodes=2, zero_stage=3)
    sp8 = _plan(model="wan2.1-14b", gpus_per_node=8, nodes=2, zero_stage=3, sequence_parallel=8)
    for name in ("student params (bf16)", "optimizer (fp32 master + Adam m, v)", "teacher params (bf16)"):
        assert sp8.gpu_bytes[name] == one.gpu_bytes[name]  # ZeRO shards over all 16 GPUs either way
    key = "activations: checkpointed block inputs"
    assert sp8.backward_only[key] * 8 == one.backward_only[key]
    recomputed = "activations: one block recomputed"  # 512 text tokens per GPU stay whole: a bit over 1/8
    assert one.backward_only[recomputed] / 8 < sp8.backward_only[recomputed] < one.backward_only[recomputed] / 7
    assert sp8.backward_only["Ulysses all-to-all buffers (bf16, est.)"] == 9 * (75600 // 8) * 5120 * 2
    assert "Ulysses all-to-all buffers (bf16, est.)" not in one.backward_only


def test_plan_cli_14b_720p_two_nodes_sequence_parallel_8_fits_without_offload(capsys):
    """The issue's case: 14B, 720p (75,600 tokens), 2x8 80 GB GPUs, ZeRO-3, no offload: 89 GiB without sequence
    parallelism (does not fit), under 35 GiB with Ulysses degree 8 (both with the default dS spill buffer)."""
    args = ["plan", "--model", "wan2.1-14b", "--gpus-per-node", "8", "--nodes", "2", "--zero", "3",
            "--gpu-mem-gib", "80"]
    assert main([*args, "--sequence-parallel", "8"]) == 0
    out = capsys.readouterr().out
    assert "sequence parallel (Ulysses) 8" in out and "75600 tokens (9450 per GPU)" in out
    assert "**fits**" in out and "without it: peak 89.2 GiB per GPU (does NOT fit)" in out
    assert "| 1 | 75600 | 89.2 | does NOT fit |" in out and "| 8 | 9450 | 31.4 | fits |" in out  # the fit table
    assert main(args) == 2
    p = _plan(model="wan2.1-14b", gpus_per_node=8, nodes=2, zero_stage=3, sequence_parallel=8)
    assert p.fits and p.total_gpu_bytes < 35 * GIB and p.request.offload == "none"


@pytest.mark.parametrize(("gpus", "degree", "message"),
                         [(16, 3, "degree 3 must divide the 16 GPUs"),
                          (16, 16, "Ulysses degree 16 does not divide the 40 attention heads")])
def test_sequence_parallel_degree_errors(gpus, degree, message, capsys):
    with pytest.raises(ValueError, match=message):
        _plan(model="wan2.1-14b", gpus_per_node=gpus, sequence_parallel=degree)
    if degree == 3:
        assert main(["plan", "--gpus-per-node", str(gpus), "--sequence-parallel", str(degree)]) != 0
        assert "sequence_parallel: degree 3" in capsys.readouterr().err


def test_ds_spill_buffer_is_planned_when_the_spill_mode_is_on(monkeypatch):
    """sparge-kernels' dS spill mode (SPARGE_DQ_ACCUMULATE=spill) allocates its buffer in every attention backward:
    the plan counts one, min(ds_spill_bytes, a dense mask's tiles), on this GPU's heads ("spill" is the default)."""
    key = "sparge dS spill buffer (dq_accumulate='spill')"
    monkeypatch.setenv("SPARGE_DQ_ACCUMULATE", "bulk")
    bulk = _plan(model="wan2.1-1.3b", gpus_per_node=1, nodes=1, zero_stage=2, height=480, width=832)
    assert key not in bulk.backward_only
    monkeypatch.delenv("SPARGE_DQ_ACCUMULATE")
    spill = _plan(model="wan2.1-1.3b", gpus_per_node=1, nodes=1, zero_stage=2, height=480, width=832)
    assert spill.backward_only[key] == 2 * GIB  # the default budget binds (a dense mask: 25.8 GB)
    assert spill.backward_peak_bytes == bulk.backward_peak_bytes + 2 * GIB
    tiny = _plan(model="wan2.1-1.3b", gpus_per_node=1, nodes=1, zero_stage=2, frames=5, height=128, width=128)
    seq = tiny.seq_len
    assert tiny.backward_only[key] == 12 * -(-seq // 128) * -(-seq // 64) * 128 * 64 * 2  # the dense bound binds
    import sparge_kernels

    with sparge_kernels.kernel_options(ds_spill_head_groups=5):  # 12 heads: groups of 2 or 3, the buffer for 3
        grouped = _plan(model="wan2.1-1.3b", gpus_per_node=1, nodes=1, zero_stage=2, frames=5, height=128, width=128)
    assert grouped.backward_only[key] == tiny.backward_only[key] // 12 * 3
