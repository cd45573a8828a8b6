# PyPI packages of the SDK acceptance tests in tests/python: the official
# `anthropic` SDK at the pinned version the API is checked against, and
# pytest. Sourced by scripts/test-all (set -euo pipefail); idempotent.

airlock_python_setup() {
  local want=("anthropic==2.12.0" "pytest==9.2.0")
  if ! command -v python3 >/dev/null; then
    echo "40-python: installing python3 (Debian)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends python3 python3-pip >/dev/null
  fi
  if ! python3 -m pip --version >/dev/null 2>&1; then
    echo "40-python: installing pip (Debian)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
  fi
  if python3 - "${want[@]}" <<'PY' 2>/dev/null; then
import sys
from importlib.metadata import version
for spec in sys.argv[1:]:
    name, want = spec.split("==")
    if version(name) != want:
        sys.exit(1)
PY
    echo "40-python: ${want[*]} already installed"
    return 0
  fi
  echo "40-python: installing ${want[*]}"
  # Debian's python refuses system-wide pip installs without this flag.
  python3 -m pip install --disable-pip-version-check -q "${want[@]}" 2>/dev/null \
    || python3 -m pip install --disable-pip-version-check -q --break-system-packages "${want[@]}"
}
airlock_python_setup
