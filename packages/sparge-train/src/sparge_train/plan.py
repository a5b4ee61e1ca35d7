"""`sparge-train plan`: per-GPU memory of a distillation run, and whether it fits.

Model states use DeepSpeed's ZeRO accounting (and its estimator functions as a cross-check): with bf16 mixed
precision every trained parameter costs 2 B (16-bit weight) + 2 B (16-bit gradient) + 4 B (fp32 gradient of the
optimizer step) + 12 B (fp32 master weight, Adam m and v), of which ZeRO-2 shards all but the weight and ZeRO-3
shards all. The frozen teacher costs 2 B per parameter (sharded under ZeRO-3). Parameter counts come from
instantiating the real diffusers WanTransformer3DModel on the meta device (exact, allocation free).

Activations are measured, not guessed: one WanTransformerBlock at the real width runs on the meta device under
saved-tensor hooks, with attention replaced by a flash-style stand-in that saves what FlashAttention / sparge
attention save (q, k, v, out, log-sum-exp). With gradient checkpointing the live set is every block's input plus
one block's saved tensors during its recomputation; backward transients are estimated on top (stated below).
The peak is the larger of two phases: forward/backward (activations live) and the optimizer step (activations
freed, gradients upcast to fp32).

Sequence parallelism (Ulysses, degree S): every block runs on seq/S tokens per GPU, so its activations are traced
at seq/S tokens; that is exact for attention too, whose all-to-all turns (seq/S tokens, H heads) into (seq tokens,
H/S heads) of the same size. On top: the all-to-all buffers of one attention (est.), and the patch embedding, made
on the whole sequence before the split (the first block's input is a view of it). Model states are unchanged:
ZeRO shards over all GPUs whatever their data x sequence layout.

On an H100, Wan2.1-1.3B at 480p, ZeRO-2, 1 GPU: planned 33.7 GiB without the runtime reserve,
measured 31.8 GiB (torch.cuda.max_memory_allocated, tools/results/train_*.md).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from .presets import VideoShape, sequence_length, wan_config

__all__ = ["PlanRequest", "MemoryPlan", "model_param_counts", "block_activation_bytes", "memory_plan",
           "format_plan"]

GIB = 2**30
BF16 = 2
RUNTIME_RESERVE_BYTES = 2 * GIB  # CUDA context, NCCL buffers, allocator fragmentation (rule of thumb)
TEXT_TOKENS = 512  # WanPipeline pads UMT5 embeddings to 512 tokens


@dataclass(frozen=True)
class PlanRequest:
    model: str = "wan2.1-14b"
    gpus_per_node: int = 8
    nodes: int = 1
    zero_stage: int = 3
    offload: str = "none"  # "cpu": optimizer states (ZeRO-2/3) and parameters (ZeRO-3) on the CPU
    height: int = 720
    width: int = 1280
    frames: int = 81
    micro_batch: int = 1
    gpu_mem_gib: float = 80.0
    gradient_checkpointing: bool = True
    teacher: bool = True
    reduce_bucket_size: int = 200_000_000  # DeepSpeedSection defaults
    allgather_bucket_size: int = 200_000_000
    stage3_prefetch_bucket_size: int = 50_000_000
    sequence_parallel: int = 1  # Ulysses degree: GPUs that share one sample, each holding seq/S tokens

    def validate(self) -> None:
        if self.gpus_per_node < 1:
            raise ValueError(f"gpus_per_node: must be >= 1, got {self.gpus_per_node}")
        if self.nodes < 1:
            raise ValueError(f"nodes: must be >= 1, got {self.nodes}")
        if self.zero_stage not in (2, 3):
            raise ValueError(f"zero: must be 2 or 3, got {self.zero_stage}")
        if self.offload not in ("none", "cpu"):
            raise ValueError(f"offload: must be none or cpu, got {self.offload!r}")
        if self.micro_batch < 1:
            raise ValueError(f"micro_batch: must be >= 1, got {self.micro_batch}")
        if isinstance(self.sequence_parallel, bool) or not isinstance(self.sequence_parallel, int) \
                or self.sequence_parallel < 1:
            raise ValueError(f"sequence_parallel: must be an int >= 1, got {self.sequence_parallel!r}")
        if self.world_size % self.sequence_parallel:
            raise ValueError(f"sequence_parallel: degree {self.sequence_parallel} must divide the "
                             f"{self.world_size} GPUs (data-parallel groups x sequence-parallel groups)")
        if not self.gpu_mem_gib > 0:
            raise ValueError(f"gpu_mem_gib: must be > 0, got {self.gpu_mem_gib}")

    @property
    def world_size(self) -> int:
        return self.gpus_per_node * self.nodes


@dataclass
class MemoryPlan:
    request: PlanRequest
    total_params: int
    block_params: int
    largest_layer_params: int
    num_layers: int
    seq_len: int
    gpu_bytes: dict[str, int] = field(default_factory=dict)  # per GPU, live through the whole step
    backward_only: dict[str, int] = field(default_factory=dict)  # live during forward/backward only
    step_only: dict[str, int] = field(default_factory=dict)  # live during the optimizer step only
    cpu_bytes_per_node: int = 0
    deepspeed_estimate: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # With sequence parallelism: Ulysses degree (1 = without) → peak bytes per GPU of the same run at that degree
    by_degree: dict[int, int] = field(default_factory=dict)

    @property
    def backward_peak_bytes(self) -> int:
        return sum(self.gpu_bytes.values()) + sum(self.backward_only.values())

    @property
    def step_peak_bytes(self) -> int:
        return sum(self.gpu_bytes.values()) + sum(self.step_only.values())

    @property
    def total_gpu_bytes(self) -> int:
        """Peak per GPU: the larger of the forward/backward phase and the optimizer step."""
        return max(self.backward_peak_bytes, self.step_peak_bytes)

    @property
    def fits(self) -> bool:
        return self.fits_in_gpu(self.total_gpu_bytes)

    def fits_in_gpu(self, peak_bytes: int) -> bool:
        """Whether a peak of `peak_bytes` per GPU fits the request's GPU memory (`fits` is this plan's)."""
        return peak_bytes <= self.request.gpu_mem_gib * GIB

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["total_gpu_bytes"] = self.total_gpu_bytes
        out["backward_peak_bytes"] = self.backward_peak_bytes
        out["step_peak_bytes"] = self.step_peak_bytes
        out["total_gpu_gib"] = self.total_gpu_bytes / GIB
        out["fits"] = self.fits
        return out


def model_param_counts(arch: dict[str, Any]) -> tuple[int, int, int]:
    """(total parameters, parameters of one transformer block, largest single module's own parameters —
    DeepSpeed's `largest_layer_params`), from the real module built on the meta device."""
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        model = WanTransformer3DModel(**arch)
    total = sum(p.numel() for p in model.parameters())
    block = sum(p.numel() for p in model.blocks[0].parameters())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return total, block, largest


class _FlashStyleAttention(torch.autograd.Function):
    """Meta-device stand-in for FlashAttention: output like q, saves q, k, v, out and a float32 LSE."""

    @staticmethod
    def forward(ctx, q, k, v):  # (B, L, H, D) as diffusers' dispatch_attention_fn takes them
        out = torch.empty_like(q)
        lse = torch.empty(q.shape[0], q.shape[2], q.shape[1], dtype=torch.float32, device=q.device)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


@contextlib.contextmanager
def _flash_style_attention():
    from diffusers.models.transformers import transformer_wan

    original = transformer_wan.dispatch_attention_fn

    def fake(query, key, value, **_ignored):
        return _FlashStyleAttention.apply(query, key, value)

    transformer_wan.dispatch_attention_fn = fake
    try:
        yield
    finally:
        transformer_wan.dispatch_attention_fn = original


def block_activation_bytes(arch: dict[str, Any], seq_len: int, batch: int = 1,
                           dtype: torch.dtype = torch.bfloat16) -> tuple[int, int]:
    """(bytes saved for backward by one WanTransformerBlock, bytes of its largest saved tensor) for a batch of
    `batch` sequences of `seq_len` tokens (parameters excluded, shared storages counted once)."""
    from diffusers.models.transformers.transformer_wan import WanTransformerBlock

    heads, head_dim = arch["num_attention_heads"], arch["attention_head_dim"]
    dim = heads * head_dim
    with torch.device("meta"):
        block = WanTransformerBlock(dim, arch["ffn_dim"], heads, arch["qk_norm"], arch["cross_attn_norm"],
                                    arch["eps"], arch["added_kv_proj_dim"]).to(dtype)
        x = torch.empty(batch, seq_len, dim, dtype=dtype, requires_grad=True)
        text = torch.empty(batch, TEXT_TOKENS, dim, dtype=dtype)
        temb = torch.empty(batch, 6, dim, dtype=torch.float32)
        rope = (torch.empty(1, seq_len, 1, head_dim, dtype=torch.float32),
                torch.empty(1, seq_len, 1, head_dim, dtype=torch.float32))
    param_storages = {p.untyped_storage()._cdata for p in block.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in param_storages:
            saved[storage._cdata] = max(saved.get(storage._cdata, 0), storage.nbytes())
        return t

    with _flash_style_attention(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        block(x, text, temb, rope)
    return sum(saved.values()), max(saved.values())


def _deepspeed_model_state_estimate(req: PlanRequest, total: int, largest: int) -> dict[str, int]:
    """DeepSpeed's own estimators for the trained model's states (params, grads, optimizer), per GPU / per node
    CPU, with its default 1.5 CPU buffer factor."""
    offload = req.offload == "cpu"
    if req.zero_stage == 3:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
            total_params=total, largest_layer_params=largest, num_gpus_per_node=req.gpus_per_node,
            num_nodes=req.nodes, cpu_offload=offload, cpu_offload_params=offload, zero_init=True)
    else:
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

        cpu, gpu = estimate_zero2_model_states_mem_needs(
            total_params=total, num_gpus_per_node=req.gpus_per_node, num_nodes=req.nodes, cpu_offload=offload)
    return {"gpu_bytes": int(gpu), "cpu_bytes_per_node": int(cpu)}


def _ds_spill_bytes(batch: int, heads: int, seq: int) -> int:
    """The dS spill buffer one sparse attention backward allocates under the kernel options in force (0 unless
    dq_accumulate is "spill"): the budget, capped at a dense mask's 128 x 64 tiles of bf16 for the largest head
    group (ds_spill_head_groups)."""
    from sparge_kernels.cuda_backward import spill_layout
    from sparge_kernels.options import current_kernel_options
    from sparge_kernels.validation import ATTENTION_KERNEL_BLOCKS, num_blocks

    options = current_kernel_options()
    if options.dq_accumulate != "spill":
        return 0
    block_q, block_k = ATTENTION_KERNEL_BLOCKS
    _, tiles = spill_layout(batch, heads, num_blocks(seq, block_q), num_blocks(seq, block_k), block_q, block_k, BF16,
                            options)
    return tiles * block_q * block_k * BF16


def _check_sequence_parallel(req: PlanRequest, heads: int, seq: int) -> None:
    """The Ulysses degree must divide the heads (each GPU attends over heads/S) and the tokens (diffusers splits
    the sequence in equal parts)."""
    sp = req.sequence_parallel
    if heads % sp:
        raise ValueError(f"sequence_parallel: Ulysses degree {sp} does not divide the {heads} attention heads of "
                         f"{req.model}")
    if seq % sp:
        raise ValueError(f"sequence_parallel: Ulysses degree {sp} does not divide the {seq} tokens of a "
                         f"{req.frames}x{req.height}x{req.width} video")


def memory_plan(req: PlanRequest) -> MemoryPlan:
    req.validate()
    arch = wan_config(req.model)
    total, block, largest = model_param_counts(arch)
    seq = sequence_length(VideoShape(req.frames, req.height, req.width), tuple(arch["patch_size"]))
    _check_sequence_parallel(req, arch["num_attention_heads"], seq)
    sp = req.sequence_parallel
    local_seq = seq // sp
    n = req.world_size
    dim = arch["num_attention_heads"] * arch["attention_head_dim"]
    layers = arch["num_layers"]
    offload = req.offload == "cpu"
    z3 = req.zero_stage == 3
    plan = MemoryPlan(req, total, block, largest, layers, seq)

    # Student model states.
    both, backward, step = plan.gpu_bytes, plan.backward_only, plan.step_only
    both["student params (bf16)"] = 0 if (z3 and offload) else (math.ceil(BF16 * total / n) if z3 else BF16 * total)
    both["student grads (bf16 partition)"] = 0 if offload else math.ceil(BF16 * total / n)
    both["optimizer (fp32 master + Adam m, v)"] = 0 if offload else math.ceil(12 * total / n)
    # Frozen teacher: bf16 weights, sharded like the student's under ZeRO-3 (offloaded with it).
    if req.teacher:
        both["teacher params (bf16)"] = 0 if (z3 and offload) else (math.ceil(BF16 * total / n) if z3 else BF16 * total)
    # Working buffers: ZeRO-3 gathers a block (+ prefetch) of 16-bit weights and holds that block's full 16-bit
    # gradient until its reduce-scatter; ZeRO-2 holds the reduce and all-gather buckets.
    if z3:
        gathered = BF16 * (2 * block + req.stage3_prefetch_bucket_size)
        backward["ZeRO-3 gathered block + prefetch + unreduced grads"] = gathered
        both["gradient reduce bucket (bf16)"] = BF16 * req.reduce_bucket_size
    else:
        buckets = BF16 * (req.reduce_bucket_size + req.allgather_bucket_size)
        both["gradient reduce + all-gather buckets (bf16)"] = buckets
    # The optimizer step upcasts this rank's gradient partition to fp32, after the activations are freed.
    step["student fp32 grads (optimizer step only)"] = 0 if offload else math.ceil(4 * total / n)

    # Activations (student; the teacher forward runs under no_grad before it and keeps only its output).
    block_saved, largest_saved = block_activation_bytes(arch, local_seq, req.micro_batch)
    token_bytes = req.micro_batch * local_seq * dim  # one residual-width tensor of this GPU's tokens (elements)
    if req.gradient_checkpointing:
        backward["activations: checkpointed block inputs"] = layers * token_bytes * BF16
        backward["activations: one block recomputed"] = block_saved
    else:
        backward["activations: all blocks"] = layers * block_saved
    # Backward transients: gradients of the largest saved tensor and of two fp32 residual-width tensors, plus
    # patch embedding / output head / rope tables (fp32, full width).
    backward["activations: backward transients (est.)"] = 2 * largest_saved + 2 * token_bytes * 4
    if sp == 1:
        backward["activations: embedding + output head"] = 3 * token_bytes * 4
    else:
        # The patch embedding is made on the whole sequence before the split; the head runs on this GPU's tokens.
        backward["activations: embedding (whole sequence) + output head"] = (sp + 2) * token_bytes * 4
        # One attention's all-to-alls (forward, recomputation or backward): for each of q, k, v (or their
        # gradients) the contiguous send copy, the receive buffer and the re-laid-out result (est.).
        backward["Ulysses all-to-all buffers (bf16, est.)"] = 3 * 3 * token_bytes * BF16
    # The sparse attention backward's dS spill buffer (sparge-kernels' KernelOptions.dq_accumulate="spill", e.g. by
    # SPARGE_DQ_ACCUMULATE in the training process): one attention's at a time, on this GPU's heads.
    spill = _ds_spill_bytes(req.micro_batch, arch["num_attention_heads"] // sp, seq)
    if spill:
        backward["sparge dS spill buffer (dq_accumulate='spill')"] = spill
    both["runtime reserve (CUDA context, NCCL, fragmentation)"] = RUNTIME_RESERVE_BYTES

    # Host memory per node.
    states_cpu = (18 * total if offload else 0) + (4 * total if (z3 and offload and req.teacher) else 0)
    plan.cpu_bytes_per_node = math.ceil(states_cpu / req.nodes)
    plan.deepspeed_estimate = _deepspeed_model_state_estimate(req, total, largest)
    if sp > 1:
        for degree in sorted({d for d in (1, 2, 4, 8, 16, 32) if d < sp and sp % d == 0}):
            plan.by_degree[degree] = memory_plan(replace(req, sequence_parallel=degree)).total_gpu_bytes
        plan.by_degree[sp] = plan.total_gpu_bytes
        single = plan.by_degree[1]
        plan.notes.append(f"sequence parallelism: Ulysses degree {sp}, {local_seq} tokens per GPU, "
                          f"{req.world_size // sp} data-parallel group(s) of {sp} GPUs (one sample per group); "
                          f"without it: peak {single / GIB:.1f} GiB per GPU "
                          f"({'fits' if plan.fits_in_gpu(single) else 'does NOT fit'})")
    plan.notes.append(f"DeepSpeed's estimator (model states of the trained student only, no teacher/activations): "
                      f"{plan.deepspeed_estimate['gpu_bytes'] / GIB:.2f} GiB per GPU, "
                      f"{plan.deepspeed_estimate['cpu_bytes_per_node'] / GIB:.1f} GiB CPU per node")
    return plan


def format_plan(plan: MemoryPlan) -> str:
    r = plan.request
    lines = [
        f"# sparge-train plan: {r.model}, {r.nodes} node(s) × {r.gpus_per_node} GPU(s), ZeRO-{r.zero_stage}"
        f"{', offload cpu' if r.offload == 'cpu' else ''}"
        f"{f', sequence parallel (Ulysses) {r.sequence_parallel}' if r.sequence_parallel > 1 else ''}",
        "",
        f"- parameters: {plan.total_params / 1e9:.3f} B (one block {plan.block_params / 1e6:.1f} M, largest "
        f"module {plan.largest_layer_params / 1e6:.1f} M, {plan.num_layers} blocks)",
        f"- video {r.frames}×{r.height}×{r.width} → {plan.seq_len} tokens"
        f"{f' ({plan.seq_len // r.sequence_parallel} per GPU)' if r.sequence_parallel > 1 else ''}"
        f" × micro-batch {r.micro_batch}; "
        f"gradient checkpointing {'on' if r.gradient_checkpointing else 'off'}; "
        f"teacher {'frozen copy' if r.teacher else 'none'}",
        "",
        "| per GPU | live | GiB |",
        "|---|---|---:|",
    ]
    phases = (("whole step", plan.gpu_bytes), ("fwd/bwd", plan.backward_only), ("optim. step", plan.step_only))
    for live, part in phases:
        lines += [f"| {name} | {live} | {value / GIB:.2f} |" for name, value in part.items()]
    lines.append(f"| peak during forward/backward | | {plan.backward_peak_bytes / GIB:.2f} |")
    lines.append(f"| peak during the optimizer step | | {plan.step_peak_bytes / GIB:.2f} |")
    lines.append(f"| **peak** | | **{plan.total_gpu_bytes / GIB:.2f}** |")
    lines += [
        "",
        f"- GPU memory {r.gpu_mem_gib:g} GiB: **{'fits' if plan.fits else 'does NOT fit'}** "
        f"({plan.total_gpu_bytes / GIB:.1f} GiB, headroom {r.gpu_mem_gib - plan.total_gpu_bytes / GIB:.1f} GiB)",
        f"- host memory for offloaded states: {plan.cpu_bytes_per_node / GIB:.1f} GiB per node",
    ]
    lines += [f"- {note}" for note in plan.notes]
    if plan.by_degree:
        lines += ["", f"| Ulysses degree | tokens per GPU | peak GiB per GPU | {r.gpu_mem_gib:g} GiB |",
                  "|---:|---:|---:|---|"]
        lines += [f"| {d} | {plan.seq_len // d} | {peak / GIB:.1f} | "
                  f"{'fits' if plan.fits_in_gpu(peak) else 'does NOT fit'} |"
                  for d, peak in plan.by_degree.items()]
    return "\n".join(lines)
