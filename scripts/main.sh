#!/usr/bin/env bash
# Set up, then train a router on public outcome logs and show what it learned.
# With THRIFTY_DATA_DIR set (e.g. ../shared/data) the local copy is used;
# otherwise RouterBench's public log is downloaded first.
# State goes where every thrifty command keeps it: THRIFTY_HOME, default ~/.thrifty.
set -euo pipefail
cd -P "$(dirname "$0")/.."
bash scripts/setup.sh
thrifty=.venv/bin/thrifty
home=$(.venv/bin/python -c 'from models.settings import get_settings; print(get_settings().home_dir)')
tracking=$(.venv/bin/python -c 'from models.settings import get_settings; print(get_settings().resolved_tracking_uri)')
if [ -n "${THRIFTY_DATA_DIR:-}" ]; then
  logs="$THRIFTY_DATA_DIR/outcomes/routerbench-subset.parquet"
else
  logs=$($thrifty data fetch routerbench)
fi
$thrifty train --logs "$logs"
$thrifty replay --logs "$logs" --test-size 0.3 --seed 0 --out "$home/replay"

cat <<EOF

Done. The router is registered as models:/thrifty@champion in the MLflow store $tracking
  replay results and plots:  $home/replay  (frontier.png, metrics.json, curve.csv)
  training run, calibration plot and registered versions:  the MLflow UI, started with
    .venv/bin/mlflow ui --backend-store-uri $tracking --port 5000    # then open http://127.0.0.1:5000

Next: serve it. examples/thrifty.yaml reaches the router's 11 models through examples/catalog.yaml;
set the keys of the providers you use (OPENAI_API_KEY, ANTHROPIC_API_KEY, TOGETHER_API_KEY), then:
  .venv/bin/thrifty serve --config examples/thrifty.yaml
and, from another terminal, send a routed request:
  curl -sS --fail-with-body http://127.0.0.1:8000/v1/chat/completions -H 'content-type: application/json' \\
    -d '{"model": "thrifty", "messages": [{"role": "user", "content": "What is 17 * 23?"}]}'
The x-thrifty-model header of the answer (curl -i) names the model the router chose.
For a router trained on other logs, write its catalog entries with
  .venv/bin/thrifty models init --from-router models:/thrifty@champion > my-catalog.yaml
EOF
