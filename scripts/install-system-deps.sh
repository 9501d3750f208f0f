#!/usr/bin/env bash
# Installs the Debian packages the tests need, when they are missing: git, git-lfs, chromium (browser tests),
# bubblewrap (the local executor's sandbox), slirp4netns (a network of their own for jobs that ask for
# one), slurm-wlm, slurmdbd and munge (a real
# single-node Slurm with accounting: scripts/slurm-up.sh).
# Runs apt-get only as root; elsewhere it says what is missing and the tests that need it skip
# (under CI=true they fail instead).
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"
need=()
command -v git >/dev/null || need+=(git)
command -v chromium >/dev/null || need+=(chromium)
command -v git-lfs >/dev/null || need+=(git-lfs)
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)
command -v bwrap >/dev/null || need+=(bubblewrap)
command -v slirp4netns >/dev/null || need+=(slirp4netns)
command -v munged >/dev/null || need+=(munge)
command -v slurmctld >/dev/null || need+=(slurm-wlm)
command -v slurmdbd >/dev/null || need+=(slurmdbd)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing Debian packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
else
  echo "missing Debian packages (install them as root): ${need[*]}" >&2
fi
