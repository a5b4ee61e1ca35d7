#!/usr/bin/env bash
# Device script for the Hopper (sm_90a, wgmma + TMA) block-sparse attention backward. Run on an H100/H200 after
# the build (it needs a build with SPARGE_CUDA_ARCHS containing 90a):
#   source tools/device/setup.sh && bash tools/gpu_backward_sm90.sh [tests|sanitize|bench ...]
# (no argument = all three). Logs and tables go to $OUT (default /tmp/out).
#   tests     the backward GPU tests (every case on backward_path sm80 and sm90, the sm80-vs-sm90 agreement test)
#             and the training test on both paths
#   sanitize  compute-sanitizer memcheck and racecheck on small cases with tails, Lq != Lk, an empty query block,
#             a key block nobody keeps, HND and NHD, through backward_path="sm90"
#   bench     tools/bench_attention.py --backward: the sm90 rows against sm80, cuDNN and FlexAttention
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
steps=${*:-tests sanitize bench}
status=0
for step in $steps; do
  SECONDS=0
  case $step in
    tests)
      timeout ${SPARGE_TESTS_TIMEOUT:-480} python3 -m pytest -m gpu -q -p no:cacheprovider -rs \
        packages/sparge-kernels/tests/test_cuda_backward.py packages/sparge-kernels/tests/test_cuda_training.py \
        ${SPARGE_GPU_TESTS_EXTRA:-} 2>&1 | tee "$OUT/gpu_backward_sm90_tests.log" || status=1 ;;
    sanitize)
      cat > "$OUT/sanitize_backward_sm90.py" <<'PY'
import torch
from sparge_kernels import KernelOptions, cuda_backward, reference
from sparge_kernels.block_mask import BlockMask

torch.manual_seed(0)
for dtype, d, layout in ((torch.bfloat16, 128, "NHD"), (torch.float16, 64, "HND"), (torch.bfloat16, 64, "NHD"),
                         (torch.float16, 128, "HND")):
    def rand(n):
        x = torch.randn(1, n, 2, d, device="cuda", dtype=dtype) if layout == "NHD" else \
            torch.randn(1, 2, n, d, device="cuda", dtype=dtype)
        return x.transpose(1, 2) if layout == "NHD" else x
    q, k, v, dout = rand(300), rand(200), rand(200), rand(300)   # tails: 300 = 2*128 + 44, 200 = 3*64 + 8
    dense = torch.rand(1, 2, 3, 4, device="cuda") < 0.6
    dense[0, 0, 1] = False      # an empty query block: zero dq
    dense[0, 1, :, 2] = False   # a key block nobody keeps: zero dk, dv
    dense[0, 1, 2, 3] = True    # the tail blocks meet
    mask = BlockMask.from_dense(dense, seq_len_q=300, seq_len_k=200)
    out, lse = reference.attention_forward(q, k, v, mask.kv_count, mask.kv_index, 128, 64, d**-0.5)
    args = (mask.kv_count, mask.kv_index, mask.q_count, mask.q_index, 128, 64, d**-0.5, False)
    grads = cuda_backward.backward(dout, q, k, v, out, lse, torch.randn_like(lse), *args,
                                   options=KernelOptions(backward_path="sm90", debug_fill=float("nan")))
    torch.cuda.synchronize()
    assert all(torch.isfinite(g).all() for g in grads), (dtype, d, layout)
    print(dtype, d, layout, "ok")
print("sanitizer cases done")
PY
      for tool in memcheck racecheck; do
        timeout ${SPARGE_SANITIZE_TIMEOUT:-300} compute-sanitizer --tool $tool --error-exitcode 1 \
          python3 "$OUT/sanitize_backward_sm90.py" 2>&1 | tee "$OUT/sanitizer_backward_sm90_$tool.log" || status=1
      done ;;
    bench)
      timeout ${SPARGE_BENCH_TIMEOUT:-540} python3 tools/bench_attention.py --backward \
        --out "$OUT/bench_attention_bwd_sm90.md" ${SPARGE_BENCH_ARGS:-} 2>&1 | tee "$OUT/bench_backward_sm90.log" \
        || status=1 ;;
    *) echo "unknown step $step"; status=1 ;;
  esac
  echo "== $step: ${SECONDS}s (status so far $status)"
done
exit $status
