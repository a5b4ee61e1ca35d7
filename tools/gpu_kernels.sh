#!/usr/bin/env bash
# Device script for the sparge-kernels CUDA kernels. Run on the GPU machine after the build:
#   source tools/device/setup.sh && bash tools/gpu_kernels.sh [tests|sanitize|bwd-tests|bwd-sanitize|bench ...]
# (no argument = all five). Logs and tables go to $OUT (default /tmp/out).
#   tests, sanitize          the forward's GPU tests (SPARGE_GPU_TESTS_EXTRA adds files) and memcheck
#   bwd-tests, bwd-sanitize  the backward's GPU tests and the 2-layer training test, every case on backward_path
#                            sm80 and sm90 (sm90 skips with its reason where this build or GPU lacks it), and
#                            memcheck + racecheck of tools/sanitize_backward.py on both paths
#   bench                    tools/bench_attention.py (SPARGE_BENCH_ARGS, e.g. "--backward --shapes 1.3b")
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
steps=${*:-tests sanitize bwd-tests bwd-sanitize bench}
status=0
for step in $steps; do
  SECONDS=0
  case $step in
    tests)
      timeout ${SPARGE_TESTS_TIMEOUT:-300} python3 -m pytest -m gpu -q -p no:cacheprovider packages/sparge-kernels/tests/test_cuda_forward.py \
        ${SPARGE_GPU_TESTS_EXTRA:-} 2>&1 | tee "$OUT/gpu_tests.log" || status=1 ;;
    sanitize)
      # memcheck on a small case with tails, empty rows and NHD strides (every launch of the forward).
      timeout ${SPARGE_SANITIZE_TIMEOUT:-150} compute-sanitizer --tool memcheck --error-exitcode 1 python3 - <<'PY' 2>&1 | tee "$OUT/sanitizer.log" || status=1
import torch, sparge_kernels as sk
from sparge_kernels.block_mask import BlockMask
for path in ("sm80", "sm90"):
    for dtype, d in ((torch.bfloat16, 128), (torch.float16, 64)):
        q = torch.randn(1, 300, 2, d, device="cuda", dtype=dtype)
        k = torch.randn(1, 200, 2, d, device="cuda", dtype=dtype)
        dense = torch.rand(1, 2, 3, 4, device="cuda") < 0.6
        dense[0, 0, 1] = False
        m = BlockMask.from_dense(dense, seq_len_q=300, seq_len_k=200)
        with sk.kernel_options(forward_path=path):
            out, lse = sk.block_sparse_attention(q, k, k, m, layout="NHD", return_lse=True)
        torch.cuda.synchronize()
        assert torch.isfinite(out).all()
    print(path, "ok")
print("sanitizer case done")
PY
      ;;
    bwd-tests)
      timeout ${SPARGE_TESTS_TIMEOUT:-480} python3 -m pytest -m gpu -q -p no:cacheprovider -rs \
        packages/sparge-kernels/tests/test_cuda_backward.py packages/sparge-kernels/tests/test_cuda_training.py \
        2>&1 | tee "$OUT/gpu_backward_tests.log" || status=1 ;;
    bwd-sanitize)
      for tool in memcheck racecheck; do
        timeout ${SPARGE_SANITIZE_TIMEOUT:-300} compute-sanitizer --tool $tool --error-exitcode 1 \
          python3 tools/sanitize_backward.py --paths sm80 sm90 2>&1 | tee "$OUT/sanitizer_backward_$tool.log" || status=1
      done ;;
    bench)
      timeout ${SPARGE_BENCH_TIMEOUT:-300} python3 tools/bench_attention.py --out "$OUT/bench_attention.md" ${SPARGE_BENCH_ARGS:-} 2>&1 \
        | tee "$OUT/bench.log" || status=1 ;;
    *) echo "unknown step $step"; status=1 ;;
  esac
  echo "== $step: ${SECONDS}s (status so far $status)"
done
exit $status
