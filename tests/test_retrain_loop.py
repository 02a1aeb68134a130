"""The whole production loop on a small simulated deployment.

serve with exploration (against the fake provider) → feedback → retrain on the
served logs (propensity-weighted) → promote on held-out logs → the running
server hot-swaps to the new champion without a restart and without dropping
a request. Counts are checked at every step.
"""

import random
import threading
import time

import numpy as np
import openai
import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from models import load_catalog
from tests.fakes.server import ThreadedServer
from tests.serving_fixtures import CLIENT_KEY, MODELS, PRICES, _EASY_TOPICS, _HARD_TOPICS, fake, fake_server, make_config  # noqa: F401
from thrifty.cli import main
from training.train import train

LARGE = {"claude-large", "oai-large"}
# Served requests before retraining. With 80, claude-small (explored on about 1 request in 8) was seen failing on
# only 4 hard prompts, and the retrained router's estimate of its success on hard prompts sat at 0.6-0.72, astride
# the 0.7 threshold: whether the new champion sent hard prompts to it depended on numerical noise (another BLAS,
# another machine: "assert 3 >= 6" three times out of three on a fresh install). With 160 it is seen failing on
# about 11 and the estimate falls to about 0.1, far from the threshold.
SERVED = 160


def ask(i: int, hard: bool, rng: random.Random) -> str:
    topic = rng.choice(_HARD_TOPICS if hard else _EASY_TOPICS)
    return f"prove {topic}, step by step with a rigorous proof (#{i})" if hard else f"hello, tell me {topic} please (#{i})"


def truth(model: str, hard: bool) -> float:
    return float(model in LARGE or not hard)


def benchmark_frame(n: int, seed: int, *, wrong: bool = False) -> pd.DataFrame:
    """A full matrix; with ``wrong`` the cheap models are recorded as solving hard prompts too."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        hard = i % 2 == 1
        text = ask(i, hard, rng)
        for model in MODELS:
            success = 1.0 if wrong else truth(model, hard)
            tin, tout = 12, 40 if model in LARGE else 15
            pin, pout = PRICES[model]
            rows.append({"dataset": f"bench{seed}", "task": "hard" if hard else "easy", "prompt_id": f"b{seed}-{i}", "prompt": text,
                         "model": model, "success": success, "input_tokens": tin, "output_tokens": tout,
                         "cost_usd": (tin * pin + tout * pout) / 1e6})
    return pd.DataFrame(rows)


@pytest.fixture
def deployment(thrifty_home, fake_server, tmp_path):
    """A champion that wrongly trusts the cheap models, served with 50% exploration and fast reloads."""
    from serving.app import create_app

    _, fake_url = fake_server
    config = make_config(tmp_path, fake_url, tmp_path / "unused.joblib", router_uri="models:/loop@champion",
                         explore_epsilon=0.5, explore_seed=0, reload_interval_s=0.2)
    catalog_file = str(config.catalog[0])
    wrong = tmp_path / "wrong.parquet"
    benchmark_frame(80, seed=1, wrong=True).to_parquet(wrong)
    champion = train([wrong], load_catalog([catalog_file], include_default=False), predictor="logistic", name="loop")
    assert champion.version == "1"
    app = create_app(config)
    server = ThreadedServer(app).start()
    yield server.url, app, config, catalog_file
    server.stop()


@pytest.mark.timeout(900)  # about 30 s on a quiet 2-core machine; sized for one whose cores other work holds
def test_serve_explore_feedback_retrain_promote_hot_swap(deployment, tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="thrifty.serving")
    url, app, config, catalog_file = deployment
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=CLIENT_KEY, max_retries=0, timeout=60)
    rng = random.Random(7)

    # 1. serve requests with exploration, and report each outcome
    served = []
    for i in range(SERVED):
        hard = i % 2 == 1
        raw = client.chat.completions.with_raw_response.create(model="thrifty", messages=[{"role": "user", "content": ask(1000 + i, hard, rng)}])
        completion = raw.parse()
        assert raw.headers["x-thrifty-router-version"] == "loop/1"
        served.append((raw.headers["x-thrifty-decision-id"], completion.model, hard))
    store = app.state.services.store
    records = [store.decision(d) for d, _, _ in served]
    assert all(r is not None for r in records)
    propensities = np.array([r["propensity"] for r in records])
    assert ((propensities > 0) & (propensities <= 1)).all()
    explored = sum(bool(r["explored"]) for r in records)
    # ε = 0.5 over 4 acceptable models: 3 in 8 explore elsewhere, 60 of 160 (sd 6); the bounds are 5 sd away
    assert 30 <= explored <= 90
    # the wrong champion sends hard prompts to cheap models unless exploring: 60 of 80 expected
    assert sum(model not in LARGE for _, model, hard in served if hard) >= 30
    with pytest.MonkeyPatch.context():
        import httpx

        for decision_id, model, hard in served:
            r = httpx.post(f"{url}/v1/feedback", json={"decision_id": decision_id, "success": truth(model, hard), "source": "test"},
                           headers={"authorization": f"Bearer {CLIENT_KEY}"})
            assert r.status_code == 200, r.text

    # 2. retrain on the store: the served decisions joined with their feedback, weighted by 1/propensity
    runner = CliRunner()
    result = runner.invoke(main, ["retrain", "--store", config.resolved_store_url, "--name", "loop", "--predictor", "logistic",
                                  "--catalog", catalog_file, "--test-size", "0.2"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "models:/loop@challenger" in result.output
    registry = MlflowClient()
    challenger = registry.get_model_version_by_alias("loop", "challenger")
    run = registry.get_run(challenger.run_id)
    assert run.data.params["rows"] == str(SERVED) and run.data.params["propensity_weighted"] == "True"

    # 3. keep traffic flowing while promoting: no request may fail during the swap
    failures, versions, stop = [], [], threading.Event()

    def traffic():
        c = openai.OpenAI(base_url=f"{url}/v1", api_key=CLIENT_KEY, max_retries=0, timeout=60)
        n = 0
        while not stop.is_set():
            try:
                raw = c.chat.completions.with_raw_response.create(model="thrifty", messages=[{"role": "user", "content": ask(5000 + n, n % 2 == 1, rng)}])
                versions.append(raw.headers["x-thrifty-router-version"])
            except Exception as exc:  # counted, then asserted empty
                failures.append(repr(exc))
            n += 1

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        heldout = tmp_path / "heldout.parquet"
        benchmark_frame(60, seed=2).to_parquet(heldout)
        result = runner.invoke(main, ["promote", "--logs", str(heldout), "--name", "loop", "--catalog", catalog_file,
                                      "--usd-per-success", "1.0", "--margin", "0.05"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert "promoted" in result.output, result.output
        assert str(registry.get_model_version_by_alias("loop", "champion").version) == str(challenger.version)
        deadline = time.monotonic() + 180  # the reload loads the new version from MLflow: slow when the cores are busy
        while time.monotonic() < deadline and (not versions or versions[-1] != f"loop/{challenger.version}"):
            time.sleep(0.1)
    finally:
        stop.set()
        worker.join(timeout=30)
    assert failures == []
    assert versions and versions[-1] == f"loop/{challenger.version}"
    assert "loop/1" in versions  # traffic spanned the swap
    swaps = [r.getMessage() for r in caplog.records if "hot-swapped" in r.getMessage()]
    assert swaps == [f"router models:/loop@champion hot-swapped: loop/1 -> loop/{challenger.version}"]  # one line

    # the promotion was logged to MLflow with both numbers
    runs = registry.search_runs([run.info.experiment_id], filter_string="attributes.run_name = 'promote'")
    assert runs and runs[0].data.metrics["challenger/value"] > runs[0].data.metrics["champion/value"] + 0.05

    # 4. the new champion sends hard prompts to a large model. Only the two large models are acceptable for a hard
    # prompt, so exploration (among acceptable models) picks one of them too: every answer comes from a large model,
    # whatever state the exploration draws are in after the timing-dependent traffic of step 3.
    rng2 = random.Random(99)
    hard_models = [client.chat.completions.create(model="thrifty", messages=[{"role": "user", "content": ask(9000 + i, True, rng2)}]).model
                   for i in range(10)]
    assert all(m in LARGE for m in hard_models), hard_models
    # every answered request is in the store, each with its propensity
    rows = store.joined(include_unlabeled=True)  # status ok
    assert len(rows) == sum(r["propensity"] is not None for r in rows) == SERVED + len(versions) + 10
