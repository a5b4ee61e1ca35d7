#!/usr/bin/env bash
# Make .venv with CPU torch 2.13.0 and the three sparge packages (sparge-kernels built with nvcc if present).
# Idempotent: re-running reuses the venv, skips what is already installed and rebuilds the kernels incrementally
# (scikit-build-core keeps packages/sparge-kernels/build/).
#
# Which CUDA kernel variants it compiles (an explicit SPARGE_CUDA_ARCHS / SPARGE_HEAD_DIMS / SPARGE_DTYPES wins):
#   - a GPU is visible (nvidia-smi): that GPU's arch(s), every head dim and dtype;
#   - no GPU: one variant, head dim 128 / bf16 for sm_90a: the kernels cannot run on such a machine, so this is
#     only what the build's tests import and what CI compiles to prove the sources build (all of them: sm_90a
#     also selects the Hopper forward). The full set took ~20 minutes on 2 cores for nothing;
#   - SPARGE_FULL_BUILD=1: the release set (archs 80;86;89;90a;PTX, head dims 64;128, bf16;fp16).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd); cd "$root"
SECONDS=0
step() { printf '[setup %4ds] %s\n' "$SECONDS" "$*"; }
venv=${SPARGE_VENV:-$root/.venv}
# DeepSpeed's sdist build is the slow part after the kernels; its wheel is kept here across clones and venvs.
cache=${SPARGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sparge}

if [ -x "$venv/bin/python" ]; then step "reusing $venv"; else step "creating $venv"; python3 -m venv "$venv"; fi
py="$venv/bin/python"
pip() { "$py" -m pip --disable-pip-version-check -q "$@"; }

# CPU torch first and pinned: nothing after this may replace it with a CUDA build.
if "$py" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null; then
  step "torch 2.13.0 already installed"
else
  step "installing torch 2.13.0 (CPU)"
  pip install torch==2.13.0
fi

# Build tools (the kernels and the pure-Python packages are built without isolation, so nothing is fetched
# into a throwaway build env on every run) and test tools. Skipped when all are present: pip's resolver
# asks the index even when everything is satisfied.
if "$py" - 2>/dev/null <<'PY'
from importlib.metadata import version
major = lambda name: int(version(name).split(".")[0])
assert version("nvidia-cutlass") == "4.2.0.0" and major("nanobind") >= 2 and major("setuptools") >= 68
for name in ("scikit-build-core", "ninja", "wheel", "pytest", "hypothesis", "numpy"):
    version(name)
PY
then
  step "build and test tools already installed"
else
  step "installing build and test tools (nanobind, scikit-build-core, nvidia-cutlass, ninja, setuptools, pytest, ...)"
  pip install "nanobind>=2" "scikit-build-core>=0.10" "nvidia-cutlass==4.2.0.0" ninja "setuptools>=68" wheel \
    pytest hypothesis numpy
fi

# DeepSpeed 0.19.8 ships as an sdist whose build imports torch: build it against ours, without its CUDA ops.
# With DS_BUILD_OPS=0 the wheel is pure Python, so one cached wheel serves every venv on this machine.
# (Checked by metadata: importing deepspeed takes seconds and prints accelerator warnings.)
if "$py" -c "from importlib.metadata import version; assert version('deepspeed') == '0.19.8'" 2>/dev/null; then
  step "deepspeed already installed"
else
  mkdir -p "$cache/wheels"
  whl=$(ls "$cache"/wheels/deepspeed-0.19.8-*.whl 2>/dev/null | head -1 || true)
  if [ -z "$whl" ]; then
    step "building deepspeed 0.19.8 wheel (sdist, DS_BUILD_OPS=0) into $cache/wheels"
    DS_BUILD_OPS=0 "$py" -m pip wheel -q --no-deps --no-build-isolation deepspeed==0.19.8 -w "$cache/wheels"
    whl=$(ls "$cache"/wheels/deepspeed-0.19.8-*.whl | head -1)
  fi
  step "installing $(basename "$whl")"
  pip install "$whl"
fi

# Kernel variants: fit the machine unless the caller chose (see the header).
if [ "${SPARGE_FULL_BUILD:-0}" = 1 ]; then
  fit_archs="80;86;89;90a;PTX" fit_hdims="64;128" fit_dtypes="bf16;fp16" why="SPARGE_FULL_BUILD=1"
elif caps=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null) && [ -n "$caps" ]; then
  # 9.0 -> 90a (the Hopper kernels need the arch-specific target); 8.6 -> 86; one entry per distinct GPU kind.
  fit_archs=$(echo "$caps" | tr -d ' .' | sed 's/^90$/90a/' | sort -u | paste -sd';')
  fit_hdims="64;128" fit_dtypes="bf16;fp16" why="GPU(s) found with compute capability $(echo "$caps" | sort -u | paste -sd' ')"
else
  fit_archs="90a" fit_hdims="128" fit_dtypes="bf16" why="no GPU found: one variant, enough for the build's tests"
fi
export SPARGE_CUDA_ARCHS=${SPARGE_CUDA_ARCHS:-$fit_archs}
export SPARGE_HEAD_DIMS=${SPARGE_HEAD_DIMS:-$fit_hdims}
export SPARGE_DTYPES=${SPARGE_DTYPES:-$fit_dtypes}
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
if command -v nvcc >/dev/null || [ -n "${CUDACXX:-}" ]; then
  step "building sparge-kernels with CUDA ($why): archs=$SPARGE_CUDA_ARCHS head_dims=$SPARGE_HEAD_DIMS" \
       "dtypes=$SPARGE_DTYPES, $CMAKE_BUILD_PARALLEL_LEVEL jobs (SPARGE_FULL_BUILD=1 for the full set)"
else
  step "installing sparge-kernels without CUDA kernels (no nvcc on PATH; CPU tensors use the reference)"
fi
# --no-deps: its one dependency, torch, is pinned above.
pip install --no-deps --no-build-isolation ./packages/sparge-kernels
step "installing sparge-pipelines and sparge-train (and their dependencies)"
# [eval]: scikit-image for the world metrics (PSNR/SSIM) and their tests.
pip install --no-build-isolation "./packages/sparge-pipelines[eval]" ./packages/sparge-train

"$py" - <<'PY'
import torch, sparge_kernels, sparge_pipelines, sparge_train
from sparge_kernels import cuda
assert not torch.version.cuda, f"a CUDA torch was installed ({torch.__version__}); CPU machines must keep the CPU build"
c = cuda._C
built = (f"CUDA {c.build_cuda_version}, archs {c.build_archs}, head dims {c.build_head_dims}, dtypes {c.build_dtypes}"
         if c is not None else "no")
print(f"torch {torch.__version__}; sparge-kernels {sparge_kernels.__version__} (CUDA kernels built: {built}); "
      f"sparge-pipelines {sparge_pipelines.__version__}; sparge-train {sparge_train.__version__}")
PY
step "done"
