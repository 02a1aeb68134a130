"""Fitting a router on an outcome matrix, and measuring it on held-out prompts."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from models.prices import PriceTable
from router.features import TextFeaturizer
from router.policy import Threshold
from router.predictors import EnsembleSuccess, IRTSuccess, KNNSuccess, LightGBMSuccess, LogisticSuccess, TokenRegressor
from router.router import Router
from training.dataset import OutcomeMatrix, implied_prices, propensity_weights

PREDICTORS = ("lightgbm", "logistic", "knn", "irt", "ensemble")


# Hyperparameters chosen on out-of-fold predictions of the *training* split
# (3-fold by prompt; gap closed of the λ-tradeoff sweep) of routerbench-subset,
# llmrouter-14task and zeroeval-gsm8k + zeroeval-math-l5: k = 100 neighbours
# beat 15 and 40 on all three (200 on one), C = 0.05 beat 0.5 and 5 on all three.
KNN_K = 100
LOGISTIC_C = 0.05
# IRTSuccess, chosen the same way (mean over the three logs of the out-of-fold
# gap closed, λ-tradeoff sweep): 16 prompt types, 4 skill factors, alpha = 1e-3
# on the type map: 0.160 (0.178 / 0.244 / 0.059), against 8 types 0.113, 32 types
# 0.135, 8 factors 0.152, alpha = 3e-3 0.146. Continuous prompt embeddings
# (a_j · θ(x) with θ linear: at most 0.132; a tanh network: 0.050-0.149,
# unstable across settings) did worse. Not an ensemble member: adding it to
# kNN + logistic + LightGBM lowered the ensemble's out-of-fold gap closed
# (0.180 -> 0.171) while its AUC rose by under 0.001.
IRT_TYPES = 16
IRT_FACTORS = 4
IRT_ALPHA = 1e-3


def make_success_predictor(kind: str, seed: int = 0):
    if kind == "lightgbm":
        return LightGBMSuccess(random_state=seed)
    if kind == "logistic":
        return LogisticSuccess(C=LOGISTIC_C, random_state=seed)
    if kind == "knn":
        return KNNSuccess(k=KNN_K)
    if kind == "irt":
        return IRTSuccess(n_types=IRT_TYPES, n_factors=IRT_FACTORS, alpha=IRT_ALPHA, random_state=seed)
    if kind == "ensemble":
        return EnsembleSuccess(
            [KNNSuccess(k=KNN_K), LogisticSuccess(C=LOGISTIC_C, random_state=seed), LightGBMSuccess(random_state=seed)],
            random_state=seed,
        )
    raise ValueError(f"unknown predictor {kind!r}; expected one of {PREDICTORS}")


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
    router = Router(
        featurizer=TextFeaturizer(n_components=n_components, random_state=seed),
        success=make_success_predictor(predictor, seed),
        tokens=TokenRegressor(),
        policy=policy or Threshold(0.7),
    )
    return router.fit(matrix.texts, matrix.success, matrix.output_tokens, matrix.models, prices, weights)


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
