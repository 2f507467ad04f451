#!/usr/bin/env bash
# The report test renders the page in headless Chromium: install Debian's when missing.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then echo "chromium is missing; install it (apt-get install chromium)" >&2; exit 1; fi
echo ">> installing chromium (Debian package, for the report rendering test)"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }
command -v chromium >/dev/null
