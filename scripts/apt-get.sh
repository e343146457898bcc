#!/usr/bin/env bash
# apt-get ARGS... for the project's own scripts (lab.sh, bootstrap.sh, bench), with a bounded
# wait for apt's locks: on a fresh machine unattended-upgrades or a second terminal often holds
# them, and apt-get alone then fails at once. apt-get waits for the dpkg lock itself when given
# DPkg::Lock::Timeout; `apt-get update` does not wait for the package-list lock (apt 2.6 fails
# at once), so a lock error is retried here until the same time is spent. Either way it says on
# stderr that it is waiting and for whom. apt's stdout is dropped; its stderr is shown, but for
# the lock errors that were retried.
#
#   BULKRELAY_APT_LOCK_TIMEOUT  seconds to wait for the locks (300)
#   BULKRELAY_APT_LOCK_POLL     seconds between retries of a lock error (5)
set -uo pipefail
timeout=${BULKRELAY_APT_LOCK_TIMEOUT:-300}
poll=${BULKRELAY_APT_LOCK_POLL:-5}
err=$(mktemp)
trap 'rm -f "$err"' EXIT

said_waiting=
say_waiting() {  # $1: apt's line naming the lock and its holder; said once, not on every retry
    [[ -n $said_waiting ]] && return
    said_waiting=1
    local holder=${1#*Could not get lock }
    printf 'apt: waiting up to %ss for another package manager (%s)\n' "$timeout" "${holder%...}" >&2
}

start=$SECONDS
while true; do
    # While it waits for the dpkg lock, apt prints "Waiting for cache lock: ..." on stdout.
    apt-get -o DPkg::Lock::Timeout="$timeout" "$@" 2>"$err" | while IFS= read -r line; do
        [[ $line == "Waiting for cache lock: "* ]] && say_waiting "$line"
    done
    status=${PIPESTATUS[0]}
    lock_error=$(grep -m1 "Could not get lock" "$err")
    if ((status == 0)) || [[ -z $lock_error ]] || ((SECONDS - start >= timeout)); then
        cat "$err" >&2
        exit "$status"
    fi
    say_waiting "$lock_error"
    sleep "$poll"
done
