"""MLflow: runs, metrics, artifacts and the Model Registry.

The default store is embedded — a SQLite file and an artifact folder under
``THRIFTY_HOME`` — so no server is needed; ``MLFLOW_TRACKING_URI`` points at
a real server instead. Routers are registered as pyfunc models (see
``router.persist``) and promoted with registry aliases (``champion``,
``challenger``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

from models.prices import PriceTable
from models.settings import Settings, get_settings

CHAMPION = "champion"
CHALLENGER = "challenger"

def configure(settings: Settings | None = None) -> str:
    """Point MLflow at the configured store; returns the tracking URI."""
    import mlflow

    settings = settings or get_settings()
    uri = settings.resolved_tracking_uri
    if uri.startswith("sqlite:///"):
        settings.home_dir.mkdir(parents=True, exist_ok=True)
    # MLflow's artifact progress bars and git probing are noise in a CLI's output.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    # MLflow logs its own store migrations and model-signature hints at INFO/WARNING;
    # they drown the command's output and say nothing actionable here.
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*type hints to the `predict` method.*")
    return uri


def ensure_experiment(name: str, settings: Settings | None = None) -> str:
    """The experiment's id, creating it (with a local artifact folder for the embedded store)."""
    import mlflow

    settings = settings or get_settings()
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if settings.resolved_tracking_uri.startswith("sqlite:///"):
        settings.artifact_root.mkdir(parents=True, exist_ok=True)
        location = settings.artifact_root.resolve().as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


@contextmanager
def start_run(experiment: str, run_name: str | None = None, settings: Settings | None = None):
    import mlflow

    configure(settings)
    experiment_id = ensure_experiment(experiment, settings)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
        yield run


def prices_hash(prices: PriceTable) -> str:
    return hashlib.sha256(json.dumps(prices.to_dict(), sort_keys=True).encode()).hexdigest()


def log_metrics_nested(metrics: dict[str, dict[str, float]], prefix: str = "") -> None:
    """Log ``{group: {metric: value}}`` as ``prefix/group/metric`` (MLflow-safe names)."""
    import math

    import mlflow

    flat = {}
    for group, values in metrics.items():
        for key, value in values.items():
            if value is None or (isinstance(value, float) and not math.isfinite(value)):
                continue
            flat[_safe(f"{prefix}{group}/{key}")] = float(value)
    if flat:
        mlflow.log_metrics(flat)


def _safe(name: str) -> str:
    # MLflow metric names allow alphanumerics, _ - . space : / only
    return "".join(c if c.isalnum() or c in "_-. :/" else "_" for c in name)


def register_router(router, name: str, *, alias: str | None = CHAMPION, tags: dict | None = None) -> str:
    """Log ``router`` to the active run as a pyfunc model, register it under ``name``; returns the version."""
    import mlflow
    from mlflow import MlflowClient

    from router import mlflow_model
    from router.persist import ROUTER_ARTIFACT, RouterModel, save_router

    # The environment is the project's own packages logged as code plus what
    # that code imports, pinned: MLflow rebuilds it from the artifacts alone
    # (thrifty itself is on no package index). Given explicitly, so MLflow
    # does not spend seconds inferring requirements.
    with tempfile.TemporaryDirectory() as tmp:
        path = save_router(router, Path(tmp) / "router.joblib")
        info = mlflow.pyfunc.log_model(
            name="router",
            python_model=RouterModel(),
            artifacts={ROUTER_ARTIFACT: str(path)},
            code_paths=mlflow_model.code_paths(),
            pip_requirements=mlflow_model.code_requirements(),
            signature=mlflow_model.signature(router),
            input_example=mlflow_model.input_example(),
            registered_model_name=name,
            await_registration_for=60,
        )
    version = str(info.registered_model_version)
    client = MlflowClient()
    for key, value in (tags or {}).items():
        client.set_model_version_tag(name, version, key, str(value))
    if alias:
        client.set_registered_model_alias(name, alias, version)
    return version


def model_uri(name: str, alias: str = CHAMPION) -> str:
    return f"models:/{name}@{alias}"

