# The other side of the protocol bump for tests/tests/upgrade_protocol.rs:
# `control-plane` and `sandbox-agent` built from the last commit that spoke
# only tunnel protocol version 1, exported as AIRLOCK_COMPAT_V1_BIN_DIR.
#
# The commit's tree is exported with `git archive` (no worktree, nothing in
# .git) and built in the suite's own target dir, so it reuses the
# dependencies the workspace build compiles anyway; only its own crates are
# compiled again (they live under another path, so they never mix with the
# current ones). Cargo copies a built binary to target/debug/<name>, so the
# current control-plane and sandbox-agent there are saved first and put back
# after. Built once: a stamp with the commit id marks a finished build.
# Sourced by scripts/test-all (set -euo pipefail); idempotent.

airlock_compat_setup() {
  local commit=1997c74844f41547a6f14b7be357ea4765b1cd0e
  local root="${AIRLOCK_ROOT:-$PWD}"
  local target="${CARGO_TARGET_DIR:-$root/target}"
  local out="$target/compat/v1"
  if [ -f "$out/commit" ] && [ "$(cat "$out/commit")" = "$commit" ] \
      && [ -x "$out/control-plane" ] && [ -x "$out/sandbox-agent" ]; then
    echo "75-compat: protocol-v1 binaries (${commit:0:7}) already built in $out"
    export AIRLOCK_COMPAT_V1_BIN_DIR="$out"
    return 0
  fi
  if ! git -C "$root" cat-file -e "$commit^{commit}" 2>/dev/null; then
    echo "75-compat: commit $commit is not in this clone (a shallow clone?); fetch it or deepen the clone" >&2
    return 1
  fi
  local src="$target/compat/src-v1"
  rm -rf "$src" "$out"
  mkdir -p "$src" "$out"
  git -C "$root" archive "$commit" | tar -x -C "$src"
  # Keep the current binaries that cargo's copy would overwrite.
  local saved="$target/compat/saved" name
  rm -rf "$saved" && mkdir -p "$saved"
  for name in control-plane sandbox-agent; do
    if [ -f "$target/debug/$name" ]; then cp -p "$target/debug/$name" "$saved/$name"; fi
  done
  local started=$SECONDS status=0
  echo "75-compat: building control-plane and sandbox-agent at ${commit:0:7} (protocol v1)"
  (cd "$src" && CARGO_TARGET_DIR="$target" cargo build --locked -q -p control-plane -p sandbox-agent) || status=$?
  if [ "$status" -eq 0 ]; then
    cp "$target/debug/control-plane" "$target/debug/sandbox-agent" "$out/"
  fi
  for name in control-plane sandbox-agent; do
    rm -f "$target/debug/$name"
    if [ -f "$saved/$name" ]; then cp -p "$saved/$name" "$target/debug/$name"; fi
  done
  rm -rf "$saved"
  if [ "$status" -ne 0 ]; then
    echo "75-compat: the build of ${commit:0:7} failed" >&2
    return "$status"
  fi
  echo "$commit" > "$out/commit"
  rm -rf "$src"
  echo "75-compat: built in $((SECONDS - started)) s into $out"
  export AIRLOCK_COMPAT_V1_BIN_DIR="$out"
}
airlock_compat_setup
