"""Cost–quality metrics of routers replayed on logged outcomes.

Every function here works on plain arrays of (average cost, average quality)
points, one point per setting of a router's knob, so that the metrics of a
replay can be recomputed from ``curve.csv`` — or from ``decisions.parquet``
and the logs — by anyone.

Conventions (stated once, used everywhere):

* **Point.** A router setting is one point: the mean logged USD cost and the
  mean logged success of the models it chose, over the evaluation prompts.
* **Hull.** A router can randomise between two of its settings (per request,
  with any probability), so what a router offers for an average budget ``c``
  is the *non-decreasing concave hull* of its points: ``Q(c)`` = the best
  mean quality of any random mixture of settings whose mean cost is at most
  ``c``. Its vertices are the upper convex hull of the points, from the
  cheapest point (the best quality among the cheapest ones) up to the first
  point of maximal quality. Right of its most expensive vertex ``Q`` stays
  flat at the maximal quality (spending more buys nothing; RouterBench pads
  each hull the same way). Left of its cheapest point nothing is achievable,
  so ``Q = 0`` there (RouterBench's area also starts at the first point).
* **AIQ** (RouterBench, ``withmartian/routerbench`` ``evaluation/AIQ.py``):
  the area under ``Q`` over the cost range ``[c_lo, c_hi]`` of the single
  models (cheapest and dearest single model's mean cost on the same prompts),
  divided by ``c_hi - c_lo`` — a quality in [0, 1]. Deviation: RouterBench
  integrates from 0 up to the largest cost any compared router reaches and
  divides by that cost; we fix the range to the single models' so that a
  router's AIQ does not depend on which other routers were compared with it,
  and we compute the hull exactly (monotone chain) instead of RouterBench's
  pairwise interpolation, which for well-formed input gives the same hull.
* **Best fixed** is the hull of the single models' points (mixing two models
  at random is always available); **gap closed** =
  ``(AIQ(router) - AIQ(best fixed)) / (AIQ(oracle) - AIQ(best fixed))``.
* **Cost to reach** a quality is the smallest ``c`` with ``Q(c) >= target``
  (so it may use a mixture of two settings), reported as a fraction of the
  reference model's cost; ``inf`` when the router never reaches it.
* **APGR / CPT** (RouteLLM, ``lm-sys/RouteLLM`` ``routellm/evals/evaluate.py``),
  two-model logs only: the x axis is the share of requests sent to the strong
  model (the one with the higher success rate on the evaluation prompts), the
  y axis quality. ``APGR = (AUC - q_weak) / (q_strong - q_weak)`` with the AUC
  by the trapezoidal rule over the share in [0, 1]; ``CPT(x)`` is the
  smallest share of strong calls at which the curve reaches
  ``q_weak + x (q_strong - q_weak)``. Deviations: RouteLLM's sweep always
  contains the all-weak and all-strong settings; ours need not (a threshold
  policy falls back to the most likely model), so the points (0, q_weak) and
  (1, q_strong), always available, are added to every curve; settings with
  the same share keep the best quality; CPT takes the first crossing of the
  curve, which equals RouteLLM's ``np.interp`` when the curve is monotone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

POINT_METRICS = ("success_rate", "input_tokens", "output_tokens", "usd_per_request", "usd_per_success")


# ----------------------------------------------------------------------------- hull


def pareto_hull(cost, quality) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (x, y) of the non-decreasing concave hull of points, cheapest first.

    Non-finite points are ignored; an empty input gives empty arrays.
    """
    x = np.asarray(cost, dtype=np.float64).ravel()
    y = np.asarray(quality, dtype=np.float64).ravel()
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if not len(x):
        return np.zeros(0), np.zeros(0)
    order = np.lexsort((-y, x))  # by cost, then best quality first
    x, y = x[order], y[order]
    # one point per cost: the best quality at that cost
    first = np.r_[True, x[1:] != x[:-1]]
    x, y = x[first], y[first]
    # upper hull by Andrew's monotone chain (left to right, keep right turns)
    hx: list[float] = []
    hy: list[float] = []
    for xi, yi in zip(x, y):
        while len(hx) >= 2:
            cross = (hx[-1] - hx[-2]) * (yi - hy[-2]) - (hy[-1] - hy[-2]) * (xi - hx[-2])
            if cross >= 0:  # the middle point is on or below the chord: not a vertex
                hx.pop()
                hy.pop()
            else:
                break
        hx.append(float(xi))
        hy.append(float(yi))
    hx_a, hy_a = np.array(hx), np.array(hy)
    top = int(np.argmax(hy_a))  # first vertex of maximal quality; the hull is flat after it
    return hx_a[: top + 1], hy_a[: top + 1]


def hull_value(hull_x: np.ndarray, hull_y: np.ndarray, c) -> np.ndarray:
    """``Q(c)``: the hull's quality at budget ``c`` (0 left of its cheapest point, flat right of its last)."""
    c = np.asarray(c, dtype=np.float64)
    if not len(hull_x):
        return np.zeros_like(c)
    q = np.interp(c, hull_x, hull_y)  # np.interp is flat beyond both ends
    # below the cheapest point nothing is achievable (a relative tolerance
    # absorbs the rounding of means taken in a different order)
    return np.where(c < hull_x[0] * (1 - 1e-9), 0.0, q)


def _integral(hull_x, hull_y, lo: float, hi: float) -> float:
    """Exact integral of ``Q`` over [lo, hi]."""
    if hi <= lo or not len(hull_x):
        return 0.0
    start = max(lo, float(hull_x[0]))
    if start >= hi:
        return 0.0
    xs = np.concatenate([[start], hull_x[(hull_x > start) & (hull_x < hi)], [hi]])
    ys = np.interp(xs, hull_x, hull_y)
    return float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2.0))


def aiq(cost, quality, lo: float, hi: float) -> float:
    """Area under the non-decreasing concave hull over [lo, hi], divided by ``hi - lo``.

    With ``hi == lo`` (every single model costs the same) the AIQ is ``Q(lo)``.
    """
    hx, hy = pareto_hull(cost, quality)
    if not hi > lo:
        return float(hull_value(hx, hy, lo))
    return _integral(hx, hy, lo, hi) / (hi - lo)


def gap_closed(aiq_router: float, aiq_fixed: float, aiq_oracle: float) -> float:
    """Share of the gap between best fixed and the oracle that a router closes (NaN if there is no gap)."""
    denom = aiq_oracle - aiq_fixed
    if not np.isfinite(denom) or denom <= 1e-12:
        return float("nan")
    return float((aiq_router - aiq_fixed) / denom)


def cost_to_reach(cost, quality, target: float) -> float:
    """Smallest mean cost at which the hull reaches quality ``target`` (``inf`` if never)."""
    hx, hy = pareto_hull(cost, quality)
    if not len(hx) or hy[-1] < target - 1e-12:
        return float("inf")
    if hy[0] >= target - 1e-12:
        return float(hx[0])
    k = int(np.argmax(hy >= target - 1e-12))  # first vertex at or above the target
    x0, x1, y0, y1 = hx[k - 1], hx[k], hy[k - 1], hy[k]
    return float(x0 + (target - y0) * (x1 - x0) / (y1 - y0))


def margin_above(hull_x, hull_y, cost: float, quality: float) -> float:
    """Vertical distance of a point above a hull (negative: below it).

    A point cheaper than the hull's cheapest vertex is compared with that
    vertex (not with 0): being cheaper than every single model is not, by
    itself, a margin in quality.
    """
    if not len(hull_x):
        return float("nan")
    return float(quality - np.interp(cost, hull_x, hull_y))


# ----------------------------------------------------------------------------- RouteLLM


def _share_curve(strong_share, quality, q_weak: float, q_strong: float) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([[0.0], np.asarray(strong_share, dtype=np.float64).ravel(), [1.0]])
    y = np.concatenate([[q_weak], np.asarray(quality, dtype=np.float64).ravel(), [q_strong]])
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    order = np.lexsort((-y, x))
    x, y = x[order], y[order]
    first = np.r_[True, x[1:] != x[:-1]]  # the best quality at each share
    return x[first], y[first]


def apgr(strong_share, quality, q_weak: float, q_strong: float) -> float:
    """RouteLLM's average performance gap recovered over the share of strong-model calls."""
    if not q_strong > q_weak:
        return float("nan")
    x, y = _share_curve(strong_share, quality, q_weak, q_strong)
    auc = float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))
    return (auc - q_weak) / (q_strong - q_weak)


def cpt(strong_share, quality, q_weak: float, q_strong: float, pgr: float) -> float:
    """RouteLLM's call-performance threshold: least share of strong calls reaching ``pgr`` of the gap."""
    if not q_strong > q_weak:
        return float("nan")
    target = q_weak + pgr * (q_strong - q_weak)
    x, y = _share_curve(strong_share, quality, q_weak, q_strong)
    if y[0] >= target - 1e-12:
        return float(x[0])
    for k in range(1, len(x)):
        if y[k] >= target - 1e-12:
            return float(x[k - 1] + (target - y[k - 1]) * (x[k] - x[k - 1]) / (y[k] - y[k - 1]))
    return float("nan")


# ----------------------------------------------------------------------------- points


def point_metrics(success: np.ndarray, input_tokens: np.ndarray, output_tokens: np.ndarray, cost: np.ndarray) -> dict[str, float]:
    """Success rate, mean tokens and USD per request, and USD per successful result, of chosen calls."""
    total_success = float(np.sum(success))
    n = len(success)
    return {
        "success_rate": float(np.mean(success)) if n else float("nan"),
        "input_tokens": float(np.mean(input_tokens)) if n else float("nan"),
        "output_tokens": float(np.mean(output_tokens)) if n else float("nan"),
        "usd_per_request": float(np.mean(cost)) if n else float("nan"),
        "usd_per_success": float(np.sum(cost) / total_success) if total_success > 0 else float("inf"),
    }


@dataclass(frozen=True)
class Reference:
    """What every router is measured against on one set of evaluation prompts."""

    lo: float  # cheapest single model's mean cost
    hi: float  # dearest single model's mean cost
    best_model: str  # highest success rate (ties: cheaper)
    best_quality: float
    best_cost: float
    fixed_x: np.ndarray  # best-fixed hull
    fixed_y: np.ndarray
    aiq_fixed: float
    aiq_oracle: float
    weak: str | None = None  # two-model logs: RouteLLM's weak and strong models
    strong: str | None = None
    q_weak: float = float("nan")
    q_strong: float = float("nan")


def reference(models: list[str], model_cost: np.ndarray, model_quality: np.ndarray, oracle_cost, oracle_quality) -> Reference:
    """Single-model points (mean cost, mean success per model) and the oracle's curve -> the yardsticks."""
    model_cost = np.asarray(model_cost, dtype=np.float64)
    model_quality = np.asarray(model_quality, dtype=np.float64)
    lo, hi = float(model_cost.min()), float(model_cost.max())
    best = int(np.lexsort((model_cost, -model_quality))[0])
    fx, fy = pareto_hull(model_cost, model_quality)
    ref = dict(
        lo=lo,
        hi=hi,
        best_model=models[best],
        best_quality=float(model_quality[best]),
        best_cost=float(model_cost[best]),
        fixed_x=fx,
        fixed_y=fy,
        aiq_fixed=aiq(model_cost, model_quality, lo, hi),
        aiq_oracle=aiq(oracle_cost, oracle_quality, lo, hi),
    )
    if len(models) == 2:
        s = int(np.lexsort((model_cost, -model_quality))[0])
        w = 1 - s
        ref.update(weak=models[w], strong=models[s], q_weak=float(model_quality[w]), q_strong=float(model_quality[s]))
    return Reference(**ref)


def curve_metrics(ref: Reference, cost, quality, strong_share=None) -> dict[str, float]:
    """AIQ, gap closed, cost to reach the best single model (and 95% of it), APGR and CPT of one curve."""
    cost = np.asarray(cost, dtype=np.float64)
    quality = np.asarray(quality, dtype=np.float64)
    value = aiq(cost, quality, ref.lo, ref.hi)
    out = {
        "aiq": value,
        "gap_closed": gap_closed(value, ref.aiq_fixed, ref.aiq_oracle),
        "cost_to_best": _fraction(cost_to_reach(cost, quality, ref.best_quality), ref.best_cost),
        "cost_to_95": _fraction(cost_to_reach(cost, quality, 0.95 * ref.best_quality), ref.best_cost),
    }
    if ref.strong is not None and strong_share is not None:
        out["apgr"] = apgr(strong_share, quality, ref.q_weak, ref.q_strong)
        out["cpt50"] = cpt(strong_share, quality, ref.q_weak, ref.q_strong, 0.5)
        out["cpt80"] = cpt(strong_share, quality, ref.q_weak, ref.q_strong, 0.8)
    return out


def _fraction(value: float, of: float) -> float:
    if not math.isfinite(value):
        return float("inf")
    return value / of if of > 0 else float("nan")
