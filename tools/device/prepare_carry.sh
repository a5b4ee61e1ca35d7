#!/usr/bin/env bash
# Run HERE (no GPU) before a device call: fills .carry/ (git-ignored) with what the H100 lacks:
# the CUTLASS/CuTe headers (from the nvidia-cutlass wheel) and pure-Python wheels for Python 3.12.
# Then call the device with carry=[".carry"] and start the command with `source tools/device/setup.sh`.
set -euo pipefail
root=$(git rev-parse --show-toplevel); cd "$root"
mkdir -p .carry/whl
py=${PYTHON:-python3}
site=$($py - <<'PY'
import importlib.util, os
spec = importlib.util.find_spec("cutlass_library")
print(os.path.dirname(spec.origin) if spec else "")
PY
)
[ -n "$site" ] || { echo "nvidia-cutlass is not installed here: pip install nvidia-cutlass==4.2.0.0" >&2; exit 1; }
[ -f .carry/cutlass-include.tgz ] || tar czf .carry/cutlass-include.tgz -C "$site/source" include
dl() { $py -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d .carry/whl "$@"; }
for spec in diffusers==0.42.1 einops hjson msgpack py-cpuinfo psutil pytest pluggy iniconfig hypothesis \
            sortedcontainers pygments pydantic pydantic-core annotated-types typing-inspection typing-extensions pyyaml; do
  ls .carry/whl | grep -qi "^$(echo "${spec%%=*}" | tr - _)-" || dl "$spec"
done
if ! ls .carry/whl | grep -q '^deepspeed-'; then
  DS_BUILD_OPS=0 $py -m pip wheel -q --no-deps --no-build-isolation deepspeed==0.19.8 -w .carry/whl
fi
du -sh .carry
