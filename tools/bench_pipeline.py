"""Benchmark: one CFG denoising step of the Wan2.1 transformer, dense SDPA (cuDNN) vs sparge, eager and compiled.

Models are the real Wan2.1 transformer configs (diffusers' WanTransformer3DModel) with random bf16 weights
(diffusers' fp32-kept modules stay fp32, as from_pretrained(dtype=bf16) leaves them):
  1.3B at 480p, 81 frames: latent 16x21x60x104 -> 21x30x52 = 32760 tokens after the 1x2x2 patchify
  14B  at 720p, 81 frames: latent 16x21x90x160 -> 21x45x80 = 75600 tokens
One step with CFG = one transformer call with batch 2 (cond + uncond), 512 text tokens.

Modes:
  dense   diffusers' WanAttnProcessor on SDPA with the cuDNN backend (attention backend "_native_cudnn")
  sparge  sparge_pipelines.apply_sparge, topk=0.05, topp=0 (~95% sparsity). Random weights give near-uniform
          pooled scores, on which Top-p would keep about p of the blocks; Top-k alone pins the density.
          Cross-attention stays on cuDNN SDPA.
Each eager, and with `compile_repeated_blocks` (diffusers' regional torch.compile of every WanTransformerBlock).
Attention share (eager): time inside the self-attention processors (CUDA events around each attn1 call: q/k/v
projections, norms, rope, attention, output projection) over the step time. Compiled: not measured (events would
break the graph). The achieved density comes from a stats pass (BlockMask.density_per_head).

    python tools/bench_pipeline.py [--models 1.3b,14b] [--iters 3] [--warmup 1] [--no-compile]
                                   [--compile-models 1.3b]
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import time

import torch

WAN_1_3B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
                text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=None, added_kv_proj_dim=None,
                rope_max_seq_len=1024)
WAN_14B = {**WAN_1_3B, "num_attention_heads": 40, "ffn_dim": 13824, "num_layers": 40}
CASES = {  # name: (config, latent (C, F, H, W))
    "1.3b": ("Wan2.1-1.3B 480p", WAN_1_3B, (16, 21, 60, 104)),
    "14b": ("Wan2.1-14B 720p", WAN_14B, (16, 21, 90, 160)),
    "tiny": ("tiny (smoke test)", {**WAN_1_3B, "num_attention_heads": 2, "attention_head_dim": 64, "ffn_dim": 256,
                                   "num_layers": 2, "text_dim": 64, "freq_dim": 32}, (16, 3, 16, 32)),
}
SPARGE = dict(topk=0.05, topp=0.0)


def build_model(config: dict, device: str):
    from diffusers import WanTransformer3DModel

    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # build in bf16 directly: 14B in fp32 would not fit next to bf16
    try:
        with torch.device(device):
            model = WanTransformer3DModel(**config)
    finally:
        torch.set_default_dtype(default)
    keep = WanTransformer3DModel._keep_in_fp32_modules
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if any(k in name.split(".") for k in keep):  # also rope's float64 tables -> fp32
                tensor.data = tensor.data.float()
    return model.eval().requires_grad_(False)


def make_inputs(latent: tuple[int, ...], text_dim: int, device: str):
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(2, *latent, generator=g, device=device, dtype=torch.bfloat16)
    text = torch.randn(2, 512, text_dim, generator=g, device=device, dtype=torch.bfloat16)
    return dict(hidden_states=x, timestep=torch.tensor([500.0, 500.0], device=device), encoder_hidden_states=text,
                return_dict=False)


def set_compiled(model, on: bool) -> None:
    import torch._dynamo

    torch._dynamo.reset()
    if on:
        model.compile_repeated_blocks(fullgraph=False)
    else:
        for block in model.blocks:
            block._compiled_call_impl = None


def time_step(model, inputs, warmup: int, iters: int, sync) -> tuple[float, torch.Tensor]:
    """Median milliseconds of one forward (CUDA events), after `warmup` calls; also the last output."""
    with torch.inference_mode():
        for _ in range(warmup):
            out = model(**inputs)[0]
        sync()
        samples = []
        for _ in range(iters):
            if torch.cuda.is_available():
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                out = model(**inputs)[0]
                end.record()
                end.synchronize()
                samples.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                out = model(**inputs)[0]
                samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples), out


def bench_case(key: str, args) -> list[dict]:
    from sparge_pipelines import apply_sparge, remove_sparge

    name, config, latent = CASES[key]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    model = build_model(config, device)
    inputs = make_inputs(latent, config["text_dim"], device)
    tokens = latent[1] * (latent[2] // 2) * (latent[3] // 2)
    if device == "cuda":
        try:
            model.set_attention_backend("_native_cudnn")
        except Exception as exc:  # noqa: BLE001 - report and go on with PyTorch's own SDPA choice
            print(f"  cuDNN attention backend unavailable ({exc}); dense runs use native SDPA", flush=True)
    layers = config["num_layers"]
    rows, outputs = [], {}

    # Achieved density: one stats pass (not timed).
    state = apply_sparge(model, **SPARGE, collect_stats=True)
    with torch.inference_mode():
        model(**inputs)
    density = state.stats.summary()["overall"]
    remove_sparge(model)

    compile_here = args.compile and (args.compile_models is None or key in args.compile_models.split(","))
    for compiled in ([False, True] if compile_here else [False]):
        set_compiled(model, compiled)
        for mode in ("dense", "sparge"):
            timed = not compiled
            if mode == "dense":
                # Every layer dense: the processor runs diffusers' own one and only adds the CUDA events.
                state = apply_sparge(model, **SPARGE, dense_layers=range(layers), time_attention=True) if timed \
                    else None
            else:
                state = apply_sparge(model, **SPARGE, time_attention=timed)
            t0 = time.perf_counter()
            warmup = args.warmup + (1 if compiled else 0)
            ms, out = time_step(model, inputs, warmup, args.iters, sync)
            wall = time.perf_counter() - t0
            attn_ms = None
            if state is not None and state.timer is not None:
                totals = state.timer.totals()  # all calls: warmup + timed, per call the same work
                attn_ms = sum(totals.values()) / (warmup + args.iters)
            if state is not None:
                remove_sparge(model)
            outputs[(mode, compiled)] = out.float()
            rows.append(dict(model=name, tokens=tokens, mode=mode, compiled=compiled, ms=ms, attn_ms=attn_ms,
                             density=1.0 if mode == "dense" else density, wall_s=wall))
            print(f"  {name} {mode} {'compiled' if compiled else 'eager'}: {ms:.1f} ms/step"
                  + (f", self-attention {attn_ms:.1f} ms" if attn_ms else "") + f" ({wall:.0f} s)", flush=True)
        sparse, dense = outputs[("sparge", compiled)], outputs[("dense", compiled)]
        rel = ((sparse - dense).norm() / dense.norm()).item()
        finite = bool(torch.isfinite(sparse).all())
        print(f"  sparge vs dense output: relative L2 {rel:.3f}, finite={finite}", flush=True)
        for r in rows[-2:]:
            r["rel_l2"] = rel if r["mode"] == "sparge" else 0.0
    set_compiled(model, False)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | tokens | mode | compile | density | step ms | self-attn ms (share) | speedup vs dense eager |"
             " rel. L2 vs dense |",
             "|---|---:|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        base = next(x["ms"] for x in rows if x["model"] == r["model"] and x["mode"] == "dense" and not x["compiled"])
        attn = f"{r['attn_ms']:.1f} ({r['attn_ms'] / r['ms']:.0%})" if r["attn_ms"] else "n/m"
        lines.append(f"| {r['model']} | {r['tokens']} | {r['mode']} | {'yes' if r['compiled'] else 'no'} | "
                     f"{r['density']:.3f} | {r['ms']:.1f} | {attn} | {base / r['ms']:.2f}x | "
                     f"{r.get('rel_l2', 0):.3f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="1.3b,14b", help=f"comma-separated of {tuple(CASES)}")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--compile-models", default=None, help="compile only these of --models (default: all)")
    p.add_argument("--allow-reference", action="store_true",
                   help="run without the CUDA kernels on the slow reference (correctness only, not timings)")
    args = p.parse_args()

    import sparge_kernels

    reference = os.environ.get("SPARGE_BACKEND", "").lower() == "reference"
    if torch.cuda.is_available() and not sparge_kernels.cuda_available() and not reference:
        if not args.allow_reference:
            raise SystemExit("sparge-kernels has no CUDA kernels in this install: nothing to time. "
                             "(--allow-reference with SPARGE_BACKEND=reference checks the code path only.)")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print("# Wan2.1 transformer, one CFG step (batch 2): dense cuDNN SDPA vs sparge\n")
    print(f"{device}, torch {torch.__version__}, {datetime.date.today()}, sparge backend: "
          f"{'reference (NOT a timing)' if reference or not torch.cuda.is_available() else 'CUDA kernels'}; "
          f"sparge {SPARGE}, blocks 128/64, token order 1d; median of {args.iters} after {args.warmup} warmup "
          f"(+1 when compiled)\n", flush=True)
    rows = []
    for key in args.models.split(","):
        rows += bench_case(key.strip(), args)
        print("\n" + table(rows) + "\n", flush=True)


if __name__ == "__main__":
    main()
