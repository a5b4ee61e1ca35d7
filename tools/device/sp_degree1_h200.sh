#!/usr/bin/env bash
# Device script (H200, one run call, carry=[".carry"]) for issue 17's single-GPU check: the Ulysses sequence
# parallelism work must not slow degree 1. Times the Wan2.1-1.3B pipeline step (tools/bench_pipeline.py, dense and
# sparge, eager and compiled) and the distillation step (tools/bench_train.py, sparse and dense student) with this
# tree's sparge-pipelines and sparge-train ("after") and with those of the commit before the first sequence-parallel
# change ("before", c2cf6d5~1), both on this tree's kernel build, so only the Python layers differ. Each side runs
# its own benchmark scripts (the before side's configs must be ones its sparge-train accepts).
#   bash tools/device/sp_degree1_h200.sh [after] [before]      (default: both; results and logs in $OUT)
# SP_STEPS="pipeline train" (the default) picks the benchmarks.
# Prepare the before side here first (pure Python, ~100 KB):
#   git archive --format=tar.gz -o .carry/sp_before.tgz c2cf6d5~1 -- packages/sparge-pipelines/src \
#     packages/sparge-pipelines/pyproject.toml packages/sparge-pipelines/README.md packages/sparge-train/src \
#     packages/sparge-train/pyproject.toml packages/sparge-train/README.md tools/bench_pipeline.py \
#     tools/bench_train.py tools/structured_inputs.py ':(exclude)*.safetensors'
# Each benchmark is cut off by `timeout` at min(its cap, what is left of SP_BUDGET_S, default 560 s from the start);
# status.txt lists each step's exit code and time.
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
sides=${*:-after before}
source tools/device/step_budget.sh
budget_init "${SP_BUDGET_S:-560}" "$OUT/status.txt"
source tools/device/setup.sh || exit 1
note "== build and install: $((SECONDS - start))s"
repo=$PWD
if [[ " $sides " == *" before "* ]]; then
  rm -rf /tmp/sp-before /tmp/sp-before-site && mkdir -p /tmp/sp-before \
    && tar xzf .carry/sp_before.tgz -C /tmp/sp-before \
    && python3 -m pip install -q --no-deps --no-build-isolation --no-index --target /tmp/sp-before-site \
      /tmp/sp-before/packages/sparge-pipelines /tmp/sp-before/packages/sparge-train >>"$OUT/build.log" 2>&1 \
    || { note "before side: could not unpack or install .carry/sp_before.tgz"; exit 1; }
fi
for side in $sides; do
  case $side in
    after) dir=$repo; path=$PYTHONPATH ;;
    before) dir=/tmp/sp-before; path=/tmp/sp-before-site:$PYTHONPATH ;;
    *) note "unknown side $side"; status=1; continue ;;
  esac
  if [[ " ${SP_STEPS:-pipeline train} " == *" pipeline "* ]]; then
    t0=$SECONDS
    (cd "$dir" && PYTHONPATH=$path timeout "$(left 240)" python3 tools/bench_pipeline.py --models 1.3b --iters 3 \
      --warmup 1) >"$OUT/pipeline_$side.md" 2>"$OUT/pipeline_$side.log"  # the script prints its table
    step_done "pipeline $side" $? $t0
  fi
  if [[ " ${SP_STEPS:-pipeline train} " == *" train "* ]]; then
    t0=$SECONDS
    (cd "$dir" && PYTHONPATH=$path timeout "$(left 200)" python3 tools/bench_train.py --steps 4 --warmup 2 \
      --workdir "/tmp/bt-$side" --timeout 90 --out "$OUT/train_$side.md") >"$OUT/train_$side.log" 2>&1
    step_done "train $side" $? $t0
  fi
done
(cd "$OUT" && tar czf sp_degree1_logs.tgz --remove-files ./*.log)
exit $status
