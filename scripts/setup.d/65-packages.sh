# Debian packages (tests/tests/packages.rs, packaging/deb/build-debs.sh):
# cargo-deb, and systemd-analyze for `verify` / `security` on the units.
# Sourced by scripts/test-all (idempotent). cargo-deb is built from source the
# first time (`cargo install --locked`, about 2.5 CPU-minutes: 3-6 minutes on
# 2 busy cores); later runs find it and do nothing.
airlock_packages_setup() {
  local want=3.8.0 have
  have="$(cargo deb --version 2>/dev/null | awk '{print $2}')" || true
  if [ "$have" != "$want" ]; then
    echo "65-packages: installing cargo-deb $want (found: ${have:-none})"
    cargo install --locked --quiet cargo-deb --version "$want"
  fi
  local need=()
  command -v systemd-analyze >/dev/null || need+=(systemd)
  command -v dpkg-shlibdeps >/dev/null || need+=(dpkg-dev)
  command -v file >/dev/null || need+=(file)
  if [ ${#need[@]} -gt 0 ]; then
    echo "65-packages: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
  echo "65-packages: $(cargo deb --version), $(systemd-analyze --version | head -1)"
}
airlock_packages_setup
