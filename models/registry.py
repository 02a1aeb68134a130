"""thrifty's MLflow store, and reading what is registered in it.

Every command resolves ``models:/`` and ``runs:/`` URIs against the same store
(``models.settings``): ``MLFLOW_TRACKING_URI`` when set, else the embedded
SQLite store ``<THRIFTY_HOME>/mlflow.db``. MLflow's own default (a
``mlflow.db`` in the working directory) is never used, and looking up a router
that is not there never creates an empty store.
"""

from __future__ import annotations

import logging
from pathlib import Path

from models.settings import Settings, get_settings

REGISTRY_SCHEMES = ("models:/", "runs:/")


class RouterNotFoundError(KeyError):
    """No router at this URI; the message says which store was searched and how to make one."""

    def __init__(self, uri: str, reason: str):
        self.uri = uri
        super().__init__(
            f"no router at {uri}: {reason}; train one with `thrifty train --logs FILE` (or `bash scripts/main.sh`)"
        )

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return self.args[0]


def use_store(settings: Settings | None = None) -> str:
    """Point MLflow's tracking and registry at thrifty's store; returns its URI."""
    import mlflow

    settings = settings or get_settings()
    uri = settings.resolved_tracking_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    # MLflow logs its store migrations at INFO; they say nothing a user can act on.
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return uri


def is_registry_uri(uri: str) -> bool:
    return uri.startswith(REGISTRY_SCHEMES)


def _require_store(uri: str, settings: Settings) -> None:
    """Before any lookup: an embedded store that does not exist is not created by looking."""
    store = settings.embedded_store
    if store is not None and not store.is_file():
        raise RouterNotFoundError(uri, f"nothing is registered yet (no MLflow store at {store}; THRIFTY_HOME={settings.home_dir})")


def alias_version(name: str, alias: str, settings: Settings | None = None) -> str:
    """The version ``models:/NAME@ALIAS`` points at now; :class:`RouterNotFoundError` when there is none."""
    import mlflow
    from mlflow import MlflowClient

    settings = settings or get_settings()
    uri = f"models:/{name}@{alias}"
    _require_store(uri, settings)
    tracking = use_store(settings)
    try:
        return str(MlflowClient().get_model_version_by_alias(name, alias).version)
    except mlflow.exceptions.MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise RouterNotFoundError(uri, f"{exc.message.rstrip('.')} in the MLflow store {tracking}") from None
        raise


def load_python_model(uri: str, settings: Settings | None = None):
    """The Python object behind an MLflow pyfunc model URI (``models:/NAME@ALIAS``, ``runs:/…``, a model folder).

    Raises :class:`RouterNotFoundError` naming the store when nothing is registered there.
    """
    import mlflow

    settings = settings or get_settings()
    if is_registry_uri(uri):
        _require_store(uri, settings)
    elif not Path(uri).exists():
        raise RouterNotFoundError(uri, "no such file or folder, and not a models:/ or runs:/ URI")
    tracking = use_store(settings)
    try:
        model = mlflow.pyfunc.load_model(uri)
    except mlflow.exceptions.MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise RouterNotFoundError(uri, f"{exc.message.rstrip('.')} in the MLflow store {tracking}") from None
        raise
    return model.unwrap_python_model()
