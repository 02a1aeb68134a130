#!/usr/bin/env bash
# Set up and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/browser.sh  # Chromium for the dashboard's browser tests
export THRIFTY_DATA_DIR=${THRIFTY_DATA_DIR:-$(cd .. && pwd)/shared/data}
exec .venv/bin/python -m pytest -q "$@"
