#!/usr/bin/env bash
# Run every package's tests and the cross-package tests (GPU tests skip without a GPU).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd); cd "$root"
py=${SPARGE_VENV:-$root/.venv}/bin/python
"$py" -m pytest "$@"
rc=$?
# pytest exits 5 when it collected no test: that is a failure of the suite, not a pass.
[ $rc -eq 5 ] && echo "pytest collected no tests" >&2
exit $rc
