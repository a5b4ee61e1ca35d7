#!/usr/bin/env bash
# Issue 8: multi-GPU ZeRO-3 velocity distillation on one host of 2, 4 or 8 H200s (NCCL), launched by `deepspeed`.
# NOT run yet (no multi-GPU machine was lent when it was written); ready for a session that has one:
#
#   run(kind="nvidia-h200-x8", carry=[".carry"], timeout_s=600,
#       command="source tools/device/setup.sh && python3 -m pip install -q --no-index --no-deps --target /tmp/site \
#                .carry/train_whl/*.whl && bash tools/run_multigpu_zero3.sh")
#   (.carry/train_whl: pydantic, pydantic_core, annotated_types, typing_inspection, typing_extensions, pyyaml
#    for python 3.12 — DeepSpeed needs pydantic; see tools/results/train_*.md for how they were downloaded)
#
# Parts (select with PARTS="scale 14b", default both; each writes its logs and metrics under $OUT):
#   scale  Wan2.1-1.3B config, 480p (32760 tokens), ZeRO-3, sparse student: N GPUs vs 1 GPU at the same global
#          batch (N; the 1-GPU run accumulates N micro-batches). Per-step losses compared, tokens/s per GPU →
#          scaling efficiency.
#   14b    Wan2.1-14B config (random init), 720p (75600 tokens), ZeRO-3 over N GPUs, student and teacher sharded,
#          optimizer/param offload if `sparge-train plan` says the GPUs cannot hold it. 10 steps, checkpoint every
#          5, killed after step 6 and resumed from step 5 (step 6 runs twice: its two losses must agree), peak memory
#          per GPU vs the plan.
# Budget: a device command may run 10 minutes; the two parts together need more (14B at 720p is ~30-40 s per
# step, 11 steps + two model builds), so run them as two calls: PARTS=scale, then PARTS=14b (summary after each).
# Finally a markdown summary: $OUT/train_multigpu.md (commit it as tools/results/train_multigpu_<gpu>_<date>.md).
set -uo pipefail
export PYTHONUNBUFFERED=1
# NVLink multicast stays off on these machines (KINDS.md).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
WORK=${WORK:-/tmp/multigpu}; mkdir -p "$WORK"
NGPU=${NGPU:-$(python3 -c "import torch; print(torch.cuda.device_count())")}
PARTS=${PARTS:-scale 14b}
GPU_MEM_GIB=${GPU_MEM_GIB:-$(python3 -c "import torch; print(int(torch.cuda.get_device_properties(0).total_memory / 2**30))")}
SCALE_STEPS=${SCALE_STEPS:-6}
BIG_STEPS=${BIG_STEPS:-10}
echo "GPUs: $NGPU × ${GPU_MEM_GIB} GiB; parts: $PARTS"
[ "$NGPU" -ge 2 ] || { echo "needs at least 2 GPUs"; exit 1; }

base_config() {  # $1 = preset, $2 = latent frames, $3 = latent height, $4 = latent width, $5 = output dir
  cat <<EOF
model: {preset: $1, gradient_checkpointing: true, attention_backend: _native_cudnn}
sparge: {enabled: true, topk: 0.05, topp: 0.0}
loss: {kind: velocity}
flow: {shift: 5.0}
data:
  source: synthetic
  text_len: 512
  synthetic: {num_samples: 64, latent_channels: 16, latent_frames: $2, latent_height: $3, latent_width: $4,
              text_tokens: 64, text_dim: 4096}
optim: {lr: 1.0e-5}
deepspeed: {zero_stage: 3, precision: bf16}
train: {output_dir: $5, micro_batch_size: 1, save_every: 0, save_at_end: false, export_at_end: false,
        tensorboard: false, progress_bar: false, time_phases: true, resume: auto}
EOF
}

fit() {  # $1 = number of GPUs, $2 = config, $3 = log, rest = --set overrides
  local n=$1 cfg=$2 log=$3; shift 3
  local sets=(); for s in "$@"; do sets+=(--set "$s"); done
  local port=$((29500 + RANDOM % 1000))
  SECONDS=0
  # python -m: the carried deepspeed wheel is installed with --target, so its `deepspeed` script is not on PATH.
  python3 -m deepspeed.launcher.runner --num_gpus "$n" --master_port "$port" --module sparge_train fit \
    --config "$cfg" "${sets[@]}" >"$log" 2>&1
  local rc=$?
  echo "  fit on $n GPU(s) -> rc $rc in ${SECONDS}s ($log)"
  return $rc
}

fit_killed_after() {  # $1 = step, $2 = metrics.jsonl to watch, then as fit: SIGKILL the whole run once step $1 is logged
  local step=$1 metrics=$2; shift 2
  setsid bash -c "$(declare -f fit); fit $(printf '%q ' "$@")" &
  local pid=$!
  until grep -q "\"step\": $step," "$metrics" 2>/dev/null || ! kill -0 "$pid" 2>/dev/null; do sleep 1; done
  kill -KILL -- "-$pid" 2>/dev/null  # like a node failure: every rank at once, no cleanup
  wait "$pid"
}

status=0
if [[ " $PARTS " == *" scale "* ]]; then
  echo "== scale: 1.3B 480p ZeRO-3, global batch $NGPU, $SCALE_STEPS steps"
  base_config wan2.1-1.3b 21 60 104 "$WORK/scale_1gpu" >"$WORK/scale.yaml"
  fit 1 "$WORK/scale.yaml" "$OUT/scale_1gpu.log" "train.max_steps=$SCALE_STEPS" \
    "train.global_batch_size=$NGPU" "train.output_dir=$WORK/scale_1gpu" || status=1
  fit "$NGPU" "$WORK/scale.yaml" "$OUT/scale_${NGPU}gpu.log" "train.max_steps=$SCALE_STEPS" \
    "train.global_batch_size=$NGPU" "train.output_dir=$WORK/scale_${NGPU}gpu" || status=1
  cp "$WORK/scale_1gpu/metrics.jsonl" "$OUT/scale_1gpu_metrics.jsonl" 2>/dev/null
  cp "$WORK/scale_${NGPU}gpu/metrics.jsonl" "$OUT/scale_${NGPU}gpu_metrics.jsonl" 2>/dev/null
fi

if [[ " $PARTS " == *" 14b "* ]]; then
  # Offload only if the plan says the GPUs cannot hold the run.
  OFFLOAD=$(python3 - "$NGPU" "$GPU_MEM_GIB" <<'PY'
import sys
from sparge_train.plan import PlanRequest, memory_plan
n, mem = int(sys.argv[1]), float(sys.argv[2])
plan = memory_plan(PlanRequest(model="wan2.1-14b", gpus_per_node=n, nodes=1, zero_stage=3, gpu_mem_gib=mem))
print("none" if plan.fits else "cpu")
PY
)
  python3 -m sparge_train plan --model wan2.1-14b --gpus-per-node "$NGPU" --nodes 1 --zero 3 --offload "$OFFLOAD" \
    --gpu-mem-gib "$GPU_MEM_GIB" >"$OUT/plan_14b.md"
  python3 -m sparge_train plan --model wan2.1-14b --gpus-per-node "$NGPU" --nodes 1 --zero 3 --offload "$OFFLOAD" \
    --gpu-mem-gib "$GPU_MEM_GIB" --json >"$OUT/plan_14b.json"
  echo "== 14b: 720p ZeRO-3 on $NGPU GPUs, offload $OFFLOAD, $BIG_STEPS steps, killed after 6, resumed"
  base_config wan2.1-14b 21 90 160 "$WORK/big" >"$WORK/big.yaml"
  common=("train.max_steps=$BIG_STEPS" "train.global_batch_size=$NGPU" "train.save_every=5" "train.keep_last=1"
          "deepspeed.offload_optimizer=$OFFLOAD" "deepspeed.offload_param=$OFFLOAD")
  fit_killed_after 6 "$WORK/big/metrics.jsonl" "$NGPU" "$WORK/big.yaml" "$OUT/big_killed.log" "${common[@]}"
  echo "  (the killed run is expected to fail; checkpoints: $(ls "$WORK/big/checkpoints" 2>/dev/null | tr '\n' ' '))"
  fit "$NGPU" "$WORK/big.yaml" "$OUT/big_resumed.log" "${common[@]}" || status=1
  cp "$WORK/big/metrics.jsonl" "$OUT/big_metrics.jsonl" 2>/dev/null
  du -sh "$WORK/big/checkpoints" >"$OUT/big_checkpoint_size.txt" 2>&1
fi

python3 - "$OUT" "$NGPU" "$GPU_MEM_GIB" <<'PY' | tee "$OUT/train_multigpu.md"
import json, statistics, sys, datetime
from pathlib import Path
import torch
out, n, mem = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]

def lines(path):
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()] if path.is_file() else []

def train_records(path):
    return [r for r in lines(path) if "step_time_s" in r]

gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
print(f"## sparge-train multi-GPU ZeRO-3 ({n}× {gpu}, {mem} GiB), "
      f"torch {torch.__version__}, {datetime.date.today()}\n")
one, many = train_records(out / "scale_1gpu_metrics.jsonl"), train_records(out / f"scale_{n}gpu_metrics.jsonl")
if one and many:
    print(f"### Wan2.1-1.3B 480p (32760 tokens), ZeRO-3, sparse student, global batch {n}\n")
    print(f"| step | loss 1 GPU (accum {n}) | loss {n} GPUs | rel. diff |\n|---:|---:|---:|---:|")
    for a, b in zip(one, many):
        print(f"| {a['step']} | {a['loss']:.5g} | {b['loss']:.5g} | {abs(a['loss'] - b['loss']) / a['loss']:.2e} |")
    t1 = statistics.median(r["tokens_per_s"] for r in one[1:])
    tn = statistics.median(r["tokens_per_s"] for r in many[1:])
    print(f"\n| GPUs | tokens/s | tokens/s per GPU | step s | peak GiB (rank 0) |\n|---:|---:|---:|---:|---:|")
    for g, recs, t in ((1, one, t1), (n, many, tn)):
        print(f"| {g} | {t:.0f} | {t / g:.0f} | {statistics.median(r['step_time_s'] for r in recs[1:]):.2f} | "
              f"{max(r.get('peak_mem_gib', 0) for r in recs):.1f} |")
    print(f"\nscaling efficiency (tokens/s per GPU, {n} GPUs vs 1): **{tn / n / t1:.2f}** (first step excluded)\n")
big = lines(out / "big_metrics.jsonl")
if big:
    plan = json.loads((out / "plan_14b.json").read_text())
    print(f"### Wan2.1-14B 720p (75600 tokens), ZeRO-3 on {n} GPUs, offload "
          f"{plan['request']['offload']}, killed after step 6, resumed from the step-5 checkpoint\n")
    print("| step | loss | step s | teacher fwd ms | student fwd ms | student bwd ms | optimizer ms | peak GiB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in (r for r in big if "step_time_s" in r):
        print(f"| {r['step']} | {r['loss']:.5g} | {r['step_time_s']:.1f} | {r.get('teacher_forward_ms', 0):.0f} | "
              f"{r.get('student_forward_ms', 0):.0f} | {r.get('student_backward_ms', 0):.0f} | "
              f"{r.get('optimizer_step_ms', 0):.0f} | {r.get('peak_mem_gib', 0):.1f} |")
    by_step = {}
    for r in (r for r in big if "step_time_s" in r):
        by_step.setdefault(r["step"], []).append(r["loss"])
    replayed = {s: v for s, v in by_step.items() if len(v) > 1}
    print("\n- steps run before the kill and again after the resume: "
          + ", ".join(f"step {s}: {v[0]:.6g} vs {v[1]:.6g}" for s, v in sorted(replayed.items())))
    peak = max(r.get("peak_mem_gib", 0) for r in big)
    print(f"- peak memory (rank 0, torch max_memory_allocated): {peak:.1f} GiB; `sparge-train plan`: "
          f"{plan['total_gpu_gib']:.1f} GiB per GPU (incl. 2 GiB runtime reserve), fits={plan['fits']}")
    print(f"- steps completed: {max(by_step) if by_step else 0}")
PY
exit $status
