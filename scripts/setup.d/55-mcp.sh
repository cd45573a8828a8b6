# PyPI packages of the MCP test servers in tests/mcp (tests/src/mcp.rs starts
# them): the official `mcp` Python SDK (2.x; its MCPServer, Streamable HTTP
# transport and OAuth authorization-server support) and the reference server
# `mcp-server-time`, at pinned versions. uvicorn and starlette come with `mcp`.
# Sourced by scripts/test-all (set -euo pipefail); idempotent. Needs
# 40-python.sh (python3 and pip) first.

airlock_mcp_setup() {
  local want=("mcp==2.3.0" "mcp-server-time==2026.10.19")
  if python3 - "${want[@]}" <<'PY' 2>/dev/null; then
import sys
from importlib.metadata import version
for spec in sys.argv[1:]:
    name, want = spec.split("==")
    if version(name) != want:
        sys.exit(1)
PY
    echo "55-mcp: ${want[*]} already installed"
    return 0
  fi
  echo "55-mcp: installing ${want[*]}"
  # Debian's python refuses system-wide pip installs without this flag.
  python3 -m pip install --disable-pip-version-check -q "${want[@]}" 2>/dev/null \
    || python3 -m pip install --disable-pip-version-check -q --break-system-packages "${want[@]}"
}
airlock_mcp_setup
