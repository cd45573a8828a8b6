#!/usr/bin/env bash
# Build the default Airlock sandbox image without any container registry:
# a Debian bookworm root filesystem from Debian's packages
# (debootstrap --variant=minbase, plus bash, git, coreutils, python3, ripgrep),
# with an unprivileged `sandbox` user (1000:1000) and /workspace, imported
# with `docker import`.
#
# The tag is a content hash of this script, the suite and the package list
# (and the mirror), so a rebuild happens when they change; pass --force to
# rebuild anyway (e.g. to pick up security updates).
#
# Usage: build-sandbox-image.sh [--force] [REPOSITORY]   (default: airlock-sandbox)
# Env:   AIRLOCK_DEBIAN_MIRROR (default: the first deb.debian.org-style URI in
#        the host's apt sources, else http://deb.debian.org/debian)
# Prints REPOSITORY:HASH on stdout; also tags REPOSITORY:latest.
# Needs: root, docker, debootstrap.
set -euo pipefail
force=0
if [ "${1:-}" = "--force" ]; then force=1; shift; fi
repo="${1:-airlock-sandbox}"
suite=bookworm
packages="bash,git,curl,coreutils,python3,ripgrep,ca-certificates,findutils,grep,sed,procps,less"
mirror="${AIRLOCK_DEBIAN_MIRROR:-}"
if [ -z "$mirror" ]; then
  mirror=$(grep -hoE '^URIs: *http[^ ]*/debian$' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1 | sed 's/^URIs: *//')
  mirror="${mirror:-http://deb.debian.org/debian}"
fi
command -v debootstrap >/dev/null || { echo "debootstrap missing: apt-get install debootstrap" >&2; exit 1; }

hash=$( { cat "$0"; echo "$suite $packages $mirror"; } | sha256sum | cut -c1-16)
ref="$repo:$hash"
if [ "$force" = 0 ] && docker image inspect "$ref" >/dev/null 2>&1; then
  docker tag "$ref" "$repo:latest"
  echo "$ref"
  exit 0
fi

root=$(mktemp -d /tmp/airlock-sandbox-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "debootstrap $suite from $mirror (this takes a few minutes)" >&2
debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$mirror" >&2
chroot "$root" /usr/sbin/groupadd --gid 1000 sandbox
chroot "$root" /usr/sbin/useradd --uid 1000 --gid 1000 --home-dir /home/sandbox --create-home --shell /bin/bash sandbox
mkdir -p "$root/workspace" "$root/opt/airlock"
chown 1000:1000 "$root/workspace"
# Slim: no apt caches, docs or man pages in the sandbox.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
       "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/*
tar --numeric-owner -C "$root" -cf - . \
  | docker import -c 'USER 1000:1000' -c 'WORKDIR /workspace' \
      -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
      -m "airlock sandbox: debian $suite minbase + $packages, inputs $hash" - "$ref" >/dev/null
docker tag "$ref" "$repo:latest"
echo "$ref"
