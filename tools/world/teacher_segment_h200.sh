#!/usr/bin/env bash
# One resumable segment of the world teacher's training on the lent H200, then a probe of the exported EMA weights.
# Also (first call on a machine) trains the world classifier on the GPU beside it and, once that exists, runs the
# teacher's quality gate (tools/world/gate_teacher.py). Run from the repo root on the device with carry=[".carry"] (tools/device/prepare_carry.sh fills it):
#   bash tools/world/teacher_segment_h200.sh <train seconds> [extra --set overrides...]
# GPU_TESTS=1 also runs the kernels' GPU test suites once the kernels are built (first call on a machine).
# The run folder (/tmp/world-teacher) stays on the machine while it is held, so the next segment resumes from its
# checkpoint; if the machine was lost, the segment warm-starts from $WARM_START (a carried export) instead.
set -uo pipefail
export PYTHONUNBUFFERED=1
budget=${1:-420}; shift || true
out=${OUT:-/tmp/out}; mkdir -p "$out"
run=/tmp/world-teacher
SECONDS=0
if [ ! -f /tmp/site/.installed ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .carry/whl/*.whl && touch /tmp/site/.installed || exit 1
fi
src=$PWD/packages/sparge-pipelines/src:$PWD/packages/sparge-train/src
# Kernels for the probe, built on the CPU cores while the GPU trains (the dense teacher does not need them).
if [ ! -f /tmp/kern/.built ]; then
  ( mkdir -p /tmp/cutlass && tar xzf .carry/cutlass-include.tgz -C /tmp/cutlass &&
    CMAKE_BUILD_PARALLEL_LEVEL=14 python3 -m pip install -q --no-build-isolation --no-deps --no-index --target /tmp/kern \
      ./packages/sparge-kernels -C cmake.define.CUTLASS_INCLUDE_DIR=/tmp/cutlass/include \
      -C build-dir=/tmp/sparge-build >"$out/build.log" 2>&1 && touch /tmp/kern/.built &&
    if [ "${GPU_TESTS:-0}" = 1 ]; then  # the kernels' GPU suites, beside the training (they are short)
      PYTHONPATH=/tmp/kern:/tmp/site timeout 420 python3 -m pytest -m gpu -q -p no:cacheprovider \
        packages/sparge-kernels/tests >"$out/gpu_tests.log" 2>&1; echo "gpu tests rc=$?" >>"$out/gpu_tests.log"
    fi ) &
fi
# The world classifier for the quality gate, trained on the GPU beside the teacher (small: ~0.2 M params).
if [ ! -f /tmp/classifier/classifier.safetensors ]; then
  ( PYTHONPATH=/tmp/site:$PWD/packages/sparge-kernels/src:$src python3 tools/world/train_classifier.py \
      --steps "${CLASSIFIER_STEPS:-4000}" --batch 64 --device cuda --out /tmp/classifier \
      --report "$out/classifier" >"$out/classifier.log" 2>&1; echo "classifier rc=$?" >>"$out/classifier.log" ) &
fi
extra=()
if [ ! -f $run/checkpoints/latest ] && [ -n "${WARM_START:-}" ]; then
  extra+=(--set "model.preset=null" --set "model.pretrained=$WARM_START" --set optim.warmup_steps=50)
fi
nvidia-smi --query-gpu=name,memory.used,clocks.sm --format=csv,noheader
PYTHONPATH=/tmp/site:$PWD/packages/sparge-kernels/src:$src python3 -m sparge_train fit \
  --config packages/sparge-train/examples/world_teacher.yaml --set train.output_dir=$run \
  --set train.max_time_s="$budget" "${extra[@]}" "$@" >"$out/train.log" 2>&1
echo "fit rc=$? after ${SECONDS}s"
grep -v '^\s*$' "$out/train.log" | grep -iE 'error|Traceback|resumed|stopping|finished' | tail -5
cp $run/metrics.jsonl "$out/metrics.jsonl"
python3 - "$out/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
rows = [r for r in rows if "loss" in r]
for r in rows[:: max(1, len(rows) // 12)] + rows[-1:]:
    print(f"step {r['step']:6d} loss {r['loss']:.4f} step_time {r.get('step_time_s', 0):.3f}s tok/s {r.get('tokens_per_s', 0):.0f}")
PY
wait
[ -f /tmp/kern/.built ] || { echo "kernel build failed"; tail -30 "$out/build.log"; }
PYTHONPATH=/tmp/kern:/tmp/site:$src python3 tools/world/probe_teacher.py --model $run/export --out "$out" 2>&1 | tail -16
tail -3 "$out/classifier.log" 2>/dev/null
tail -2 "$out/gpu_tests.log" 2>/dev/null
if [ -f /tmp/classifier/classifier.safetensors ]; then
  PYTHONPATH=/tmp/kern:/tmp/site:$src python3 tools/world/gate_teacher.py --model $run/export \
    --classifier /tmp/classifier --out "$out/gate.json" 2>&1 | grep -v Warning | tail -6
  cp -r /tmp/classifier "$out/classifier_weights"
fi
mkdir -p "$out/export" && cp $run/export/* "$out/export/"
# At most 8 files come back: logs, reports and the classifier go in one archive.
(cd "$out" && tar czf results.tgz --remove-files ./*.log ./*.json ./*.md classifier_weights 2>/dev/null)
echo "segment done after ${SECONDS}s"
