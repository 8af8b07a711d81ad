#!/usr/bin/env bash
# Headless Chromium for the console's browser tests (tests/e2e/test_console.py): Debian's package (plus a
# font so screenshots have readable text), driven by Playwright through its executable path.
# Idempotent and quiet; never runs `playwright install`. Needs root (or sudo) for apt-get.
set -euo pipefail
need=()
[ -x /usr/bin/chromium ] || need+=(chromium)
dpkg -s fonts-dejavu-core >/dev/null 2>&1 || need+=(fonts-dejavu-core)
[ ${#need[@]} -eq 0 ] && exit 0
echo "installing ${need[*]} (Debian) for the browser tests"
export DEBIAN_FRONTEND=noninteractive
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
