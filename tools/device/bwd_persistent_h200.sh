#!/usr/bin/env bash
# Device script (H200, one run call, carry=[".carry"]; prepare .carry with tools/device/prepare_carry.sh here) for
# the Hopper backward's persistent schedule (KernelOptions.backward_schedule="persistent": one dK/dV CTA per SM
# taking key blocks from an atomic counter) against one CTA per key block. Everything lands in $OUT:
#   bash tools/device/bwd_persistent_h200.sh [build] [smoke] [tests] [sanitize] [bench] [l2-reduce] [base-build] [ab]
#   (no argument = the first six, in this order, until the time budget runs out)
#   build     source tools/device/setup.sh (all head dims and dtypes, 90a) -> build.log, gpu_bwd.txt
#   smoke     tools/sanitize_backward.py --paths sm90-persistent without a sanitizer under a 60 s cap: a hang (a
#             barrier phase out of step) shows here cheaply; a failure ends the run -> smoke_bwd.log
#   tests     the backward GPU tests (test_cuda_backward.py: every test on sm80, sm90 and sm90-persistent, and
#             test_persistent_schedule_matches_tile_schedule), test_cuda_training.py and test_cuda_forward.py (the
#             forward's scheduler moved to common/ with the backward's) -> gpu_backward_tests.log
#   sanitize  compute-sanitizer memcheck, racecheck and synccheck of tools/sanitize_backward.py --paths sm90
#             sm90-persistent -> sanitizer_backward_{memcheck,racecheck,synccheck}.log
#   bench     tools/bench_attention.py --backward --shapes 1.3b --densities 0.05 --backward-densities 1.3b=0.05
#             (fwd+bwd and "backward alone" rows for both schedules, Flex 128x64 and 128x128, cuDNN)
#             -> bench_bwd_persistent_1p3b.md (+ .log)
#   l2-reduce tools/microbench/l2_reduce_sm90.cu: the rate of fp32 bulk reduce-adds of 64 KB tiles (the backward's
#             dQ accumulation) into 16, 64 and 256 MB buffers -> l2_reduce.md
#   base-build  a second sparge-kernels (D=128 bf16 only) into /tmp/base-site from a copy of packages/sparge-kernels
#             with the files under $BWD_BASE_DIR (default .carry/base, same relative paths) put over it: the base
#             of an A/B comparison (e.g. `git show REV:path > .carry/base/path` here) -> base_build.log
#   ab        tools/device/bwd_ab.py with the build under test, the base build, and the build under test again
#             (backward alone per schedule, forward, fwd+bwd; 1.3B, densities 0.05/0.2/1) -> bwd_ab.md
# A step is cut off by `timeout` at min(its cap, what is left of BWD_BUDGET_S, default 560 s from the start);
# status_bwd.txt lists each step's exit code and time; the logs come back in one tarball.
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
steps=${*:-build smoke tests sanitize bench l2-reduce}
source tools/device/step_budget.sh
budget_init "${BWD_BUDGET_S:-560}" "$OUT/status_bwd.txt"
for step in $steps; do
  step_begin "$step" || continue
  case $step in
    build)
      build_step "$OUT/gpu_bwd.txt" ;;
    smoke)
      timeout "$(left 60)" python3 tools/sanitize_backward.py --paths sm90-persistent 2>&1 \
        | tee "$OUT/smoke_bwd.log" || rc=1 ;;
    tests)
      timeout "$(left 300)" python3 -m pytest -m gpu -q -p no:cacheprovider -rs \
        packages/sparge-kernels/tests/test_cuda_backward.py packages/sparge-kernels/tests/test_cuda_training.py \
        packages/sparge-kernels/tests/test_cuda_forward.py \
        2>&1 | tee "$OUT/gpu_backward_tests.log" | tail -5 || rc=1 ;;
    sanitize)
      sanitize_step sanitizer_backward 120 python3 tools/sanitize_backward.py --paths sm90 sm90-persistent ;;
    bench)
      timeout "$(left 300)" python3 tools/bench_attention.py --backward --shapes 1.3b --densities 0.05 \
        --backward-densities 1.3b=0.05 --out "$OUT/bench_bwd_persistent_1p3b.md" \
        >"$OUT/bench_bwd_persistent_1p3b.log" 2>&1 || rc=1 ;;
    l2-reduce)
      nvcc -O3 -arch=sm_90a -o /tmp/l2_reduce tools/microbench/l2_reduce_sm90.cu \
        && timeout "$(left 60)" /tmp/l2_reduce | tee "$OUT/l2_reduce.md" || rc=1 ;;
    base-build)
      rm -rf /tmp/base-src && cp -r packages/sparge-kernels /tmp/base-src && cp -r "${BWD_BASE_DIR:-.carry/base}/." \
        /tmp/base-src/ && SPARGE_HEAD_DIMS=128 SPARGE_DTYPES=bf16 timeout "$(left 200)" python3 -m pip install -q \
        --no-build-isolation --no-deps --no-index --target /tmp/base-site /tmp/base-src \
        -C cmake.define.CUTLASS_INCLUDE_DIR=/tmp/cutlass/include -C build-dir=/tmp/sparge-base-build \
        >"$OUT/base_build.log" 2>&1 || rc=1 ;;
    ab)
      for label in new base new; do
        site=; [ $label = base ] && site=/tmp/base-site:
        PYTHONPATH=$site$PYTHONPATH timeout "$(left 150)" python3 tools/device/bwd_ab.py --label $label \
          ${BWD_AB_ARGS:-} 2>&1 | tee -a "$OUT/bwd_ab.md" || rc=1
      done ;;
    *) echo "unknown step $step"; rc=1 ;;
  esac
  step_done "$step" $rc $t0
  if [ "$step" = smoke ] && [ $rc != 0 ]; then note "smoke failed: stopping"; break; fi
done
(cd "$OUT" && tar czf bwd_logs.tgz --remove-files ./*.log 2>/dev/null)  # at most 8 files come back
exit $status
