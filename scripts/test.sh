#!/usr/bin/env bash
# Set up and run the whole test suite.
# The store tests run on SQLite and on a real PostgreSQL server, started here (tests/postgres_server.py:
# the Debian package is installed if missing, initdb into a temporary directory as an unprivileged user,
# loopback only, a free port) and stopped, its directory removed, whatever the tests' outcome.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/browser.sh  # Chromium for the dashboard's browser tests
export THRIFTY_DATA_DIR=${THRIFTY_DATA_DIR:-$(cd .. && pwd)/shared/data}

THRIFTY_TEST_POSTGRES_DIR=
stop_postgres() {
  if [ -n "$THRIFTY_TEST_POSTGRES_DIR" ]; then
    .venv/bin/python -m tests.postgres_server stop "$THRIFTY_TEST_POSTGRES_DIR" || true
  fi
}
trap stop_postgres EXIT
trap 'exit 130' INT TERM  # a signal runs the EXIT trap too
postgres_env=$(.venv/bin/python -m tests.postgres_server start)  # exports THRIFTY_TEST_POSTGRES_URL and _DIR
eval "$postgres_env"
echo "PostgreSQL for the tests: $THRIFTY_TEST_POSTGRES_URL"

.venv/bin/python -m pytest -q "$@"
