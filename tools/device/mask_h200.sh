#!/usr/bin/env bash
# Device script (H200, one run call, carry=[".carry"]; prepare .carry with tools/device/prepare_carry.sh here) for
# the mask-prediction kernels (csrc/mask): build, GPU tests, sanitizers, per-launch benchmark. Everything lands in
# $OUT:
#   bash tools/device/mask_h200.sh [build] [tests] [sanitize] [bench] ...   (no argument = all five)
#   build      source tools/device/setup.sh -> build.log, gpu_mask.txt
#   tests      test_cuda_mask.py (float64 rule with FMA and 3xTF32 scores, ties, compact=True against compact=False
#              and rows in registers against rows in shared memory bitwise, tuning variants, poisoned workspace)
#              -> gpu_mask_tests.log
#   sanitize   compute-sanitizer memcheck, racecheck and synccheck of small predictions
#              -> sanitizer_mask_{memcheck,racecheck,synccheck}.log
#   bench      tools/bench_mask.py --shapes 1.3b,14b -> bench_mask.md (per-launch times, graph and eager)
#   ncu        Nsight Compute source counters (SASS) of one 14B selection launch -> ncu_select_14b_src.csv; the
#              two BAR.SYNCs split it into query staging, scores and selection (stall samples, instructions)
#   ncu-1p3b   Nsight Compute speed-of-light, occupancy, warp-state and scheduler sections of the 1.3B pooling and
#              selection launches -> ncu_1p3b.txt
#   ncu-fused  Nsight Compute speed-of-light, memory, warp-state and scheduler sections of one 14B launch of the
#              fused pooling + selection kernel (predict(fused=True)) -> ncu_fused_14b.txt
#   host       tools/bench_host_overhead.py (host time per call of the entry points and of the mask glue's pieces)
#              -> host_overhead.md
# A step is cut off by `timeout` at min(its cap, what is left of MASK_BUDGET_S, default 560 s from the start);
# status_mask.txt lists each step's exit code and time.
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
steps=${*:-build tests sanitize bench ncu}
source tools/device/step_budget.sh
budget_init "${MASK_BUDGET_S:-560}" "$OUT/status_mask.txt"
smoke=/tmp/smoke_mask.py
cat >"$smoke" <<'PY'
import torch
from sparge_kernels import cuda_mask
gen = torch.Generator(device="cuda").manual_seed(0)
for lk, topk, topp in ((3000, 0.03, 0.2), (1000, 0.0, 0.5), (20000, 0.03, 0.2), (600, 0.5, 0.9), (50000, 0.03, 0.2)):
    q = torch.randn(1, 2, 1024, 64, generator=gen, device="cuda").to(torch.bfloat16)
    k = torch.randn(1, 2, lk, 64, generator=gen, device="cuda").to(torch.bfloat16)
    fast = cuda_mask.predict(q, k, topk, topp, 128, 64, 0.5, compact=True)  # both bisection endings
    plain = cuda_mask.predict(q, k, topk, topp, 128, 64, 0.5, compact=False)
    assert all(torch.equal(a, b) for a, b in zip(fast, plain)), (lk, topk, topp)
    for rows in (8, 16):  # rows in registers (Nk 782 at lk 50000: the 40-word kernel), same result
        regs = cuda_mask.predict(q, k, topk, topp, 128, 64, 0.5, rows_per_cta=rows, register_rows=True)
        assert all(torch.equal(a, b) for a, b in zip(fast, regs)), (lk, topk, topp, rows)
    fused = cuda_mask.predict(q, k, topk, topp, 128, 64, 0.5, fused=True)  # one persistent pool + select launch
    split = cuda_mask.predict(q, k, topk, topp, 128, 64, 0.5, fused=False, tensor_scores=True, rows_per_cta=16)
    assert all(torch.equal(a, b) for a, b in zip(fused, split)), (lk, topk, topp, "fused")
    for rows in (4, 16, 32):  # the 3xTF32 scores at every CTA size (decisions may differ from FMA within rounding)
        mma = cuda_mask.predict(q, k, topk, topp, 128, 64, 0.5, rows_per_cta=rows, tensor_scores=True)
        assert (mma[0] >= 0).all() and (mma[2] >= 0).all(), (lk, topk, topp, rows)
torch.cuda.synchronize()
print("smoke_mask: ok")
PY
cat >/tmp/predict_1p3b.py <<'PY'
import sys
sys.path.insert(0, "tools")
import torch
from bench_mask import structured_qk
from sparge_kernels import cuda_mask
q, k = structured_qk(1, 12, (21, 30, 52), 128)
for _ in range(2):
    cuda_mask.predict(q, k, 0.03, 0.2, 128, 64, 128**-0.5)
torch.cuda.synchronize()
PY
# The 14B prediction, twice: separate launches (one head group) or fused.
for variant in "select head_groups=1" "fused fused=True"; do
  set -- $variant
  cat >/tmp/$1_14b.py <<PY
import sys
sys.path.insert(0, "tools")
import torch
from bench_mask import structured_qk
from sparge_kernels import cuda_mask
q, k = structured_qk(1, 40, (21, 45, 80), 128)
for _ in range(2):
    cuda_mask.predict(q, k, 0.03, 0.2, 128, 64, 128**-0.5, $2)
torch.cuda.synchronize()
PY
done
for step in $steps; do
  step_begin "$step" || continue
  case $step in
    build)
      build_step "$OUT/gpu_mask.txt" ;;
    tests)
      timeout "$(left 240)" python3 -m pytest -m gpu -q -p no:cacheprovider -rs \
        packages/sparge-kernels/tests/test_cuda_mask.py 2>&1 | tee "$OUT/gpu_mask_tests.log" | tail -5 || rc=1 ;;
    sanitize)
      sanitize_step sanitizer_mask 100 python3 "$smoke" ;;
    bench)
      timeout "$(left 200)" python3 tools/bench_mask.py --shapes 1.3b,14b >"$OUT/bench_mask.md" \
        2>"$OUT/bench_mask.log" || rc=1 ;;
    ncu)
      timeout "$(left 150)" ncu --kernel-name regex:select_blocks --launch-skip 1 --launch-count 1 \
        --section SourceCounters --section InstructionStats --page source --csv --print-source sass \
        python3 /tmp/select_14b.py >"$OUT/ncu_select_14b_src.csv" 2>"$OUT/ncu_select.log" || rc=1 ;;
    ncu-1p3b)
      timeout "$(left 150)" ncu --kernel-name regex:"select_blocks|pool_blocks" --launch-skip 2 --launch-count 2 \
        --section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats \
        --section LaunchStats python3 /tmp/predict_1p3b.py >"$OUT/ncu_1p3b.txt" 2>"$OUT/ncu_1p3b.log" || rc=1 ;;
    ncu-fused)
      timeout "$(left 150)" ncu --kernel-name regex:pool_select --launch-skip 1 --launch-count 1 \
        --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section SchedulerStats \
        --section Occupancy python3 /tmp/fused_14b.py >"$OUT/ncu_fused_14b.txt" 2>"$OUT/ncu_fused.log" || rc=1 ;;
    host)
      timeout "$(left 120)" python3 tools/bench_host_overhead.py >"$OUT/host_overhead.md" 2>"$OUT/host_overhead.log" \
        || rc=1 ;;
    *) echo "unknown step $step"; rc=1 ;;
  esac
  step_done "$step" $rc $t0
done
(cd "$OUT" && tar czf mask_logs.tgz --remove-files ./*.log 2>/dev/null)
exit $status
