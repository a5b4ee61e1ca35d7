#!/usr/bin/env bash
# One resumable segment of the world student's velocity distillation on the lent H200, then its quality gate
# with the sparse attention it serves with, and the demo's table (dense teacher | training-free | distilled).
#   bash tools/world/student_segment_h200.sh <train seconds> [extra --set overrides...]
# Run from the repo root on the device with carry=[".carry"] (tools/device/prepare_carry.sh fills it), after
# tools/world/teacher_segment_h200.sh on the same machine or not: the teacher is TEACHER= (default: stage 2's
# export in /tmp/world-teacher if this machine ran it, else the shipped teacher). Call again while the machine is
# warm to resume from /tmp/world-distill's checkpoint. Results: $OUT/results.tgz and $OUT/student/ (the export).
set -uo pipefail
export PYTHONUNBUFFERED=1
budget=${1:?train seconds}; shift
out=${OUT:-/tmp/out}; mkdir -p "$out"
SECONDS=0
shipped=packages/sparge-pipelines/src/sparge_pipelines/world/weights/teacher
teacher=${TEACHER:-$([ -f /tmp/world-teacher/export/config.json ] && echo /tmp/world-teacher/export || echo $shipped)}
config=packages/sparge-train/examples/world_distill.yaml run=/tmp/world-distill
if [ ! -f /tmp/site/.installed ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .carry/whl/*.whl && touch /tmp/site/.installed || exit 1
fi
if [ ! -f /tmp/kern/.built ]; then  # the student trains on the CUDA kernels (forward and backward)
  mkdir -p /tmp/cutlass && tar xzf .carry/cutlass-include.tgz -C /tmp/cutlass &&
    SPARGE_CUDA_ARCHS=90a CMAKE_BUILD_PARALLEL_LEVEL=16 python3 -m pip install -q --no-build-isolation --no-deps \
      --no-index --target /tmp/kern ./packages/sparge-kernels -C cmake.define.CUTLASS_INCLUDE_DIR=/tmp/cutlass/include \
      -C build-dir=/tmp/sparge-build >"$out/build.log" 2>&1 && touch /tmp/kern/.built ||
    { echo "kernel build failed"; tail -30 "$out/build.log"; exit 1; }
fi
src=$PWD/packages/sparge-kernels/src:$PWD/packages/sparge-pipelines/src:$PWD/packages/sparge-train/src
py="env PYTHONPATH=/tmp/kern:/tmp/site:$src python3"
# The sparse settings are the config's (sparge.topk/topp/token_order): the gate and the demo read them back.
read -r topk topp order < <($py -c "
from sparge_train.config import load_config
s = load_config('$config').sparge; print(s.topk, s.topp, s.token_order)")
$py -m sparge_train fit --config $config --set model.pretrained="$teacher" --set train.output_dir=$run \
  --set train.max_time_s="$budget" "$@" >"$out/train_student.log" 2>&1
echo "fit (student from $teacher) rc=$? after ${SECONDS}s"
grep -iE 'error|Traceback|resumed|stopping|finished' "$out/train_student.log" | tail -5
cp $run/metrics.jsonl "$out/metrics_student.jsonl"
for size in 96 64; do
  $py tools/world/gate_teacher.py --model $run/export --size $size --count "${GATE_COUNT:-128}" --topk "$topk" \
    --topp "$topp" --token-order "$order" --out "$out/gate_student_$size.json" 2>&1 | grep -v Warning | tail -6
done
$py tools/world/demo.py --teacher "$teacher" --student $run/export --topk "$topk" --topp "$topp" \
  --token-order "$order" --out "$out/demo" 2>&1 | grep -v Warning | tail -8
mkdir -p "$out/student" && cp $run/export/config.json $run/export/diffusion_pytorch_model.safetensors "$out/student/"
cp "$out/demo/side_by_side.gif" "$out/" 2>/dev/null
(cd "$out" && tar czf results.tgz --remove-files ./*.log ./*.json ./*.jsonl ./demo 2>/dev/null)
echo "segment done after ${SECONDS}s"
