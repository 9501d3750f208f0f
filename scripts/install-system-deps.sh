#!/usr/bin/env bash
# Installs the Debian packages the tests need, when they are missing: git, git-lfs, chromium (browser tests).
# Runs apt-get only as root; elsewhere it says what is missing and the tests that need it skip
# (under CI=true they fail instead).
set -euo pipefail
need=()
command -v git >/dev/null || need+=(git)
command -v chromium >/dev/null || need+=(chromium)
command -v git-lfs >/dev/null || need+=(git-lfs)
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing Debian packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
else
  echo "missing Debian packages (install them as root): ${need[*]}" >&2
fi
