"""The outcome loop: serve -> feedback -> export -> read back -> fit a router on real traffic; and the CLI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import anthropic
import httpx
import numpy as np
import openai
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from models.outcomes import OPTIONAL_COLUMNS, OUTCOME_COLUMNS, REQUIRED_COLUMNS
from tests.fakes.server import serve_in_thread
from tests.serving_fixtures import (  # noqa: F401  (fixtures)
    CLIENT_KEY,
    HARD,
    MODELS,
    PRICES,
    fake,
    fake_server,
    make_config,
    router_path,
)

EASY_QUESTIONS = ["hello, what time is it in Tokyo?", "hello, name a fruit", "hello, say hi back", "hello, what is 2 plus 2?"]
HARD_QUESTIONS = ["prove that sqrt 2 is irrational", "prove the triangle inequality", "prove that 7 is prime",
                  "prove that the harmonic series diverges"]


@pytest.fixture
def fresh_thrifty(fake_server, router_path, tmp_path, store_url):
    """A thrifty of its own, with an empty store (on each backend)."""
    from serving.app import create_app

    config = make_config(tmp_path, fake_server[1], router_path, redact_prompts=False, store_url=store_url)
    with serve_in_thread(create_app(config)) as server:
        yield server.url, config


def serve_traffic(url: str) -> list[tuple[str, str, bool]]:
    """Requests through both SDKs; returns (decision id, answering model, hard?) per request."""
    oc = openai.OpenAI(base_url=f"{url}/v1", api_key=CLIENT_KEY, max_retries=0)
    ac = anthropic.Anthropic(base_url=url, api_key=CLIENT_KEY, max_retries=0)
    served = []
    for round_ in range(3):
        for i, question in enumerate(EASY_QUESTIONS + HARD_QUESTIONS):
            hard = question.startswith("prove")
            # Force every model now and then, so each one has outcomes of both kinds.
            forced = MODELS[(i + round_) % len(MODELS)] if (i + round_) % 3 == 0 else None
            extra = {"thrifty": {"task": "proofs" if hard else "chat", **({"allowed_models": [forced]} if forced else {})}}
            text = f"{question} (round {round_})"
            if (i + round_) % 2:
                raw = oc.chat.completions.with_raw_response.create(
                    model="thrifty", messages=[{"role": "user", "content": text}], extra_body=extra, stream=bool(i % 4 == 1))
            else:
                raw = ac.messages.with_raw_response.create(
                    model="thrifty", max_tokens=64, messages=[{"role": "user", "content": text}], extra_body=extra)
            if hasattr(raw, "parse"):
                parsed = raw.parse()
                if isinstance(parsed, openai.Stream):
                    for _ in parsed:
                        pass
            served.append((raw.headers["x-thrifty-decision-id"], raw.headers["x-thrifty-model"], hard))
    return served


def test_serve_feedback_export_train_round_trip(fake, fresh_thrifty, tmp_path, thrifty_home):
    url, config = fresh_thrifty
    served = serve_traffic(url)
    labeled = served[:-4]  # the last few get no feedback
    for decision_id, model, hard in labeled:
        success = 0 if hard and model in ("oai-mini", "claude-small") else 1
        response = httpx.post(f"{url}/v1/feedback", headers={"authorization": f"Bearer {CLIENT_KEY}"},
                              json={"decision_id": decision_id, "success": success, "source": "test"})
        assert response.status_code == 200
    # a routed-only decision with feedback is not an outcome: no model answered it
    routed = httpx.post(f"{url}/v1/route", headers={"authorization": f"Bearer {CLIENT_KEY}"}, json={"prompt": "hello"}).json()
    httpx.post(f"{url}/v1/feedback", headers={"authorization": f"Bearer {CLIENT_KEY}"},
               json={"decision_id": routed["decision_id"], "success": 1})

    from serving.cli import logs

    out = tmp_path / "served.parquet"
    result = CliRunner().invoke(logs, ["export", "--store", config.resolved_store_url, "--out", str(out)])
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out)

    # canonical schema
    assert set(REQUIRED_COLUMNS) <= set(frame.columns) and set(OUTCOME_COLUMNS) <= set(frame.columns)
    for column, dtype in {**OUTCOME_COLUMNS, **{c: OPTIONAL_COLUMNS[c] for c in ("propensity", "decision_id")}}.items():
        assert str(frame[column].dtype) == str(pd.Series([], dtype=dtype).dtype), column
    assert len(frame) == len(labeled) and frame["prompt_id"].is_unique
    assert set(frame["prompt_id"]) == {d for d, _, _ in labeled}
    assert (frame["dataset"] == "served").all() and (frame["cost_source"] == "observed").all()
    assert set(frame["task"]) == {"proofs", "chat"}
    assert (frame["propensity"] == 1.0).all() and (frame["feedback_source"] == "test").all()
    by_id = frame.set_index("decision_id")
    for decision_id, model, hard in labeled:
        row = by_id.loc[decision_id]
        assert row["model"] == model and row["prompt"].startswith(("hello", "prove"))
        assert row["success"] == (0 if hard and model in ("oai-mini", "claude-small") else 1)
        assert row["input_tokens"] > 0 and row["output_tokens"] > 0 and row["cost_usd"] > 0 and row["latency_s"] > 0

    # unlabeled rows on request, in other formats
    for suffix, reader in ((".jsonl", lambda p: pd.read_json(p, lines=True)), (".csv", pd.read_csv)):
        path = tmp_path / f"all{suffix}"
        result = CliRunner().invoke(logs, ["export", "--store", config.resolved_store_url, "--out", str(path), "--include-unlabeled"])
        assert result.exit_code == 0, result.output
        everything = reader(path)
        assert len(everything) == len(served) and everything["success"].isna().sum() == len(served) - len(labeled)

    # thrifty retrain reads the same store through its interface, in process
    from mlflow import MlflowClient

    from thrifty.cli import main

    result = CliRunner().invoke(main, ["retrain", "--store", config.resolved_store_url, "--name", "roundtrip",
                                       "--predictor", "logistic", "--catalog", str(config.catalog[0]), "--test-size", "0.3"])
    assert result.exit_code == 0, result.output
    challenger = MlflowClient().get_model_version_by_alias("roundtrip", "challenger")
    assert MlflowClient().get_run(challenger.run_id).data.params["rows"] == str(len(labeled))

    # train on the exported frame (wide: prompts x models, NaN where a model was not called)
    from models.prices import Price, PriceTable
    from router import LogisticSuccess, Router, TextFeaturizer

    wide_s = frame.pivot_table(index="prompt_id", columns="model", values="success", aggfunc="mean")
    wide_t = frame.pivot_table(index="prompt_id", columns="model", values="output_tokens", aggfunc="mean")
    models = list(wide_s.columns)
    texts = frame.drop_duplicates("prompt_id").set_index("prompt_id").loc[wide_s.index, "prompt"].tolist()
    prices = PriceTable({m: Price(*PRICES[m]) for m in models})
    router = Router(featurizer=TextFeaturizer(n_components=4, min_df=1), success=LogisticSuccess())
    router.fit(texts, wide_s.to_numpy(), wide_t.reindex(columns=models).to_numpy(), models, prices)
    decision = router.route("prove that 11 is prime", prices)
    assert decision.model in models and len(decision.candidates) == len(models)


def test_export_refuses_unknown_formats_and_missing_store(tmp_path):
    from models.store import open_store
    from serving.cli import logs

    result = CliRunner().invoke(logs, ["export", "--store", str(tmp_path / "none.db"), "--out", str(tmp_path / "x.parquet")])
    assert result.exit_code != 0 and "no outcome store" in result.output
    assert not (tmp_path / "none.db").exists()  # a reader never creates a store
    open_store(tmp_path / "s.db").close()
    result = CliRunner().invoke(logs, ["export", "--store", str(tmp_path / "s.db"), "--out", str(tmp_path / "x.xlsx")])
    assert result.exit_code != 0 and "unsupported output format" in result.output


def _one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception  # no traceback
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def test_a_store_that_is_not_a_store_is_one_clear_line(tmp_path, postgres_server, postgres_url):
    """export and retrain: a file that is not a store, a directory, a missing file, an unreachable server, a typo."""
    import psycopg

    from thrifty.cli import main

    text = tmp_path / "notes.txt"
    text.write_text("not a database\n" * 100)
    empty_db = tmp_path / "empty.db"
    import sqlite3

    sqlite3.connect(empty_db).execute("CREATE TABLE other (x)").connection.close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE unrelated (x int)")
    dead = f"postgresql://thrifty:pw-SECRET@127.0.0.1:{_free_port()}/thrifty"
    cases = {
        "/etc/passwd": "/etc/passwd is not an outcome store",
        str(text): "is not an outcome store",
        str(empty_db): "is not an outcome store",
        str(tmp_path): "is a directory, not an outcome store",
        str(tmp_path / "missing.db"): "no outcome store at",
        dead: "cannot connect to the outcome store postgresql://thrifty:***@127.0.0.1",
        postgres_url: "holds no outcome store",
        postgres_server.database_url("no_such_database"): 'database "no_such_database" does not exist',
        "mysql://root@localhost/x": "no outcome-store backend for mysql:// URLs",
        "sqlite://relative.db": "a SQLite store URL is sqlite:///relative/path.db",
    }
    before = text.read_bytes(), empty_db.read_bytes()
    for store, expected in cases.items():
        for args in (["logs", "export", "--store", store, "--out", str(tmp_path / "out.parquet")],
                     ["retrain", "--store", store, "--predictor", "logistic"]):
            line = _one_line_error(CliRunner().invoke(main, args))
            assert expected in line, (args, line)
            assert "pw-SECRET" not in line
    assert (text.read_bytes(), empty_db.read_bytes()) == before  # nothing written into them
    assert not (tmp_path / "missing.db").exists() and not (tmp_path / "out.parquet").exists()


def test_the_store_is_chosen_by_store_url_or_its_environment_variable(tmp_path, monkeypatch, thrifty_home):
    from serving.config import load_config

    assert load_config().resolved_store_url == str(thrifty_home / "outcomes.db")
    assert load_config(store_path=tmp_path / "old-name.db").resolved_store_url == str(tmp_path / "old-name.db")
    monkeypatch.setenv("THRIFTY_SERVE_STORE_URL", "postgresql://thrifty@db:5432/thrifty")
    assert load_config(store_path=tmp_path / "old-name.db").resolved_store_url == "postgresql://thrifty@db:5432/thrifty"


def test_serve_refuses_a_store_it_cannot_use_in_one_line(tmp_path):
    from serving.cli import serve

    config = tmp_path / "thrifty.yaml"
    for store, expected in (("/etc/passwd", "/etc/passwd is not an outcome store"),
                            (f"postgresql://thrifty@127.0.0.1:{_free_port()}/x", "cannot connect to the outcome store")):
        config.write_text(yaml.safe_dump({"store_url": store}))
        line = _one_line_error(CliRunner().invoke(serve, ["--config", str(config)]))
        assert expected in line


def test_redacted_prompts_are_not_stored(fake, fake_server, router_path, tmp_path):
    from serving.app import create_app

    config = make_config(tmp_path, fake_server[1], router_path, redact_prompts=True)
    app = create_app(config)
    with serve_in_thread(app) as server:
        oc = openai.OpenAI(base_url=f"{server.url}/v1", api_key=CLIENT_KEY, max_retries=0)
        raw = oc.chat.completions.with_raw_response.create(model="thrifty", messages=[{"role": "user", "content": "my secret plan"}])
        record = app.state.services.store.decision(raw.headers["x-thrifty-decision-id"])
    assert record["prompt"] is None and record["prompt_chars"] > 0
    assert b"my secret plan" not in b"".join(p.read_bytes() for p in tmp_path.glob("outcomes.db*"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_thrifty_serve_command_starts_from_a_config_file(fake, fake_server, router_path, tmp_path):
    config = make_config(tmp_path, fake_server[1], router_path)
    data = yaml.safe_load(config.model_dump_json())
    data["api_keys"] = {"tests": CLIENT_KEY}
    data["upstreams"] = {"openai": {"api_key_env": "TEST_OPENAI_KEY"}, "anthropic": {"api_key_env": "TEST_ANTHROPIC_KEY"}}
    path = tmp_path / "thrifty.yaml"
    path.write_text(yaml.safe_dump(data))
    port = _free_port()
    from tests.serving_fixtures import ANTHROPIC_UPSTREAM_KEY, OPENAI_UPSTREAM_KEY

    env = {**os.environ, "TEST_OPENAI_KEY": OPENAI_UPSTREAM_KEY, "TEST_ANTHROPIC_KEY": ANTHROPIC_UPSTREAM_KEY}
    proc = subprocess.Popen(
        [sys.executable, "-m", "thrifty.cli", "serve", "--config", str(path), "--port", str(port), "--log-level", "warning"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "thrifty serve did not start"
            time.sleep(0.1)
        ac = anthropic.Anthropic(base_url=f"http://127.0.0.1:{port}", api_key=CLIENT_KEY, max_retries=0)
        message = ac.messages.create(model="thrifty", max_tokens=20, messages=[{"role": "user", "content": "prove it"}])
        assert message.model in MODELS and message.content[0].text.startswith("Answer from")
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert np.isfinite(proc.returncode)


def test_default_router_is_the_registry_champion(fake, fake_server, router_path, tmp_path, thrifty_home):
    """With no router_uri, thrifty serves models:/thrifty@champion from the embedded MLflow store."""
    from fastapi.testclient import TestClient

    from router.persist import load_router_file
    from serving.app import create_app
    from training.tracking import register_router, start_run

    with start_run("thrifty-tests"):
        version = register_router(load_router_file(router_path), "thrifty")
    config = make_config(tmp_path, fake_server[1], router_path, router_uri=None)
    with TestClient(create_app(config)) as client:
        health = client.get("/healthz").json()
        assert health["router_version"] == f"thrifty/{version}"
        decision = client.post("/v1/route", json={"prompt": HARD}, headers={"x-api-key": CLIENT_KEY}).json()
        assert decision["model"] == "claude-large" and decision["router_version"] == f"thrifty/{version}"
