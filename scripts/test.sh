#!/usr/bin/env bash
# Set up and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export THRIFTY_DATA_DIR=${THRIFTY_DATA_DIR:-$(cd .. && pwd)/shared/data}
exec .venv/bin/python -m pytest -q "$@"
