"""Fitting a router on an outcome matrix, cross-fitting it, and measuring it on held-out prompts.

Success predictors are named by the registry of :mod:`router.predictors`
(``lightgbm``, ``logistic``, ``knn``, ``irt``, ``ensemble``).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from models.prices import PriceTable
from router.features import TextFeaturizer
from router.policy import Threshold
from router.predictors import EnsembleSuccess, TokenRegressor, make_success_predictor
from router.router import Router
from training.dataset import OutcomeMatrix, implied_prices, prompt_folds, propensity_weights


def resolve_prices(matrix: OutcomeMatrix, catalog_prices: PriceTable) -> tuple[PriceTable, list[str]]:
    """Catalog prices where the catalog knows the model, else prices implied by the logged costs.

    Returns the table and the models whose prices were implied.
    """
    implied = implied_prices(matrix)
    table, inferred = {}, []
    for model in matrix.models:
        if model in catalog_prices:
            table[model] = catalog_prices[model]
        elif model in implied:
            table[model] = implied[model]
            inferred.append(model)
    return PriceTable(table), inferred


def make_router(*, predictor: str = "lightgbm", seed: int = 0, policy=None, n_components: int = 64) -> Router:
    """The unfitted router that :func:`fit_router` fits (a distributed fit builds the same one)."""
    return Router(
        featurizer=TextFeaturizer(n_components=n_components, random_state=seed),
        success=make_success_predictor(predictor, seed),
        tokens=TokenRegressor(),
        policy=policy or Threshold(0.7),
    )


def fit_router(
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
    """A router fitted on every prompt of ``matrix``.

    Logs of served traffic carry propensities: unless ``weights`` are given,
    each logged call is then weighted by 1/propensity (see ``propensity_weights``).
    """
    if weights is None:
        weights = propensity_weights(matrix, propensity_clip)
    router = make_router(predictor=predictor, seed=seed, policy=policy, n_components=n_components)
    return router.fit(matrix.texts, matrix.success, matrix.output_tokens, matrix.models, prices, weights)


def cross_fit(
    matrix: OutcomeMatrix, prices: PriceTable, *, predictor: str = "lightgbm", seed: int = 0, folds: int = 3, parts=None, **fit_kw
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Out-of-fold predicted success, cost and novelty of every prompt of ``matrix``.

    Each part of ``parts`` (row indices; default: ``folds`` parts by prompt
    text) is predicted by a router fitted on the other parts, so every prompt
    is routed by a router that never saw it; its novelty is measured against
    that router's training prompts.
    """
    n, m = matrix.success.shape
    P, C, N = np.full((n, m), np.nan), np.full((n, m), np.nan), np.full(n, np.nan)
    tokens = matrix.prompt_tokens()
    for part in parts if parts is not None else prompt_folds(matrix.texts, folds, seed):
        rest = np.setdiff1d(np.arange(n), part)
        router = fit_router(matrix.subset(rest), prices, predictor=predictor, seed=seed, **fit_kw)
        held = matrix.subset(part)
        s = router.score_features(router.features(held.texts), tokens[part], prices, models=matrix.models)
        P[part], C[part], N[part] = s.p, s.cost, s.novelty
    return P, C, N


def ensemble_router(routers) -> Router:
    """One router averaging the success predictions of routers fitted on the same prompts.

    Equivalent to ``fit_router(..., predictor="ensemble")`` with the same
    members (the featurizers are fitted on the same texts with the same seed,
    so they are identical), without fitting the members again.
    """
    base = routers[0]
    for other in routers[1:]:
        if other.models_ != base.models_:
            raise ValueError("ensemble members must be fitted on the same models")
    return base.with_success(EnsembleSuccess.from_fitted([r.success_ for r in routers], base.models_))


def _binary(y: np.ndarray) -> np.ndarray:
    return (y >= 0.5).astype(int)


def evaluate_router(router: Router, test: OutcomeMatrix) -> dict[str, dict[str, float]]:
    """Per-model metrics on held-out prompts: AUC, Brier score, log loss, token error.

    Fractional successes (judge scores) are thresholded at 0.5 for AUC; Brier
    and log loss use them as they are. Token error is the mean absolute error
    of log(1 + output tokens) — a factor, not a count, since models differ
    several-fold.
    """
    X = router.features(test.texts)
    P = router.success_.predict_proba(X)
    T = router.tokens_.predict(X)
    out: dict[str, dict[str, float]] = {}
    for j, model in enumerate(router.models_):
        if model not in test.models:
            continue
        k = test.models.index(model)
        seen = test.observed[:, k]
        y, p = test.success[seen, k], np.clip(P[seen, j], 1e-6, 1 - 1e-6)
        metrics = {"n": float(seen.sum()), "success_rate": float(y.mean()) if len(y) else float("nan")}
        if len(y):
            metrics["brier"] = float(np.mean((p - y) ** 2))
            metrics["log_loss"] = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
            metrics["auc"] = float(roc_auc_score(_binary(y), p)) if len(np.unique(_binary(y))) == 2 else float("nan")
            metrics["mean_p"] = float(p.mean())
            t_true = test.output_tokens[seen, k]
            metrics["token_log_mae"] = float(np.mean(np.abs(np.log1p(T[seen, j]) - np.log1p(t_true))))
            metrics["token_mean_true"] = float(t_true.mean())
            metrics["token_mean_pred"] = float(T[seen, j].mean())
        out[model] = metrics
    return out


def calibration_table(router: Router, test: OutcomeMatrix, bins: int = 10) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per model: mean predicted probability, observed success rate and count per bin."""
    P = router.success_.predict_proba(router.features(test.texts))
    edges = np.linspace(0, 1, bins + 1)
    table = {}
    for j, model in enumerate(router.models_):
        if model not in test.models:
            continue
        k = test.models.index(model)
        seen = test.observed[:, k]
        p, y = P[seen, j], test.success[seen, k]
        which = np.clip(np.digitize(p, edges) - 1, 0, bins - 1)
        counts = np.bincount(which, minlength=bins)
        with np.errstate(invalid="ignore"):
            mean_p = np.bincount(which, p, bins) / counts
            rate = np.bincount(which, y, bins) / counts
        table[model] = (mean_p, rate, counts)
    return table
