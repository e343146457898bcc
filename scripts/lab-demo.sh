#!/usr/bin/env bash
# `make lab`: the whole story on the lab, for a newcomer. Builds the lab (molecule scenario
# `lab`: dns, dnsbl, relay, mailhost, app, outsider), runs site.yml against the relay exactly
# as a user would, hands a batch of invoices to the relay and shows it drain in batches, then
# runs the audit and prints its report. `make lab-down` removes it all.
set -euo pipefail
cd "$(dirname "$0")/.."
invoices=${BULKRELAY_DEMO_INVOICES:-150}
relay=br-lab-relay
on_relay() { docker exec "$relay" runuser -u bulkrelay -- /opt/bulkrelay/venv/bin/bulkrelay "$@"; }
step() { printf '\n== %s\n' "$*"; }

step "building the lab and running site.yml against the relay (molecule converge -s lab)"
molecule converge -s lab

step "the app server hands $invoices invoices (PDF attached) to the relay's SMTP intake"
docker exec -i br-lab-app python3 - "$invoices" 100000 <molecule/lab/files/send_invoices.py

step "the sender releases them in batches (lab pace: 50 every 5 s)"
on_relay status --watch 1
on_relay status

step "audit: SPF, FCrDNS, MX, DKIM, DMARC, DNSBL and the relay's posture against the lab DNS"
inventory=$(ls -d "$HOME"/.ansible/tmp/molecule.*.lab/inventory | head -n 1)/ansible_inventory.yml
ansible-playbook -i "$inventory" playbooks/audit.yml -e audit__report_dir="$PWD/reports/lab" >/dev/null || true
bulkrelay report reports/lab/audit.json || true

step "what was built"
docker ps --filter name=br-lab- --format 'table {{.Names}}\t{{.Status}}'
cat <<SUMMARY

relay.example.test (198.51.100.101) sends for example.test; nothing listens for inbound mail.
Records the toolkit generated: build/dns/ (zone snippets, JSON, summary, PTR request note).
Audit report: reports/lab/audit.json, reports/lab/audit.html, reports/lab/audit.junit.xml.
Look around:  docker exec -it $relay bash   (bulkrelay status, postqueue -p, nft list ruleset)
Remove it:    make lab-down
SUMMARY
