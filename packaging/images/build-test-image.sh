#!/usr/bin/env bash
# Build the small sandbox image the test suite uses, without any registry:
# a root filesystem holding only Debian's static bash (as /bin/bash) and
# static busybox (its applets as /bin/*), imported with `docker import`.
#
# The tag is a content hash of this script and the two binaries, so the image
# is rebuilt exactly when its inputs change and reused otherwise.
#
# Usage: build-test-image.sh [REPOSITORY]   (default: airlock-test-sandbox)
# Prints the image reference (REPOSITORY:HASH) on stdout; also tags :latest.
# Needs: docker, and Debian's bash-static and busybox-static packages.
set -euo pipefail
repo="${1:-airlock-test-sandbox}"
bash_bin=/bin/bash-static
busybox_bin=/bin/busybox
for f in "$bash_bin" "$busybox_bin"; do
  [ -x "$f" ] || { echo "missing $f: apt-get install bash-static busybox-static" >&2; exit 1; }
done
file "$busybox_bin" 2>/dev/null | grep -q 'dynamically linked' && { echo "$busybox_bin is not static (install busybox-static)" >&2; exit 1; }

hash=$(cat "$0" "$bash_bin" "$busybox_bin" | sha256sum | cut -c1-16)
ref="$repo:$hash"
if docker image inspect "$ref" >/dev/null 2>&1; then
  docker tag "$ref" "$repo:latest"
  echo "$ref"
  exit 0
fi

root=$(mktemp -d /tmp/airlock-test-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,workspace,opt/airlock,proc,sys,dev,home/sandbox,root}
cp "$bash_bin" "$root/bin/bash"
cp "$busybox_bin" "$root/bin/busybox"
for applet in $("$busybox_bin" --list); do
  case "$applet" in bash|busybox) continue ;; esac
  [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
done
ln -sf ../../bin/env "$root/usr/bin/env"
cat > "$root/etc/passwd" <<'P'
root:x:0:0:root:/root:/bin/sh
sandbox:x:1000:1000:sandbox:/home/sandbox:/bin/bash
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
P
cat > "$root/etc/group" <<'G'
root:x:0:
sandbox:x:1000:
nogroup:x:65534:
G
chmod 1777 "$root/tmp"
chown 1000:1000 "$root/workspace" "$root/home/sandbox"
tar --numeric-owner -C "$root" -cf - . \
  | docker import -c 'USER 1000:1000' -c 'WORKDIR /workspace' -c 'ENV PATH=/bin:/usr/bin' \
      -m "airlock test sandbox (bash-static + busybox-static), inputs $hash" - "$ref" >/dev/null
docker tag "$ref" "$repo:latest"
echo "$ref"
