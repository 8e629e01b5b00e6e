#!/usr/bin/env bash
# Makes a Debian minbase root filesystem tar for the container-pool's optional `toolbox` image
# (templates with `image = "toolbox"`): debootstrap --variant=minbase from the Debian mirror apt
# already uses, plus the tools coding agents expect (git, curl, python3, ca-certificates), the
# pool user 10001 and /workspace. Tarred deterministically (sorted, mtime 0, numeric owners), so
# the pool's image tag (the tar's content hash) only changes when the packages do.
#
# usage: sudo scripts/toolbox-rootfs.sh [OUT.tar] [SUITE]   (default ~/.cache/liquid/images/toolbox.tar, bookworm)
# then:  [docker] toolbox_rootfs = "<OUT.tar>" in the container-pool's configuration.
# Needs root and the network to the Debian mirror; takes a few minutes. Not part of `make test`
# (the runner tests import a small rootfs of their own through the same code path).
set -euo pipefail
out=${1:-$HOME/.cache/liquid/images/toolbox.tar}
suite=${2:-bookworm}
mirror=$(awk '/^URIs:/ {print $2; exit} /^deb / {print $2; exit}' /etc/apt/sources.list.d/* /etc/apt/sources.list 2>/dev/null || true)
mirror=${mirror:-http://deb.debian.org/debian}
[ "$(id -u)" = 0 ] || { echo "toolbox-rootfs: needs root (debootstrap and numeric owners)" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "==> installing debootstrap"; apt-get install -y -qq debootstrap >/dev/null; }
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
echo "==> debootstrap --variant=minbase $suite from $mirror (a few minutes)"
debootstrap --variant=minbase --include=ca-certificates,git,curl,python3 "$suite" "$root" "$mirror" >/dev/null
chroot "$root" sh -c 'groupadd -g 10001 liquid && useradd -u 10001 -g 10001 -d /workspace -s /bin/sh liquid'
mkdir -p "$root/workspace" && chown 10001:10001 "$root/workspace"
# Caches and logs that differ between runs and only cost space.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/* "$root"/tmp/*
mkdir -p "$(dirname "$out")"
tar --sort=name --mtime=@0 --numeric-owner --format=gnu --no-acls --no-xattrs --no-selinux \
  -C "$root" -cf "$out" .
echo "==> $out ($(du -h "$out" | cut -f1), sha256 $(sha256sum "$out" | cut -c1-12))"
echo "    set [docker] toolbox_rootfs = \"$out\" and use image = \"toolbox\" in a template"
