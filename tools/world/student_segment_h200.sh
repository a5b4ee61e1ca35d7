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
export OUT=${OUT:-/tmp/out}; out=$OUT; mkdir -p "$out"
shipped=packages/sparge-pipelines/src/sparge_pipelines/world/weights/teacher
teacher=${TEACHER:-$([ -f /tmp/world-teacher/export/config.json ] && echo /tmp/world-teacher/export || echo $shipped)}
config=packages/sparge-train/examples/world_distill.yaml run=/tmp/world-distill
# The student trains on the CUDA kernels (forward and backward): the device set-up builds and installs them with
# the three packages (incremental on a warm machine: its build folder stays).
source tools/device/setup.sh || exit 1
SECONDS=0
# The sparse settings are the config's (sparge.topk/topp/token_order): the gate and the demo read them back.
read -r topk topp order < <(python3 -c "
from sparge_train.config import load_config
s = load_config('$config').sparge; print(s.topk, s.topp, s.token_order)")
python3 -m sparge_train fit --config $config --set model.pretrained="$teacher" --set train.output_dir=$run \
  --set train.max_time_s="$budget" "$@" >"$out/train_student.log" 2>&1
echo "fit (student from $teacher) rc=$? after ${SECONDS}s"
grep -iE 'error|Traceback|resumed|stopping|finished' "$out/train_student.log" | tail -5
cp $run/metrics.jsonl "$out/metrics_student.jsonl"
for size in 96 64; do
  python3 tools/world/gate_teacher.py --model $run/export --size $size --count "${GATE_COUNT:-128}" --topk "$topk" \
    --topp "$topp" --token-order "$order" --out "$out/gate_student_$size.json" 2>&1 | grep -v Warning | tail -6
done
python3 tools/world/demo.py --teacher "$teacher" --student $run/export --topk "$topk" --topp "$topp" \
  --token-order "$order" --out "$out/demo" 2>&1 | grep -v Warning | tail -8
mkdir -p "$out/student" && cp $run/export/config.json $run/export/diffusion_pytorch_model.safetensors "$out/student/"
cp "$out/demo/side_by_side.gif" "$out/" 2>/dev/null
(cd "$out" && tar czf results.tgz --remove-files ./*.log ./*.json ./*.jsonl ./demo 2>/dev/null)
echo "segment done after ${SECONDS}s"
