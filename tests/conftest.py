"""Shared fixtures: the real data folder, and an isolated thrifty home per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """The public outcome logs, read in place (THRIFTY_DATA_DIR, default ../shared/data)."""
    return Path(os.environ.get("THRIFTY_DATA_DIR", ROOT.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = shared_data_dir()
    # Real-data tests must not be skipped silently: a missing folder is a failure.
    assert (path / "outcomes").is_dir(), f"shared data not found at {path}; set THRIFTY_DATA_DIR"
    return path


@pytest.fixture
def thrifty_home(tmp_path, monkeypatch):
    """A fresh THRIFTY_HOME (embedded MLflow store, profiles, caches) for one test."""
    from models.settings import get_settings

    home = tmp_path / "thrifty-home"
    monkeypatch.setenv("THRIFTY_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("THRIFTY_TRACKING_URI", raising=False)
    get_settings.cache_clear()
    yield home
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server: scripts/test.sh's (THRIFTY_TEST_POSTGRES_URL), else one started here for the session."""
    from tests.postgres_server import URL_ENV, PostgresServer, start

    url = os.environ.get(URL_ENV)
    if url:
        yield PostgresServer.from_url(url)
        return
    server = start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A new empty PostgreSQL database for one test."""
    import uuid

    return postgres_server.create_database(f"t_{uuid.uuid4().hex[:16]}")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> str:
    """An outcome store that does not exist yet, on each backend: a SQLite file, or an empty PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "outcomes.db")
    return request.getfixturevalue("postgres_url")
