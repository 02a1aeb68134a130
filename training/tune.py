"""Choosing a router's knob on held-out training prompts, and ``thrifty tune``.

Two uses of the same sweep:

* :func:`fit_served_router` — what ``thrifty train`` should serve: a router
  fitted on the training prompts whose *default* policy and knob are chosen
  on out-of-fold predictions of those same training prompts (K-fold by
  prompt text), never on the test split. The chosen setting is the one whose
  (mean cost, mean success) point lies farthest above the best-fixed hull of
  the training prompts (read at the setting's cost plus 10%), by a lower
  confidence bound of the paired per-prompt difference (two standard errors:
  the maximum over hundreds of settings is optimistic, and with one the
  choice found "margins" in predictions that were pure noise) and by at
  least half a point of success; when no setting is confidently above the
  hull, the router falls back to the best single model
  (``Threshold(2.0, fallback=...)``: no prediction reaches 2, so every
  request takes the fallback). Threshold policies fall back to the best
  single model of the training prompts (see :func:`policy_kwargs`).
* :func:`tune` — ``thrifty tune``: the knob that meets a target (quality,
  cost per request, or a budget over an expected request volume) on a
  validation split, reported on a separate test split, saved as a profile.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from models.prices import PriceTable
from router.policy import Threshold, make_policy
from router.router import Router
from training.dataset import OutcomeMatrix, _text_groups
from training.metrics import hull_value, pareto_hull

FALLBACK_KNOB = 2.0
MIN_COMPLETE_PROMPTS = 30  # fewer prompts answered by every model: the default policy is left as it is  # a threshold no probability reaches: every request takes the fallback model
POLICIES = ("threshold", "tradeoff")


# ----------------------------------------------------------------------------- sweeps


def knob_grid(policy: str, p: np.ndarray, cost: np.ndarray, n: int = 256) -> np.ndarray:
    """The policy's knob values that visit its decision regions, from one end of its range to the other."""
    cls = make_policy(policy, 0.0).__class__
    return cls.grid(p, cost, n=n)


def sweep_policy(
    policy: str,
    p: np.ndarray,
    cost: np.ndarray,
    knobs: Sequence[float] | None = None,
    n: int = 256,
    keep: Sequence[float] = (),
    models: Sequence[str] | None = None,
    **policy_kw,
):
    """Yield ``(knob, choices)`` for every knob of the grid.

    A knob whose choices equal the previous knob's is skipped (it adds no
    point), unless it is in ``keep``.
    """
    knobs = knob_grid(policy, p, cost, n) if knobs is None else knobs
    keep = set(float(k) for k in keep)
    previous = None
    for knob in knobs:
        choice, _ = make_policy(policy, float(knob), **policy_kw).choose(p, cost, None, models)
        if previous is not None and np.array_equal(choice, previous) and float(knob) not in keep:
            continue
        previous = choice
        yield float(knob), choice


def outcome_of(choice: np.ndarray, success: np.ndarray, cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logged success and cost of the chosen model, per prompt."""
    rows = np.arange(len(choice))
    return success[rows, choice], cost[rows, choice]


# ----------------------------------------------------------------------------- default knob


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


def policy_kwargs(policy: str, best_model: str | None) -> dict:
    """Threshold policies fall back to the best single model of the training prompts, not to the most likely one.

    With the most-likely fallback, a threshold above every prediction sends
    each prompt to the model with the highest *predicted* success, which on
    held-out prompts is worse than the best single model (the winner's curse
    of noisy predictions); with the best-model fallback the top of the sweep
    is exactly the best single model, so the curve spans the whole range.
    """
    if policy == "threshold" and best_model is not None:
        return {"fallback": best_model}
    return {}


def prompt_folds(texts: Sequence[str], folds: int, seed: int) -> list[np.ndarray]:
    """Row indices of ``folds`` parts, with all rows of one prompt text in the same part."""
    groups = _text_groups(list(texts))
    unique = np.unique(groups)
    rng = np.random.default_rng(seed)
    assignment = dict(zip(rng.permutation(unique), np.arange(len(unique)) % folds))
    part = np.array([assignment[g] for g in groups])
    return [np.flatnonzero(part == k) for k in range(folds)]


def oof_scores(
    matrix: OutcomeMatrix, prices: PriceTable, *, predictor: str = "lightgbm", seed: int = 0, folds: int = 3, **fit_kw
) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold predicted success and cost of every prompt of ``matrix`` (K-fold by prompt text)."""
    from training.fit import fit_router

    n, m = matrix.success.shape
    P, C = np.full((n, m), np.nan), np.full((n, m), np.nan)
    tokens = matrix.prompt_tokens()
    for part in prompt_folds(matrix.texts, folds, seed):
        rest = np.setdiff1d(np.arange(n), part)
        router = fit_router(matrix.subset(rest), prices, predictor=predictor, seed=seed, **fit_kw)
        held = matrix.subset(part)
        s = router.score_features(router.features(held.texts), tokens[part], prices, models=matrix.models)
        P[part], C[part] = s.p, s.cost
    return P, C


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
    **fit_kw,
) -> tuple[Router, Selection]:
    """A router fitted on every prompt of ``matrix``, with its default policy chosen on out-of-fold predictions.

    The knob is chosen on prompts of ``matrix`` only (cross-fitting), so a test
    split kept apart from ``matrix`` stays untouched. Prompts where some model
    has no logged outcome are left out of the choice (the sweep needs every
    model's outcome). This is what ``thrifty train`` serves::

        router, selection = fit_served_router(train_matrix, prices, predictor=predictor, seed=seed)
    """
    if max_select_prompts is not None and matrix.n_prompts > max_select_prompts:
        # On large logs the knob is chosen on a random subset of the prompts: the
        # choice needs a good estimate of where the router beats the hull, not
        # K extra fits on every row (which would multiply training time by K+1).
        from training.fit import fit_router

        pick = np.sort(np.random.default_rng(seed).choice(matrix.n_prompts, max_select_prompts, replace=False))
        sub = matrix.subset(pick)
        P, C = oof_scores(sub, prices, predictor=predictor, seed=seed, folds=folds, **fit_kw)
        router = fit_router(matrix, prices, predictor=predictor, seed=seed, **fit_kw)
        return router, choose_default(router, sub, P, C, policies=policies, z=z)
    router, P, C = fit_with_oof(matrix, prices, predictor=predictor, seed=seed, folds=folds, **fit_kw)
    selection = choose_default(router, matrix, P, C, policies=policies, z=z)
    return router, selection


def fit_with_oof(matrix: OutcomeMatrix, prices: PriceTable, *, predictor: str = "lightgbm", seed: int = 0, folds: int = 3, **fit_kw):
    """A router fitted on all of ``matrix``, and out-of-fold predicted success and cost of its prompts."""
    from training.fit import fit_router

    P, C = oof_scores(matrix, prices, predictor=predictor, seed=seed, folds=folds, **fit_kw)
    return fit_router(matrix, prices, predictor=predictor, seed=seed, **fit_kw), P, C


def choose_default(router: Router, matrix: OutcomeMatrix, P: np.ndarray, C: np.ndarray, *, policies: Sequence[str] = POLICIES, z: float = 2.0) -> Selection:
    """Choose the default policy on out-of-fold predictions ``P``/``C`` of ``matrix`` and store it in ``router``."""
    complete = matrix.observed.all(axis=1) & ~np.isnan(P).any(axis=1) & ~np.isnan(matrix.cost).any(axis=1)
    if complete.sum() < MIN_COMPLETE_PROMPTS:
        # partial logs (served traffic): no prompt shows every model's outcome, so no
        # sweep can be replayed; the router keeps the policy it was built with
        policy = router.policy_
        selection = Selection(policy.name, float(policy.knob), None, float("nan"), float("nan"), float("nan"), float("nan"), "", {})
        router.selection_ = selection.to_dict()
        return selection
    selection = select_policy(P[complete], C[complete], matrix.success[complete], matrix.cost[complete], matrix.models, policies=policies, z=z)
    router.policy = router.policy_ = selection.make_policy()
    router.selection_ = selection.to_dict()
    return selection


def ensemble_router(routers: Sequence[Router]) -> Router:
    """One router averaging the success predictions of routers fitted on the same prompts.

    Equivalent to ``fit_router(..., predictor="ensemble")`` with the same
    members (the featurizers are fitted on the same texts with the same seed,
    so they are identical), without fitting the members again.
    """
    import copy

    from router.predictors import EnsembleSuccess

    base = routers[0]
    for other in routers[1:]:
        if other.models_ != base.models_:
            raise ValueError("ensemble members must be fitted on the same models")
    ens = copy.copy(base)
    ens.success = ens.success_ = EnsembleSuccess.from_fitted([r.success_ for r in routers], base.models_)
    return ens


# ----------------------------------------------------------------------------- thrifty tune


class TargetError(ValueError):
    """The target cannot be met by any setting of the router on the validation split."""


@dataclass
class Target:
    """What ``thrifty tune`` is asked for: exactly one of a quality or a cost per request."""

    quality: float | None = None  # absolute mean success
    relative: float | None = None  # share of the best single model's success rate
    max_cost: float | None = None  # USD per request
    budget: float | None = None  # USD, with ``requests`` expected requests
    requests: int | None = None

    @classmethod
    def parse(cls, target_quality: str | None = None, max_cost: float | None = None, budget: float | None = None, requests: int | None = None) -> "Target":
        given = [x is not None for x in (target_quality, max_cost, budget)]
        if sum(given) != 1:
            raise ValueError("give exactly one target: --target-quality, --max-cost-per-request or --budget (with --requests)")
        if budget is not None:
            if not requests or requests <= 0:
                raise ValueError("--budget needs --requests, the expected number of requests it must pay for")
            if budget <= 0:
                raise ValueError("--budget must be positive")
            return cls(budget=float(budget), requests=int(requests))
        if max_cost is not None:
            if max_cost <= 0:
                raise ValueError("--max-cost-per-request must be positive")
            return cls(max_cost=float(max_cost))
        text = str(target_quality).strip()
        try:
            if text.endswith("%"):
                value = float(text[:-1]) / 100
                if not 0 < value <= 1.5:
                    raise ValueError
                return cls(relative=value)
            value = float(text)
        except ValueError:
            raise ValueError(f"--target-quality {target_quality!r}: give a success rate in (0, 1] (e.g. 0.8) or a share of the best single model (e.g. 95%)") from None
        if not 0 < value <= 1:
            raise ValueError(f"--target-quality {value}: an absolute target is a success rate in (0, 1]; for a share of the best single model write e.g. 95%")
        return cls(quality=value)

    @property
    def cost_cap(self) -> float | None:
        if self.max_cost is not None:
            return self.max_cost
        if self.budget is not None:
            return self.budget / self.requests
        return None

    def quality_floor(self, best_single: float) -> float | None:
        if self.quality is not None:
            return self.quality
        if self.relative is not None:
            return self.relative * best_single
        return None

    def describe(self, best_single: float | None = None) -> str:
        if self.budget is not None:
            return f"budget ${self.budget:g} for {self.requests} requests (${self.cost_cap:.3g} per request)"
        if self.max_cost is not None:
            return f"at most ${self.max_cost:.3g} per request"
        if self.relative is not None:
            extra = f" = {self.relative * best_single:.3f}" if best_single is not None else ""
            return f"success >= {self.relative:.0%} of the best single model{extra}"
        return f"success >= {self.quality:.3f}"


@dataclass
class TuneResult:
    profile: object  # router.profiles.Profile
    path: Path | None
    target: Target
    validation: dict  # cost, quality, best single model on the validation prompts
    test: dict  # cost, quality of the chosen setting on the test prompts, and whether the target holds there
    router_uri: str | None
    n_validation: int
    n_test: int


def choose_setting(points: list[dict], target: Target, best_single: float, z: float = 0.0) -> dict:
    """The setting that meets ``target`` on the validation points: cheapest above a quality floor, or best under a cost cap.

    With ``z > 0`` a setting must meet the target by ``z`` standard errors
    (``quality_se`` / ``cost_se`` of a point): the cheapest setting that just
    meets a floor on the validation prompts falls short of it on new prompts
    about half the time.
    """
    floor = target.quality_floor(best_single)
    if floor is not None:
        ok = [p for p in points if p["quality"] - z * p.get("quality_se", 0.0) >= floor - 1e-12]
        if not ok:
            top = max(points, key=lambda p: (p["quality"] - z * p.get("quality_se", 0.0), -p["cost"]))
            sure = f" by {z:g} standard error(s)" if z > 0 else ""
            raise TargetError(
                f"target {target.describe(best_single)} cannot be met{sure}: the best setting of this router reaches "
                f"{top['quality']:.3f} ± {top.get('quality_se', 0.0):.3f} (at ${top['cost']:.3g} per request) on the validation split"
                + (" (lower --z to accept a smaller margin)" if z > 0 and top["quality"] >= floor else "")
            )
        return min(ok, key=lambda p: (p["cost"], -p["quality"]))
    cap = target.cost_cap
    ok = [p for p in points if p["cost"] + z * p.get("cost_se", 0.0) <= cap * (1 + 1e-12)]
    if not ok:
        low = min(points, key=lambda p: (p["cost"] + z * p.get("cost_se", 0.0), -p["quality"]))
        sure = f" by {z:g} standard error(s)" if z > 0 else ""
        raise TargetError(
            f"target {target.describe()} cannot be met{sure}: the cheapest setting of this router costs "
            f"${low['cost']:.3g} ± {low.get('cost_se', 0.0):.2g} per request on the validation split"
        )
    return max(ok, key=lambda p: (p["quality"], -p["cost"]))


def tune(
    frame,
    catalog_prices: PriceTable,
    target: Target,
    name: str,
    *,
    router: Router | None = None,
    router_uri: str | None = None,
    profiles_dir: Path | None = None,
    policies: Sequence[str] = POLICIES,
    predictor: str = "lightgbm",
    test_size: float = 0.3,
    seed: int = 0,
    task_holdout: str | None = None,
    validation_size: float = 0.3,
    z: float = 1.0,
    n_knobs: int = 256,
    save: bool = True,
    echo=lambda msg: None,
) -> TuneResult:
    """Pick the knob meeting ``target`` on a validation split; report it on the test split; save a profile.

    The logs are split by prompt into a tuning part and a test part. With a
    ``router`` (e.g. the registered champion) the tuning part is the
    validation split and its predictions come from that router, so it must
    not have been trained on these logs' test prompts. Without one, a router
    is fitted on ``1 - validation_size`` of the tuning part and the knob is
    chosen on the rest; that router is saved beside the profile and the
    profile points at it. Either
    way the reported quality and cost are those of the test split, which the
    choice never saw. A setting must meet the target on the validation split
    by ``z`` standard errors (default 1), so that it holds on new prompts more
    often than a coin flip. Only settings a profile can express are considered:
    ``threshold`` (most-likely fallback) and ``tradeoff``, each with its knob.
    """
    from router.persist import save_router
    from router.profiles import Profile, save_profile, validate_name
    from training.fit import fit_router, resolve_prices
    from training.replay import complete_matrix
    from training.dataset import OutcomeMatrix, split_by_prompt

    validate_name(name)
    matrix, _, _ = complete_matrix(OutcomeMatrix.from_frame(frame))
    prices, _ = resolve_prices(matrix, catalog_prices)
    tune_idx, test_idx = split_by_prompt(matrix, test_size, seed, task_holdout)
    val, test = matrix.subset(tune_idx), matrix.subset(test_idx)
    if router is not None:
        models = [m for m in matrix.models if m in router.models_ and m in prices]
        if len(models) < 2:
            raise ValueError(f"the router knows {len(models)} of the logged models; it needs at least two")
        val, test = val.select_models(models), test.select_models(models)
        s = router.score_features(router.features(val.texts), val.prompt_tokens(), prices, models=models)
        P, C = s.p, s.cost
    else:
        # the knob is chosen for the very router the profile will name: fit it on
        # part of the tuning prompts, choose on the rest (a refit on all of them
        # would map the same knob to different decisions)
        fit_idx, val_idx = split_by_prompt(val, validation_size, seed + 1)
        fit_part, val = val.subset(fit_idx), val.subset(val_idx)
        echo(f"fitting {predictor} on {fit_part.n_prompts} prompts; knob chosen on {val.n_prompts} validation prompts")
        router = fit_router(fit_part, prices, predictor=predictor, seed=seed)
        s = router.score_features(router.features(val.texts), val.prompt_tokens(), prices, models=list(val.models))
        P, C = s.p, s.cost
    models = list(val.models)
    best_single = float(val.success.mean(axis=0).max())
    points = []
    for policy in policies:
        for knob, choice in sweep_policy(policy, P, C, n=n_knobs, models=models):
            s_, c_ = outcome_of(choice, val.success, val.cost)
            n = max(len(s_) - 1, 1)
            points.append(
                {
                    "policy": policy,
                    "knob": knob,
                    "cost": float(c_.mean()),
                    "quality": float(s_.mean()),
                    "cost_se": float(c_.std() / math.sqrt(n)),
                    "quality_se": float(s_.std() / math.sqrt(n)),
                }
            )
    chosen = choose_setting(points, target, best_single, z)
    policy_obj = make_policy(chosen["policy"], chosen["knob"])
    st = router.score_features(router.features(test.texts), test.prompt_tokens(), prices, models=models)
    choice, _ = policy_obj.choose(st.p, st.cost, None, models)
    ts, tc = outcome_of(choice, test.success, test.cost)
    test_best = float(test.success.mean(axis=0).max())
    test_report = {"cost": float(tc.mean()), "quality": float(ts.mean()), "best_single": test_best}
    floor, cap = target.quality_floor(test_best), target.cost_cap
    test_report["target_met"] = bool((floor is None or ts.mean() >= floor - 1e-12) and (cap is None or tc.mean() <= cap * (1 + 1e-12)))
    path = None
    if save:
        profiles_dir = Path(profiles_dir)
        if router_uri is None:
            router_path = save_router(router, profiles_dir / f"{name}.router.joblib")
            router_uri = str(router_path.resolve())
    validation = {"cost": chosen["cost"], "quality": chosen["quality"], "best_single": best_single}
    profile = Profile(
        name=name,
        policy=chosen["policy"],
        knob=float(chosen["knob"]),
        router_uri=router_uri,
        allowed=None,
        target={
            "asked": target.describe(best_single),
            **{k: v for k, v in asdict(target).items() if v is not None},
            "validation": validation,
            "test": test_report,
            "validation_prompts": int(val.n_prompts),
            "test_prompts": int(test.n_prompts),
            "seed": seed,
            "test_size": test_size,
        },
    )
    if save:
        path = save_profile(profile, profiles_dir)
    return TuneResult(profile, path, target, validation, test_report, router_uri, val.n_prompts, test.n_prompts)
