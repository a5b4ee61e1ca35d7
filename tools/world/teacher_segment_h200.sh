#!/usr/bin/env bash
# One resumable segment of the world teacher's two-stage training on the lent H200, then a check of its EMA export.
#   bash tools/world/teacher_segment_h200.sh <stage> <train seconds> [extra --set overrides...]
# stage: lowres (stage 1, examples/world_teacher_lowres.yaml) or full (stage 2, examples/world_teacher.yaml,
# warm-started from stage 1's export). Run from the repo root on the device with carry=[".carry"]
# (tools/device/prepare_carry.sh fills it); call again while the machine is warm: the run folders in /tmp stay,
# so a segment resumes from its stage's checkpoint.
# WARM_START=<export folder> starts a stage that has no checkpoint yet from those weights (e.g. an export carried
# from an earlier session) instead of its config's initialisation.
# First call on a machine, in the background: builds the kernels (GPU_TESTS=1 then runs their GPU suites). After
# training: the quality gate with the shipped classifier (tools/world/gate_teacher.py, at 16x48x48 for stage 1 and
# 16x96x96 for stage 2) and, with PROBE=1, the attention probe (tools/world/probe_teacher.py).
set -uo pipefail
export PYTHONUNBUFFERED=1
stage=${1:?stage: lowres or full}; budget=${2:?train seconds}; shift 2
out=${OUT:-/tmp/out}; mkdir -p "$out"
SECONDS=0
case $stage in
  lowres) config=packages/sparge-train/examples/world_teacher_lowres.yaml run=/tmp/world-teacher-lowres
          gate_size=${GATE_SIZE:-48} extra=() ;;
  full) config=packages/sparge-train/examples/world_teacher.yaml run=/tmp/world-teacher gate_size=${GATE_SIZE:-96}
        extra=()  # its config starts from the shipped (stage 1) teacher; WARM_START= names another export
        [ -f /tmp/world-teacher-lowres/export/config.json ] && [ -z "${WARM_START:-}" ] &&
          extra=(--set model.pretrained=/tmp/world-teacher-lowres/export) ;;
  *) echo "stage: must be lowres or full, got $stage" >&2; exit 2 ;;
esac
if [ -n "${WARM_START:-}" ] && [ ! -f $run/checkpoints/latest ]; then
  extra+=(--set model.preset=null --set model.pretrained="$WARM_START" --set optim.warmup_steps=50)
fi
if [ ! -f /tmp/site/.installed ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .carry/whl/*.whl && touch /tmp/site/.installed || exit 1
fi
src=$PWD/packages/sparge-kernels/src:$PWD/packages/sparge-pipelines/src:$PWD/packages/sparge-train/src
# Kernels for the probe, built on the CPU cores while the GPU trains (the dense teacher does not need them).
if [ ! -f /tmp/kern/.built ]; then
  ( mkdir -p /tmp/cutlass && tar xzf .carry/cutlass-include.tgz -C /tmp/cutlass &&
    SPARGE_CUDA_ARCHS=90a CMAKE_BUILD_PARALLEL_LEVEL=12 python3 -m pip install -q --no-build-isolation --no-deps \
      --no-index --target /tmp/kern ./packages/sparge-kernels -C cmake.define.CUTLASS_INCLUDE_DIR=/tmp/cutlass/include \
      -C build-dir=/tmp/sparge-build >"$out/build.log" 2>&1 && touch /tmp/kern/.built &&
    if [ "${GPU_TESTS:-0}" = 1 ]; then  # the kernels' GPU suites, beside the training
      PYTHONPATH=/tmp/kern:/tmp/site timeout 400 python3 -m pytest -m gpu -q -p no:cacheprovider \
        packages/sparge-kernels/tests >"$out/gpu_tests.log" 2>&1; echo "gpu tests rc=$?" >>"$out/gpu_tests.log"
    fi ) &
fi
nvidia-smi --query-gpu=name,memory.used,clocks.sm --format=csv,noheader
PYTHONPATH=/tmp/site:$src python3 -m sparge_train fit --config $config --set train.output_dir=$run \
  --set train.max_time_s="$budget" "${extra[@]}" "$@" >"$out/train_$stage.log" 2>&1
echo "fit ($stage) rc=$? after ${SECONDS}s"
grep -v '^\s*$' "$out/train_$stage.log" | grep -iE 'error|Traceback|resumed|stopping|finished' | tail -5
cp $run/metrics.jsonl "$out/metrics_$stage.jsonl"
python3 - "$out/metrics_$stage.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
rows = [r for r in rows if "loss" in r and "step_time_s" in r]
for r in rows[:: max(1, len(rows) // 10)] + rows[-1:]:
    print(f"step {r['step']:6d} loss {r['loss']:.4f} step {r['step_time_s']:.3f}s data wait "
          f"{r.get('data_wait_s', 0):.3f}s tok/s {r['tokens_per_s']:.0f} videos {r['samples_seen']}")
PY
wait  # kernels + GPU tests
[ -f /tmp/kern/.built ] || { echo "kernel build failed"; tail -30 "$out/build.log"; }
tail -2 "$out/gpu_tests.log" 2>/dev/null
PYTHONPATH=/tmp/kern:/tmp/site:$src python3 tools/world/gate_teacher.py --model $run/export --size "$gate_size" \
  --count "${GATE_COUNT:-128}" --out "$out/gate_${stage}.json" 2>&1 | grep -v Warning | tail -5
if [ "${PROBE:-0}" = 1 ]; then
  PYTHONPATH=/tmp/kern:/tmp/site:$src python3 tools/world/probe_teacher.py --model $run/export --out "$out" 2>&1 \
    | tail -16
fi
mkdir -p "$out/export" && cp $run/export/config.json $run/export/diffusion_pytorch_model.safetensors "$out/export/"
# At most 8 files come back: logs and reports go in one archive.
(cd "$out" && tar czf results.tgz --remove-files ./*.log ./*.json ./*.jsonl 2>/dev/null)
echo "segment done after ${SECONDS}s"
