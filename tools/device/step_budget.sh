# Sourced by the device scripts whose steps share one time budget (a device command lasts at most 600 s):
#   budget_init SECONDS STATUS_FILE   start the clock; status lines go to STATUS_FILE (and stdout)
#   step_begin STEP                   t0, rc=0 for the step; false (and noted) when under 30 s are left for a step
#                                     other than build: `step_begin "$step" || continue`
#   budget_spent MIN                  true when less than MIN seconds are left
#   left CAP                          a step's timeout: min(CAP, what is left), at least 5 s
#   step_done STEP RC T0              record the step's exit code and time; a failed build stops the script
#   build_step GPU_FILE               the build step: tools/device/setup.sh (log: $OUT/build.log), then the GPU's
#                                     name, clocks and power into GPU_FILE; rc=1 when the build failed
#   sanitize_step LOG CAP CMD...      compute-sanitizer memcheck, racecheck and synccheck of CMD, each cut off at
#                                     `left CAP` -> $OUT/LOG_<tool>.log (its last line echoed); rc=1 on a failure
# `status` ends 1 once any step failed or was skipped.
budget_init() { budget=$1; status_file=$2; start=$SECONDS; status=0; }
budget_spent() { [ $((budget - (SECONDS - start))) -lt "$1" ]; }
step_begin() {
  t0=$SECONDS
  rc=0
  if [ "$1" != build ] && budget_spent 30; then
    note "== $1: skipped (time budget spent; run it in another call)"
    status=1
    return 1
  fi
}
left() { local l=$((budget - (SECONDS - start))); [ "$1" -lt "$l" ] && echo "$1" || echo $((l > 5 ? l : 5)); }
note() { echo "$1" | tee -a "$status_file"; }
step_done() {
  [ "$2" = 0 ] || status=1
  note "== $1: rc=$2, $((SECONDS - $3))s (elapsed $((SECONDS - start))s)"
  if [ "$1" = build ] && [ "$2" != 0 ]; then note "build failed: stopping"; exit 1; fi
}
build_step() {
  source tools/device/setup.sh >"$OUT/build.log" 2>&1 || { rc=1; return; }
  nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw --format=csv 2>&1 | tee "$1"
}
sanitize_step() {
  local log=$1 cap=$2 tool
  shift 2
  for tool in memcheck racecheck synccheck; do
    timeout "$(left "$cap")" compute-sanitizer --tool $tool --error-exitcode 1 "$@" >"$OUT/${log}_$tool.log" 2>&1 \
      || rc=1
    tail -1 "$OUT/${log}_$tool.log"
  done
}
