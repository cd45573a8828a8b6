# Headless Chromium from Debian's packages for the web console's browser tests
# (tests/python/test_console_*.py): `chromium` and `chromium-driver` (apt), and
# the PyPI `selenium` client (pinned; 4.52+ want a newer certifi than PyPI has
# here) in the Python the SDK tests use, plus `requests` for the HTTP-level
# console checks. Selenium talks only to the local
# chromedriver (AIRLOCK_CHROMEDRIVER); SE_OFFLINE keeps Selenium Manager from
# ever trying to download a browser or a driver.
# Exports AIRLOCK_CHROMIUM, AIRLOCK_CHROMEDRIVER, SE_OFFLINE.
# Sourced by scripts/test-all (set -euo pipefail); idempotent.

airlock_chromium_setup() {
  local pkgs=(chromium chromium-driver fonts-dejavu-core) missing=() p
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "80-chromium: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=300 update -qq
    apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi

  local want=("selenium==4.51.0" "requests==2.34.2")
  if python3 - "${want[@]}" <<'PY' 2>/dev/null; then
import sys
from importlib.metadata import version
for spec in sys.argv[1:]:
    name, want = spec.split("==")
    if version(name) != want:
        sys.exit(1)
PY
    echo "80-chromium: ${want[*]} already installed"
  else
    echo "80-chromium: installing ${want[*]}"
    python3 -m pip install --disable-pip-version-check -q "${want[@]}" 2>/dev/null \
      || python3 -m pip install --disable-pip-version-check -q --break-system-packages "${want[@]}"
  fi

  AIRLOCK_CHROMIUM="$(command -v chromium || echo /usr/bin/chromium)"
  AIRLOCK_CHROMEDRIVER="$(command -v chromedriver || echo /usr/bin/chromedriver)"
  export AIRLOCK_CHROMIUM AIRLOCK_CHROMEDRIVER
  export SE_OFFLINE=true
  echo "80-chromium: $("$AIRLOCK_CHROMIUM" --version 2>/dev/null | head -1); $("$AIRLOCK_CHROMEDRIVER" --version 2>/dev/null | head -1)"
}
airlock_chromium_setup
