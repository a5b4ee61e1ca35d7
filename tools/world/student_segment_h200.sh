#!/usr/bin/env bash
# One resumable segment of the shipped world student's velocity distillation (examples/world_student.yaml) on the
# lent H200, then its quality gate with the sparse attention it serves with, and the demo's table (dense teacher |
# training-free | distilled) at the sizes it ships for.
#   bash tools/world/student_segment_h200.sh <train seconds> [extra --set overrides...]
# Run from the repo root on the device with carry=[".carry"] (tools/device/prepare_carry.sh fills it). The teacher
# is TEACHER= (default: the config's, the shipped teacher). Call again while the machine is warm to resume from
# /tmp/world-student's checkpoint. Results: $OUT/student.tgz (logs, gate JSONs, demo) and $OUT/student/ (export).
# GATE_SIZES (default "16x64x64 8x64x64") and GATE_COUNT (128) set the gate; DEMO_SIZE (16x64x64) the demo's
# (none: no demo, for a segment that only needs the gate's numbers).
set -uo pipefail
export PYTHONUNBUFFERED=1
budget=${1:?train seconds}; shift
export OUT=${OUT:-/tmp/out}; out=$OUT; mkdir -p "$out/student-results"; res=$out/student-results
config=packages/sparge-train/examples/world_student.yaml run=/tmp/world-student
# The student trains on the CUDA kernels (forward and backward): the device set-up builds and installs them with
# the three packages (skipped when the calling shell already sourced it).
source tools/device/setup.sh || exit 1
SECONDS=0
# The teacher and the sparse settings are the config's (TEACHER= overrides the teacher): the gate and the demo
# read them back, so they score the student as it was trained.
read -r teacher topk topp order < <(python3 -c "
from sparge_train.config import load_config
c = load_config('$config')
print('${TEACHER:-}' or c.model.pretrained, c.sparge.topk, c.sparge.topp, c.sparge.token_order)")
python3 -m sparge_train fit --config $config --set train.output_dir=$run --set train.max_time_s="$budget" \
  --set model.pretrained="$teacher" "$@" >"$res/train_student.log" 2>&1
echo "fit (student from $teacher) rc=$? after ${SECONDS}s"
grep -iE 'error|Traceback|resumed|stopping|finished' "$res/train_student.log" | tail -5
cp $run/metrics.jsonl "$res/metrics_student.jsonl"
for size in ${GATE_SIZES:-16x64x64 8x64x64}; do
  frames=${size%%x*}; side=${size##*x}
  python3 tools/world/gate_teacher.py --model $run/export --frames "$frames" --size "$side" \
    --count "${GATE_COUNT:-128}" --topk "$topk" --topp "$topp" --token-order "$order" \
    --out "$res/gate_student_$size.json" 2>&1 | grep -v Warning | tail -6
done
[ "${DEMO_SIZE:-}" = none ] || python3 tools/world/demo.py --teacher "$teacher" --student $run/export \
  --size "${DEMO_SIZE:-16x64x64}" --topk "$topk" --topp "$topp" --token-order "$order" --out "$res/demo" 2>&1 \
  | grep -v Warning | tail -8
mkdir -p "$out/student" && cp $run/export/config.json $run/export/diffusion_pytorch_model.safetensors $run/export/sparge.json "$out/student/"
(cd "$out" && tar czf student.tgz --remove-files student-results)
echo "segment done after ${SECONDS}s"
