#!/usr/bin/env bash
# `molecule test` for each scenario named, MOLECULE_LANES (default 1) at a time, in the order
# given (name the longest first). Scenarios share nothing but the lab networks and the apt
# cache: their container names and addresses differ, so two can run at once.
# Each scenario's full output is kept in reports/ci/molecule-<scenario>.log, each line prefixed
# with the seconds since the scenario started; with one lane it is also shown as it runs. No new
# scenario starts after a failure. A failure ends with the failing tests and their assertion
# lines, so that the last lines of a CI log (often all a reader gets) name what failed rather
# than molecule's clean-up.
set -uo pipefail
if (($# == 0)); then
    echo "molecule-all: no scenario named (SCENARIOS is empty): that is a failure, not a pass" >&2
    exit 1
fi
lanes=${MOLECULE_LANES:-1}
lanes=$((lanes < $# ? lanes : $#))  # one scenario: shown live
logs=reports/ci
mkdir -p "$logs"

# Prefix each line with the seconds since the scenario started (where the time goes).
stamp() {
    python3 -uc 'import sys, time
start = time.monotonic()
for line in sys.stdin:
    sys.stdout.write(f"{time.monotonic() - start:5.0f} {line}")'
}

run() {  # run SCENARIO: molecule test, its log, its exit status
    local scenario=$1 log=$logs/molecule-$1.log
    if ((lanes == 1)); then
        molecule test -s "$scenario" 2>&1 | stamp | tee "$log"
    else
        molecule test -s "$scenario" 2>&1 | stamp >"$log"
    fi
    return "${PIPESTATUS[0]}"
}

summarise() {  # summarise SCENARIO RC SECONDS: what failed, from its log
    local log=$logs/molecule-$1.log plain
    plain=$(sed -e 's/\x1b\[[0-9;]*m//g' -e 's/^ *[0-9]* //' "$log")
    echo "== molecule $1 FAILED (exit $2) after $3 s; full log: $log"
    grep -aE '(FAILED|ERROR) tests/' <<<"$plain" | sed 's/^[ │]*//' | cut -c1-300 | tail -8
    grep -aE '^[ │]*E  ' <<<"$plain" | sed 's/^[ │]*//' | cut -c1-300 | tail -10
    grep -aE 'fatal: \[|FAILED! =>' <<<"$plain" | cut -c1-300 | tail -4
}

declare -A started=() running=()
timings=() failed=()
finish() {  # finish PID RC: record one scenario's end
    local scenario=${running[$1]} took=$((SECONDS - started[${running[$1]}]))
    unset "running[$1]"
    timings+=("$scenario ${took}s")
    if (($2 != 0)); then
        failed+=("$scenario $2 $took")
        echo "== molecule $scenario failed after $took s"
    else
        echo "== molecule $scenario passed in $took s"
    fi
}

for scenario in "$@"; do
    ((${#failed[@]} == 0)) || break
    while ((${#running[@]} >= lanes)); do
        wait -n -p pid
        finish "$pid" $?
    done
    ((${#failed[@]} == 0)) || break
    echo "== molecule test -s $scenario ($(date -u +%H:%M:%S) UTC, log: $logs/molecule-$scenario.log)"
    started[$scenario]=$SECONDS
    run "$scenario" &
    running[$!]=$scenario
done
while ((${#running[@]} > 0)); do
    wait -n -p pid
    finish "$pid" $?
done
for failure in "${failed[@]}"; do
    # shellcheck disable=SC2086 # "scenario rc seconds"
    summarise $failure
done
echo "== scenario times: ${timings[*]}"
((${#failed[@]} == 0))
