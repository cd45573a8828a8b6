# Sandboxes: the static in-sandbox executor and the small test image.
# Sourced by scripts/test-all (idempotent). Exports for the tests:
#   AIRLOCK_EXECUTOR_PATH     static executor binary (bind-mounted into sandboxes)
#   AIRLOCK_TEST_IMAGE        test sandbox image (bash-static + busybox-static)
#   AIRLOCK_SANDBOX_IMAGE     the full default image (debootstrap: bash, git,
#                             curl, python3, ...), for the tests whose sandbox
#                             runs git or curl through the vault-bridge
# The default image is built by packaging/images/build-sandbox-image.sh
# (cached by its content hash; a few minutes on a fresh machine); set
# AIRLOCK_BUILD_SANDBOX_IMAGE=0 to skip it.
airlock_images_setup() {
  local root="${AIRLOCK_ROOT:-$(pwd)}"
  local need=()
  command -v docker >/dev/null || { echo "30-images: docker CLI missing" >&2; return 1; }
  [ -x /bin/bash-static ] || need+=(bash-static)
  [ -x /bin/busybox ] && ! file /bin/busybox 2>/dev/null | grep -q 'dynamically' || need+=(busybox-static)
  command -v file >/dev/null || need+=(file)
  if [ "${AIRLOCK_BUILD_SANDBOX_IMAGE:-1}" = 1 ] && ! command -v debootstrap >/dev/null; then need+=(debootstrap); fi
  if [ ${#need[@]} -gt 0 ]; then
    echo "30-images: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
  # Static executor: its own target subdir (explicit --target) so the flags do
  # not invalidate the workspace's normal build cache.
  RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build -q -p executor --bin airlock-executor --target x86_64-unknown-linux-gnu
  export AIRLOCK_EXECUTOR_PATH="$root/target/x86_64-unknown-linux-gnu/debug/airlock-executor"
  if file "$AIRLOCK_EXECUTOR_PATH" | grep -q 'dynamically linked'; then
    echo "30-images: $AIRLOCK_EXECUTOR_PATH is not static" >&2; return 1
  fi
  AIRLOCK_TEST_IMAGE="$("$root/packaging/images/build-test-image.sh")"
  export AIRLOCK_TEST_IMAGE
  echo "30-images: executor $AIRLOCK_EXECUTOR_PATH, test image $AIRLOCK_TEST_IMAGE"
  if [ "${AIRLOCK_BUILD_SANDBOX_IMAGE:-1}" = 1 ]; then
    AIRLOCK_SANDBOX_IMAGE="$("$root/packaging/images/build-sandbox-image.sh")"
    export AIRLOCK_SANDBOX_IMAGE
    echo "30-images: default sandbox image $AIRLOCK_SANDBOX_IMAGE"
  fi
}
airlock_images_setup
