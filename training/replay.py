"""Offline replay: route logged prompts again under every setting of a router's knob.

On logs where every model answered every prompt, the outcome of any routing
decision is known, so a router is measured by replaying it: split by prompt
(or hold out a whole task), train on one part, and on the other sweep the
policy's knob over its whole range, recording for every setting the
*logged* mean cost and mean success of the models it chose.

:func:`replay_rows` is the sweep itself — a generator of
:class:`ReplayRow` (router, knob, choices) with no hidden state; everything
else derives from its rows: the curve points, ``decisions.parquet``, and the
metrics of :mod:`training.metrics`. :func:`run_replay` is the pipeline behind
``thrifty replay``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import pandas as pd

from models.prices import PriceTable
from router.router import Router
from router.predictors import get_predictor, predictor_names
from training import baselines
from training.dataset import OutcomeMatrix, complete_matrix, split_by_prompt
from training.metrics import (
    POINT_METRICS,
    Reference,
    curve_metrics,
    margin_above,
    point_metrics,
    reference,
)
from training.outputs import write_json
from training.served import DEFAULT_CONFIDENCE, DEFAULT_PREDICTOR, DEFAULT_TARGET
from training.sweep import POLICIES, best_model_index, knob_grid, policy_kwargs, sweep_policy
from training.targets import Target

BEST_FIXED = "best_fixed"
ORACLE = "oracle"
RANDOM = "random"
TASK_PRIOR = "task_prior"
SERVED = "served"
CASCADE_PREFIX = "cascade/"


@dataclass(frozen=True)
class ReplayRow:
    """One setting of one router: the model chosen for each evaluation prompt (column indices)."""

    router: str
    knob: float
    choice: np.ndarray


@dataclass
class LearnedRouter:
    """A router to replay, with the policies to sweep and its served (default) policy."""

    name: str
    router: Router
    policies: Sequence[str] = POLICIES
    certificate: dict | None = None  # the served default's certificate (see training.served)
    fallback: str | None = None  # the threshold policy's fallback model (the best single model on training prompts)


# ----------------------------------------------------------------------------- the sweep


def router_scores(router: Router, evalset: OutcomeMatrix, prices: PriceTable):
    """Predictions for the evaluation prompts, featurized once, in the evaluation's model order."""
    X = router.features(evalset.texts)
    return router.score_features(X, evalset.prompt_tokens(), prices, models=evalset.models)


def replay_rows(
    evalset: OutcomeMatrix,
    train: OutcomeMatrix | None,
    learned: Sequence[LearnedRouter],
    prices: PriceTable,
    *,
    n_knobs: int = 256,
    seed: int = 0,
    extra_knobs: dict[str, Sequence[float]] | None = None,
) -> Iterator[ReplayRow]:
    """Every (router, knob) setting of the baselines and of each learned router, on ``evalset``.

    Baselines first: each single model (router = model name, knob NaN), random,
    the oracle's λ sweep, the per-task prior's λ sweep (needs ``train``). Then
    each learned router under each policy (``<name>/<policy>``) over the
    policy's grid plus ``extra_knobs[<name>/<policy>]``, and its served
    policy (``<name>/served``) as a single setting.
    """
    S, C = evalset.success, evalset.cost
    n, m = S.shape
    for j, model in enumerate(evalset.models):
        yield ReplayRow(model, float("nan"), np.full(n, j))
    yield ReplayRow(RANDOM, float("nan"), baselines.random_choice(n, m, seed))
    for lam, choice in baselines.oracle_sweep(S, C, n=max(n_knobs, 512)):
        yield ReplayRow(ORACLE, lam, choice)
    if train is not None and train.n_prompts:
        tc = train.select_models(evalset.models)
        for lam, choice in baselines.task_prior_sweep(tc.tasks, tc.success, tc.cost, evalset.tasks, n=n_knobs):
            yield ReplayRow(TASK_PRIOR, lam, choice)
    extra_knobs = extra_knobs or {}
    for item in learned:
        s = router_scores(item.router, evalset, prices)
        for policy in item.policies:
            name = f"{item.name}/{policy}"
            grid = knob_grid(policy, s.p, s.cost, n_knobs, extra_knobs.get(name, ()))
            kw = policy_kwargs(policy, item.fallback if item.fallback in s.models else None)
            for knob, choice in sweep_policy(policy, s.p, s.cost, grid, keep=extra_knobs.get(name, ()), models=s.models, **kw):
                yield ReplayRow(name, knob, choice)
        if item.router.policy_ is not None:
            yield ReplayRow(f"{item.name}/{SERVED}", float(item.router.policy_.knob), item.router.default_choice(s))


# ----------------------------------------------------------------------------- results


@dataclass
class ReplayResult:
    evalset: OutcomeMatrix
    curve: pd.DataFrame  # router, knob, cost, quality
    decisions: pd.DataFrame  # router, knob, dataset, prompt_id, model
    metrics: dict[str, dict[str, float]]  # name -> metric -> value
    reference: Reference
    meta: dict = field(default_factory=dict)
    cascade_decisions: pd.DataFrame | None = None  # router, knob, dataset, prompt_id, models_called, answered_by
    calibration: dict | None = None  # the served default's calibration on the evaluation prompts (training.fit.calibration_table)

    @property
    def single_models(self) -> list[str]:
        return list(self.evalset.models)

    def learned_curves(self) -> list[str]:
        """The swept learned routers (``<router>/<policy>``); model names may contain '/' too."""
        singles = set(self.single_models)
        return [k for k in self.metrics if k not in singles and "/" in k and not k.endswith(f"/{SERVED}") and not k.startswith(CASCADE_PREFIX)]

    def best_learned(self) -> str | None:
        names = [k for k in self.learned_curves() if np.isfinite(self.metrics[k]["aiq"])]
        return max(names, key=lambda k: self.metrics[k]["aiq"]) if names else None

    def best_cascade(self) -> str | None:
        names = [k for k in self.metrics if k.startswith(CASCADE_PREFIX) and np.isfinite(self.metrics[k]["aiq"])]
        return max(names, key=lambda k: self.metrics[k]["aiq"]) if names else None


def summarise(evalset: OutcomeMatrix, rows: Sequence[ReplayRow], point_knobs: dict[str, float] | None = None) -> tuple[pd.DataFrame, pd.DataFrame, dict, Reference]:
    """Curve points, decisions and the metrics table from the replay rows."""
    S, C = evalset.success, evalset.cost
    n = len(S)
    idx = np.arange(n)
    models = np.asarray(evalset.models, dtype=object)
    prompt_ids = np.array([k.split("/", 1)[1] if "/" in k else k for k in evalset.prompt_keys], dtype=object)

    curve_rows, decision_parts = [], []
    by_router: dict[str, list[tuple[float, np.ndarray, float, float]]] = {}
    for row in rows:
        s, c = S[idx, row.choice], C[idx, row.choice]
        q, cost = float(s.mean()), float(c.mean())
        curve_rows.append((row.router, row.knob, cost, q))
        by_router.setdefault(row.router, []).append((row.knob, row.choice, cost, q))
        decision_parts.append(
            pd.DataFrame(
                {
                    "router": row.router,
                    "knob": row.knob,
                    "dataset": evalset.datasets,
                    "prompt_id": prompt_ids,
                    "model": models[row.choice],
                }
            )
        )
    curve = pd.DataFrame(curve_rows, columns=["router", "knob", "cost", "quality"])
    decisions = pd.concat(decision_parts, ignore_index=True)
    for col in ("router", "dataset", "prompt_id", "model"):
        decisions[col] = decisions[col].astype("string")

    single = [by_router[mdl][0] for mdl in evalset.models]
    mcost = np.array([r[2] for r in single])
    mqual = np.array([r[3] for r in single])
    oracle = by_router[ORACLE]
    ref = reference(list(evalset.models), mcost, mqual, [r[2] for r in oracle], [r[3] for r in oracle])
    strong = evalset.models.index(ref.strong) if ref.strong is not None else None

    def point(choice) -> dict[str, float]:
        return point_metrics(S[idx, choice], evalset.input_tokens[idx, choice], evalset.output_tokens[idx, choice], C[idx, choice])

    def share(settings):
        return None if strong is None else [float(np.mean(r[1] == strong)) for r in settings]

    point_knobs = point_knobs or {}
    metrics: dict[str, dict[str, float]] = {}
    for name, settings in by_router.items():
        if name in (ORACLE, TASK_PRIOR):
            chosen = next(r for r in settings if r[0] == 0.0)  # λ = 0: the oracle point / the best model per task
        elif name in point_knobs:
            want = point_knobs[name]
            chosen = min(settings, key=lambda r: abs(r[0] - want) if np.isfinite(r[0]) else math.inf)
        else:
            chosen = settings[0]
        entry = {"knob": chosen[0], **point(chosen[1])}
        entry.update(curve_metrics(ref, [r[2] for r in settings], [r[3] for r in settings], share(settings)))
        if len(settings) == 1:
            # one setting is a point, not a curve: its AIQ (a flat line from its cost) and
            # RouteLLM's curve metrics say nothing; the margin above best fixed does
            for key in ("aiq", "gap_closed", "apgr", "cpt50", "cpt80"):
                if key in entry:
                    entry[key] = float("nan")
        entry["margin_vs_fixed"] = margin_above(ref.fixed_x, ref.fixed_y, chosen[2], chosen[3])
        entry["settings"] = float(len(settings))
        metrics[name] = entry
    for entry in metrics.values():
        entry.update(versus_best(entry, ref))
    # best fixed: the hull of the single models; its point is the best single model
    best = metrics[ref.best_model]
    entry = {"knob": float("nan"), **{k: best[k] for k in POINT_METRICS}}
    entry.update(curve_metrics(ref, mcost, mqual, None if strong is None else [0.0 if j != strong else 1.0 for j in range(len(mcost))]))
    entry["margin_vs_fixed"] = 0.0
    entry["settings"] = float(len(mcost))
    entry.update(versus_best(entry, ref))
    metrics = {**{k: metrics[k] for k in evalset.models}, BEST_FIXED: entry, **{k: v for k, v in metrics.items() if k not in evalset.models}}
    return curve, decisions, metrics, ref


def versus_best(entry: dict, ref: Reference) -> dict[str, float]:
    """A point's success and mean cost divided by the best single model's on the same prompts."""
    return {
        "success_vs_best": entry["success_rate"] / ref.best_quality if ref.best_quality > 0 else float("nan"),
        "cost_vs_best": entry["usd_per_request"] / ref.best_cost if ref.best_cost > 0 else float("nan"),
    }


# ----------------------------------------------------------------------------- pipeline


def run_replay(
    frame: pd.DataFrame,
    catalog_prices: PriceTable,
    *,
    router: Router | None = None,
    router_name: str = "router",
    test_size: float = 0.3,
    seed: int = 0,
    task_holdout: str | None = None,
    predictors: Sequence[str] | None = None,
    policies: Sequence[str] = POLICIES,
    n_knobs: int = 256,
    folds: int = 3,
    min_coverage: float = 0.9,
    cascades: bool = False,
    cascade_models: int = 8,
    target: Target = DEFAULT_TARGET,
    confidence: float = DEFAULT_CONFIDENCE,
    select_prompts: int | None = 3000,
    echo: Callable[[str], None] = lambda msg: None,
) -> ReplayResult:
    """Split, train (unless ``router`` is given), replay and measure. See the module docstring.

    ``predictors``: registered success predictors to train (default: those the
    registry marks as replayed). Each one's served default is certified on
    the training split exactly as ``thrifty train`` certifies it (``target``,
    ``confidence``; on at most ``select_prompts`` training prompts).
    ``cascades``: also search cascades over at most ``cascade_models`` models
    on the training split and replay them (``training.cascades``).
    """
    from training.fit import ensemble_router, fit_router, resolve_prices
    from training.served import collect_evidence, evidence_prompts, serve

    if predictors is None:
        predictors = [k for k in predictor_names() if get_predictor(k).replayed]
    for kind in predictors:
        get_predictor(kind)  # an unknown name fails here, before any fitting

    full = OutcomeMatrix.from_frame(frame)
    matrix, dropped_models, dropped_prompts = complete_matrix(full, min_coverage)
    if cascades and matrix.answers is None:  # before any fitting
        raise ValueError("--cascades: the logs carry no parsed answers (column 'answer'), so no cascade can be replayed")
    if dropped_models or dropped_prompts:
        echo(
            f"replaying the complete part of the logs: {matrix.n_prompts} prompts x {len(matrix.models)} models"
            + (f"; dropped {len(dropped_models)} model(s) answering < {min_coverage:.0%} of prompts: {', '.join(dropped_models)}" if dropped_models else "")
            + (f"; dropped {dropped_prompts} prompt(s) not answered by every model" if dropped_prompts else "")
        )
    prices, inferred = resolve_prices(matrix, catalog_prices)
    if inferred:
        echo(f"prices implied by logged costs for {len(inferred)} model(s) not in the catalog")
    train_idx, test_idx = split_by_prompt(matrix, test_size, seed, task_holdout)
    train, test = matrix.subset(train_idx), matrix.subset(test_idx)
    learned: list[LearnedRouter] = []
    extra: dict[str, list[float]] = {}
    point_knobs: dict[str, float] = {}
    certificates: dict[str, dict] = {}
    fitted: dict[str, tuple[Router, list]] = {}  # predictor -> router, its evidence (training.served.Evidence)
    if router is not None:
        known = [m for m in test.models if m in router.models_ and m in prices]
        if len(known) < 2:
            raise ValueError(f"the router knows {len(known)} of the logged models; it needs at least two")
        if len(known) < len(test.models):
            echo(f"replaying on the {len(known)} logged models the router knows")
            test, train = test.select_models(known), train.select_models(known)
        train_best = train.models[best_model_index(train.success, train.cost)] if train.n_prompts else None
        cert = getattr(router, "certificate_", None)
        learned.append(LearnedRouter(router_name, router, policies, None if cert is None else cert.to_dict(), train_best))
    else:
        for kind in predictors:
            members = get_predictor(kind).members
            if members and all(m in fitted for m in members):
                # the mean of the members' predictions: no need to fit them again
                router_k = ensemble_router([fitted[m][0] for m in members])
                evidence = [ev.averaged([fitted[m][1][i] for m in members[1:]]) for i, ev in enumerate(fitted[members[0]][1])]
            else:
                echo(f"fitting {kind} on {train.n_prompts} prompts (its served default certified on {folds}-fold cross-fitted predictions)")
                evidence = collect_evidence(evidence_prompts(train, select_prompts, seed), prices, predictor=kind, seed=seed, folds=folds)
                router_k = fit_router(train, prices, predictor=kind, seed=seed)
            fitted[kind] = (router_k, evidence)
            served, cert = serve(router_k, evidence, target=target, confidence=confidence, policies=policies, seed=seed)
            learned.append(LearnedRouter(kind, served, policies, cert.to_dict(), cert.best_model or None))
            certificates[kind] = {k: v for k, v in cert.to_dict().items() if k != "prices"}
            if cert.policy in policies:
                extra[f"{kind}/{cert.policy}"] = [cert.knob]
                point_knobs[f"{kind}/{cert.policy}"] = cert.knob
    echo(f"replaying on {test.n_prompts} held-out prompts")
    rows = list(replay_rows(test, train, learned, prices, n_knobs=n_knobs, seed=seed, extra_knobs=extra))
    curve, decisions, metrics, ref = summarise(test, rows, point_knobs)
    cascade_decisions = None
    if cascades:
        from training.cascades import add_cascade_rows

        curve, metrics, cascade_decisions, cascade_meta = add_cascade_rows(train, test, learned, fitted, prices, ref, curve, metrics, folds=folds, seed=seed, max_models=cascade_models, echo=echo)
    meta = {
        "models": list(test.models),
        "single_models": list(test.models),
        "best_model": ref.best_model,
        "cost_range": [ref.lo, ref.hi],
        "weak": ref.weak,
        "strong": ref.strong,
        "train_prompts": int(train.n_prompts),
        "test_prompts": int(test.n_prompts),
        "dropped_models": dropped_models,
        "dropped_prompts": int(dropped_prompts),
        "inferred_prices": inferred,
        "test_size": test_size,
        "seed": seed,
        "task_holdout": task_holdout,
        "n_knobs": n_knobs,
        "folds": folds,
        "certificates": certificates,
        # what `thrifty train` would serve: its default predictor if trained here, else the first router replayed
        "served_default": f"{DEFAULT_PREDICTOR}/{SERVED}" if DEFAULT_PREDICTOR in certificates else (f"{learned[0].name}/{SERVED}" if learned else None),
        "target": target.describe(),
        "confidence": confidence,
        "datasets": sorted(set(map(str, matrix.datasets))),
    }
    if cascades:
        meta["cascades"] = cascade_meta
    from training.fit import calibration_table

    served = next((item.router for item in learned if f"{item.name}/{SERVED}" == meta["served_default"]), None)
    calibration = calibration_table(served, test) if served is not None else None
    return ReplayResult(test, curve, decisions, metrics, ref, meta, calibration=calibration, cascade_decisions=cascade_decisions)


# ----------------------------------------------------------------------------- outputs

TABLE_COLUMNS = (
    ("success_rate", "success", "{:.3f}"),
    ("success_vs_best", "S/best", "{:.3f}"),
    ("cost_vs_best", "$/best", "{:.3f}"),
    ("input_tokens", "in tok", "{:.0f}"),
    ("output_tokens", "out tok", "{:.0f}"),
    ("usd_per_request", "$/req", "{:.3g}"),
    ("usd_per_success", "$/success", "{:.3g}"),
    ("aiq", "AIQ", "{:.4f}"),
    ("gap_closed", "gap", "{:+.3f}"),
    ("cost_to_best", "$→best", "{:.3f}"),
    ("cost_to_95", "$→95%", "{:.3f}"),
    ("margin_vs_fixed", "vs fixed", "{:+.4f}"),
)
TWO_MODEL_COLUMNS = (("apgr", "APGR", "{:.3f}"), ("cpt50", "CPT50", "{:.3f}"), ("cpt80", "CPT80", "{:.3f}"))
# with cascades: calls per request, latency (proxy) and the latency of calls whose answer was not returned
CASCADE_COLUMNS = (("calls_per_request", "calls", "{:.2f}"), ("latency_s", "latency s", "{:.2f}"), ("added_latency_s", "+latency s", "{:.2f}"))


def format_table(result: ReplayResult) -> str:
    columns = TABLE_COLUMNS + (TWO_MODEL_COLUMNS if result.reference.strong is not None else ())
    if result.cascade_decisions is not None:
        columns += CASCADE_COLUMNS
    width = max(len(k) for k in result.metrics) + 2
    head = f"{'router':<{width}}" + "".join(f"{label:>11}" for _, label, _ in columns)
    lines = [head, "-" * len(head)]
    for name, entry in result.metrics.items():
        cells = []
        for key, _, fmt in columns:
            value = entry.get(key, float("nan"))
            cells.append(f"{(fmt.format(value) if np.isfinite(value) else ('never' if value == math.inf else '-')):>11}")
        lines.append(f"{name:<{width}}" + "".join(cells))
    ref = result.reference
    lines.append("")
    lines.append(
        f"{result.meta.get('test_prompts')} test prompts, {len(ref.fixed_x)} single model(s) on the best-fixed hull; "
        f"AIQ over ${ref.lo:.3g}..${ref.hi:.3g} per request; best single model {ref.best_model} ({ref.best_quality:.3f})"
    )
    best = result.best_learned()
    if best:
        lines.append(f"best learned router: {best}, gap closed {result.metrics[best]['gap_closed']:+.3f}")
    served = result.meta.get("served_default")
    if served in result.metrics:
        m = result.metrics[served]
        lines.append(
            f"served default {served}: {m['success_vs_best']:.3f}x the success and {m['cost_vs_best']:.3f}x the cost of {ref.best_model} "
            f"(asked: {result.meta.get('target')}, {result.meta.get('confidence', float('nan')):.0%} confidence)"
        )
    cascade = result.best_cascade()
    if cascade:
        lines.append(f"best cascade: {cascade}, gap closed {result.metrics[cascade]['gap_closed']:+.3f} (tokens, USD and latency count every call)")
    return "\n".join(lines)


def write_outputs(result: ReplayResult, out_dir: str | Path, title: str = "") -> dict[str, Path]:
    """``metrics.json``, ``curve.csv``, ``decisions.parquet``, ``frontier.png``, ``replay.json`` and ``calibration.png`` in ``out_dir``
    (and ``cascade_decisions.parquet`` when cascades were replayed).

    In ``metrics.json`` a non-finite number is written as ``null``, as JSON has
    none: not defined (APGR on logs with more than two models) or never reached
    (the cost to reach a quality the router never reaches; the table says "never").
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "metrics": out / "metrics.json",
        "curve": out / "curve.csv",
        "decisions": out / "decisions.parquet",
        "plot": out / "frontier.png",
        "meta": out / "replay.json",
    }
    write_json(paths["metrics"], result.metrics)
    result.curve.to_csv(paths["curve"], index=False, float_format="%.17g")
    result.decisions.to_parquet(paths["decisions"], index=False)
    if result.cascade_decisions is not None:
        paths["cascade_decisions"] = out / "cascade_decisions.parquet"
        result.cascade_decisions.to_parquet(paths["cascade_decisions"], index=False)
    write_json(paths["meta"], result.meta)
    frontier_plot(result, paths["plot"], title)
    if result.calibration is not None:
        from training.plots import calibration_plot

        paths["calibration"] = calibration_plot(
            result.calibration, out / "calibration.png", f"{result.meta['served_default']}: calibration on {result.meta['test_prompts']} held-out prompts"
        )
    return paths


def frontier_plot(result: ReplayResult, path: Path, title: str = "") -> Path:
    """Cost (log scale) against success: single models, best-fixed hull, oracle, baselines, learned routers, cascades.

    Single models are numbered on the plot and named in a key beside it (30+
    model names cannot all be written at their points); legend and key sit
    outside the axes.
    """
    from training.metrics import pareto_hull
    from training.plots import _pyplot, outside_legend, palette, place_labels, save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 6.5))
    curve = result.curve
    singles = curve[curve.router.isin(result.single_models)].sort_values("cost")
    ax.scatter(singles.cost, singles.quality, color="black", s=14, zorder=5, label="single models (numbered, key below)")
    ref = result.reference
    hx, hy = ref.fixed_x, ref.fixed_y
    ax.plot(np.r_[hx, ref.hi], np.r_[hy, hy[-1]], color="black", linestyle="--", linewidth=1.2, label=f"best fixed (AIQ {ref.aiq_fixed:.3f})")
    names = [n for n in result.metrics if n not in result.single_models and n != BEST_FIXED and (curve.router == n).any()]
    for name, (colour, marker, _) in zip(names, palette(len(names))):
        pts = curve[curve.router == name]
        if len(pts) == 1:
            ax.scatter(pts.cost, pts.quality, marker="*" if name.endswith(SERVED) else marker, s=110, zorder=6, color=colour,
                       edgecolors="black", linewidths=0.4, label=name)
        elif name.startswith(CASCADE_PREFIX):  # cascades stand out: thick dash-dot hulls, their default point marked
            x, y = pareto_hull(pts.cost.to_numpy(), pts.quality.to_numpy())
            ax.scatter(pts.cost, pts.quality, s=4, alpha=0.4, color=colour)
            ax.plot(np.r_[x, ref.hi], np.r_[y, y[-1]], linestyle="-.", linewidth=2.0, color=colour,
                    label=f"{name} (AIQ {result.metrics[name]['aiq']:.3f}, all calls)")
            entry = result.metrics[name]
            ax.scatter([entry["usd_per_request"]], [entry["success_rate"]], marker="D", s=45, zorder=7, color=colour, edgecolors="black")
        else:
            x, y = pareto_hull(pts.cost.to_numpy(), pts.quality.to_numpy())
            style = ":" if name in (ORACLE, TASK_PRIOR) else "-"
            colour = "grey" if name == ORACLE else colour
            ax.scatter(pts.cost, pts.quality, s=3, alpha=0.35, color=colour)
            ax.plot(np.r_[x, ref.hi], np.r_[y, y[-1]], linestyle=style, linewidth=1.3, color=colour, label=f"{name} (AIQ {result.metrics[name]['aiq']:.3f})")
    ax.set_xscale("log")
    ax.margins(x=0.06, y=0.05)
    place_labels(ax, singles.cost.to_numpy(), singles.quality.to_numpy(), [str(k) for k in range(1, len(singles) + 1)])
    ax.set_xlabel("mean cost per request (USD, log scale)")
    ax.set_ylabel("mean success")
    ax.set_title(title or "cost–quality frontier on held-out prompts")
    ax.grid(True, which="both", alpha=0.2)
    legend = outside_legend(ax)
    key = "\n".join(f"{k:>2}  {m}" for k, m in enumerate(singles.router, 1))
    fig.canvas.draw()
    box = legend.get_window_extent().transformed(ax.transAxes.inverted())
    ax.text(box.x0, box.y0 - 0.03, key, transform=ax.transAxes, fontsize=6, va="top", ha="left", family="monospace")
    return save(fig, path)


def log_to_mlflow(result: ReplayResult, paths: dict[str, Path], experiment: str, params: dict | None = None, run_name: str = "replay") -> str:
    """Params, every metric of the table (``replay/<router>/<metric>``) and the artifacts, in one MLflow run."""
    import mlflow

    from training import tracking

    with tracking.start_run(experiment, run_name=run_name) as run:
        flat = {k: v for k, v in {**(params or {}), **{k: v for k, v in result.meta.items() if k not in ("certificates", "cascades")}}.items()}
        mlflow.log_params({k: str(v)[:500] for k, v in flat.items()})
        tracking.log_metrics_nested(result.metrics, prefix="replay/")
        for key in ("metrics", "curve", "plot", "meta", "calibration"):
            if key in paths:
                mlflow.log_artifact(str(paths[key]))
        for key in ("decisions", "cascade_decisions"):
            if key in paths and paths[key].stat().st_size < 64 * 2**20:
                mlflow.log_artifact(str(paths[key]))
        return run.info.run_id
