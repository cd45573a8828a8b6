# Debian packages the tests need, installed with one apt-get update + install.
AIRLOCK_APT_PACKAGES=(
  tinyproxy   # tunnel tests: HTTP CONNECT proxy with basic auth
  iproute2
  postgresql
)
missing=()
for p in "${AIRLOCK_APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
