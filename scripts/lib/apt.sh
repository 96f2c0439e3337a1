# shellcheck shell=bash
# Sourced by scripts/setup.sh and scripts/setup-bench.sh.

# apt_install PACKAGE...: installs the packages that are not installed yet
# (Debian/Ubuntu, as root); does nothing when all are there.
apt_install() {
  local p
  local -a missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  echo "setup: installing ${missing[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
