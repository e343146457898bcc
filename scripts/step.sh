# shellcheck shell=bash
# Sourced by scripts/lab-demo.sh (`make lab`); tests/test_step.py runs it on its own.
# The caller sets log_file; after a step, STEP_SECONDS and STEP_OUTPUT hold its time and output.
# step "what" command...: runs the command with its output in the log. On a terminal a live line
# shows the time so far and, for Ansible, the task count and the task at hand.
step() {
    local what=$1 started=$SECONDS output rc=0 tasks current
    shift
    output=$(mktemp)
    printf '\n===== %s\n' "$what" >>"$log_file"
    # <&0: a background job's stdin is /dev/null unless given (the invoice step reads a script)
    "$@" <&0 >"$output" 2>&1 &
    local pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        if [[ -t 1 ]]; then
            tasks=$(grep -c 'TASK \[' "$output" || true)
            current=$(grep -o 'TASK \[[^]]*\]' "$output" | tail -n 1 | cut -c7- | tr -d '[]' || true)
            printf '\r\033[K.. %s: %ds%s' "$what" $((SECONDS - started)) \
                "${current:+, task $tasks: ${current:0:60}}"
        fi
        sleep 1
    done
    wait "$pid" || rc=$?
    sed -i 's/\x1b\[[0-9;]*m//g' "$output"  # colour codes out, once, for the log and the caller
    cat "$output" >>"$log_file"
    [[ -t 1 ]] && printf '\r\033[K'
    if ((rc != 0)); then
        printf 'FAILED %s after %ds (exit %d); its output from the first error (full log: %s):\n' \
            "$what" $((SECONDS - started)) "$rc" "$log_file"
        awk 'found || /fatal:|FAILED!|ERROR|Traceback|[Ee]rror:/ {found=1} found' "$output" >"$output.err"
        if [[ -s $output.err ]]; then cat "$output.err"; else cat "$output"; fi
        rm -f "$output" "$output.err"
        exit "$rc"
    fi
    STEP_SECONDS=$((SECONDS - started))
    STEP_OUTPUT=$(<"$output")
    rm -f "$output"
}
