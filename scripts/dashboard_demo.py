"""Regenerate docs/dashboard.png: a served simulation replaying real prompts, shown by /dashboard in headless Chromium.

RouterBench's public outcome log (``$THRIFTY_DATA_DIR/outcomes/routerbench-subset.parquet``,
11 models, read in place) is split by prompt: a logistic router is trained on
one part; thrifty serves it, every model answered by the fake provider on
loopback at its price (``prices.csv``, else implied by its logged costs), with the model's mean logged
output length; the held-out prompts are sent through the OpenAI SDK, and each
answer gets as feedback the *logged* outcome of the model that answered that
prompt. One cheap model fails 8% of its calls (HTTP 503), so fail-overs show.

    THRIFTY_DATA_DIR=../shared/data .venv/bin/python scripts/dashboard_demo.py [--prompts 360] [--out docs/dashboard.png]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KEY = "thr-dashboard-demo-key"
UPSTREAM_KEY = "sk-demo-upstream"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=360, help="held-out prompts to replay")
    ap.add_argument("--out", default=str(ROOT / "docs" / "dashboard.png"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import numpy as np
    import pandas as pd
    import yaml

    from models.catalog import load_catalog
    from router import LogisticSuccess, Router, TextFeaturizer
    from router.persist import save_router
    from serving.app import create_app
    from serving.config import ServingConfig
    from tests.fakes.provider import FakeProvider
    from tests.fakes.server import ThreadedServer
    from training.dataset import OutcomeMatrix, implied_prices
    from training.logs import read_logs

    data = Path(os.environ.get("THRIFTY_DATA_DIR", ROOT.parent / "shared" / "data"))
    log_path = data / "outcomes" / "routerbench-subset.parquet"
    listed = load_catalog([data / "prices.csv"]).prices()
    matrix = OutcomeMatrix.from_frame(read_logs([log_path], listed))
    prices = implied_prices(matrix).merged(listed)  # RouterBench's models are priced from their logged costs
    texts, success, tokens, models = matrix.texts, matrix.success, matrix.output_tokens, matrix.models
    complete = ~np.isnan(success).any(axis=1)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(np.flatnonzero(complete))
    test, train = order[: args.prompts], order[args.prompts:]

    tmp = Path(tempfile.mkdtemp(prefix="thrifty-dashboard-demo-"))
    router = Router(featurizer=TextFeaturizer(n_components=64), success=LogisticSuccess())
    router.fit([texts[i] for i in train], success[train], tokens[train], models, prices)
    router_path = save_router(router, tmp / "router.joblib")

    fake = FakeProvider(api_keys={UPSTREAM_KEY})
    upstream = ThreadedServer(fake.app).start()
    mean_tokens = pd.read_parquet(log_path, columns=["model", "output_tokens"]).groupby("model")["output_tokens"].mean()
    entries = []
    for model in models:
        entries.append({"id": model, "provider": "openai", "upstream": model, "base_url": f"{upstream.url}/v1",
                        "input_usd_per_mtok": prices[model].input_usd_per_mtok,
                        "output_usd_per_mtok": prices[model].output_usd_per_mtok})
        fake.configure(model, output_tokens=int(round(mean_tokens[model])), delay_before_headers=0.05)
    fake.configure("mistralai/mistral-7b-chat", output_tokens=int(round(mean_tokens["mistralai/mistral-7b-chat"])),
                   delay_before_headers=0.05, status=503, fail_rate=0.08)
    (tmp / "catalog.yaml").write_text(yaml.safe_dump({"models": entries}))
    config = ServingConfig(router_uri=str(router_path), catalog=[tmp / "catalog.yaml"], include_default_catalog=False,
                           profiles_dir=tmp / "profiles", store_path=tmp / "outcomes.db", api_keys={"demo": KEY},
                           upstreams={"openai": {"api_key": UPSTREAM_KEY}}, reload_interval_s=0, same_model_retries=0)
    app = create_app(config)
    server = ThreadedServer(app).start()

    import httpx
    import openai

    started = time.time()
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)
    with httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {KEY}"}, timeout=30) as http:
        for k, i in enumerate(test):
            raw = client.chat.completions.with_raw_response.create(
                model="thrifty", messages=[{"role": "user", "content": texts[i]}], stream=k % 4 == 3)
            if k % 4 == 3:
                for _ in raw.parse():
                    pass
            answered = raw.headers["x-thrifty-model"]
            if k % 5 != 4:  # four in five answers get feedback: the logged outcome of that model on that prompt
                http.post("/v1/feedback", json={"decision_id": raw.headers["x-thrifty-decision-id"],
                                                 "success": float(success[i, models.index(answered)]), "source": "routerbench"})
            time.sleep(0.15)
    ended = time.time() + 1

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,1560", f"--user-data-dir={tmp / 'chromium'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(f"{server.url}/dashboard")
        form = driver.find_element(By.ID, "login")
        form.find_element(By.NAME, "key").send_keys(KEY)
        form.submit()
        driver.find_element(By.ID, "spend")
        driver.get(f"{server.url}/dashboard?since={started - 5:.0f}&until={ended:.0f}")
        driver.find_element(By.ID, "spend")
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(args.out)
        shown = {i: driver.find_element(By.ID, i).text for i in ("spend", "counterfactual", "savings", "success", "failovers")}
    finally:
        driver.quit()
        server.stop()
        upstream.stop()
    print(f"wrote {args.out}: {len(test)} prompts replayed; {shown}")


if __name__ == "__main__":
    main()
