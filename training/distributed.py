"""Training on a Dask cluster: the same router, its heavy steps run on the workers.

``thrifty train --dask ADDRESS`` fits exactly the router that one process
would fit — same featurizer, same predictor classes and parameters, same
decision path, registered the same way — but runs the steps that grow with
the logs on Dask workers:

* **reading**: every file of the logs (every part of a directory of Parquet
  parts) is read, checked and completed (token counts, costs) on a worker by
  ``training.logs.read_part_rows``; the driver gets the rows with one copy of
  each distinct prompt text, and runs the across-file checks.
* **features**: the featurizer (``router.features.TextFeaturizer``) is
  fitted once on the driver, broadcast, and every worker transforms its share
  of the prompts with the same ``transform`` the server calls per request;
  the per-prompt features (n_prompts × ~80 floats) come back to the driver.
* **the success model**: the one-row-per-(prompt, model) data that LightGBM
  trains on — the models-fold blow-up of the features — is built on the
  workers from their prompts and fitted with ``lightgbm.dask``
  (``DaskLGBMRegressor`` with the cross-entropy objective, data-parallel
  trees; LightGBM finds an open port on every worker itself). LightGBM's Dask
  interface has no early stopping, so all ``n_estimators`` rounds are trained
  and the stopping rule of ``lightgbm.early_stopping`` is replayed on the
  held-out prompts' loss curve, summed over the workers. The booster is then
  an ordinary ``lightgbm.Booster`` in an ordinary ``LightGBMSuccess``
  (:meth:`DaskLightGBMSuccess.to_local`), calibrated on the driver as usual.

The token model (``TokenRegressor``: ridge regression on the per-prompt
features) is fitted on the driver from the gathered features: it never sees
the per-(prompt, model) rows, so there is nothing for LightGBM's Dask
interface to distribute.

Why a Dask fit is close to, not equal to, a one-process fit: data-parallel
LightGBM sums per-worker histograms whose bin boundaries each worker finds
from its own rows, so split thresholds (and float sums) differ slightly; see
``tests/test_distributed.py`` for the tolerance on decisions.

Addresses: ``local`` (a LocalCluster of 2 worker processes, one thread
each), ``local:N`` (N workers), or a scheduler (``tcp://host:8786`` or
``host:8786``). Every worker needs thrifty installed (``pip install
'thrifty[dask]'``).
"""

from __future__ import annotations

import inspect
import logging
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import pandas as pd

from models.prices import PriceTable
from router.predictors import LightGBMSuccess
from router.router import Router
from training.dataset import OutcomeMatrix, propensity_weights
from training.logs import combine_part_rows, log_sources, read_part_rows

if TYPE_CHECKING:
    from distributed import Client

LOCAL = "local"
DEFAULT_LOCAL_WORKERS = 2
CONNECT_TIMEOUT_S = 10.0
PARTS_PER_WORKER = 2  # a little slack so one slow worker does not hold up the rest


class DaskError(RuntimeError):
    """The Dask cluster cannot be used: not installed, unreachable, no workers, or a bad address."""


# ----------------------------------------------------------------------------- the cluster


def parse_address(spec: str) -> tuple[str | None, int]:
    """``(scheduler address, 0)`` or ``(None, n_workers)`` for ``local`` / ``local:N``."""
    spec = spec.strip()
    if spec == LOCAL or spec.startswith(LOCAL + ":"):
        count = spec[len(LOCAL) + 1 :] if ":" in spec else str(DEFAULT_LOCAL_WORKERS)
        if not count.isdigit() or int(count) < 1:
            raise DaskError(f"--dask {spec!r}: the number of local workers must be a whole number ≥ 1 (local:N)")
        return None, int(count)
    if not spec:
        raise DaskError("--dask needs a scheduler address (tcp://host:8786), 'local' or 'local:N'")
    return (spec if "://" in spec else f"tcp://{spec}"), 0


@contextmanager
def dask_client(spec: str, *, timeout: float = CONNECT_TIMEOUT_S) -> Iterator["Client"]:
    """A ``distributed.Client`` for ``spec`` (see :func:`parse_address`), closed (with its LocalCluster) on exit."""
    address, n_workers = parse_address(spec)
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise DaskError("--dask needs Dask: pip install 'thrifty[dask]'") from None
    cluster = None
    try:
        if address is None:
            # Worker processes of one thread each: LightGBM's network is one per process,
            # so data-parallel training needs real processes, as on a cluster. The
            # scheduler's HTTP endpoints take a free port instead of a fixed 8787.
            cluster = LocalCluster(
                n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=logging.ERROR
            )
            client = Client(cluster)
        else:
            try:
                client = Client(address, timeout=timeout)
            except (OSError, TimeoutError) as exc:
                raise DaskError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
            except ValueError as exc:  # an address distributed cannot parse
                raise DaskError(f"--dask {spec!r} is not a scheduler address: {exc}") from None
        try:
            try:
                client.wait_for_workers(1, timeout=timeout)
            except TimeoutError:
                raise DaskError(f"the Dask scheduler at {address} has no workers (waited {timeout:g} s)") from None
            yield client
        finally:
            client.close()
    finally:
        if cluster is not None:
            cluster.close()


def _n_parts(client, n_rows: int) -> int:
    workers = max(1, len(client.scheduler_info()["workers"]))
    return max(1, min(n_rows, workers * PARTS_PER_WORKER))


# ----------------------------------------------------------------------------- reading logs

_PROMPT_CODE = "_prompt_code"
# Long texts training never reads; shipping them to the driver would cost more than everything else.
_UNUSED_TEXTS = ("response", "answer")


def _read_compact(part, prices) -> tuple[pd.DataFrame, np.ndarray]:
    """One part read and checked on a worker, its prompt texts replaced by codes into its distinct texts."""
    rows = read_part_rows(part, prices)
    rows = rows.drop(columns=[c for c in _UNUSED_TEXTS if c in rows])
    codes, texts = pd.factorize(rows["prompt"])
    rows = rows.drop(columns="prompt")
    rows[_PROMPT_CODE] = codes.astype(np.int32)
    return rows, np.asarray(texts, dtype=object)


def read_logs_dask(client, paths: Sequence[str], prices: PriceTable | None = None) -> pd.DataFrame:
    """``training.logs.read_logs`` with every file (every part of a directory) read and checked on the workers.

    The driver receives each part's rows with one copy of each distinct prompt
    text and runs the across-file checks; the frame's ``prompt`` column is
    categorical, and ``response``/``answer`` are left empty (training does not
    use them). Errors are the same ``LogError`` s, naming the part and row.
    """
    parts = log_sources(paths)
    results = client.gather(client.map(_read_compact, parts, prices=prices, pure=False))
    texts = pd.Index(np.concatenate([t for _, t in results])).unique()
    dtype = pd.CategoricalDtype(texts)
    frames = []
    while results:  # pop as we go: the driver never holds two copies of the rows
        rows, part_texts = results.pop(0)
        codes = texts.get_indexer(part_texts)[rows.pop(_PROMPT_CODE).to_numpy()]
        rows["prompt"] = pd.Categorical.from_codes(codes, dtype=dtype)
        frames.append(rows)
    return combine_part_rows(frames)


# ----------------------------------------------------------------------------- features


def _transform(featurizer, texts: list[str]) -> np.ndarray:
    return featurizer.transform(texts)


def featurize(client, featurizer, texts: Sequence[str]) -> np.ndarray:
    """``featurizer.transform(texts)``, computed in parts on the workers (the fitted featurizer is broadcast once)."""
    texts = list(texts)
    shared = client.scatter(featurizer, broadcast=True)
    chunks = [list(c) for c in np.array_split(np.asarray(texts, dtype=object), _n_parts(client, len(texts))) if len(c)]
    parts = client.scatter(chunks)
    futures = [client.submit(_transform, shared, part, pure=False) for part in parts]
    X = client.gather(futures)
    return np.vstack(X) if X else featurizer.transform([])


# ----------------------------------------------------------------------------- success model


def _long_part(inputs: tuple) -> tuple:
    X, Y, W = inputs
    data, y, w = LightGBMSuccess._long(X, Y, W)
    return data, y, (np.ones(len(y)) if w is None else w)


def _scatter_long(client, X: np.ndarray, Y: np.ndarray, W: np.ndarray | None):
    """Futures of the long (prompt, model) rows of each part of the prompts, built on the workers, and their row counts."""
    pieces = [idx for idx in np.array_split(np.arange(len(X)), _n_parts(client, len(X))) if len(idx)]
    inputs = client.scatter([(X[idx], Y[idx], None if W is None else W[idx]) for idx in pieces])
    futures = [client.submit(_long_part, f, pure=False) for f in inputs]
    rows = [int((~np.isnan(Y[idx])).sum()) for idx in pieces]
    return futures, rows


def _dask_arrays(futures, rows: list[int], n_columns: int):
    """(data, label, weight) dask arrays over the parts held by the workers."""
    import dask
    import dask.array as da
    from operator import getitem

    def column(k, shape):
        return da.concatenate(
            [da.from_delayed(dask.delayed(getitem)(f, k), shape=shape(n), dtype=np.float64) for f, n in zip(futures, rows) if n]
        )

    return column(0, lambda n: (n, n_columns)), column(1, lambda n: (n,)), column(2, lambda n: (n,))


def _valid_loss_curve(model_str: str, X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, int]:
    """Summed cross-entropy of the held-out rows after each boosting round, and the row count.

    One ``pred_leaf`` pass gives every row's leaf in every tree; adding the
    trees' leaf values one at a time gives the raw score after each round.
    """
    import lightgbm as lgb

    booster = lgb.Booster(model_str=model_str)
    data, y, _ = LightGBMSuccess._long(X, Y)
    n_trees = booster.num_trees()
    if not len(y):
        return np.zeros(n_trees), 0
    leaves = booster.predict(data, pred_leaf=True).reshape(len(y), n_trees)
    values = _leaf_values(booster.dump_model())
    raw = np.zeros(len(y))
    sums = np.empty(n_trees)
    for t in range(n_trees):
        raw += values[t][leaves[:, t]]
        # cross-entropy of sigmoid(raw) against y, written stably in the raw score
        sums[t] = float(np.sum(np.logaddexp(0.0, raw) - y * raw))
    return sums, len(y)


def _leaf_values(dump: dict) -> list[np.ndarray]:
    out = []
    for tree in dump["tree_info"]:
        values = np.zeros(max(int(tree["num_leaves"]), 1))
        stack = [tree["tree_structure"]]
        while stack:
            node = stack.pop()
            if "leaf_value" in node:
                values[int(node.get("leaf_index", 0))] = node["leaf_value"]
            else:
                stack.extend((node["left_child"], node["right_child"]))
        out.append(values)
    return out


def early_stopping_iteration(losses: np.ndarray, rounds: int) -> int:
    """The iteration ``lightgbm.early_stopping(rounds)`` keeps for a loss curve (1-based; lower is better)."""
    best, best_iteration = np.inf, 0
    for i, loss in enumerate(losses):
        if loss < best:
            best, best_iteration = loss, i
        elif i - best_iteration >= rounds:
            break
    return best_iteration + 1


# Parameter names of LightGBMSuccess (the Dask variant adds only the client).
_LOCAL_PARAMS = [p for p in inspect.signature(LightGBMSuccess.__init__).parameters if p != "self"]


class DaskLightGBMSuccess(LightGBMSuccess):
    """``LightGBMSuccess`` whose booster is trained by ``lightgbm.dask`` on a cluster.

    Holdout, base rates and calibration are the parent's; only the booster
    training differs. :meth:`to_local` returns the fitted predictor as a plain
    ``LightGBMSuccess`` (as ``DaskLGBMRegressor.to_local`` does for LightGBM's
    own estimators), which is what a router keeps and pickles.
    """

    def __init__(self, client=None, **params):
        super().__init__(**params)
        self.client = client

    @classmethod
    def from_local(cls, predictor: LightGBMSuccess, client) -> "DaskLightGBMSuccess":
        return cls(client, **{name: getattr(predictor, name) for name in _LOCAL_PARAMS})

    def _fit_raw(self, X, Y, W, X_cal=None, Y_cal=None):
        from lightgbm import DaskLGBMRegressor

        if self.client is None:
            raise DaskError("DaskLightGBMSuccess needs a distributed.Client")
        client = self.client
        params = self._booster_params()
        params.pop("num_threads")  # lightgbm.dask uses each worker's thread count
        self.n_models_ = Y.shape[1]
        futures, rows = _scatter_long(client, X, Y, W)
        data, label, weight = _dask_arrays(futures, rows, X.shape[1] + 1)
        model = DaskLGBMRegressor(client=client, n_estimators=self.n_estimators, **params)
        model.fit(data, label, sample_weight=weight, categorical_feature=[X.shape[1]])
        booster = model.booster_
        best = booster.current_iteration()
        if X_cal is not None and len(X_cal) and (~np.isnan(Y_cal)).any():
            model_str = client.scatter(booster.model_to_string(), broadcast=True)
            pieces = [idx for idx in np.array_split(np.arange(len(X_cal)), _n_parts(client, len(X_cal))) if len(idx)]
            curves = client.gather(
                [client.submit(_valid_loss_curve, model_str, X_cal[idx], Y_cal[idx], pure=False) for idx in pieces]
            )
            total = sum(curve for curve, _ in curves)
            best = early_stopping_iteration(total / max(sum(n for _, n in curves), 1), self.early_stopping_rounds)
        return self._keep_trees(booster, best)

    def to_local(self) -> LightGBMSuccess:
        """The fitted predictor as a plain ``LightGBMSuccess`` (no client)."""
        local = LightGBMSuccess(**{name: getattr(self, name) for name in _LOCAL_PARAMS})
        state = {k: v for k, v in self.__getstate__().items() if k != "client"}
        local.__setstate__(state)
        return local


# ----------------------------------------------------------------------------- the router


def fit_router_dask(
    client,
    matrix: OutcomeMatrix,
    prices: PriceTable,
    *,
    predictor: str = "lightgbm",
    seed: int = 0,
    policy=None,
    weights: np.ndarray | None = None,
    propensity_clip: float = 20.0,
    n_components: int = 64,
) -> Router:
    """``training.fit.fit_router`` with features and the success booster computed on ``client``'s workers."""
    from training.fit import make_router

    if predictor != "lightgbm":
        raise ValueError(f"--dask fits the lightgbm predictor only (got {predictor!r})")
    if weights is None:
        weights = propensity_weights(matrix, propensity_clip)
    spec = make_router(predictor=predictor, seed=seed, policy=policy, n_components=n_components)
    featurizer = spec.featurizer.fit(matrix.texts)
    X = featurize(client, featurizer, matrix.texts)
    success = DaskLightGBMSuccess.from_local(spec.success, client).fit(X, matrix.success, weights, models=matrix.models)
    tokens = spec.tokens.fit(X, matrix.output_tokens, None, models=matrix.models)
    return Router.from_fitted(featurizer, success.to_local(), tokens, spec.policy, matrix.models, prices, X)
