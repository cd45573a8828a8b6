# Debian packages for the egress-proxy tests' real Git server (tests/src/git_server.rs):
# `git http-backend` behind nginx + fcgiwrap, each test starting its own unprivileged
# instance on a free loopback port. Nothing is started here; the system nginx
# service is not enabled or used.
# Sourced by scripts/test-all (set -euo pipefail); safe to source again.
AIRLOCK_GITSERVER_PACKAGES=(
  nginx         # the HTTPS front (TLS, basic auth, FastCGI pass to fcgiwrap)
  fcgiwrap      # runs git-http-backend per request
  git           # git http-backend, and the git client the tests drive
  curl          # the HTTPS client the egress tests drive through the proxy
)
missing=()
for p in "${AIRLOCK_GITSERVER_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
