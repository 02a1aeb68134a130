#!/usr/bin/env bash
# Set up, then train a router on public outcome logs and show what it learned.
# With THRIFTY_DATA_DIR set (e.g. ../shared/data) the local copy is used;
# otherwise RouterBench's public log is downloaded first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export THRIFTY_HOME=${THRIFTY_HOME:-$PWD/.thrifty}
if [ -n "${THRIFTY_DATA_DIR:-}" ]; then
  logs="$THRIFTY_DATA_DIR/outcomes/routerbench-subset.parquet"
else
  logs=$(.venv/bin/thrifty data fetch routerbench)
fi
.venv/bin/thrifty train --logs "$logs"
if .venv/bin/thrifty replay --help >/dev/null 2>&1; then
  .venv/bin/thrifty replay --logs "$logs" --test-size 0.3 --seed 0 --out "$THRIFTY_HOME/replay"
fi
