#!/usr/bin/env bash
# `make lab`: the whole story on the lab, for a newcomer. Builds the lab (molecule scenario
# `lab`: dns, dnsbl, relay, mailhost, app, outsider), runs site.yml against the relay exactly
# as a user would, hands a batch of invoices to the relay and shows it drain in batches and
# their delivery events reach the app host's webhook receiver, then runs the audit and prints
# its report. `make lab-down` removes it all.
#
# One line per step with the time it took; the full output of every step goes to the log
# named at the start and in the summary. A step that fails prints its own output from the
# first error on (all of it when there is no recognisable error line).
set -euo pipefail
cd "$(dirname "$0")/.."
invoices=${BULKRELAY_DEMO_INVOICES:-150}
first_invoice=100000  # numbers (and X-Bulkrelay-Ref: INV-NNNNN) apart from the tests' 0..249
relay=br-lab-relay
log_file=reports/lab/make-lab.log
mkdir -p reports/lab
: >"$log_file"
on_relay() { docker exec "$relay" runuser -u bulkrelay -- /opt/bulkrelay/venv/bin/bulkrelay "$@"; }

# step "what" command...: one line per step, full output in $log_file (scripts/step.sh)
source scripts/step.sh

echo "make lab: full output in $log_file"

step "build the lab and run site.yml against the relay (molecule converge -s lab)" molecule converge -s lab
recap=$(grep -E "$relay +: ok=" <<<"$STEP_OUTPUT" | tail -n 1 | sed "s/.*\($relay\)/\1/; s/  */ /g" || true)
tasks=$(grep -c 'TASK \[' <<<"$STEP_OUTPUT" || true)
echo "ok   lab built and site.yml converged in ${STEP_SECONDS}s ($tasks tasks on all hosts; $recap)"

step "hand $invoices invoices to the intake" \
    docker exec -i br-lab-app python3 - "$invoices" "$first_invoice" <molecule/lab/files/send_invoices.py
echo "ok   the app server handed $invoices invoices (PDF attached) to the relay's SMTP intake in ${STEP_SECONDS}s"

echo "..   the sender releases them in batches (lab pace: 50 every 5 s):"
started=$SECONDS
on_relay status --watch 1
on_relay status >>"$log_file"
# the demo says what happened, not what was meant to: every invoice must have left the queue
sent=$(on_relay status --json | python3 -c 'import json, sys
counts = json.load(sys.stdin)["counts"]
print(sum(counts.get(state, 0) for state in ("submitted", "delivered")))')
if ((sent < invoices)); then
    echo "FAILED only $sent of $invoices invoices left the queue; see: docker exec $relay bulkrelay status"
    exit 1
fi
echo "ok   $sent invoices handed to Postfix in $((SECONDS - started))s (see them arrive: docker exec br-lab-mailhost ls /home/alice/Maildir/new)"

step "the ERP's webhook receiver gets a delivered event for each invoice" \
    docker exec -i br-lab-app python3 - "$first_invoice" "$invoices" <molecule/lab/files/received_events.py
echo "ok   the app host's webhook receiver (signatures checked) holds $STEP_OUTPUT after ${STEP_SECONDS}s more"

# The audit exits non-zero when it finds a problem: that is its report, not a failed step.
# the scenario just converged is the newest of the lab ephemeral folders (one per checkout)
inventory=$(ls -td "$HOME"/.ansible/tmp/molecule.*.lab/inventory | head -n 1)/ansible_inventory.yml
started=$SECONDS
printf '\n===== audit\n' >>"$log_file"
if ansible-playbook -i "$inventory" playbooks/audit.yml -e audit__report_dir="$PWD/reports/lab" >>"$log_file" 2>&1; then
    verdict="passed"
else
    verdict="found problems (exit $?)"
fi
echo "ok   audit (SPF, FCrDNS, MX, DKIM, DMARC, DNSBL, the relay's posture) $verdict in $((SECONDS - started))s:"
bulkrelay report reports/lab/audit.json || true

echo
docker ps --filter name=br-lab- --format 'table {{.Names}}\t{{.Status}}'
cat <<SUMMARY

relay.example.test (198.51.100.101) sends for example.test; nothing listens for inbound mail.
Records the toolkit generated: build/dns/ (zone snippets, JSON, summary, PTR request note).
Audit report: reports/lab/audit.json, reports/lab/audit.html, reports/lab/audit.junit.xml.
Full output of every step: $log_file
Look around:  docker exec -it $relay bash   (bulkrelay status, postqueue -p, nft list ruleset)
Remove it:    make lab-down
SUMMARY
