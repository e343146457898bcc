#!/usr/bin/env bash
# `make bench`: every benchmark in order, each bounded by a timeout, then the summary table.
# Results (JSON per benchmark) go to build/bench/; the playbook benchmark runs last and only
# when the molecule `default` scenario is not in use. Not part of `make test`.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export ANSIBLE_CONFIG="$PWD/ansible.cfg"
results="${BENCH_RESULTS:-$PWD/build/bench}"
export BENCH_RESULTS="$results"
mkdir -p "$results"
rm -f "$results"/*.json

# From Debian: rbldnsd (test blacklists), check_rbl (monitoring-plugins-contrib) and
# python3-dnspython (check_dnsbl as a relay runs it).
missing=()
for pkg in rbldnsd monitoring-plugins-contrib python3-dnspython libnet-dns-perl libcapture-tiny-perl \
        libdata-validate-domain-perl libdata-validate-ip-perl libreadonly-perl \
        libmonitoring-plugin-perl libnet-ip-perl; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "bench: installing ${missing[*]} from Debian" >&2
    DEBIAN_FRONTEND=noninteractive scripts/apt-get.sh install -y -q --no-install-recommends "${missing[@]}"
fi

echo "== machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "   kernel $(uname -r), $(free -m | awk '/^Mem:/ {print $2 " MiB RAM"}'), load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "   $(python --version), $(/usr/sbin/postconf -d mail_version 2>/dev/null), $(/usr/sbin/rbldnsd -h 2>&1 | head -1 || true)"

status=0
step() {
    local limit=$1
    shift
    local started=$SECONDS
    if ! timeout --kill-after=10 "$limit" "$@"; then
        echo "bench: '$*' failed or ran over ${limit}s" >&2
        status=1
    fi
    echo "   ($(( SECONDS - started ))s)"
}

only="${BENCH_ONLY:-drain intake webhooks queue_scale throttle dnsbl playbook}"
for name in $only; do
    case $name in
        drain) step 420 python bench/drain.py ;;
        intake) step 240 python bench/intake.py ;;
        webhooks) step 300 python bench/webhooks.py ;;
        queue_scale) step 300 python bench/queue_scale.py ;;
        throttle) step 150 python bench/throttle.py ;;
        dnsbl)
            step 120 python bench/dnsbl.py --rounds 3
            step 120 python bench/dnsbl.py --listed 3 --rounds 3
            ;;
        playbook) step 1800 python bench/playbook.py ;;  # the base tree, then this one
        *) echo "bench: unknown benchmark $name" >&2; status=2 ;;
    esac
done
python bench/summary.py "$results" --figures
echo "== load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
exit $status
