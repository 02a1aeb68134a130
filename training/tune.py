"""``thrifty tune``: the knob that meets a target, saved as a named profile.

The target is a quality (absolute, or a share of the best single model), a
cost per request, or a budget over an expected request volume. The knob is
chosen on a validation split and reported on a separate test split.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from models.prices import PriceTable
from router.policy import make_policy
from router.router import Router
from training.sweep import POLICIES, outcome_of, sweep_policy
from training.targets import Target, TargetError


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
    from training.dataset import OutcomeMatrix, complete_matrix, split_by_prompt
    from training.fit import fit_router, resolve_prices

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
