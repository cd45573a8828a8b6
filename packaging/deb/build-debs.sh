#!/usr/bin/env bash
# Build the three Debian packages (airlock-control-plane, airlock-sandbox-agent,
# airlock-vault-bridge) with cargo-deb. docs/packages.md explains them.
#
#   packaging/deb/build-debs.sh                   # release build, then package
#   packaging/deb/build-debs.sh --profile dev --no-build --out DIR
#                                                 # package the debug binaries
#                                                 # already built (tests/tests/packages.rs)
#
# The sandbox-agent package carries the in-sandbox executor, which must be a
# static binary (it is bind-mounted into images that may have no libc), so it
# is built apart with +crt-static for an explicit --target and handed to
# cargo-deb under the name `airlock-executor-static`. cargo-deb reads every
# binary from a staging "target dir" of links, so it never builds anything
# itself and never picks up a dynamically linked executor.
#
# Environment: CARGO_TARGET_DIR (where the workspace builds), AIRLOCK_BIN_DIR
# (the daemons' binaries, default $CARGO_TARGET_DIR/<profile dir>),
# AIRLOCK_EXECUTOR_PATH (the static executor, default: the one built here).
set -euo pipefail
cd "$(dirname "$0")/../.."

profile=release
build=1
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "build-debs: unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$profile" in
  dev|debug) profile=dev; profile_dir=debug ;;
  *) profile_dir="$profile" ;;
esac

command -v cargo-deb >/dev/null || { echo "build-debs: cargo-deb missing (scripts/setup.d/65-packages.sh installs it)" >&2; exit 1; }
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
triple="$(rustc -vV | sed -n 's/^host: //p')"
out="${out:-$target_dir/debian}"
mkdir -p "$out"

if [ "$build" = 1 ]; then
  cargo build --locked --profile "$profile" -p control-plane -p sandbox-agent -p vault-bridge --bins
  RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --locked --profile "$profile" -p executor --bin airlock-executor --target "$triple"
fi
bin_dir="${AIRLOCK_BIN_DIR:-$target_dir/$profile_dir}"
executor="${AIRLOCK_EXECUTOR_PATH:-$target_dir/$triple/$profile_dir/airlock-executor}"
if ! file -L "$executor" | grep -q 'statically linked\|static-pie linked'; then
  echo "build-debs: $executor is not a static binary: $(file -L "$executor")" >&2
  exit 1
fi

stage="$(mktemp -d "${TMPDIR:-/tmp}/airlock-deb-stage.XXXXXX")"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/$profile_dir"
for b in control-plane sandbox-agent vault-bridge; do
  [ -x "$bin_dir/$b" ] || { echo "build-debs: $bin_dir/$b missing (build it first, or drop --no-build)" >&2; exit 1; }
  ln -s "$(realpath "$bin_dir/$b")" "$stage/$profile_dir/$b"
done
ln -s "$(realpath "$executor")" "$stage/$profile_dir/airlock-executor-static"

extra=()
if [ "$profile" = dev ]; then
  # Debug binaries: strip them (a few hundred MB of symbols otherwise) and
  # compress fast; such packages are for tests only.
  extra+=(--strip --fast)
fi
for p in control-plane sandbox-agent vault-bridge; do
  CARGO_TARGET_DIR="$stage" cargo deb --locked --quiet --no-build --profile "$profile" -p "$p" -o "$out" "${extra[@]}"
done
ls -1 "$out"/airlock-*.deb
