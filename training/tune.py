"""``thrifty tune``: the knob that meets a target, saved as a named profile.

The target is a quality (absolute, or a share of the best single model), a
cost per request, or a budget over an expected request volume. The knob is
chosen on a validation split and reported on a separate test split.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from models.prices import PriceTable
from router.policy import make_policy
from router.router import Router
from training.certify import betting_pvalues, fixed_sequence, paired_loss
from training.served import FALLBACK_KNOB
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


def certify_setting(
    policies: Sequence[str],
    knobs: Sequence[float],
    success: np.ndarray,
    cost: np.ndarray,
    best_success: np.ndarray,
    target: Target,
    *,
    confidence: float = 0.9,
    seed: int = 0,
) -> dict:
    """The setting certified to meet ``target`` with ``confidence`` on the validation prompts: the cheapest above a quality
    floor, or the best under a cost cap.

    Settings ``k`` (``policies[k]``, ``knobs[k]``; ``success``/``cost`` are the
    logged outcomes of their choices, ``(n, K)``) are tested per policy in
    the order given, from safe to risky for the target (a sweep's order for a
    quality floor, reversed for a cost cap), with the betting test and
    fixed-sequence testing of :mod:`training.certify` at
    ``(1 - confidence) / policies``. ``best_success``: per prompt, the success
    of the validation prompts' best single model (a relative floor is paired
    with it).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"--confidence {confidence}: give a probability in (0, 1), e.g. 0.9")
    names = list(dict.fromkeys(policies))
    delta = (1 - confidence) / len(names)
    quality_target = target.cost_cap is None
    mean_s, mean_c = success.mean(axis=0), cost.mean(axis=0)
    if quality_target:
        loss, low, high = paired_loss(success, best_success, relative=target.relative, absolute=target.quality)
    else:
        cap = target.cost_cap
    certified, closest = [], None
    for name in names:
        ks = [k for k, p in enumerate(policies) if p == name]
        order = ks if quality_target else ks[::-1]
        if quality_target:
            pv = betting_pvalues(loss[:, order], low, high, delta=delta, seed=seed)
        else:
            # a call's cost has no bound known in advance: each setting is bounded by its largest cost on these prompts
            pv = np.array([
                0.0 if cost[:, k].max() <= cap else betting_pvalues(cost[:, k] - cap, -cap, float(cost[:, k].max()) - cap, delta=delta, seed=seed)[0]
                for k in order
            ])
        passed = fixed_sequence(pv, delta)
        certified += order[:passed]
        if passed < len(order):
            k = order[passed]
            if closest is None or pv[passed] < closest[1]:
                closest = (k, float(pv[passed]))
    def point(k: int, p: float | None = None) -> dict:
        return {"policy": policies[k], "knob": float(knobs[k]), "cost": float(mean_c[k]), "quality": float(mean_s[k]), "p_value": p}

    if certified:
        key = (lambda k: (mean_c[k], -mean_s[k])) if quality_target else (lambda k: (-mean_s[k], mean_c[k]))
        return point(min(certified, key=key))
    best = float(best_success.mean())
    shown = "" if closest is None else (
        f": the first setting not certified ({policies[closest[0]]} knob {knobs[closest[0]]:.4g}) reaches success {mean_s[closest[0]]:.3f} "
        f"at ${mean_c[closest[0]]:.3g} per request (p = {closest[1]:.2g} > {delta:.2g})"
    )
    raise TargetError(
        f"target {target.describe(best)} cannot be met with {confidence:.0%} confidence on the {len(success)} prompts of the validation split{shown}"
        " (lower --confidence, or ask for less)"
    )


def split_for_tuning(frame, catalog_prices: PriceTable, *, router: Router | None, test_size: float, seed: int,
                     task_holdout: str | None, need_answers: bool = False):
    """The complete part of the logs, its prices, and its split by prompt into a tuning part and a test part.

    With a ``router``, both parts keep only the models it knows and prices (at least two).
    """
    from training.dataset import OutcomeMatrix, complete_matrix, split_by_prompt
    from training.fit import resolve_prices

    matrix, _, _ = complete_matrix(OutcomeMatrix.from_frame(frame))
    if need_answers and matrix.answers is None:
        from training.cascades import CascadeSearchError

        raise CascadeSearchError("the logs carry no parsed answers (column 'answer'): a cascade cannot be tuned on them")
    prices, _ = resolve_prices(matrix, catalog_prices)
    tune_idx, test_idx = split_by_prompt(matrix, test_size, seed, task_holdout)
    tuning, test = matrix.subset(tune_idx), matrix.subset(test_idx)
    if router is not None:
        models = [m for m in matrix.models if m in router.models_ and m in prices]
        if len(models) < 2:
            raise ValueError(f"the router knows {len(models)} of the logged models; it needs at least two")
        tuning, test = tuning.select_models(models), test.select_models(models)
    return prices, tuning, test


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
    confidence: float = 0.9,
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
    choice never saw. A setting must be certified to meet the target with
    ``confidence`` on the validation split (:func:`certify_setting`), so that it
    holds on new prompts that often. Only settings a profile can express are considered:
    ``threshold`` (most-likely fallback) and ``tradeoff``, each with its knob.
    A quality target no setting is certified for gives, as ``thrifty train``
    does, a profile that sends every request to the most likely model, with
    ``validation["certified"]`` False and the reason; a cost cap that cannot be
    certified raises :class:`TargetError`.
    """
    from router.persist import save_router
    from router.profiles import Profile, save_profile, validate_name
    from training.dataset import split_by_prompt
    from training.fit import fit_router

    validate_name(name)
    prices, val, test = split_for_tuning(frame, catalog_prices, router=router, test_size=test_size, seed=seed,
                                         task_holdout=task_holdout)
    if router is not None:
        s = router.score_features(router.features(val.texts), val.prompt_tokens(), prices, models=list(val.models))
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
    best = int(np.argmax(val.success.mean(axis=0)))
    names, knobs, choices = [], [], []
    for policy in policies:
        for knob, choice in sweep_policy(policy, P, C, n=n_knobs, models=models):
            names.append(policy)
            knobs.append(knob)
            choices.append(choice)
    rows = np.arange(val.n_prompts)[:, None]
    choice = np.stack(choices, axis=1)
    try:
        chosen = certify_setting(names, knobs, val.success[rows, choice], val.cost[rows, choice], val.success[:, best], target,
                                 confidence=confidence, seed=seed)
    except TargetError as exc:
        if target.cost_cap is not None or (target.quality is not None and best_single < target.quality):
            raise  # a cost cap, or a floor above every model: no fallback meets it
        # As `thrifty train` does: a quality floor nothing cheaper is certified for is
        # served by the most likely model (threshold at FALLBACK_KNOB), and said so.
        fallback, _ = make_policy("threshold", FALLBACK_KNOB).choose(P, C, None, models)
        fs, fc = outcome_of(fallback, val.success, val.cost)
        chosen = {"policy": "threshold", "knob": FALLBACK_KNOB, "cost": float(fc.mean()), "quality": float(fs.mean()),
                  "p_value": None, "not_certified": str(exc)}
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
    validation = {"cost": chosen["cost"], "quality": chosen["quality"], "best_single": best_single, "certified": "not_certified" not in chosen}
    if "not_certified" in chosen:
        validation["not_certified"] = chosen["not_certified"]
    profile = Profile(
        name=name,
        policy=chosen["policy"],
        knob=float(chosen["knob"]),
        router_uri=router_uri,
        allowed=None,
        target={
            "asked": target.describe(best_single),
            **{k: v for k, v in asdict(target).items() if v is not None},
            "confidence": confidence,
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


def tune_cascade(
    frame,
    catalog_prices: PriceTable,
    target: Target,
    name: str,
    *,
    router: Router | None = None,
    router_uri: str | None = None,
    profiles_dir: Path | None = None,
    families: Sequence[str] | None = None,
    predictor: str = "lightgbm",
    test_size: float = 0.3,
    seed: int = 0,
    task_holdout: str | None = None,
    folds: int = 3,
    max_models: int = 8,
    confidence: float = 0.9,
    save: bool = True,
    echo=lambda msg: None,
) -> TuneResult:
    """``thrifty tune --cascade``: the cascade meeting ``target``, searched on the tuning split, saved as a profile.

    The logs are split by prompt into a tuning part and a test part. Cascades
    are searched on the tuning part (:class:`training.cascades.CascadeSearch`,
    every family of ``families``) with out-of-fold inputs: the router's
    predictions of each tuning prompt come from a router that did not see it
    (``training.fit.cross_fit``; with a given ``router``, its own predictions),
    and learned acceptance tests are fitted on the other folds. Among the
    settings on the families' Pareto fronts, the one certified to meet the
    target with ``confidence`` (:func:`certify_setting`: the cheapest above a
    quality floor, the best under a cost cap) on those out-of-fold outcomes is
    chosen; only then is it replayed on the test prompts, which the choice never
    saw. Without a ``router``, one is fitted on every tuning prompt, saved beside
    the profile and named by it (serving's gates and router-based tests use it).
    """
    from router.persist import save_router
    from router.profiles import Profile, save_profile, validate_name
    from training.cascades import FAMILIES, CascadeSearch, cascade_data, infer_answer_kind, run_cascade
    from training.dataset import prompt_folds
    from training.fit import cross_fit, fit_router
    from training.replay import router_scores

    validate_name(name)
    families = tuple(families or FAMILIES)
    prices, train, test = split_for_tuning(frame, catalog_prices, router=router, test_size=test_size, seed=seed,
                                           task_holdout=task_holdout, need_answers=True)
    if router is not None:
        p_train = router_scores(router, train, prices).p
    else:
        echo(f"cross-fitting {predictor} on {train.n_prompts} tuning prompts ({folds} folds) for out-of-fold predictions")
        p_train, _, _ = cross_fit(train, prices, predictor=predictor, seed=seed, folds=folds)
        router = fit_router(train, prices, predictor=predictor, seed=seed)
    p_test = router_scores(router, test, prices).p
    kind = infer_answer_kind(train.answers)
    dtrain, dtest = cascade_data(train, p_train, kind), cascade_data(test, p_test, kind)
    search = CascadeSearch(dtrain, prompt_folds(train.texts, folds, seed), max_models=max_models)
    settings = []
    for family in families:
        found = search.search(family)
        echo(f"cascade/{family}: {found.n_evaluated} settings on {dtrain.n_prompts} tuning prompts; {len(found.settings)} on their Pareto front")
        settings += [(family, s) for s in found.settings]
    # safe to risky for a quality floor: dearest first (certify_setting reverses the order for a cost cap)
    settings.sort(key=lambda fs: -fs[1].cost)
    success = np.stack([s.success for _, s in settings], axis=1)
    cost = np.stack([run_cascade(s.cascade, dtrain).cost for _, s in settings], axis=1)
    best = int(np.lexsort((train.cost.mean(axis=0), -train.success.mean(axis=0)))[0])
    chosen = certify_setting([f for f, _ in settings], list(range(len(settings))), success, cost, train.success[:, best], target,
                             confidence=confidence, seed=seed)
    family, setting = settings[int(chosen["knob"])]
    cascade = setting.cascade
    cascade = type(cascade)(name, cascade.stages, cascade.answer_kind)
    out = run_cascade(cascade, dtest)
    test_best = float(test.success.mean(axis=0).max())
    test_report = {"cost": float(out.cost.mean()), "quality": float(out.success.mean()), "best_single": test_best,
                   "calls_per_request": float(out.n_calls.mean())}
    floor, cap = target.quality_floor(test_best), target.cost_cap
    test_report["target_met"] = bool((floor is None or out.success.mean() >= floor - 1e-12) and (cap is None or out.cost.mean() <= cap * (1 + 1e-12)))
    best_single = float(train.success.mean(axis=0).max())
    validation = {"cost": chosen["cost"], "quality": chosen["quality"], "best_single": best_single}
    path = None
    if save:
        profiles_dir = Path(profiles_dir)
        if router_uri is None:
            router_uri = str(save_router(router, profiles_dir / f"{name}.router.joblib").resolve())
    profile = Profile(
        name=name,
        router_uri=router_uri,
        cascade=cascade.to_dict(),
        target={
            "asked": target.describe(best_single),
            **{k: v for k, v in asdict(target).items() if v is not None},
            "confidence": confidence,
            "family": family,
            "describe": cascade.describe(),
            "validation": validation,
            "test": test_report,
            "validation_prompts": int(train.n_prompts),
            "test_prompts": int(test.n_prompts),
            "seed": seed,
            "test_size": test_size,
        },
    )
    if save:
        path = save_profile(profile, profiles_dir)
    return TuneResult(profile, path, target, validation, test_report, router_uri, train.n_prompts, test.n_prompts)
