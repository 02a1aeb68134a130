#!/usr/bin/env bash
# The one command of the benchmark: peers' environment, then every part.
#   bench/run.sh            full run (< 20 min on the 2-core machine)
#   bench/run.sh --quick    smoke run of every part (a few minutes)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash bench/setup_peers.sh
exec .venv/bin/python -m bench.run_all --skip-setup "$@"
