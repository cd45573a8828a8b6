#!/usr/bin/env bash
# Build the container images of the three Airlock daemons with `docker build`,
# without any registry (nothing is pulled):
#
#   airlock-control-plane   control-plane serve            uid 10001
#   airlock-vault-bridge    vault-bridge serve             uid 10001
#   airlock-sandbox-agent   sandbox-agent run + executor   uid 10001 (+ the Docker socket's group at run time)
#
# All three are FROM airlock-daemon-base, a small root filesystem made here
# and loaded with `docker import` (cached by a hash of its content): the glibc
# libraries the binaries are linked against (found with ldd, e.g. Debian 12's
# libc6 and libgcc-s1), Debian's static bash and busybox (a few applets, for
# the agent's entrypoint, the HEALTHCHECK and `docker exec`), the CA bundle,
# /etc/passwd with the `airlock` user (10001) and the state directories owned
# by it. A small base keeps `docker build` fast on every storage driver
# (on fuse-overlayfs each build step walks the whole parent filesystem: about
# 8 s per step on a 250 MB Debian base, under 1 s on this one).
# Binaries are copied with their debug info stripped (`objcopy --strip-debug`:
# symbol names stay for backtraces).
#
# Usage: build-daemon-images.sh [options]
#   --bin-dir DIR     control-plane, sandbox-agent, vault-bridge from DIR
#                     (default: target/release; build them with
#                     `cargo build --release --locked -p control-plane -p sandbox-agent -p vault-bridge`)
#   --executor PATH   the static in-sandbox executor (default: target/x86_64-unknown-linux-gnu/release/airlock-executor,
#                     built with RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked
#                     -p executor --bin airlock-executor --target x86_64-unknown-linux-gnu)
#   --tag TAG         tag of the three images (default: a content hash of every input)
#   --prefix P        repository prefix (default: airlock-)
#   --no-latest       do not also tag P<daemon>:latest
# Prints one line per image, `<daemon>=<repository>:<tag>`, on stdout.
# An image whose tag already exists is not rebuilt (the default tag changes
# whenever a binary, a library, a Dockerfile, a config or this script changes).
# Needs: root (the base's files get their owners), docker (the classic
# builder is enough), objcopy (binutils), ldd, Debian's bash-static and
# busybox-static.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin_dir="$root/target/release"
executor="$root/target/x86_64-unknown-linux-gnu/release/airlock-executor"
tag=""
prefix="airlock-"
latest=1
die() { printf 'build-daemon-images: %s\n' "$*" >&2; exit 1; }
while [ $# -gt 0 ]; do
  case "$1" in
    --bin-dir) bin_dir="${2:?--bin-dir needs a directory}"; shift 2 ;;
    --executor) executor="${2:?--executor needs a path}"; shift 2 ;;
    --tag) tag="${2:?--tag needs a value}"; shift 2 ;;
    --prefix) prefix="${2?--prefix needs a value}"; shift 2 ;;
    --no-latest) latest=0; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
daemons=(control-plane vault-bridge sandbox-agent)
command -v docker >/dev/null || die "docker CLI not found"
command -v objcopy >/dev/null || die "objcopy not found: apt-get install binutils"
for d in "${daemons[@]}"; do
  [ -x "$bin_dir/$d" ] || die "$bin_dir/$d missing (cargo build -p $d, or pass --bin-dir)"
done
[ -x "$executor" ] || die "executor $executor missing (see --executor)"
if command -v file >/dev/null && file -L "$executor" | grep -q 'dynamically linked'; then
  die "$executor is dynamically linked; the executor must be static (crt-static)"
fi
for f in /bin/bash-static /bin/busybox; do
  [ -x "$f" ] || die "missing $f: apt-get install bash-static busybox-static"
done
[ "$(id -u)" = 0 ] || die "needs root (the base's files are owned by root and by uid 10001)"
export DOCKER_BUILDKIT=0   # the classic builder: local images only, no buildx needed

work="$(mktemp -d /tmp/airlock-daemon-images.XXXXXX)"
trap 'rm -rf "$work"' EXIT
ctx="$here/daemon"

# --- the base: a root filesystem made of files, loaded with `docker import` ---
# The shared libraries the three daemons need, as ldd resolves them here
# (the loader included): the exact builds the binaries were linked against.
libs="$(for d in "${daemons[@]}"; do ldd "$bin_dir/$d"; done \
        | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u)"
[ -n "$libs" ] || die "ldd found no libraries for the binaries in $bin_dir"
base="$work/base"
mkdir -p "$base"/{bin,usr/bin,usr/lib/airlock,etc/airlock,etc/ssl/certs,tmp,var/lib,run}
for lib in $libs; do
  real="$(readlink -f "$lib")"
  mkdir -p "$base$(dirname "$lib")"
  cp "$real" "$base$lib"
done
cp /bin/bash-static "$base/bin/bash"
cp /bin/busybox "$base/bin/busybox"
# A few busybox applets (a shell and file tools); nothing that logs in,
# mounts or talks to the network.
for applet in sh cat cp mv rm ln mkdir rmdir ls chmod cmp dirname basename env id ps sleep \
              test '[' echo printf head tail grep sed stat readlink df du touch true false wc tr cut \
              sort find kill pidof timeout; do
  ln -s busybox "$base/bin/$applet"
done
cp /etc/ssl/certs/ca-certificates.crt "$base/etc/ssl/certs/" 2>/dev/null \
  || die "no /etc/ssl/certs/ca-certificates.crt: apt-get install ca-certificates"
cat >"$base/etc/passwd" <<'P'
root:x:0:0:root:/root:/bin/sh
airlock:x:10001:10001:Airlock daemons:/nonexistent:/bin/false
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
P
cat >"$base/etc/group" <<'G'
root:x:0:
airlock:x:10001:
nogroup:x:65534:
G
printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$base/etc/nsswitch.conf"
cp "$ctx/healthcheck" "$base/usr/lib/airlock/healthcheck"
chmod 0755 "$base/usr/lib/airlock/healthcheck"
chmod 1777 "$base/tmp"
# The state directories of the three images (their VOLUMEs), owned by airlock.
install -d -o 10001 -g 10001 -m 0700 "$base/var/lib/airlock" "$base/var/lib/airlock-agent" \
  "$base/var/lib/airlock-vault-bridge"
install -d -o 10001 -g 10001 -m 0711 "$base/run/airlock-vault-bridge"
# Reproducible: fixed mtimes and owners by number, so the hash is the content's.
base_hash="$(tar --sort=name --mtime=@0 --numeric-owner -C "$base" -cf - . | sha256sum | cut -c1-16)"
base_ref="${prefix}daemon-base:$base_hash"
if ! docker image inspect "$base_ref" >/dev/null 2>&1; then
  echo "importing $base_ref" >&2
  tar --sort=name --mtime=@0 --numeric-owner -C "$base" -cf - . \
    | docker import -c 'USER 10001:10001' -c 'WORKDIR /' \
        -c 'ENV PATH=/usr/bin:/bin LANG=C.UTF-8 NO_COLOR=1' \
        -m "airlock daemon base: glibc from ldd, bash-static, busybox, CA bundle, user airlock 10001; inputs $base_hash" \
        - "$base_ref" >/dev/null
fi

# --- one context per image: stripped binaries, the image's config ---
for d in "${daemons[@]}"; do
  mkdir -p "$work/$d/rootfs/usr/bin" "$work/$d/rootfs/etc/airlock"
  objcopy --strip-debug "$bin_dir/$d" "$work/$d/rootfs/usr/bin/$d"
  install -m 0644 "$ctx/$d.toml" "$work/$d/rootfs/etc/airlock/$d.toml"
done
mkdir -p "$work/sandbox-agent/rootfs/usr/lib/airlock"
objcopy --strip-debug "$executor" "$work/sandbox-agent/rootfs/usr/lib/airlock/airlock-executor"
install -m 0755 "$ctx/sandbox-agent-entrypoint" "$work/sandbox-agent/rootfs/usr/lib/airlock/"

version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)"
revision="$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)"
source_url="$(sed -n 's/^repository = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)"
if [ -z "$tag" ]; then
  tag="$( { echo "$base_hash"; cat "$ctx"/*.Dockerfile "$0";
            for d in "${daemons[@]}"; do tar --sort=name --mtime=@0 --numeric-owner -C "$work/$d" -cf - .; done; } \
          | sha256sum | cut -c1-16)"
fi
declare -A title=(
  [control-plane]="Airlock control plane"
  [vault-bridge]="Airlock vault-bridge"
  [sandbox-agent]="Airlock sandbox-agent"
)
declare -A description=(
  [control-plane]="Airlock control plane: Managed-Agents-compatible API, harness, session log, agent tunnel and enrollment"
  [vault-bridge]="Airlock vault-bridge: holds credentials on the customer side; the sandboxes' only egress"
  [sandbox-agent]="Airlock sandbox-agent: runs sandboxes on the host's Docker Engine (needs /var/run/docker.sock: root-equivalent)"
)
for d in "${daemons[@]}"; do
  ref="$prefix$d:$tag"
  if ! docker image inspect "$ref" >/dev/null 2>&1; then
    echo "building $ref" >&2
    # The Dockerfile plus one LABEL step (each --label would be a step of its own).
    { cat "$ctx/$d.Dockerfile"
      printf 'LABEL org.opencontainers.image.title="%s" \\\n' "${title[$d]}"
      printf '      org.opencontainers.image.description="%s" \\\n' "${description[$d]}"
      printf '      org.opencontainers.image.version="%s" org.opencontainers.image.revision="%s" \\\n' "$version" "$revision"
      printf '      org.opencontainers.image.created="%s" org.opencontainers.image.licenses="Apache-2.0" \\\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
      printf '      org.opencontainers.image.source="%s" org.opencontainers.image.documentation="docs/images.md" \\\n' "$source_url"
      printf '      org.opencontainers.image.base.name="%s"\n' "$base_ref"
    } >"$work/$d/Dockerfile"
    docker build -q --build-arg "BASE=$base_ref" \
      -t "$ref" "$work/$d" >/dev/null
  fi
  if [ "$latest" = 1 ]; then docker tag "$ref" "$prefix$d:latest"; fi
  echo "$d=$ref"
done
