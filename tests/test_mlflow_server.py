"""Training against a real `mlflow server` process on loopback (not the embedded store)."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient

from models import load_catalog
from router.persist import load_router
from tests.synthetic import prices_csv, synthetic_logs
from training.train import train


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen(
        [
            str(mlflow_bin), "server",
            "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination", str(tmp_path / "server-artifacts"),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "server.log", "w"),
        env={**os.environ, "MLFLOW_TRACKING_URI": ""},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited: {(tmp_path / 'server.log').read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("mlflow server did not become healthy in 90 s")
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_train_against_a_real_mlflow_server(mlflow_server, thrifty_home, tmp_path, monkeypatch):
    from models.settings import get_settings

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    get_settings.cache_clear()
    logs = tmp_path / "logs.jsonl"
    synthetic_logs(150).to_json(logs, orient="records", lines=True)
    result = train([logs], load_catalog([prices_csv(tmp_path / "p.csv")]), predictor="logistic", name="remote")
    # nothing went to the embedded store: the server holds the run and the model
    assert not (thrifty_home / "mlflow.db").exists()
    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    version = client.get_model_version_by_alias("remote", "champion")
    assert str(version.version) == result.version
    assert client.get_run(result.run_id).data.params["predictor"] == "logistic"
    assert (tmp_path / "server-artifacts").is_dir()  # artifacts were uploaded through the server
    loaded = load_router("models:/remote@champion")
    texts = ["What is the capital of Peru?", "Prove rigorously the theorem about Chile manifolds."]
    prices = result.router.prices_
    assert [loaded.route(t, prices) for t in texts] == [result.router.route(t, prices) for t in texts]
