#!/usr/bin/env bash
# Make .venv with CPU torch 2.13.0 and the three sparge packages (sparge-kernels built with nvcc if present).
# Idempotent: re-running reuses the venv and reinstalls only the sparge packages.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd); cd "$root"
venv=${SPARGE_VENV:-$root/.venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
py="$venv/bin/python"
pip() { "$py" -m pip --disable-pip-version-check -q "$@"; }
# CPU torch first and pinned: nothing after this may replace it with a CUDA build.
"$py" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null || pip install torch==2.13.0
pip install "nanobind>=2" "scikit-build-core>=0.10" "nvidia-cutlass==4.2.0.0" ninja pytest hypothesis numpy
# DeepSpeed 0.19.8 ships as an sdist whose build imports torch: build it against ours, without its CUDA ops.
if ! "$py" -c "import deepspeed" 2>/dev/null; then
  tmp=$(mktemp -d)
  DS_BUILD_OPS=0 "$py" -m pip wheel -q --no-deps --no-build-isolation deepspeed==0.19.8 -w "$tmp"
  pip install "$tmp"/deepspeed-*.whl
fi
# The kernels wheel compiles CUDA when nvcc is on PATH (CI builds it); SPARGE_* env vars pick the variants.
pip install --no-build-isolation ./packages/sparge-kernels
# [eval]: scikit-image for the world metrics (PSNR/SSIM) and their tests.
pip install "./packages/sparge-pipelines[eval]" ./packages/sparge-train
"$py" - <<'PY'
import torch, sparge_kernels, sparge_pipelines, sparge_train
assert not torch.version.cuda, f"a CUDA torch was installed ({torch.__version__}); CPU machines must keep the CPU build"
print(f"torch {torch.__version__}; sparge-kernels {sparge_kernels.__version__} (CUDA kernels built: "
      f"{sparge_kernels.kernels_built()}); sparge-pipelines {sparge_pipelines.__version__}; "
      f"sparge-train {sparge_train.__version__}")
PY
