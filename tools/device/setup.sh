# Sourced ON THE DEVICE at the start of a command (carry=[".carry"]): installs the carried wheels,
# unpacks CUTLASS, and builds + installs the three sparge packages into the device's Python.
# Usage: source tools/device/setup.sh   (sets PYTHONPATH; build log in $OUT/build.log if OUT is set)
set -o pipefail
export PYTHONUNBUFFERED=1
# Sourced again by a script started from an already set-up shell (e.g. a segment script): nothing to redo.
[ "${SPARGE_DEVICE_READY:-0}" = 1 ] && return 0
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  .carry/whl/*.whl || return 1
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
mkdir -p /tmp/cutlass && tar xzf .carry/cutlass-include.tgz -C /tmp/cutlass || return 1
log=${OUT:-/tmp}/build.log
export CMAKE_BUILD_PARALLEL_LEVEL=16
# The device is an H200: build its arch only (the source default is the 5-target release set, several times the
# compile time of one target, too long for a device command).
export SPARGE_CUDA_ARCHS=${SPARGE_CUDA_ARCHS:-90a}
SECONDS=0
python3 -m pip install -q --no-build-isolation --no-deps --no-index ./packages/sparge-kernels \
  -C cmake.define.CUTLASS_INCLUDE_DIR=/tmp/cutlass/include -C build-dir=/tmp/sparge-build >"$log" 2>&1 \
  || { tail -50 "$log"; return 1; }
echo "sparge-kernels built in ${SECONDS}s"
python3 -m pip install -q --no-build-isolation --no-deps --no-index ./packages/sparge-pipelines ./packages/sparge-train \
  >>"$log" 2>&1 || { tail -20 "$log"; return 1; }
python3 -c "import sparge_kernels as s; print('sparge_kernels', s.__version__, 'cuda kernels built:', s.kernels_built(), 'runnable:', s.cuda_available())"
export SPARGE_DEVICE_READY=1
