#!/usr/bin/env bash
# Issue 11's student and ablation in one device command (10 minutes at most): builds, then on the one H200 at once
#   - the shipped student's distillation segment (tools/world/student_segment_h200.sh <student seconds>), and
#   - the ablation (tools/world/ablation.py: training-free Top-k / Top-p / hybrid x 1d / tiled at 5% density, the
#     80-97% curve, and the five fine-tuning arms x 3 seeds, ABLATION_STEPS steps each, 5 runs at a time),
# both at 16x64x64 on the shipped teacher (the size its gate passed at). Small models leave the GPU mostly idle,
# so they share it; nothing here is timed against anything else.
#   bash tools/world/fidelity_h200.sh [student seconds (270)]      # repo root, device, carry [".carry"]
# Results under $OUT: student.tgz + student/ (see the segment script) and ablation.tgz (md, json, png, gif, logs).
set -uo pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
student_s=${1:-270}
source tools/device/setup.sh || exit 1
abl=/tmp/ablation
( SECONDS=0
  python3 tools/world/ablation.py --teacher packages/sparge-pipelines/src/sparge_pipelines/world/weights/teacher \
    --classifier packages/sparge-pipelines/src/sparge_pipelines/world/weights/classifier --frames 16 --size 64 \
    --finetune-steps "${ABLATION_STEPS:-300}" --seeds 0 1 2 --out $abl >"$OUT/ablation.log" 2>&1
  echo "ablation rc=$? after ${SECONDS}s" >>"$OUT/ablation.log" ) &
abl_pid=$!
bash tools/world/student_segment_h200.sh "$student_s"
wait $abl_pid
tail -1 "$OUT/ablation.log"
grep -A30 "orderings, measured" $abl/ablation.md 2>/dev/null | head -12
mkdir -p $abl && cp "$OUT/ablation.log" $abl/ && (cd /tmp && tar czf "$OUT/ablation.tgz" --exclude='*/export' \
  --exclude='*/checkpoints' ablation) && rm "$OUT/ablation.log"
