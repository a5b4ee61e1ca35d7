#!/usr/bin/env bash
# Device script (H200, one run call, carry=[".carry"]; prepare .carry with tools/device/prepare_carry.sh here) for
# the Hopper backward's dS spill mode (KernelOptions.dq_accumulate="spill": the dK/dV kernel writes dS tiles to a
# buffer, a second Hopper kernel sums dQ = dS·K per query block) against the bulk reduce-add mode. Everything lands
# in $OUT:
#   bash tools/device/bwd_spill_h200.sh [build] [smoke] [spill-tests] [ab] [sanitize] [tests] [suite] [host] [bench]
#                                       [ab14] [bench14] [ncu]
#   (no argument = the first seven, in this order (the answer first), until the time budget runs out)
#   build     source tools/device/setup.sh (all head dims and dtypes, 90a) -> build.log, gpu_spill.txt
#   smoke     tools/sanitize_backward.py --paths sm90 sm90-persistent without a sanitizer under a 90 s cap (a hang:
#             a ring or mailbox phase out of step); a failure ends the run -> smoke_spill.log
#   spill-tests  test_cuda_backward.py and test_cuda_training.py -k spill (every spill case on sm80, sm90 and
#             sm90-persistent; the 2-layer training test against the reference)
#             -> gpu_spill_tests.log
#   tests     every backward GPU test (test_cuda_backward.py on sm80, sm90 and sm90-persistent) and
#             test_cuda_training.py -> gpu_backward_tests.log
#   suite     the other GPU tests: mask, forward, mask validation, sparge-pipelines' and sparge-train's
#             -> gpu_suite_tests.log
#   host      tools/bench_host_overhead.py --backward: the host's time per fwd+bwd and per backward glue call
#             (a tiny problem, so the GPU waits for the host) -> host_bwd.md (+ cProfile in host_bwd.log)
#   sanitize  compute-sanitizer memcheck, racecheck, synccheck of tools/sanitize_backward.py --paths sm90
#             sm90-persistent (spill with every tile and with half of them) -> sanitizer_spill_<tool>.log
#   ab        tools/device/bwd_ab.py --dq-modes bulk,spill (backward alone, persistent schedule; fwd+bwd eager and
#             in a CUDA graph per mode; 1.3B at densities 0.05, 0.1, 0.2, 1; spill also with an 8 GiB buffer, which
#             holds every tile up to 20%, and in 12 head groups, what grouping costs) -> bwd_spill_ab.md
#   ab14      the same on the 14B shape at 5%, spill also with a 24 GiB buffer (the 2 GiB default holds ~9% of
#             its 22.9 GB of tiles) and with 2 GiB in 14 and 40 head groups (KernelOptions.ds_spill_head_groups;
#             14 groups of at most 3 heads hold every tile)
#             -> bwd_spill_ab14.md
#   bench     tools/bench_attention.py --backward --dq-accumulate spill on the 1.3B shape at 5% (issue 13's table:
#             cuDNN, Flex 128x64 and 128x128, every backward mode) -> bench_bwd_spill_1p3b.md (+ .log)
#   bench14   the same table on the 14B shape at 5%, spill in 14 head groups (2 GiB); a call of its own (Flex's
#             autotuning of the 14B shapes alone takes minutes) -> bench_bwd_spill_14b.md (+ .log)
#   ncu       Nsight Compute speed-of-light, memory, warp-state, scheduler and occupancy sections of the spill
#             mode's dK/dV kernel and dQ kernel (1.3B, 5%, second backward) -> ncu_spill_1p3b.txt
# A step is cut off by `timeout` at min(its cap, what is left of SPILL_BUDGET_S, default 560 s from the start);
# status_spill.txt lists each step's exit code and time; the logs come back in one tarball.
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
steps=${*:-build smoke spill-tests ab sanitize tests bench}
source tools/device/step_budget.sh
budget_init "${SPILL_BUDGET_S:-560}" "$OUT/status_spill.txt"
tests=packages/sparge-kernels/tests
for step in $steps; do
  step_begin "$step" || continue
  case $step in
    build)
      build_step "$OUT/gpu_spill.txt" ;;
    smoke)
      timeout "$(left 90)" python3 tools/sanitize_backward.py --paths sm90 sm90-persistent 2>&1 \
        | tee "$OUT/smoke_spill.log" || rc=1 ;;
    spill-tests)
      timeout "$(left 150)" python3 -m pytest -m gpu -q -p no:cacheprovider -rs -k spill \
        "$tests/test_cuda_backward.py" "$tests/test_cuda_training.py" 2>&1 | tee "$OUT/gpu_spill_tests.log" \
        | tail -5 || rc=1 ;;
    tests)
      timeout "$(left 300)" python3 -m pytest -m gpu -q -p no:cacheprovider -rs \
        "$tests/test_cuda_backward.py" "$tests/test_cuda_training.py" 2>&1 \
        | tee "$OUT/gpu_backward_tests.log" | tail -5 || rc=1 ;;
    suite)
      timeout "$(left 300)" python3 -m pytest -m gpu -q -p no:cacheprovider -rs "$tests/test_cuda_mask.py" \
        "$tests/test_cuda_forward.py" "$tests/test_mask_validation.py" packages/sparge-pipelines/tests/test_gpu.py \
        packages/sparge-train/tests/test_flow_and_losses.py 2>&1 | tee "$OUT/gpu_suite_tests.log" | tail -5 || rc=1 ;;
    host)
      timeout "$(left 60)" python3 tools/bench_host_overhead.py --backward --calls 1000 >"$OUT/host_bwd.md" \
        2>"$OUT/host_bwd.log" || rc=1 ;;
    sanitize)
      sanitize_step sanitizer_spill 150 python3 tools/sanitize_backward.py --paths sm90 sm90-persistent ;;
    ab)
      label=$(git rev-parse --short HEAD 2>/dev/null || echo new)
      timeout "$(left 200)" python3 tools/device/bwd_ab.py --label "$label" \
        --dq-modes bulk,spill --schedules persistent --deterministic --spill-gib 8,2x12 \
        --densities "${SPILL_AB_DENSITIES:-0.05,0.1,0.2,1}" \
        2>&1 | tee "$OUT/bwd_spill_ab.md" || rc=1 ;;
    ab14)
      label=$(git rev-parse --short HEAD 2>/dev/null || echo new)
      timeout "$(left 200)" python3 tools/device/bwd_ab.py --label "$label" --shapes 14b --densities 0.05 \
        --dq-modes bulk,spill --schedules persistent --spill-gib 24,2x14,2x40 2>&1 \
        | tee "$OUT/bwd_spill_ab14.md" || rc=1 ;;
    bench)
      timeout "$(left 300)" python3 tools/bench_attention.py --backward --shapes 1.3b --densities 0.05 \
        --backward-densities 1.3b=0.05 --dq-accumulate spill --out "$OUT/bench_bwd_spill_1p3b.md" \
        >"$OUT/bench_bwd_spill_1p3b.log" 2>&1 || rc=1 ;;
    bench14)
      timeout "$(left 540)" python3 tools/bench_attention.py --backward --shapes 14b --densities 0.05 \
        --backward-densities 14b=0.05 --dq-accumulate spill --ds-spill-head-groups 14 \
        --out "$OUT/bench_bwd_spill_14b.md" >"$OUT/bench_bwd_spill_14b.log" 2>&1 || rc=1 ;;
    ncu)
      cat >/tmp/spill_1p3b.py <<'EOF'
import sys

import torch

sys.path.insert(0, "tools")
import sparge_kernels as sk
from bench_attention import random_mask

b, h, length, d = 1, 12, 32760, 128
g = torch.Generator(device="cuda").manual_seed(0)
q, k, v, dout = (torch.randn(b, h, length, d, generator=g, device="cuda", dtype=torch.bfloat16) for _ in range(4))
q, k, v = (t.requires_grad_() for t in (q, k, v))
mask = random_mask(b, h, length, length, 0.05, seed=0)
with sk.kernel_options(dq_accumulate="spill"):
    for _ in range(2):
        sk.block_sparse_attention(q, k, v, mask).backward(dout)
torch.cuda.synchronize()
EOF
      timeout "$(left 200)" ncu --kernel-name regex:"attention_backward_(dq_)?sm90_kernel" --launch-skip 2 \
        --launch-count 2 --clock-control none --section SpeedOfLight --section MemoryWorkloadAnalysis \
        --section WarpStateStats --section SchedulerStats --section Occupancy --section LaunchStats \
        python3 /tmp/spill_1p3b.py >"$OUT/ncu_spill_1p3b.txt" 2>"$OUT/ncu_spill.log" || rc=1 ;;
    *) echo "unknown step $step"; rc=1 ;;
  esac
  step_done "$step" $rc $t0
  if [ "$step" = smoke ] && [ $rc != 0 ]; then note "smoke failed: stopping"; break; fi
done
(cd "$OUT" && tar czf spill_logs.tgz --remove-files ./*.log 2>/dev/null)  # at most 8 files come back
exit $status
