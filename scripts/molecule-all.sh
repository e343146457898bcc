#!/usr/bin/env bash
# `molecule test` for each scenario named, in order, stopping at the first failure.
# Each scenario's full output is kept in reports/ci/molecule-<scenario>.log. A failure ends
# with the failing tests and their assertion lines, so that the last lines of a CI log (often
# all a reader gets) name what failed rather than molecule's clean-up.
set -uo pipefail
if (($# == 0)); then
    echo "molecule-all: no scenario named (SCENARIOS is empty): that is a failure, not a pass" >&2
    exit 1
fi
logs=reports/ci
mkdir -p "$logs"
timings=()
for scenario in "$@"; do
    log=$logs/molecule-$scenario.log
    echo "== molecule test -s $scenario ($(date -u +%H:%M:%S) UTC, log: $log)"
    started=$SECONDS
    molecule test -s "$scenario" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    timings+=("$scenario $((SECONDS - started))s")
    if ((rc != 0)); then
        plain=$(sed 's/\x1b\[[0-9;]*m//g' "$log")
        echo "== molecule $scenario FAILED (exit $rc) after $((SECONDS - started)) s; full log: $log"
        grep -aE '(FAILED|ERROR) tests/' <<<"$plain" | sed 's/^[ │]*//' | cut -c1-300 | tail -8
        grep -aE '^[ │]*E  ' <<<"$plain" | sed 's/^[ │]*//' | cut -c1-300 | tail -10
        grep -aE 'fatal: \[|FAILED! =>' <<<"$plain" | cut -c1-300 | tail -4
        echo "== scenario times: ${timings[*]}"
        exit "$rc"
    fi
done
echo "== scenario times: ${timings[*]}"
