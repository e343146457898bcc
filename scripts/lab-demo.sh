#!/usr/bin/env bash
# `make lab`: stand up the lab relay with site.yml (as a user would) and print what it built.
set -euo pipefail
cd "$(dirname "$0")/.."
molecule create -s default
molecule converge -s default
echo
echo "== bulkrelay lab: what was built"
docker ps --filter name=br-default --format 'table {{.Names}}\t{{.Status}}\t{{.Networks}}'
docker exec br-default-relay bash -c 'hostname -f; systemctl is-system-running || true'
