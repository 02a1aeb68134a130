"""The served default: which policy and knob ``model: thrifty`` uses.

:func:`fit_served_router` is what ``thrifty train`` serves: a router fitted on
the training prompts whose *default* policy and knob are chosen on
out-of-fold predictions of those same training prompts (K-fold by prompt
text), never on the test split. The chosen setting is the one whose (mean
cost, mean success) point lies farthest above the best-fixed hull of the
training prompts (read at the setting's cost plus 10%), by a lower
confidence bound of the paired per-prompt difference (two standard errors:
the maximum over hundreds of settings is optimistic, and with one the choice
found "margins" in predictions that were pure noise) and by at least half a
point of success; when no setting is confidently above the hull, the router
falls back to the best single model (``Threshold(2.0, fallback=...)``: no
prediction reaches 2, so every request takes the fallback). Threshold
policies fall back to the best single model of the training prompts (see
:func:`training.sweep.policy_kwargs`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from models.prices import PriceTable
from router.policy import make_policy
from router.router import Router
from training.dataset import OutcomeMatrix
from training.fit import cross_fit, fit_router
from training.metrics import hull_value, pareto_hull
from training.sweep import POLICIES, best_model_index, outcome_of, policy_kwargs, sweep_policy

FALLBACK_KNOB = 2.0  # a threshold no probability reaches: every request takes the fallback model
MIN_COMPLETE_PROMPTS = 30  # fewer prompts answered by every model: the default policy is left as it is


@dataclass
class Selection:
    """The default policy chosen on out-of-fold predictions of the training prompts."""

    policy: str
    knob: float
    fallback: str | None  # the fixed model when the router never beats best fixed
    margin: float  # validation quality above the best-fixed hull at the same cost
    lcb: float  # margin minus z standard errors of the paired difference
    cost: float
    quality: float
    best_model: str
    per_policy: dict = field(default_factory=dict)  # policy -> best knob, margin, lcb, cost, quality

    def make_policy(self):
        return make_policy(self.policy, self.knob, **policy_kwargs(self.policy, self.best_model))

    def to_dict(self) -> dict:
        return asdict(self)


def _hull_baseline(success: np.ndarray, cost: np.ndarray, at_cost: float) -> tuple[np.ndarray, float]:
    """Per-prompt success of the best-fixed mixture at mean cost ``at_cost``, and its mean."""
    mc, ms = cost.mean(axis=0), success.mean(axis=0)
    hx, hy = pareto_hull(mc, ms)
    # the hull's vertices are single models: find the segment holding at_cost
    vertex = [int(np.flatnonzero((mc == x) & (ms == y))[0]) for x, y in zip(hx, hy)]
    if at_cost <= hx[0]:  # as cheap as the cheapest model, or cheaper: compare with that model
        return success[:, vertex[0]], float(hy[0])
    if at_cost >= hx[-1]:
        return success[:, vertex[-1]], float(hy[-1])
    k = int(np.searchsorted(hx, at_cost))
    w = (at_cost - hx[k - 1]) / (hx[k] - hx[k - 1])
    base = (1 - w) * success[:, vertex[k - 1]] + w * success[:, vertex[k]]
    return base, float(hull_value(hx, hy, at_cost))


def margin_stats(choice: np.ndarray, success: np.ndarray, cost: np.ndarray, cost_slack: float = 0.0) -> tuple[float, float, float, float]:
    """(mean cost, mean success, margin above the best-fixed hull, standard error of the margin).

    The hull is read at the setting's mean cost times ``1 + cost_slack``.
    """
    s, c = outcome_of(choice, success, cost)
    mean_c, mean_s = float(c.mean()), float(s.mean())
    base, hull_q = _hull_baseline(success, cost, mean_c * (1 + cost_slack))
    d = s - base
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("inf")
    return mean_c, mean_s, mean_s - hull_q, se


def best_model_index(success: np.ndarray, cost: np.ndarray) -> int:
    """Highest mean success; ties go to the cheaper model."""
    return int(np.lexsort((cost.mean(axis=0), -success.mean(axis=0)))[0])


def select_policy(
    p: np.ndarray,
    cost_pred: np.ndarray,
    success: np.ndarray,
    cost: np.ndarray,
    models: Sequence[str],
    *,
    policies: Sequence[str] = POLICIES,
    z: float = 2.0,
    min_margin: float = 0.005,
    cost_slack: float = 0.1,
    n_knobs: int = 256,
) -> Selection:
    """The policy and knob farthest above the best-fixed hull (by lower confidence bound) on these prompts.

    A setting qualifies when its margin is at least ``min_margin`` and its
    margin minus ``z`` standard errors is positive; with none qualifying, the
    best single model is served. The margin is taken against the hull at the
    setting's mean cost plus ``cost_slack`` (10%): on new prompts the mean
    cost moves too, and where the hull is steep (among the cheap models) a
    few percent of cost is worth many points of quality — without the slack
    the choice favoured such spots and fell below the hull on held-out
    prompts (zeroeval-gsm8k, zeroeval-math-l5).

    ``p``/``cost_pred`` are held-out predictions for the prompts whose logged
    outcomes are ``success``/``cost`` (all ``(n, m)``, complete).
    """
    models = list(models)
    best = best_model_index(success, cost)
    per_policy, winner = {}, None
    for policy in policies:
        top = None
        kw = policy_kwargs(policy, models[best])
        for knob, choice in sweep_policy(policy, p, cost_pred, n=n_knobs, models=models, **kw):
            mean_c, mean_s, margin, se = margin_stats(choice, success, cost, cost_slack)
            row = {"knob": knob, "margin": margin, "lcb": margin - z * se, "cost": mean_c, "quality": mean_s}
            if margin < min_margin:  # a hair above the hull (a few prompts moved) is no reason to route
                row["lcb"] = min(row["lcb"], margin - min_margin)
            if top is None or row["lcb"] > top["lcb"]:
                top = row
        per_policy[policy] = top
        if top is not None and (winner is None or top["lcb"] > per_policy[winner]["lcb"]):
            winner = policy
    best_row = per_policy[winner]
    if best_row["lcb"] > 0:
        return Selection(winner, best_row["knob"], None, best_row["margin"], best_row["lcb"], best_row["cost"], best_row["quality"], models[best], per_policy)
    fixed = np.full(len(success), best)
    mean_c, mean_s, margin, se = margin_stats(fixed, success, cost)
    return Selection("threshold", FALLBACK_KNOB, models[best], margin, margin - z * se, mean_c, mean_s, models[best], per_policy)


def _hull_baseline(success: np.ndarray, cost: np.ndarray, at_cost: float) -> tuple[np.ndarray, float]:
    """Per-prompt success of the best-fixed mixture at mean cost ``at_cost``, and its mean."""
    mc, ms = cost.mean(axis=0), success.mean(axis=0)
    hx, hy = pareto_hull(mc, ms)
    # the hull's vertices are single models: find the segment holding at_cost
    vertex = [int(np.flatnonzero((mc == x) & (ms == y))[0]) for x, y in zip(hx, hy)]
    if at_cost <= hx[0]:  # as cheap as the cheapest model, or cheaper: compare with that model
        return success[:, vertex[0]], float(hy[0])
    if at_cost >= hx[-1]:
        return success[:, vertex[-1]], float(hy[-1])
    k = int(np.searchsorted(hx, at_cost))
    w = (at_cost - hx[k - 1]) / (hx[k] - hx[k - 1])
    base = (1 - w) * success[:, vertex[k - 1]] + w * success[:, vertex[k]]
    return base, float(hull_value(hx, hy, at_cost))


def margin_stats(choice: np.ndarray, success: np.ndarray, cost: np.ndarray, cost_slack: float = 0.0) -> tuple[float, float, float, float]:
    """(mean cost, mean success, margin above the best-fixed hull, standard error of the margin).

    The hull is read at the setting's mean cost times ``1 + cost_slack``.
    """
    s, c = outcome_of(choice, success, cost)
    mean_c, mean_s = float(c.mean()), float(s.mean())
    base, hull_q = _hull_baseline(success, cost, mean_c * (1 + cost_slack))
    d = s - base
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("inf")
    return mean_c, mean_s, mean_s - hull_q, se


def select_policy(
    p: np.ndarray,
    cost_pred: np.ndarray,
    success: np.ndarray,
    cost: np.ndarray,
    models: Sequence[str],
    *,
    policies: Sequence[str] = POLICIES,
    z: float = 2.0,
    min_margin: float = 0.005,
    cost_slack: float = 0.1,
    n_knobs: int = 256,
) -> Selection:
    """The policy and knob farthest above the best-fixed hull (by lower confidence bound) on these prompts.

    A setting qualifies when its margin is at least ``min_margin`` and its
    margin minus ``z`` standard errors is positive; with none qualifying, the
    best single model is served. The margin is taken against the hull at the
    setting's mean cost plus ``cost_slack`` (10%): on new prompts the mean
    cost moves too, and where the hull is steep (among the cheap models) a
    few percent of cost is worth many points of quality — without the slack
    the choice favoured such spots and fell below the hull on held-out
    prompts (zeroeval-gsm8k, zeroeval-math-l5).

    ``p``/``cost_pred`` are held-out predictions for the prompts whose logged
    outcomes are ``success``/``cost`` (all ``(n, m)``, complete).
    """
    models = list(models)
    best = best_model_index(success, cost)
    per_policy, winner = {}, None
    for policy in policies:
        top = None
        kw = policy_kwargs(policy, models[best])
        for knob, choice in sweep_policy(policy, p, cost_pred, n=n_knobs, models=models, **kw):
            mean_c, mean_s, margin, se = margin_stats(choice, success, cost, cost_slack)
            row = {"knob": knob, "margin": margin, "lcb": margin - z * se, "cost": mean_c, "quality": mean_s}
            if margin < min_margin:  # a hair above the hull (a few prompts moved) is no reason to route
                row["lcb"] = min(row["lcb"], margin - min_margin)
            if top is None or row["lcb"] > top["lcb"]:
                top = row
        per_policy[policy] = top
        if top is not None and (winner is None or top["lcb"] > per_policy[winner]["lcb"]):
            winner = policy
    best_row = per_policy[winner]
    if best_row["lcb"] > 0:
        return Selection(winner, best_row["knob"], None, best_row["margin"], best_row["lcb"], best_row["cost"], best_row["quality"], models[best], per_policy)
    fixed = np.full(len(success), best)
    mean_c, mean_s, margin, se = margin_stats(fixed, success, cost)
    return Selection("threshold", FALLBACK_KNOB, models[best], margin, margin - z * se, mean_c, mean_s, models[best], per_policy)


def fit_served_router(
    matrix: OutcomeMatrix,
    prices: PriceTable,
    *,
    predictor: str = "lightgbm",
    seed: int = 0,
    folds: int = 3,
    policies: Sequence[str] = POLICIES,
    z: float = 2.0,
    max_select_prompts: int | None = None,
    fit=None,
    **fit_kw,
) -> tuple[Router, Selection]:
    """A router fitted on every prompt of ``matrix``, with its default policy chosen on out-of-fold predictions.

    The knob is chosen on prompts of ``matrix`` only (cross-fitting), so a test
    split kept apart from ``matrix`` stays untouched. Prompts where some model
    has no logged outcome are left out of the choice (the sweep needs every
    model's outcome). This is what ``thrifty train`` serves::

        router, selection = fit_served_router(train_matrix, prices, predictor=predictor, seed=seed)

    ``fit`` fits the served router (default ``fit_router``; ``training.distributed``
    passes its Dask fit); the out-of-fold fits of the choice stay local.
    """
    fit = fit or fit_router
    if max_select_prompts is not None and matrix.n_prompts > max_select_prompts:
        # On large logs the knob is chosen on a random subset of the prompts: the
        # choice needs a good estimate of where the router beats the hull, not
        # K extra fits on every row (which would multiply training time by K+1).
        pick = np.sort(np.random.default_rng(seed).choice(matrix.n_prompts, max_select_prompts, replace=False))
        sub = matrix.subset(pick)
        P, C = cross_fit(sub, prices, predictor=predictor, seed=seed, folds=folds, **fit_kw)
        router = fit(matrix, prices, predictor=predictor, seed=seed, **fit_kw)
        return choose_default(router, sub, P, C, policies=policies, z=z)
    P, C = cross_fit(matrix, prices, predictor=predictor, seed=seed, folds=folds, **fit_kw)
    router = fit(matrix, prices, predictor=predictor, seed=seed, **fit_kw)
    return choose_default(router, matrix, P, C, policies=policies, z=z)


def choose_default(
    router: Router, matrix: OutcomeMatrix, P: np.ndarray, C: np.ndarray, *, policies: Sequence[str] = POLICIES, z: float = 2.0
) -> tuple[Router, Selection]:
    """``router`` with the default policy chosen on out-of-fold predictions ``P``/``C`` of ``matrix``, and the choice."""
    complete = matrix.observed.all(axis=1) & ~np.isnan(P).any(axis=1) & ~np.isnan(matrix.cost).any(axis=1)
    if complete.sum() < MIN_COMPLETE_PROMPTS:
        # partial logs (served traffic): no prompt shows every model's outcome, so no
        # sweep can be replayed; the router keeps the policy it was built with
        policy = router.policy_
        selection = Selection(policy.name, float(policy.knob), None, float("nan"), float("nan"), float("nan"), float("nan"), "", {})
        return router.with_policy(policy, selection_=selection.to_dict()), selection
    selection = select_policy(P[complete], C[complete], matrix.success[complete], matrix.cost[complete], matrix.models, policies=policies, z=z)
    return router.with_policy(selection.make_policy(), selection_=selection.to_dict()), selection
