#!/usr/bin/env bash
# Device script (H200, one run call, carry=[".carry"]): Nsight Compute counters of the Hopper forward and backward
# kernels (issues 13 and 14) on the 1.3B shape (1, 12, 32760, 128) bf16 with random 128x64-block masks, so that the
# next kernel change is chosen from stall reasons and pipe utilisation rather than from stage-skipping differences
# alone. One profiled launch per kernel and density (after warm-up launches), clocks left alone
# (--clock-control none, as the device's METHOD.md asks).
#   bash tools/device/ncu_attention_h200.sh [densities, default "0.05 1"]
# Results in $OUT: ncu_<kernel>_d<density>.txt (details page: speed of light, compute and memory workload, warp
# state and scheduler statistics, occupancy, launch statistics, source counters' top stall sites), ncu.log.
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source tools/device/setup.sh || exit 1
densities=${*:-0.05 1}
driver=$(mktemp --suffix=.py)
cat >"$driver" <<'EOF'
# One forward and one backward of block_sparse_attention per call, after warm-up: ncu skips the warm-up launches.
import sys

import torch

sys.path.insert(0, "tools")
import sparge_kernels as sk
from bench_attention import random_mask

density, runs = float(sys.argv[1]), int(sys.argv[2])
b, h, length, d = 1, 12, 32760, 128
g = torch.Generator(device="cuda").manual_seed(0)
q, k, v, dout = (torch.randn(b, h, length, d, generator=g, device="cuda", dtype=torch.bfloat16) for _ in range(4))
q, k, v = (t.requires_grad_() for t in (q, k, v))
mask = random_mask(b, h, length, length, density, seed=0)
for _ in range(runs):
    out = sk.block_sparse_attention(q, k, v, mask)
    out.backward(dout)
torch.cuda.synchronize()
print(f"density {density}: {runs} forward + backward calls done")
EOF
sections=(--section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis
  --section WarpStateStats --section SchedulerStats --section Occupancy --section LaunchStats
  --section InstructionStats --section SourceCounters)
status=0
for density in $densities; do
  for kernel in attention_forward_sm90_kernel attention_backward_sm90_kernel; do
    # 3 calls: the first two warm up (allocations, autotuned paths), the third is profiled.
    report=$OUT/ncu_${kernel%%_kernel}_d$density.txt
    timeout 240 ncu --clock-control none --kernel-name "regex:$kernel" --launch-skip 2 --launch-count 1 \
      "${sections[@]}" --page details --print-units base python3 "$driver" "$density" 3 \
      >"$report" 2>>"$OUT/ncu.log" || { status=1; echo "ncu $kernel $density failed"; }
    summary="Duration|Compute \(SM\) Throughput|Memory Throughput|Issue Slots Busy|No Eligible|Registers Per"
    grep -E "$summary|Achieved Occupancy" "$report" | head -12
  done
done
exit $status
