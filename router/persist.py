"""Saving a fitted router, and loading it back from a file or the MLflow registry.

The router is stored as one joblib file; in MLflow it is wrapped as a pyfunc
model whose artifact is that file, so ``models:/thrifty@champion`` loads the
very object that was trained and decisions are identical.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import joblib
import mlflow.pyfunc
import pandas as pd

from models.registry import RouterNotFoundError, load_python_model
from router.router import Router

ROUTER_ARTIFACT = "router"


def save_router(router: Router, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    joblib.dump(router, tmp, compress=3)
    tmp.replace(path)  # never leave half a router where a loader looks
    return path


def load_router_file(path: str | Path) -> Router:
    router = joblib.load(path)
    if not isinstance(router, Router):
        raise TypeError(f"{path} holds a {type(router).__name__}, not a thrifty Router")
    return router


# MLflow advises type hints on ``predict`` when the class is defined (under its own
# "once" filter, so only recording the warning silences it); the model has an
# explicit signature instead (router.mlflow_model), which type hints would override.
with warnings.catch_warnings(record=True):

    class RouterModel(mlflow.pyfunc.PythonModel):
        """MLflow pyfunc wrapper: ``predict`` takes a frame with a ``prompt`` column
        and params (policy or profile, knob, allowed models, bounds, prices) and
        returns each prompt's chosen model and every candidate's predicted success
        and expected cost; see :mod:`router.mlflow_model`."""

        def load_context(self, context):
            self.router = load_router_file(context.artifacts[ROUTER_ARTIFACT])

        def predict(self, context, model_input, params=None) -> pd.DataFrame:
            from router.mlflow_model import predict_frame

            return predict_frame(self.router, model_input, params)


def load_router(uri: str) -> Router:
    """A router from ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/...`` or a local joblib file.

    Registry URIs resolve against thrifty's MLflow store (``models.registry``);
    a router that is not there raises :class:`~models.registry.RouterNotFoundError`.
    """
    if Path(uri).suffix == ".joblib":
        if not Path(uri).is_file():
            raise RouterNotFoundError(uri, "no such file")
        return load_router_file(uri)
    router = getattr(load_python_model(uri), "router", None)
    if not isinstance(router, Router):
        raise TypeError(f"{uri} holds a {type(router).__name__}, not a thrifty Router")
    return router
