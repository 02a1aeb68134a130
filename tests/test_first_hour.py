"""The first hour of a newcomer: the main job, then serving its router with the shipped sample config.

The flow test does what the newcomer did, without editing any file: a fresh home, ``scripts/main.sh`` on a
slice of ``../shared/data``, ``thrifty serve --config examples/thrifty.yaml`` against the loopback fake provider
(keys and base URLs from variables), a routed request that succeeds. The other tests pin each piece: one
state home, ``models:/`` URIs on thrifty's store, the start-up checks and refusals, ``thrifty models init``.
"""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from models.catalog import load_catalog
from serving.config import load_config
from tests.newcomer import FAKE_KEYS, ROOT, Background, free_port, newcomer_env, sliced_data_dir
from thrifty.cli import main

EXAMPLE_CONFIG = ROOT / "examples" / "thrifty.yaml"
OPENAI_MODELS = {"gpt-4-1106-preview", "gpt-3.5-turbo-1106"}
ANTHROPIC_MODELS = {"claude-v2", "claude-v1", "claude-instant-v1"}


@pytest.fixture(scope="module")
def fake_upstream():
    from tests.fakes.provider import FakeProvider
    from tests.fakes.server import ThreadedServer

    provider = FakeProvider(api_keys=set(FAKE_KEYS.values()))
    server = ThreadedServer(provider.app).start()
    yield provider, server.url
    server.stop()


def _router(models: list[str], catalog, path):
    """A small fitted router over ``models`` (priced from ``catalog``), saved to ``path``."""
    from router import LogisticSuccess, Router, TextFeaturizer
    from router.persist import save_router

    rng = np.random.default_rng(0)
    texts = [f"{'prove the theorem' if i % 2 else 'say hello'} number {i} {rng.integers(1000)}" for i in range(60)]
    success = np.array([[1.0 if (i % 2 == 0 or j == 0) else 0.0 for j in range(len(models))] for i in range(60)])
    tokens = np.full((60, len(models)), 50.0)
    router = Router(featurizer=TextFeaturizer(n_components=4), success=LogisticSuccess())
    router.fit(texts, success, tokens, models, catalog.prices())
    return save_router(router, path)


def test_the_sample_config_and_catalog_are_valid_and_cover_the_main_jobs_models(data_dir):
    config = load_config(EXAMPLE_CONFIG)
    assert config.catalog == [ROOT / "examples" / "catalog.yaml"]  # relative to the config file, from any folder
    assert all(u.base_url for u in config.upstreams.values())
    catalog = load_catalog(config.resolved_catalog, include_default=config.include_default_catalog)
    trained_on = set(pd.read_parquet(data_dir / "outcomes" / "routerbench-subset.parquet", columns=["model"])["model"])
    assert trained_on <= set(catalog.ids)
    for model in trained_on:
        spec = catalog.get(model)
        assert spec.api_key_env in FAKE_KEYS and spec.input_usd_per_mtok > 0, model
        assert spec.provider == ("openai" if model in OPENAI_MODELS else "anthropic" if model in ANTHROPIC_MODELS else "openai-compatible")


@pytest.mark.timeout(1800)
def test_newcomer_main_job_then_serve_with_the_sample_config(tmp_path, data_dir, fake_upstream):
    import openai

    fake, fake_url = fake_upstream
    env = newcomer_env(tmp_path / "home", sliced_data_dir(data_dir, tmp_path / "data", 30), fake_url)
    stray = ROOT / "mlflow.db"
    stray_before = stray.exists()

    job = subprocess.run(["bash", "scripts/main.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    home = tmp_path / "home" / ".thrifty"  # the default home: the same for the script and every command
    assert (home / "mlflow.db").is_file() and (home / "replay" / "frontier.png").is_file()
    assert stray.exists() == stray_before  # nothing written to the working folder
    for shown in ("thrifty serve --config examples/thrifty.yaml", "mlflow ui --backend-store-uri", str(home / "replay"),
                  "thrifty models init --from-router models:/thrifty@champion", "curl "):
        assert shown in job.stdout, shown

    port = free_port()
    server = Background(f".venv/bin/thrifty serve --config examples/thrifty.yaml --port {port}", cwd=ROOT, env=env,
                        log=tmp_path / "serve.log")
    try:
        server.wait_healthy(f"http://127.0.0.1:{port}")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=60)
        raw = client.chat.completions.with_raw_response.create(
            model="thrifty", messages=[{"role": "user", "content": "What is 17 * 23? Answer with the number."}])
        completion = raw.parse()
        routed_to = raw.headers["x-thrifty-model"]
        catalog = load_catalog([ROOT / "examples" / "catalog.yaml"], include_default=False)
        assert routed_to in catalog.ids
        assert completion.choices[0].message.content == f"Answer from {catalog.get(routed_to).upstream}."
        assert fake.count(model=catalog.get(routed_to).upstream) >= 1
    finally:
        server.stop()
    log = server.output()
    assert "Traceback" not in log and "cannot be reached" not in log, log[-3000:]


def test_serve_without_a_registered_router_refuses_in_one_line(tmp_path, fake_upstream):
    env = newcomer_env(tmp_path / "home", tmp_path, fake_upstream[1])
    proc = subprocess.run([str(ROOT / ".venv" / "bin" / "thrifty"), "serve", "--config", str(EXAMPLE_CONFIG)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "no router at models:/thrifty@champion" in lines[0] and "passthrough_only" in lines[0]
    assert str(tmp_path / "home" / ".thrifty" / "mlflow.db") in lines[0]
    # the failed lookup left nothing behind: no empty store in the home, no stray store in the working folder
    assert not (tmp_path / "home" / ".thrifty" / "mlflow.db").exists() and not (tmp_path / "mlflow.db").exists()


def test_serve_with_a_router_that_knows_no_catalog_model_refuses_in_one_line(tmp_path, thrifty_home, monkeypatch):
    from tests.serving_fixtures import fit_test_router

    router = fit_test_router(tmp_path / "router.joblib")  # models oai-mini, claude-small, ...: not in the sample catalog
    monkeypatch.setenv("THRIFTY_SERVE_ROUTER_URI", str(router))
    result = CliRunner().invoke(main, ["serve", "--config", str(EXAMPLE_CONFIG)])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "Traceback" not in result.output, result.output
    assert "cannot route: none of the 4 models of the router" in result.output
    assert "no catalog entry: oai-mini, claude-small, claude-large, oai-large" in result.output
    assert "thrifty models init --from-router" in result.output


def test_models_without_a_usable_upstream_are_reported_once_and_never_chosen(tmp_path, thrifty_home, monkeypatch, caplog):
    from serving.services import build_services

    for name in ("ANTHROPIC_API_KEY", "TOGETHER_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEYS["OPENAI_API_KEY"])
    catalog = load_catalog([ROOT / "examples" / "catalog.yaml"], include_default=False)
    models = ["gpt-4-1106-preview", "gpt-3.5-turbo-1106", "claude-instant-v1", "mistralai/mistral-7b-chat", "not-in-catalog"]
    catalog_with_unknown = catalog.merged([{"id": "not-in-catalog", "provider": "openai", "input_usd_per_mtok": 0.01,
                                            "output_usd_per_mtok": 0.01}], "test")
    router = _router(models, catalog_with_unknown, tmp_path / "r.joblib")
    config = load_config(EXAMPLE_CONFIG, router_uri=str(router), store_path=tmp_path / "o.db")
    with caplog.at_level(logging.WARNING, logger="thrifty.serving"):
        services = build_services(config)
    try:
        warnings = [r.getMessage() for r in caplog.records if "cannot be reached" in r.getMessage()]
        assert len(warnings) == 1
        message = warnings[0]
        assert "3 of the 5 models" in message
        assert "ANTHROPIC_API_KEY is not set" in message and "claude-instant-v1" in message
        assert "TOGETHER_API_KEY is not set" in message and "mistralai/mistral-7b-chat" in message
        assert "no catalog entry: not-in-catalog" in message
        assert f"thrifty models init --from-router {router}" in message
        chosen = {services.routing.decide("thrifty", f"{kind} number {i}").model
                  for i in range(20) for kind in ("prove the theorem", "say hello")}
        assert chosen and chosen <= OPENAI_MODELS
    finally:
        services.store.close()


def test_an_openai_compatible_model_without_a_base_url_is_named(tmp_path, thrifty_home, monkeypatch):
    from models.providers import ProviderPool
    from serving.startup import unreachable_models

    monkeypatch.setenv("TOGETHER_API_KEY", "x" * 12)
    catalog = load_catalog([ROOT / "examples" / "catalog.yaml"], include_default=False)
    problems = unreachable_models(catalog, ProviderPool({}))
    assert problems["mistralai/mistral-7b-chat"].startswith("no base URL")
    config = load_config(EXAMPLE_CONFIG)  # upstreams.openai-compatible.base_url: Together
    from serving.services import _pool

    assert "mistralai/mistral-7b-chat" not in unreachable_models(catalog, _pool(config))


def test_passthrough_only_serves_catalog_models_by_id_without_a_router(tmp_path, thrifty_home, fake_upstream, monkeypatch):
    import openai

    from serving.app import create_app
    from serving.services import preflight
    from tests.fakes.server import ThreadedServer

    _, fake_url = fake_upstream
    for name, key in FAKE_KEYS.items():
        monkeypatch.setenv(name, key)
    monkeypatch.setenv("THRIFTY_SERVE_UPSTREAMS__OPENAI__BASE_URL", f"{fake_url}/v1")
    config = load_config(EXAMPLE_CONFIG, passthrough_only=True, store_path=tmp_path / "o.db")
    catalog, loaded = preflight(config)  # no router is registered: fine in passthrough-only mode
    assert loaded.router is None and not (thrifty_home / "mlflow.db").exists()
    server = ThreadedServer(create_app(config, router=loaded, catalog=catalog)).start()
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=30)
        answer = client.chat.completions.create(model="gpt-3.5-turbo-1106", messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content == "Answer from gpt-3.5-turbo-1106."
        with pytest.raises(openai.NotFoundError, match="passthrough_only"):
            client.chat.completions.create(model="thrifty", messages=[{"role": "user", "content": "hi"}])
    finally:
        server.stop()


def test_registry_uris_resolve_against_the_home_and_never_leave_a_stray_store(tmp_path, thrifty_home):
    """A fresh process (no MLflow URI set by anyone) loads models:/ from THRIFTY_HOME, not ./mlflow.db."""
    from router.persist import load_router
    from models.registry import RouterNotFoundError

    with pytest.raises(RouterNotFoundError, match="nothing is registered yet"):
        load_router("models:/thrifty@champion")
    assert not (thrifty_home / "mlflow.db").exists()

    from training import tracking

    catalog = load_catalog([ROOT / "examples" / "catalog.yaml"], include_default=False)
    from router.persist import load_router_file

    router = load_router_file(_router(sorted(OPENAI_MODELS), catalog, tmp_path / "r.joblib"))
    with tracking.start_run("thrifty"):
        tracking.register_router(router, "thrifty")
    with pytest.raises(RouterNotFoundError, match="alias challenger not found in the MLflow store sqlite:///"):
        load_router("models:/thrifty@challenger")

    work = tmp_path / "elsewhere"
    work.mkdir()
    code = ("from router.persist import load_router; r = load_router('models:/thrifty@champion'); "
            "print(sorted(r.models_))")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("MLFLOW_")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=work, env={**env, "THRIFTY_HOME": str(thrifty_home),
                          "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == str(sorted(OPENAI_MODELS))
    assert list(work.iterdir()) == []  # no ./mlflow.db, no ./mlruns


def test_models_init_writes_a_catalog_entry_for_every_router_model(tmp_path, thrifty_home, data_dir):
    catalog = load_catalog([data_dir / "prices.csv"])  # the prices CSV names each model's vendor
    models = ["gemini-1.5-flash", "gpt-4o", "Mistral-Large-2", "reka-core-20240501", "claude-3-haiku-20240307"]
    router_path = _router(models, catalog.merged([{"id": "gpt-4o", "provider": "openai", "input_usd_per_mtok": 2.5,
                                                     "output_usd_per_mtok": 10.0}], "t"), tmp_path / "r.joblib")
    from router.persist import load_router_file

    assert load_router_file(router_path).prices_["gemini-1.5-flash"].vendor == "google"  # the router carries it

    result = CliRunner().invoke(main, ["models", "init", "--from-router", str(router_path)])
    assert result.exit_code == 0, result.output
    stub = tmp_path / "stub.yaml"
    stub.write_text(result.output)
    entries = {e["id"]: e for e in yaml.safe_load(result.output)["models"]}
    assert list(entries) == models
    assert entries["gemini-1.5-flash"]["provider"] == "openai-compatible"
    assert entries["gemini-1.5-flash"]["base_url"].startswith("https://generativelanguage.googleapis.com/")
    assert entries["gemini-1.5-flash"]["api_key_env"] == "GEMINI_API_KEY"
    assert entries["gemini-1.5-flash"]["input_usd_per_mtok"] == 0.075
    assert entries["Mistral-Large-2"]["base_url"] == "https://api.mistral.ai/v1"
    assert entries["claude-3-haiku-20240307"]["provider"] == "anthropic"
    assert entries["gpt-4o"]["upstream"] == "gpt-4o-2024-08-06"  # known to the shipped catalog: copied from it
    assert entries["reka-core-20240501"]["base_url"] is None  # no known endpoint: left to fill in, and said so
    assert "FILL IN" in next(line for line in result.output.splitlines() if "base_url: null" in line)
    loaded = load_catalog([stub], include_default=False)  # the stub is a valid catalog as written
    assert set(loaded.ids) == set(models)


def test_models_init_without_a_registered_router_says_so_in_one_line(thrifty_home):
    result = CliRunner().invoke(main, ["models", "init"])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "no router at models:/thrifty@champion" in result.output
    assert not (thrifty_home / "mlflow.db").exists()


def test_upstream_variables_reach_the_openai_compatible_section(monkeypatch):
    monkeypatch.setenv("THRIFTY_SERVE_UPSTREAMS__OPENAI_COMPATIBLE__BASE_URL", "http://127.0.0.1:9/v1")
    config = load_config(EXAMPLE_CONFIG)
    compatible = config.upstreams["openai-compatible"]
    assert compatible.base_url == "http://127.0.0.1:9/v1" and compatible.api_key_env == "TOGETHER_API_KEY"
    assert "openai_compatible" not in config.upstreams
