# Debian packages for the audit shipper's test (tests/tests/audit_syslog.rs): a real
# rsyslogd with a TLS listener (imtcp + the gnutls network stream driver), each test
# starting its own unprivileged instance with its own config, pid file and work dir on
# a free loopback port. The system rsyslog service is not started: when the host has
# no policy-rc.d, one that refuses service starts is in place for the install only.
# Sourced by scripts/test-all (set -euo pipefail); safe to source again.
AIRLOCK_RSYSLOG_PACKAGES=(
  rsyslog         # rsyslogd, imtcp, omfile
  rsyslog-gnutls  # lmnsd_gtls: the TLS network stream driver (RFC 5425)
)
missing=()
for p in "${AIRLOCK_RSYSLOG_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  airlock_policy_rc=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    airlock_policy_rc=1
  fi
  airlock_apt_rc=0
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } || airlock_apt_rc=$?
  if [ -n "$airlock_policy_rc" ]; then
    rm -f /usr/sbin/policy-rc.d
  fi
  if [ "$airlock_apt_rc" -ne 0 ]; then
    echo "apt-get install ${missing[*]} failed ($airlock_apt_rc)" >&2
    return "$airlock_apt_rc" 2>/dev/null || exit "$airlock_apt_rc"
  fi
  unset airlock_policy_rc airlock_apt_rc
fi
