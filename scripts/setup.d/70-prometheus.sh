# Prometheus from Debian's packages for tests/tests/metrics_prometheus.rs: the test
# starts its own prometheus process (generated config, loopback port, temp storage
# dir) that scrapes the ops listeners of a real deployment. The Debian service is
# never started: when the host has no policy-rc.d, one that refuses service starts
# is in place for the install only. Exports AIRLOCK_PROMETHEUS (the binary).
# Sourced by scripts/test-all (set -euo pipefail); safe to source again.
if ! dpkg-query -W -f='${Status}' prometheus 2>/dev/null | grep -q 'install ok installed'; then
  echo "installing Debian package: prometheus"
  export DEBIAN_FRONTEND=noninteractive
  airlock_policy_rc=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    airlock_policy_rc=1
  fi
  airlock_apt_rc=0
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; } || airlock_apt_rc=$?
  if [ -n "$airlock_policy_rc" ]; then
    rm -f /usr/sbin/policy-rc.d
  fi
  if [ "$airlock_apt_rc" -ne 0 ]; then
    echo "apt-get install prometheus failed ($airlock_apt_rc)" >&2
    return "$airlock_apt_rc" 2>/dev/null || exit "$airlock_apt_rc"
  fi
  unset airlock_policy_rc airlock_apt_rc
fi
AIRLOCK_PROMETHEUS="$(command -v prometheus || echo /usr/bin/prometheus)"
export AIRLOCK_PROMETHEUS
echo "70-prometheus: $("$AIRLOCK_PROMETHEUS" --version 2>&1 | head -1)"
