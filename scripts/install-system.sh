#!/usr/bin/env bash
# Debian packages the tests use: a real headless browser (the blind-test page, report screenshots)
# and a real one-node SLURM (the cluster test). Installs only what is missing; without root or
# apt-get it says so and the tests that need them skip with that reason.
set -uo pipefail
need=()
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
command -v slurmctld >/dev/null || need+=(slurm-wlm)
command -v munged >/dev/null || need+=(munge)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "not installing ${need[*]} (needs root and apt-get); the browser and SLURM tests will skip" >&2
  exit 0
fi
echo "installing Debian packages: ${need[*]}" >&2
apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
  || echo "apt-get install ${need[*]} failed; the browser and SLURM tests will skip" >&2
exit 0
