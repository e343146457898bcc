#!/usr/bin/env bash
# pytest with "no tests ran" (exit 5) turned into a failure that says so: a suite that
# collects nothing must never pass quietly.
set -uo pipefail
"$(dirname "$0")/../.venv/bin/pytest" "$@"
rc=$?
if ((rc == 5)); then
    echo "pytest collected no tests in: $* -- that is a failure, not a pass" >&2
    exit 1
fi
exit "$rc"
