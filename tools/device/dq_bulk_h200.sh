#!/usr/bin/env bash
# Device script (H200, one run call, carry=[".carry"]; prepare .carry with tools/device/prepare_carry.sh here) for
# the Hopper backward's bulk reduce-add dQ mode (KernelOptions.dq_accumulate="bulk", the default) against its
# 8-byte-atomic mode ("atomic"). Everything lands in $OUT:
#   bash tools/device/dq_bulk_h200.sh [build] [profile] [tests-dq] [sanitize] [bench] [tests] ...
#   (no argument = all six, in this order, until the time budget runs out; a later call on a still-warm machine
#   names the steps left, after `build` again, which is then incremental: setup.sh builds in /tmp/sparge-build)
#   build     source tools/device/setup.sh with SPARGE_PROFILE_STAGES=ON (all head dims and dtypes, 90a) -> build.log
#   profile   tools/profile_backward_stages.py, variants full (atomics), bulk_dq, no_dq_atomics, no_dq,
#             side_kernels_only at densities 0.05 and 1 -> profile_backward_stages_h200.md (+ .log); first
#             because it is the cheapest atomics-vs-bulk timing; its sanity line checks bulk_dq against production
#   tests-dq  the new dQ-mode GPU tests only (test_cuda_backward.py -k dq_: both modes against the float64
#             reference, bulk vs atomic with bitwise-equal dk/dv on sm90, the convert kernel each mode launches;
#             both backward paths) -> gpu_dq_tests.log
#   tests     every backward GPU test on both paths (the default dq_accumulate is "bulk", so all sm90 cases run
#             the bulk mode), test_stage_profile_build.py, test_cuda_training.py -> gpu_backward_tests.log
#   sanitize  compute-sanitizer memcheck and racecheck of tools/sanitize_backward.py --paths sm90 (bulk and atomic)
#             -> sanitizer_backward_{memcheck,racecheck}.log
#   bench     tools/bench_attention.py --backward --shapes 1.3b --backward-densities 1.3b=1,0.05, once with
#             --dq-accumulate bulk and once with atomic -> bench_attention_dq_{bulk,atomic}.md (+ .log); the
#             "backward alone" rows time sm90 atomic and bulk in both runs (bench-bulk, bench-atomic: one of them)
# A step is cut off by `timeout` at min(its cap, what is left of DQ_BULK_BUDGET_S, default 580 s from the
# start), so one 600 s call returns with whatever finished; status.txt lists each step's exit code and time.
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
steps=${*:-build profile tests-dq sanitize bench tests}
source tools/device/step_budget.sh
budget_init "${DQ_BULK_BUDGET_S:-580}" "$OUT/status.txt"
for step in $steps; do
  step_begin "$step" || continue
  case $step in
    build)
      export SPARGE_PROFILE_STAGES=ON
      source tools/device/setup.sh || rc=1
      if [ $rc = 0 ]; then
        python3 -c "import sparge_kernels.cuda as c; print('profiling variants:', dict(c._C.stage_profile_variants))" \
          2>&1 | tee "$OUT/variants.txt" || rc=1
        nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw --format=csv 2>&1 | tee "$OUT/gpu.txt"
      fi ;;
    profile)
      timeout "$(left 150)" python3 tools/profile_backward_stages.py --densities 0.05,1 --runs 30 \
        --variants full,bulk_dq,no_dq_atomics,no_dq,side_kernels_only \
        --out "$OUT/profile_backward_stages_h200.md" 2>&1 | tee "$OUT/profile_backward_stages.log" || rc=1 ;;
    tests-dq)
      timeout "$(left 200)" python3 -m pytest -m gpu -q -p no:cacheprovider -rs -k dq_ \
        packages/sparge-kernels/tests/test_cuda_backward.py 2>&1 | tee "$OUT/gpu_dq_tests.log" || rc=1 ;;
    tests)
      timeout "$(left 480)" python3 -m pytest -m gpu -q -p no:cacheprovider -rs \
        packages/sparge-kernels/tests/test_cuda_backward.py packages/sparge-kernels/tests/test_stage_profile_build.py \
        packages/sparge-kernels/tests/test_cuda_training.py 2>&1 | tee "$OUT/gpu_backward_tests.log" || rc=1 ;;
    sanitize)
      for tool in memcheck racecheck; do
        timeout "$(left 120)" compute-sanitizer --tool $tool --error-exitcode 1 \
          python3 tools/sanitize_backward.py --paths sm90 2>&1 | tee "$OUT/sanitizer_backward_$tool.log" || rc=1
      done ;;
    bench|bench-bulk|bench-atomic)
      modes="bulk atomic"; [ "$step" = bench ] || modes=${step#bench-}
      for mode in $modes; do
        timeout "$(left 280)" python3 tools/bench_attention.py --backward --shapes 1.3b \
          --backward-densities 1.3b=1,0.05 --dq-accumulate $mode --out "$OUT/bench_attention_dq_$mode.md" 2>&1 \
          | tee "$OUT/bench_attention_dq_$mode.log" || rc=1
      done ;;
    *) echo "unknown step $step"; rc=1 ;;
  esac
  step_done "$step" $rc $t0
done
exit $status
