#!/usr/bin/env bash
# Debian's Chromium and ChromeDriver for the dashboard's browser tests (tests/test_dashboard.py):
# installed when missing, as root (CI and the developers' machines run as root); never a browser download.
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "scripts/browser.sh: Chromium is missing and this is not root: apt-get install -y chromium chromium-driver" >&2
  exit 0  # the browser tests then fail naming what to install
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium chromium-driver >/dev/null
