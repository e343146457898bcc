#!/usr/bin/env bash
# Prepares this machine for the bulkrelay lab; shared by `make lab`, `make test` and CI.
#
#   lab.sh up          install host packages, start dockerd and apt-cacher-ng when not running,
#                      build (or reuse) the base image, create the lab networks
#   lab.sh down        remove the lab networks, stop dockerd if this script started it
#   lab.sh image       print the base image tag
#
# Needs root on Debian 12. Everything it installs comes from Debian's packages.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
state_dir=/run/bulkrelay-lab
dockerd_log=/var/log/bulkrelay-dockerd.log
image_repo=bulkrelay/debian12
image_alias=$image_repo:lab   # molecule.yml files name this tag

# Documentation ranges only (RFC 5737, RFC 3849). This host itself uses 192.0.2.0/24 and
# reaches its package mirror inside 203.0.113.0/24, so the lab takes what is left; check_subnets
# refuses to create a network that would shadow a route or the mirror.
# name           IPv4 subnet         IPv6 subnet         who sits on it
networks=(
    "bulkrelay-inet 198.51.100.0/24 2001:db8:100::/64 the internet: relay dns mailhost outsider"
    "bulkrelay-apps 203.0.113.192/26 2001:db8:113::/64 company apps: relay app"
)

# postfix for smtp-sink/smtp-source, swaks for probes, chromium to test the HTML audit report,
# Debian's check_rbl (monitoring-plugins-contrib; its Perl modules are only recommended) for the
# dnsbl scenario's side-by-side run, rbldnsd for the unit tests' real blacklist server (its
# package starts no daemon until /etc/default/rbldnsd names a zone).
host_packages=(docker.io debootstrap apt-cacher-ng iproute2 postfix swaks chromium rbldnsd
    monitoring-plugins-contrib libmonitoring-plugin-perl libnet-dns-perl libreadonly-perl
    libcapture-tiny-perl libdata-validate-domain-perl libdata-validate-ip-perl libnet-ip-perl)

log() { printf 'lab: %s\n' "$*" >&2; }
die() { printf 'lab: ERROR: %s\n' "$*" >&2; exit 1; }

require_root() {
    [[ $(id -u) -eq 0 ]] || die "run as root (the lab starts dockerd and installs Debian packages)"
}

ensure_packages() {
    local missing=()
    for pkg in "${host_packages[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    ((${#missing[@]} == 0)) && return
    log "installing ${missing[*]} from Debian"
    command -v apt-get >/dev/null || die "apt-get not found: the lab needs Debian 12"
    export DEBIAN_FRONTEND=noninteractive
    # postfix on the lab host only provides smtp-sink/smtp-source for tests; no mail system.
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    # waits (bounded) while unattended-upgrades or another terminal holds apt's locks
    "$here/../scripts/apt-get.sh" update -q
    "$here/../scripts/apt-get.sh" install -y -q --no-install-recommends "${missing[@]}"
}

docker_up() { docker info >/dev/null 2>&1; }

ensure_dockerd() {
    docker_up && return
    log "starting dockerd (log: $dockerd_log)"
    mkdir -p "$state_dir"
    nohup dockerd >>"$dockerd_log" 2>&1 &
    echo $! >"$state_dir/dockerd.pid"
    for _ in $(seq 60); do
        docker_up && return
        kill -0 "$(cat "$state_dir/dockerd.pid")" 2>/dev/null || break
        sleep 0.5
    done
    tail -n 20 "$dockerd_log" >&2 || true
    rm -f "$state_dir/dockerd.pid"
    die "dockerd did not start (see $dockerd_log above). The lab needs a Docker engine: run as root \
on a machine that allows it, or start dockerd yourself and rerun."
}

stop_dockerd_if_ours() {
    local pidfile=$state_dir/dockerd.pid
    [[ -f $pidfile ]] || return 0
    local pid; pid=$(cat "$pidfile")
    log "stopping the dockerd this script started (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    rm -f "$pidfile"
}

ensure_apt_cache() {
    # The package's default Debian backend (ftp.debian.org) is not what this machine reaches.
    local backend=/etc/apt-cacher-ng/backends_debian
    if ! grep -qx 'http://deb.debian.org/debian/' "$backend" 2>/dev/null; then
        echo 'http://deb.debian.org/debian/' >"$backend"
        /etc/init.d/apt-cacher-ng stop >/dev/null 2>&1 || true
    fi
    (exec 3<>/dev/tcp/127.0.0.1/3142) 2>/dev/null && return
    log "starting apt-cacher-ng (lab containers use it as their apt proxy)"
    /etc/init.d/apt-cacher-ng start >/dev/null 2>&1 || /usr/sbin/apt-cacher-ng -c /etc/apt-cacher-ng
    for _ in $(seq 20); do (exec 3<>/dev/tcp/127.0.0.1/3142) 2>/dev/null && return; sleep 0.5; done
    log "warning: apt-cacher-ng did not start; containers will download packages directly"
}

image_tag() {
    local hash
    hash=$(cd "$here/image" && find . -type f | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-12)
    echo "$image_repo:$hash"
}

ensure_image() {
    local tag; tag=$(image_tag)
    if ! docker image inspect "$tag" >/dev/null 2>&1; then
        log "building base image $tag with debootstrap (about a minute)"
        "$here/image/build.sh" "$tag" >/var/log/bulkrelay-image-build.log 2>&1 ||
            { tail -n 30 /var/log/bulkrelay-image-build.log >&2; die "base image build failed"; }
    fi
    docker tag "$tag" "$image_alias"
    log "base image $tag (tagged $image_alias)"
}

# Fails when a lab subnet overlaps a route of this host or an address its package mirrors use.
check_subnet() {
    python3 - "$1" <<'PY'
import ipaddress, socket, subprocess, sys
lab = ipaddress.ip_network(sys.argv[1])
taken = []
for line in subprocess.run(["ip", "-4", "route", "show"], capture_output=True, text=True).stdout.splitlines():
    dest = line.split()[0]
    if dest != "default" and "bulkrelay" not in line:
        taken.append((ipaddress.ip_network(dest, strict=False), "route " + line.strip()))
for host in ("deb.debian.org", "pypi.org", "files.pythonhosted.org"):
    try:
        taken.append((ipaddress.ip_network(socket.gethostbyname(host)), f"{host} resolves there"))
    except OSError:
        pass
for net, why in taken:
    if net.overlaps(lab):
        sys.exit(f"lab: ERROR: lab subnet {lab} overlaps {net} ({why}); pick another "
                 "documentation range in lab/lab.sh")
PY
}

ensure_networks() {
    local name v4 v6 _
    for spec in "${networks[@]}"; do
        read -r name v4 v6 _ <<<"$spec"
        docker network inspect "$name" >/dev/null 2>&1 && continue
        check_subnet "$v4"
        log "creating network $name ($v4, $v6)"
        docker network create --driver bridge --subnet "$v4" --ipv6 --subnet "$v6" \
            --label bulkrelay.lab=1 "$name" >/dev/null
    done
}

remove_networks() {
    local name _
    for spec in "${networks[@]}"; do
        read -r name _ <<<"$spec"
        docker network rm "$name" >/dev/null 2>&1 || true
    done
}

case ${1:-up} in
    up)
        require_root
        ensure_packages
        ensure_dockerd
        ensure_apt_cache
        ensure_image
        ensure_networks
        ;;
    down)
        require_root
        docker_up && remove_networks
        stop_dockerd_if_ours
        ;;
    stop-dockerd) stop_dockerd_if_ours ;;
    image) image_tag ;;
    *) die "usage: lab.sh up|down|stop-dockerd|image" ;;
esac
