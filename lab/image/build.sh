#!/usr/bin/env bash
# Builds the lab's Debian 12 base image: systemd as PID 1 and python3, nothing else.
# Roles install what they need, so their install steps stay tested.
# Usage: build.sh TAG   (called by lab/lab.sh, which caches the result by a hash of this folder)
set -euo pipefail
tag=$1
here=$(cd "$(dirname "$0")" && pwd)
mirror=http://deb.debian.org/debian
root=$(mktemp -d /var/tmp/bulkrelay-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT

# Use the host's apt cache when it runs, so a rebuild reads packages locally.
if (exec 3<>/dev/tcp/127.0.0.1/3142) 2>/dev/null; then
    export http_proxy=http://127.0.0.1:3142
fi
debootstrap --variant=minbase --include=python3,systemd,systemd-sysv,iproute2 \
    bookworm "$root" "$mirror"

cat > "$root/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SOURCES
cp -a "$here/rootfs/." "$root/"
chmod 0755 "$root/usr/local/sbin/apt-proxy-detect"

# Units that cannot work in a container and only add failed states or delays.
for unit in getty@tty1.service console-getty.service systemd-udevd.service \
        systemd-remount-fs.service sys-kernel-config.mount sys-kernel-debug.mount \
        sys-kernel-tracing.mount dev-hugepages.mount systemd-firstboot.service; do
    ln -sf /dev/null "$root/etc/systemd/system/$unit"
done
: > "$root/etc/machine-id"
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb

tar -C "$root" -c . | docker import \
    -c 'CMD ["/lib/systemd/systemd"]' -c 'ENV container=docker' \
    - "$tag"
