"""Settings shared by every layer: where thrifty keeps its state.

Read from the environment (``THRIFTY_*``, plus MLflow's own
``MLFLOW_TRACKING_URI``) by pydantic-settings behind a cached
:func:`get_settings`. Nothing is created at import time; tests override by
setting the environment and calling ``get_settings.cache_clear()``.

One home for every command, the CLI and ``scripts/main.sh`` alike:
``THRIFTY_HOME`` when set, else ``~/.thrifty``. It holds the embedded MLflow
store (``mlflow.db``, ``mlartifacts/``), which every ``models:/`` URI resolves
against unless ``MLFLOW_TRACKING_URI`` names another store, the tuned
profiles, the outcome store and caches.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="THRIFTY_", extra="ignore")

    home: Path = Field(default=Path("~/.thrifty"), description="state directory: MLflow store, profiles, outcome store, caches")
    data_dir: Path = Field(default=Path("../shared/data"), description="local copy of public outcome logs")
    tracking_uri: str | None = Field(
        default=None,
        validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "THRIFTY_TRACKING_URI"),
        description="MLflow tracking server; default: an embedded SQLite store under home",
    )
    registry_name: str = "thrifty"
    experiment: str = "thrifty"
    catalog: list[Path] = Field(default_factory=list, description="user catalog files, applied in order")
    threads: int | None = Field(default=None, ge=1, description="threads of training's learners (LightGBM); default: the cores this process may run on")
    price_source: str | None = Field(
        default=None,
        description="prices of the shipped catalog from a maintained source: genai-prices or litellm (default: the hand-kept prices)",
    )

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser()

    @property
    def resolved_tracking_uri(self) -> str:
        if self.tracking_uri:
            return self.tracking_uri
        return f"sqlite:///{self.home_dir / 'mlflow.db'}"

    @property
    def embedded_store(self) -> Path | None:
        """The embedded SQLite store's file, or None when ``MLFLOW_TRACKING_URI`` names another store."""
        return None if self.tracking_uri else self.home_dir / "mlflow.db"

    @property
    def artifact_root(self) -> Path:
        return self.home_dir / "mlartifacts"

    @property
    def profiles_dir(self) -> Path:
        return self.home_dir / "profiles"

    @property
    def cache_dir(self) -> Path:
        return self.home_dir / "cache"

    @property
    def training_threads(self) -> int:
        return self.threads or available_cores()


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and taskset narrow), not the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity on this platform (macOS, Windows)
        return max(1, os.cpu_count() or 1)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
