#!/usr/bin/env bash
# Device script (H200, one run call, carry=[".carry"]; prepare .carry with tools/device/prepare_carry.sh here) for
# the Hopper forward with two kept key blocks per pipeline stage (128-key GEMMs; variant "fwd-pair"). Everything
# lands in $OUT, each file named after the variant:
#   bash tools/device/fwd_pair_h200.sh [build] [tests] [sanitize] [bench] [bench-14b] ...
#   (no argument = these five, in this order, until the time budget runs out; a later call on a still-warm machine
#   names the steps left, after `build` again, which is then incremental: setup.sh builds in /tmp/sparge-build)
#   build      source tools/device/setup.sh (all head dims and dtypes, 90a) -> build.log, gpu_fwd-pair.txt
#   tests      the forward GPU tests on both paths (test_cuda_forward.py: tails, strides, empty rows, kv_count 1
#              to 5 with the tail block in either half of a stage, Lk < 64, dense, poisoned outputs vs the float64
#              reference) and test_cuda_training.py -> gpu_forward_tests_fwd-pair.log
#   sanitize   compute-sanitizer memcheck, racecheck and synccheck of tools/smoke_forward.py sm90 --edge-cases
#              -> sanitizer_forward_fwd-pair_{memcheck,racecheck,synccheck}.log
#   bench      tools/bench_attention.py --shapes 1.3b --densities 1,0.05 (dense cuDNN and flash, Flex, sparge sm90
#              and the portable kernel) -> bench_attention_fwd-pair_1p3b.md (+ .log)
#   bench-14b  the same for the 14b shape -> bench_attention_fwd_14b.md (+ .log)
# Knob: FWD_TESTS_K (a pytest -k expression for the tests step).
# A step is cut off by `timeout` at min(its cap, what is left of FWD_BUDGET_S, default 560 s from the start), so one
# 600 s call returns with whatever finished; status_fwd-pair.txt lists each step's exit code and time.
set -o pipefail
variant=fwd-pair
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
steps=${*:-build tests sanitize bench bench-14b}
source tools/device/step_budget.sh
budget_init "${FWD_BUDGET_S:-560}" "$OUT/status_$variant.txt"
note "== variant $variant: two kept key blocks per K/V stage (128-key GEMMs)"
for step in $steps; do
  step_begin "$step" || continue
  case $step in
    build)
      source tools/device/setup.sh || rc=1
      [ $rc = 0 ] && nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw --format=csv 2>&1 \
        | tee "$OUT/gpu_$variant.txt" ;;
    tests)
      timeout "$(left 300)" python3 -m pytest -m gpu -q -p no:cacheprovider -rs ${FWD_TESTS_K:+-k "$FWD_TESTS_K"} \
        packages/sparge-kernels/tests/test_cuda_forward.py packages/sparge-kernels/tests/test_cuda_training.py \
        2>&1 | tee "$OUT/gpu_forward_tests_$variant.log" || rc=1 ;;
    sanitize)
      for tool in memcheck racecheck synccheck; do
        timeout "$(left 100)" compute-sanitizer --tool $tool --error-exitcode 1 \
          python3 tools/smoke_forward.py sm90 --edge-cases 2>&1 \
          | tee "$OUT/sanitizer_forward_${variant}_$tool.log" || rc=1
      done ;;
    bench|bench-14b)
      shape=1.3b; name=1p3b; [ "$step" = bench-14b ] && { shape=14b; name=14b; }
      timeout "$(left 240)" python3 tools/bench_attention.py --shapes $shape --densities 1,0.05 \
        --out "$OUT/bench_attention_${variant}_$name.md" 2>&1 | tee "$OUT/bench_attention_${variant}_$name.log" || rc=1 ;;
    *) echo "unknown step $step"; rc=1 ;;
  esac
  step_done "$step" $rc $t0
done
(cd "$OUT" && tar czf "fwd_logs_$variant.tgz" --remove-files ./*.log 2>/dev/null)  # at most 8 files come back
exit $status
