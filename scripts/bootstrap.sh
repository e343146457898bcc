#!/usr/bin/env bash
# Creates .venv with the pinned toolchain (requirements.txt) and the bulkrelay package, editable.
# Reruns are instant: the venv is rebuilt only when requirements.txt or sender/pyproject.toml change.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv
stamp=$venv/.bulkrelay-stamp
want=$(cat requirements.txt sender/pyproject.toml | sha256sum | cut -c1-16)
[[ -f $stamp && $(cat "$stamp") == "$want" ]] && exit 0

if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    echo "bootstrap: installing python3-venv from Debian" >&2
    DEBIAN_FRONTEND=noninteractive scripts/apt-get.sh install -y -q python3-venv
fi
echo "bootstrap: building $venv from requirements.txt" >&2
python3 -m venv "$venv"
pip() {  # this machine's pip config names local mirrors that may be absent; hide that noise
    "$venv/bin/pip" -q --disable-pip-version-check "$@" 2> >(grep -v '^WARNING: Location' >&2)
}
pip install -r requirements.txt
pip install --no-deps -e sender
echo "$want" >"$stamp"
