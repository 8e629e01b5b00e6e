#!/usr/bin/env bash
# Builds the container images locally, pulling nothing (no registry is reachable here):
#   liquid/<svc>:<version>   one per service: the dev-profile binary (the same build the tests
#                            use, so no second compile) plus the shared libraries `ldd` lists at
#                            their paths (libc, libgcc_s, the dynamic loader), /etc/passwd with the
#                            non-root user 10001, /tmp, CA certificates; entrypoint the binary.
# The container-pool's base image (liquid/pool-base:<hash>) is not built here: the service builds
# and verifies it at start-up (services/container-pool/src/runtime/image.rs), the one builder.
# Each rootfs is tarred deterministically (sorted names, mtime 0, numeric owners) and loaded with
# `docker import`. An image whose io.liquid.content-sha256 label already matches what would be
# imported is left alone, so a second run only pays for the tarring.
#
# usage: scripts/images.sh [--no-build] [--smoke] [SERVICE...]
#   --no-build  use the binaries already in $CARGO_TARGET_DIR/debug
#   --smoke     start each service image on a random loopback port and wait for /healthz
#   SERVICE     gateway a2a cowork container-pool healer registry media (default: all)
set -euo pipefail
umask 022
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/liquid/target}"
work="${LIQUID_IMAGES_DIR:-$HOME/.cache/liquid/images}"
uid=10001

# service  crate / binary  http  grpc
SERVICES=(
  "gateway liquid-gateway 8080 -"
  "a2a liquid-a2a-service 8081 9081"
  "cowork liquid-cowork 8082 9082"
  "container-pool liquid-container-pool 8083 9083"
  "healer liquid-healer 8084 9084"
  "registry liquid-registry 8085 9085"
  "media liquid-media 8086 9086"
)

now() { printf '%s' "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }
die() { printf 'images: %s\n' "$*" >&2; exit 1; }

build=true smoke=false wanted=()
for arg in "$@"; do
  case "$arg" in
    --no-build) build=false ;;
    --smoke) smoke=true ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option $arg" ;;
    *) wanted+=("$arg") ;;
  esac
done
want() { [ ${#wanted[@]} -eq 0 ] && return 0; local w; for w in "${wanted[@]}"; do [ "$w" = "$1" ] && return 0; done; return 1; }
for w in "${wanted[@]+"${wanted[@]}"}"; do
  printf '%s\n' "${SERVICES[@]}" | awk '{print $1}' | grep -qx "$w" || die "unknown service $w"
done

command -v docker >/dev/null || die "docker CLI not found"
docker version --format '{{.Server.APIVersion}}' >/dev/null 2>&1 || die "the Docker engine does not answer"

version=$(awk '/^\[workspace\.package\]/ { p = 1; next } /^\[/ { p = 0 } p && /^version *=/ { gsub(/[" ]/, "", $0); sub(/^version=/, "", $0); print; exit }' Cargo.toml)
[ -n "$version" ] || die "no version under [workspace.package] in Cargo.toml"
t_all=$(now)
mkdir -p "$work"
echo "==> images, version $version (target dir $CARGO_TARGET_DIR)"

# Deterministic tar of a rootfs: the same files give the same bytes, so the same sha256.
det_tar() {
  tar --sort=name --mtime=@0 --numeric-owner --format=gnu --no-acls --no-xattrs --no-selinux \
    -C "$1" -cf "$2" .
}
# /etc/passwd, /etc/group, /tmp and a home for the non-root user in rootfs $1.
base_files() {
  local root=$1
  mkdir -p "$root/etc" "$root/tmp" "$root/home/liquid"
  chmod 1777 "$root/tmp"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nliquid:x:%s:%s:liquid:/home/liquid:/sbin/nologin\n' \
    "$uid" "$uid" >"$root/etc/passwd"
  printf 'root:x:0:\nliquid:x:%s:\n' "$uid" >"$root/etc/group"
  # Owners are taken from the files (--numeric-owner), so this needs root; everything else is
  # root-owned because root copied it.
  chown "$uid:$uid" "$root/home/liquid"
}
# import TAR TAG HASH CHANGE...: imports unless TAG already carries HASH.
import_image() {
  local tar=$1 tag=$2 hash=$3 current
  shift 3
  current=$(docker image inspect --format '{{index .Config.Labels "io.liquid.content-sha256"}}' "$tag" 2>/dev/null || true)
  if [ "$current" = "$hash" ]; then
    return 1
  fi
  local args=() c
  for c in "$@"; do args+=(--change "$c"); done
  docker import "${args[@]}" --change "LABEL io.liquid.content-sha256=$hash" "$tar" "$tag" >/dev/null
}

if [ "$(id -u)" != 0 ]; then
  die "run as root: the rootfs needs files owned by uid $uid and by root (this is how CI runs)"
fi

# 1. Binaries, dev profile: shares every compiled dependency with `make test` and `make lint`.
if $build; then
  pkgs=()
  for s in "${SERVICES[@]}"; do
    read -r name crate _ _ <<<"$s"
    want "$name" && pkgs+=(-p "$crate")
  done
  if [ ${#pkgs[@]} -gt 0 ]; then
    t0=$(now)
    echo "==> cargo build ${pkgs[*]} --bins"
    cargo build "${pkgs[@]}" --bins
    echo "    built in $(since "$t0")"
  fi
fi

# 2. Service images.
for s in "${SERVICES[@]}"; do
  read -r name bin http grpc <<<"$s"
  want "$name" || continue
  t0=$(now)
  exe="$CARGO_TARGET_DIR/debug/$bin"
  [ -x "$exe" ] || die "$exe is missing: run without --no-build or 'cargo build -p $bin'"
  root="$work/$name.rootfs"
  rm -rf "$root"
  mkdir -p "$root/usr/local/bin"
  cp "$exe" "$root/usr/local/bin/$bin"
  # Every library the loader will ask for, at the path ldd resolved it to (symlinks followed,
  # so /lib64/ld-linux-x86-64.so.2 becomes the loader itself).
  libs=$(ldd "$exe" | awk '
    /not found/ { print "MISSING " $1; next }
    $2 == "=>" && $3 ~ /^\// { print $3; next }
    $1 ~ /^\// { print $1 }')
  if grep -q '^MISSING' <<<"$libs"; then
    die "$bin needs libraries that are not installed: $(grep '^MISSING' <<<"$libs" | cut -d' ' -f2 | xargs)"
  fi
  for lib in $libs; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
  base_files "$root"
  printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
  if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    mkdir -p "$root/etc/ssl/certs"
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
  fi
  tar="$work/$name.tar"
  det_tar "$root" "$tar"
  rm -rf "$root"
  prefix="LIQUID_$(tr 'a-z-' 'A-Z_' <<<"$name")__"
  changes=(
    "ENTRYPOINT [\"/usr/local/bin/$bin\"]"
    "USER $uid"
    "WORKDIR /home/liquid"
    "ENV HOME=/home/liquid"
    "ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"
    "ENV ${prefix}SERVER__HTTP_ADDR=0.0.0.0:$http"
    "EXPOSE $http"
    "LABEL org.opencontainers.image.title=$bin"
    "LABEL org.opencontainers.image.version=$version"
    "LABEL io.liquid.service=$name"
  )
  if [ "$grpc" != - ]; then
    changes+=("ENV ${prefix}SERVER__GRPC_ADDR=0.0.0.0:$grpc" "EXPOSE $grpc")
  fi
  hash=$({ sha256sum "$tar" | cut -d' ' -f1; printf '%s\n' "${changes[@]}"; } | sha256sum | cut -d' ' -f1)
  tag="liquid/$name:$version"
  size=$(du -h "$tar" | cut -f1)
  if import_image "$tar" "$tag" "$hash" "${changes[@]}"; then
    printf '  built    %-32s %6s  content %s  (%s)\n' "$tag" "$size" "${hash:0:12}" "$(since "$t0")"
  else
    printf '  current  %-32s %6s  content %s  (%s)\n' "$tag" "$size" "${hash:0:12}" "$(since "$t0")"
  fi
  rm -f "$tar"
done

# 3. Optional smoke test: each service image starts and answers /healthz.
if $smoke; then
  for s in "${SERVICES[@]}"; do
    read -r name bin http _ <<<"$s"
    want "$name" || continue
    t0=$(now)
    # Embedded backends (SQLite in the home dir, in-process bus, memory cache) and a throwaway
    # HS256 dev key: enough to start without Postgres, NATS or a JWKS.
    prefix="LIQUID_$(tr 'a-z-' 'A-Z_' <<<"$name")__"
    cid=$(docker run -d --label io.liquid.owner=liquid --label io.liquid.test=images-smoke \
      -e "${prefix}AUTH__ALLOW_HS256_DEV=true" -e "${prefix}AUTH__HS256_SECRET=images-smoke-$(head -c 24 /dev/urandom | base64)" \
      -p "127.0.0.1::$http" "liquid/$name:$version")
    port=$(docker port "$cid" "$http/tcp" | head -n1 | awk -F: '{print $NF}')
    ok=false
    for _ in $(seq 1 100); do
      if curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; then ok=true; break; fi
      docker inspect -f '{{.State.Running}}' "$cid" 2>/dev/null | grep -q true || break
      sleep 0.1
    done
    if $ok; then
      printf '  healthy  liquid/%s:%s on 127.0.0.1:%s  (%s)\n' "$name" "$version" "$port" "$(since "$t0")"
      docker rm -f "$cid" >/dev/null
    else
      docker logs "$cid" 2>&1 | tail -n 20 >&2 || true
      docker rm -f "$cid" >/dev/null 2>&1 || true
      die "liquid/$name:$version did not answer /healthz"
    fi
  done
fi

echo "==> images done in $(since "$t_all")"
docker images --filter 'reference=liquid/*' --format '  {{.Repository}}:{{.Tag}}  {{.Size}}'
