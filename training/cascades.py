"""Cascades replayed on logged answers, and searched on the training prompts (``thrifty replay --cascades``).

On logs where every model answered every prompt, a cascade (``router.cascade``)
can be replayed exactly: its stages' tests run on the *logged* answers, and

* **cost** of a prompt = the sum of the logged costs of every model called;
* **success** = the logged success of the model whose answer is returned;
* **tokens** = the sum over every call (input and output separately);
* **latency** = the sum over the stages reached of the slowest call of the
  stage. The shared logs record no latency (``latency_s`` is null), so a
  call's latency is a proxy, :class:`LatencyProxy`: a fixed overhead plus
  output tokens at a fixed speed (0.5 s + tokens / 50 per s, the same for
  every model; hidden reasoning tokens of o1 models are not in the logs, so
  their calls are faster here than in life). **Added latency** = the
  cascade's latency minus that of the answering call alone: the time spent
  waiting on answers that were not returned.

Search (training prompts only): stages are drawn from the models on or near
the training prompts' cost–quality hull (:func:`candidate_models`): one to
three stages, the first calling one to three models in parallel, later stages
one model each, not called before (a cheap model after a strong one is the
fallback for its empty answers). Three families of acceptance tests on the
stages before the last:

* ``fixed`` — the rule of issue 14: two or more answers agree (``agree``), or
  the answer passes the format check (``format``); nothing to tune.
* ``confidence`` — the router's predicted success of the answering model
  clears a threshold (swept over quantiles of the predictions).
* ``learned`` — a calibrated logistic model of P(answer correct | agreement
  pattern, router predictions, format flags, output tokens) per stage, its
  threshold swept.

``confidence`` and ``learned`` settings may also gate the first stage on the
router's prediction (:class:`router.cascade.Stage` ``enter``): below the gate a
prompt goes straight to the last stage, so these families contain the
threshold router between the first and the last stage.

Every setting is scored on the training prompts with *out-of-fold* inputs —
the router's predictions come from routers that did not see the prompt
(``training.fit.cross_fit``), the learned tests from models fitted on the
other folds — and the settings on the Pareto front of (mean cost, mean
success) over the training prompts (no other setting is as cheap and better)
become the family's knob settings (knob = the setting's mean cost on the
training prompts), as a router's knob sweep does. The learned tests of those
settings are then refitted on all training prompts, and only then is each
setting replayed on the test prompts. The *default* setting of a family is
the cheapest front setting whose success on the training prompts is at least
the best single model's there, by one standard error of the paired
difference (the best single model itself qualifies, so a family whose cheaper
settings do not beat it confidently defaults to it); without one, the most
successful.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import combinations
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from router.answers import get_normalizer, normalize_choice, passes_format, parse_number
from router.calibration import binary_targets
from router.cascade import (
    Agreement,
    Always,
    Cascade,
    Confidence,
    FormatCheck,
    Learned,
    Stage,
    acceptance_features,
    answer_view,
)
from training.dataset import OutcomeMatrix
from training.metrics import Reference, curve_metrics, margin_above, pareto_hull

FAMILIES = ("fixed", "confidence", "learned")
PREFIX = "cascade/"
# accept shares swept for threshold tests: thresholds are these quantiles of the stage's scores
QUANTILE_LEVELS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
# first-stage gates swept (router-based families): skip to the last stage for this share of prompts, the least promising
GATE_LEVELS = (0.1, 0.25, 0.4, 0.55, 0.7)


class CascadeSearchError(ValueError):
    """Cascades cannot be searched on these logs (no answers, or test prompts among the training ones)."""


# ----------------------------------------------------------------------------- latency


@dataclass(frozen=True)
class LatencyProxy:
    """Seconds of one call, from its output tokens: ``overhead_s + output_tokens / tokens_per_s``.

    A stand-in for the latency the logs do not record; ``per_model`` overrides
    the speed of named models.
    """

    overhead_s: float = 0.5
    tokens_per_s: float = 50.0
    per_model: dict = field(default_factory=dict)

    def matrix(self, output_tokens: np.ndarray, models: Sequence[str]) -> np.ndarray:
        speed = np.array([float(self.per_model.get(m, self.tokens_per_s)) for m in models])
        return self.overhead_s + np.nan_to_num(output_tokens) / speed[None, :]

    def describe(self) -> str:
        return f"{self.overhead_s:g} s + output tokens / {self.tokens_per_s:g} per s (latency_s is not logged)"


# ----------------------------------------------------------------------------- data


def infer_answer_kind(answers: np.ndarray | None) -> str:
    """The answer kind most logged answers have: ``choice``, ``number``, ``math`` (numbers and LaTeX) or ``auto``."""
    if answers is None:
        return "auto"
    values = [a for a in np.asarray(answers, dtype=object).ravel() if isinstance(a, str) and a.strip()]
    if not values:
        return "auto"
    sample = values[:: max(1, len(values) // 5000)]
    share = lambda f: float(np.mean([f(a) for a in sample]))  # noqa: E731
    if share(lambda a: len(a.strip().strip("().: ")) == 1 and normalize_choice(a) is not None) >= 0.8:
        return "choice"
    if share(lambda a: parse_number(a) is not None) >= 0.6:
        return "math" if share(lambda a: "\\" in a or "^" in a) >= 0.002 else "number"
    return "auto"


@dataclass
class CascadeData:
    """What cascade replay needs of ``n`` prompts × ``m`` models (columns in the order of ``models``)."""

    models: list[str]
    prompt_keys: np.ndarray
    datasets: np.ndarray
    texts: list[str]
    answer_kind: str
    codes: np.ndarray  # (n, m) int: equal codes in a row = equal normalised answers; -1 = none
    valid: np.ndarray  # (n, m) bool: the answer passes the format check
    p: np.ndarray  # (n, m) router-predicted success (NaN: none)
    success: np.ndarray
    cost: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    latency: np.ndarray  # (n, m) seconds (proxy)

    @property
    def n_prompts(self) -> int:
        return len(self.prompt_keys)

    def columns(self, models: Sequence[str]) -> list[int]:
        missing = [m for m in models if m not in self.models]
        if missing:
            raise CascadeSearchError(f"cascade model(s) {missing} are not in the logs (models: {self.models})")
        return [self.models.index(m) for m in models]


def cascade_data(matrix: OutcomeMatrix, p: np.ndarray | None, answer_kind: str, latency: LatencyProxy = LatencyProxy()) -> CascadeData:
    """Normalise every logged answer once (one cache per distinct answer text) and code agreement per prompt."""
    n, m = matrix.success.shape
    answers = matrix.answers if matrix.answers is not None else np.full((n, m), None, dtype=object)
    normalise = get_normalizer(answer_kind)
    cache: dict[str, tuple[str | None, bool]] = {}
    codes = np.full((n, m), -1, dtype=np.int64)
    valid = np.zeros((n, m), dtype=bool)
    for i in range(n):
        seen: dict[str, int] = {}
        for j in range(m):
            a = answers[i, j]
            if not isinstance(a, str):
                continue
            if a not in cache:
                ok = passes_format(a, answer_kind)
                cache[a] = (normalise(a) if ok else None, ok)
            norm, ok = cache[a]
            valid[i, j] = ok
            if norm is not None:
                codes[i, j] = seen.setdefault(norm, len(seen))
    return CascadeData(
        models=list(matrix.models),
        prompt_keys=np.asarray(matrix.prompt_keys),
        datasets=np.asarray(matrix.datasets),
        texts=list(matrix.texts),
        answer_kind=answer_kind,
        codes=codes,
        valid=valid,
        p=np.full((n, m), np.nan) if p is None else np.asarray(p, dtype=np.float64),
        success=matrix.success,
        cost=matrix.cost,
        input_tokens=matrix.input_tokens,
        output_tokens=matrix.output_tokens,
        latency=latency.matrix(matrix.output_tokens, matrix.models),
    )


# ----------------------------------------------------------------------------- replay


@dataclass
class CascadeOutcome:
    """Per prompt: the answering model (column), the stage it answered at, the models called, and what it all cost."""

    answered: np.ndarray  # (n,) column of the answering model
    stop: np.ndarray  # (n,) 0-based stage that answered
    called: list[list[int]]  # per stage reached... per prompt: columns called, in call order
    success: np.ndarray
    cost: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    latency: np.ndarray
    added_latency: np.ndarray
    n_calls: np.ndarray


def run_cascade(cascade: Cascade, data: CascadeData) -> CascadeOutcome:
    """Replay ``cascade`` on every prompt of ``data`` with the tests of ``router.cascade`` (the serving code path)."""
    n = data.n_prompts
    rows = np.arange(n)
    done = np.zeros(n, dtype=bool)
    skipped = np.zeros(n, dtype=bool)  # a gate sent the prompt straight to the last stage
    ran = np.zeros((n, len(cascade.stages)), dtype=bool)
    answered = np.full(n, -1)
    stop = np.full(n, -1)
    last = len(cascade.stages) - 1
    for k, stage in enumerate(cascade.stages):
        cols = data.columns(cascade.called_through(k))
        view = answer_view(k, cascade.called_through(k), cascade.stage_columns(k), data.codes[:, cols], data.valid[:, cols], data.p[:, cols], data.output_tokens[:, cols])
        if k == last:
            go = ~done
            accept = np.ones(n, dtype=bool)  # its candidate is its own models' vote: the same whether or not stages were skipped
        else:
            gate = stage_gate(stage, data)
            go = ~done & ~skipped & gate
            skipped |= ~done & ~skipped & ~gate
            accept = stage.accept.accept(view)
        ran[go, k] = True
        newly = go & accept
        answered[newly] = np.asarray(cols)[view.candidate[newly]]
        stop[newly] = k
        done |= newly
    return _outcome(cascade, data, answered, stop, ran, rows)


def stage_gate(stage: Stage, data: CascadeData) -> np.ndarray:
    """Prompts whose router prediction lets them enter ``stage`` (:meth:`router.cascade.Cascade.enters`)."""
    if stage.enter <= 0:
        return np.ones(data.n_prompts, dtype=bool)
    p = data.p[:, data.columns(stage.models)]
    return (np.where(np.isnan(p), -np.inf, p) >= stage.enter).any(axis=1)


def _outcome(cascade: Cascade, data: CascadeData, answered: np.ndarray, stop: np.ndarray, ran: np.ndarray, rows: np.ndarray) -> CascadeOutcome:
    n = len(rows)
    cost = np.zeros(n)
    tin = np.zeros(n)
    tout = np.zeros(n)
    latency = np.zeros(n)
    calls = np.zeros(n)
    stage_models = [data.columns(s.models) for s in cascade.stages]
    for k, cols in enumerate(stage_models):
        reached = ran[:, k]
        cost += reached * data.cost[:, cols].sum(axis=1)
        tin += reached * data.input_tokens[:, cols].sum(axis=1)
        tout += reached * data.output_tokens[:, cols].sum(axis=1)
        latency += reached * data.latency[:, cols].max(axis=1)
        calls += reached * len(cols)
    called = [[c for k, cols in enumerate(stage_models) if ran[i, k] for c in cols] for i in rows]
    return CascadeOutcome(
        answered=answered,
        stop=stop,
        called=called,
        success=data.success[rows, answered],
        cost=cost,
        input_tokens=tin,
        output_tokens=tout,
        latency=latency,
        added_latency=latency - data.latency[rows, answered],
        n_calls=calls,
    )


# ----------------------------------------------------------------------------- learned tests


def fit_acceptance(X: np.ndarray, y: np.ndarray, C: float = 1.0) -> tuple[np.ndarray, float]:
    """Logistic coefficients (on the raw features) and intercept of P(correct | features)."""
    from sklearn.linear_model import LogisticRegression

    yy, ww = binary_targets(np.asarray(y, dtype=np.float64))
    frac = (y > 0) & (y < 1)
    XX = np.vstack([X, X[frac]]) if frac.any() else X
    if len(np.unique(yy)) < 2:
        rate = float(np.clip(np.average(yy, weights=ww) if len(yy) else 0.5, 1e-3, 1 - 1e-3))
        return np.zeros(X.shape[1]), math.log(rate / (1 - rate))
    mean, scale = XX.mean(axis=0), XX.std(axis=0)
    scale[scale == 0] = 1.0
    lr = LogisticRegression(C=C, max_iter=500).fit((XX - mean) / scale, yy, sample_weight=ww)
    coef = lr.coef_[0] / scale
    return coef, float(lr.intercept_[0] - np.dot(coef, mean))


def _predict(X, coef, intercept) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * (X @ coef + intercept)))


# ----------------------------------------------------------------------------- search


def pareto_front(cost: np.ndarray, quality: np.ndarray) -> list[int]:
    """Indices of the points no other point beats (cheaper or as cheap, and better), cheapest first; ties: the first."""
    order = np.lexsort((np.arange(len(cost)), -quality, cost))
    q = quality[order]
    best_before = np.concatenate([[-np.inf], np.maximum.accumulate(q)[:-1]])
    return [int(i) for i in order[q > best_before + 1e-12]]


def candidate_models(data: CascadeData, max_models: int = 8, near: float = 0.03, min_models: int = 6) -> list[int]:
    """Columns of the models on the training prompts' cost–quality hull, then those within ``near`` below it
    (at least ``min_models``, the closest to the hull first, at most ``max_models``); cheapest first.

    A hull of few models leaves agreement nothing to work with: ``min_models`` = 6
    beat 3 and 8 on held-out halves of the training splits of mmlu-pro and
    routerbench-subset (gap closed of the learned family, 2-fold, kNN predictions).
    """
    from training.metrics import hull_value

    mc, mq = data.cost.mean(axis=0), data.success.mean(axis=0)
    hx, hy = pareto_hull(mc, mq)
    below = np.array([float(hull_value(hx, hy, c)) - q if c >= hx[0] else 0.0 for c, q in zip(mc, mq)])
    on_hull = [j for j in range(len(mc)) if any(mc[j] == x and mq[j] == y for x, y in zip(hx, hy))]
    # the hull's top vertex may come after a cheaper model of equal quality: keep vertices only once
    rest = [int(j) for j in np.argsort(below, kind="stable") if j not in on_hull]
    close = [j for j in rest if below[j] <= near]
    chosen = on_hull + close
    if len(chosen) < min_models:
        chosen += [j for j in rest if j not in chosen][: min_models - len(chosen)]
    chosen = chosen[: max(max_models, 2)]
    return sorted(chosen, key=lambda j: (mc[j], -mq[j]))


def structures(candidates: Sequence[int], cost: np.ndarray, max_stages: int = 3, max_parallel: int = 3) -> list[tuple[tuple[int, ...], ...]]:
    """Stage layouts: a first stage of one to ``max_parallel`` models in parallel, then single models not called before.

    Later stages need not be dearer: a cheap model after a strong one is the
    fallback for the strong model's empty or malformed answers.
    """
    order = sorted(candidates, key=lambda j: cost[j])
    firsts = [tuple(group) for size in range(1, max_parallel + 1) for group in combinations(order, size)]
    out = []

    def grow(stages):
        out.append(tuple(stages))
        if len(stages) >= max_stages:
            return
        for j in order:
            if all(j not in s for s in stages):
                grow(stages + [(j,)])

    for first in firsts:
        grow([first])
    return out


@dataclass
class _Prefix:
    """The first stages of a layout, evaluated on the training prompts."""

    called: list[int]  # columns called, in order
    candidate: np.ndarray  # (n,) column answering if the cascade stops after this prefix
    success: np.ndarray  # (n,) success of that answer
    stage_cost: np.ndarray  # (n,) cost of the prefix's last stage
    view: object
    learned_oof: np.ndarray | None = None


@dataclass
class Setting:
    """One cascade (layout and tests) with its mean cost and success on the training prompts."""

    cascade: Cascade
    cost: float
    quality: float
    success: np.ndarray = field(repr=False, default=None)  # per training prompt (out-of-fold inputs)


@dataclass
class FamilySearch:
    family: str
    settings: list[Setting]  # the training prompts' Pareto front, cheapest first
    default: int  # index into settings
    n_evaluated: int


class CascadeSearch:
    """Evaluate every layout × test × threshold of a family on the training prompts; keep the Pareto front.

    ``folds``: row indices of the out-of-fold parts (grouped by prompt text)
    on which the learned tests are fitted and predicted.
    """

    def __init__(
        self,
        data: CascadeData,
        folds: list[np.ndarray],
        *,
        max_models: int = 8,
        near: float = 0.03,
        max_stages: int = 3,
        levels=QUANTILE_LEVELS,
        gate_levels=GATE_LEVELS,
        z: float = 1.0,
    ):
        self.data = data
        self.gate_levels = tuple(gate_levels)
        self.folds = folds
        self.max_models = max_models
        self.near = near
        self.max_stages = max_stages
        self.levels = tuple(levels)
        self.z = z
        self._prefixes: dict[tuple, _Prefix] = {}

    # -- layouts ---------------------------------------------------------
    def layouts(self) -> list[tuple[tuple[int, ...], ...]]:
        d = self.data
        self.candidates_ = candidate_models(d, self.max_models, self.near)
        return structures(self.candidates_, d.cost.mean(axis=0), self.max_stages)

    def prefix(self, stages: tuple[tuple[int, ...], ...]) -> _Prefix:
        if stages in self._prefixes:
            return self._prefixes[stages]
        d = self.data
        called = [c for s in stages for c in s]
        start = len(called) - len(stages[-1])
        view = answer_view(len(stages) - 1, [d.models[c] for c in called], range(start, len(called)), d.codes[:, called], d.valid[:, called], d.p[:, called], d.output_tokens[:, called])
        rows = np.arange(d.n_prompts)
        cand = np.asarray(called)[view.candidate]
        pre = _Prefix(called, cand, d.success[rows, cand], d.cost[:, list(stages[-1])].sum(axis=1), view)
        self._prefixes[stages] = pre
        return pre

    def learned_scores(self, pre: _Prefix) -> np.ndarray:
        """Out-of-fold P(correct) of the prefix's candidate answer."""
        if pre.learned_oof is None:
            X = acceptance_features(pre.view)
            y = pre.success
            out = np.full(len(y), np.nan)
            for part in self.folds:
                rest = np.setdiff1d(np.arange(len(y)), part)
                coef, b = fit_acceptance(X[rest], y[rest])
                out[part] = _predict(X[part], coef, b)
            pre.learned_oof = out
        return pre.learned_oof

    # -- options per stage -----------------------------------------------
    def options(self, family: str, pre: _Prefix) -> list[tuple[object, np.ndarray]]:
        """(acceptance test, accept mask on the training prompts) pairs for a non-final stage."""
        view = pre.view
        if family == "fixed":
            opts = [(FormatCheck(), FormatCheck().accept(view))]
            if len(pre.called) >= 2:
                opts.append((Agreement(2.0), Agreement(2.0).accept(view)))
            return opts
        if family == "confidence":
            score = Confidence(0.0).score(view)
            make = lambda t: Confidence(float(t))  # noqa: E731
        elif family == "learned":
            score = self.learned_scores(pre)
            make = lambda t: Learned(float(t))  # noqa: E731
        else:
            raise CascadeSearchError(f"unknown cascade family {family!r}; expected one of {list(FAMILIES)}")
        finite = score[np.isfinite(score)]
        if not len(finite):
            return []
        thresholds = np.unique(np.quantile(finite, self.levels))
        return [(make(t), score >= t) for t in thresholds]

    # -- evaluation --------------------------------------------------------
    def gates(self, family: str, layout) -> list[tuple[float, np.ndarray]]:
        """(enter threshold, gate mask) options of the first stage; 0 = no gate. Only for router-based families."""
        n = self.data.n_prompts
        none = [(0.0, np.ones(n, dtype=bool))]
        if family == "fixed" or len(layout) < 2:
            return none
        p = self.data.p[:, list(layout[0])]
        top = np.where(np.isnan(p), -np.inf, p).max(axis=1)
        finite = top[np.isfinite(top)]
        if not len(finite):
            return none
        return none + [(float(t), top >= t) for t in np.unique(np.quantile(finite, self.gate_levels))]

    def search(self, family: str) -> FamilySearch:
        costs, quals, grids = [], [], []  # per layout: flat arrays of its settings, and (layout, grid shape)
        for layout in self.layouts():
            prefixes = [self.prefix(layout[: k + 1]) for k in range(len(layout))]
            options = [self.options(family, pre) for pre in prefixes[:-1]]
            if any(not o for o in options):
                continue
            cost, quality = self._grid(prefixes, options, self.gates(family, layout))
            costs.append(cost.ravel())
            quals.append(quality.ravel())
            grids.append((layout, cost.shape))
        cost, quality = np.concatenate(costs), np.concatenate(quals)
        starts = np.cumsum([0] + [len(c) for c in costs])
        settings = []
        for rank, i in enumerate(pareto_front(cost, quality)):
            g = int(np.searchsorted(starts, i, side="right")) - 1
            layout, shape = grids[g]
            index = tuple(int(x) for x in np.unravel_index(i - starts[g], shape))
            settings.append(self._setting(family, (layout, index), cost[i], quality[i], rank))
        return FamilySearch(family, settings, self._default(settings), len(cost))

    def _grid(self, prefixes: list[_Prefix], options: list[list], gates: list) -> tuple[np.ndarray, np.ndarray]:
        """Mean cost and success of every gate × combination of the stages' options.

        Axes: the first stage's gate, then one per non-final stage. A prompt
        stopped by the gate pays and gets only the last stage.
        """
        k_opts = len(options)
        shape = tuple(len(o) for o in options)
        n = self.data.n_prompts
        reach = np.ones((n,) + (1,) * k_opts, dtype=bool)
        cost = np.zeros((n,) + (1,) * k_opts)
        success = np.zeros((n,) + (1,) * k_opts)
        for k, pre in enumerate(prefixes):
            cost = cost + reach * pre.stage_cost.reshape((n,) + (1,) * k_opts)
            if k < k_opts:
                acc = np.stack([mask for _, mask in options[k]], axis=1)
                acc = acc.reshape((n,) + tuple(len(options[k]) if a == k else 1 for a in range(k_opts)))
                stop_here = reach & acc
                reach = reach & ~acc
            else:
                stop_here = reach
            success = success + stop_here * pre.success.reshape((n,) + (1,) * k_opts)
        cost = np.broadcast_to(cost, (n,) + shape).reshape(n, -1)
        success = np.broadcast_to(success, (n,) + shape).reshape(n, -1)
        # gated out: the last stage alone; mean over prompts as one product per gate
        direct_c, direct_s = prefixes[-1].stage_cost, prefixes[-1].success
        G = np.stack([mask for _, mask in gates], axis=1).astype(np.float64)  # (n, g)
        mean_c = (direct_c.sum() + G.T @ (cost - direct_c[:, None])) / n
        mean_s = (direct_s.sum() + G.T @ (success - direct_s[:, None])) / n
        return mean_c.reshape((len(gates),) + shape), mean_s.reshape((len(gates),) + shape)

    def _per_prompt(self, family: str, layout, index) -> np.ndarray:
        prefixes = [self.prefix(layout[: k + 1]) for k in range(len(layout))]
        reach = np.ones(self.data.n_prompts, dtype=bool)
        success = np.zeros(self.data.n_prompts)
        for k, pre in enumerate(prefixes):
            if k < len(prefixes) - 1:
                acc = self.options(family, pre)[index[k + 1]][1]
                success += (reach & acc) * pre.success
                reach &= ~acc
            else:
                success += reach * pre.success
        gate = self.gates(family, layout)[index[0]][1]
        return np.where(gate, success, prefixes[-1].success)

    def _setting(self, family: str, key, cost: float, quality: float, rank: int) -> Setting:
        layout, index = key
        d = self.data
        enter = self.gates(family, layout)[index[0]][0]
        stages = []
        for k, models in enumerate(layout):
            names = tuple(d.models[c] for c in models)
            if k == len(layout) - 1:
                stages.append(Stage(names, Always()))
                continue
            pre = self.prefix(layout[: k + 1])
            test = self.options(family, pre)[index[k + 1]][0]
            if isinstance(test, Learned):  # refit on every training prompt for the test split
                coef, b = fit_acceptance(acceptance_features(pre.view), pre.success)
                test = Learned(test.threshold, tuple(coef), b)
            stages.append(Stage(names, test, enter if k == 0 else 0.0))
        cascade = Cascade(f"{family}-{rank}", tuple(stages), d.answer_kind)
        return Setting(cascade, float(cost), float(quality), self._per_prompt(family, layout, index))

    def _default(self, settings: list[Setting]) -> int:
        d = self.data
        best = int(np.lexsort((d.cost.mean(axis=0), -d.success.mean(axis=0)))[0])
        base = d.success[:, best]
        for i, s in enumerate(settings):  # cheapest first
            diff = s.success - base
            se = diff.std(ddof=1) / math.sqrt(len(diff)) if len(diff) > 1 else math.inf
            if diff.mean() - self.z * se >= 0:
                return i
        return int(np.argmax([s.quality for s in settings]))


# ----------------------------------------------------------------------------- the replay rows


@dataclass
class CascadeReplay:
    curve: pd.DataFrame  # router, knob, cost, quality
    decisions: pd.DataFrame  # router, knob, dataset, prompt_id, models_called, answered_by
    metrics: dict[str, dict[str, float]]
    meta: dict


def replay_cascades(
    train: OutcomeMatrix,
    test: OutcomeMatrix,
    p_train: np.ndarray | None,
    p_test: np.ndarray | None,
    ref: Reference,
    *,
    families: Sequence[str] = FAMILIES,
    folds: int = 3,
    seed: int = 0,
    latency: LatencyProxy = LatencyProxy(),
    max_models: int = 8,
    echo: Callable[[str], None] = lambda msg: None,
) -> CascadeReplay:
    """Search each family on ``train`` (out-of-fold), replay its Pareto-front settings on ``test``; rows ``cascade/<family>``.

    ``p_train`` must be out-of-fold predictions of the training prompts and
    ``p_test`` the predictions of a router fitted on the training prompts only.
    """
    from training.dataset import prompt_folds

    if train.answers is None:
        raise CascadeSearchError("the logs carry no parsed answers (column 'answer'): cascades cannot be replayed")
    overlap = set(map(str, train.prompt_keys)) & set(map(str, test.prompt_keys))
    if overlap:
        raise CascadeSearchError(f"{len(overlap)} test prompt(s) are among the training prompts (e.g. {sorted(overlap)[0]})")
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise CascadeSearchError(f"unknown cascade family {unknown}; expected some of {list(FAMILIES)}")
    kind = infer_answer_kind(train.answers)
    if test.models != train.models:
        test = test.select_models(list(train.models))
    dtrain = cascade_data(train, p_train, kind, latency)
    dtest = cascade_data(test, p_test, kind, latency)
    search = CascadeSearch(dtrain, prompt_folds(train.texts, folds, seed), max_models=max_models)
    curve_rows, decision_parts, metrics, chosen = [], [], {}, {}
    prompt_ids = np.array([k.split("/", 1)[1] if "/" in k else k for k in map(str, dtest.prompt_keys)], dtype=object)
    models = np.asarray(dtest.models, dtype=object)
    strong = dtest.models.index(ref.strong) if ref.strong is not None and ref.strong in dtest.models else None
    for family in families:
        found = search.search(family)
        name = PREFIX + family
        echo(f"{name}: {found.n_evaluated} settings on {dtrain.n_prompts} training prompts; {len(found.settings)} on their Pareto front")
        outcomes = [run_cascade(s.cascade, dtest) for s in found.settings]
        knobs = [s.cost for s in found.settings]
        for knob, out in zip(knobs, outcomes):
            curve_rows.append((name, knob, float(out.cost.mean()), float(out.success.mean())))
            decision_parts.append(
                pd.DataFrame(
                    {
                        "router": name,
                        "knob": knob,
                        "dataset": dtest.datasets,
                        "prompt_id": prompt_ids,
                        "models_called": [list(models[c]) for c in out.called],
                        "answered_by": models[out.answered],
                    }
                )
            )
        metrics[name] = _family_metrics(ref, found, outcomes, knobs, strong)
        d = found.settings[found.default]
        chosen[name] = {
            "default": d.cascade.to_dict(),
            "default_describe": d.cascade.describe(),
            "default_train": {"cost": d.cost, "quality": d.quality},
            "settings": [{"knob": k, "describe": s.cascade.describe(), "train_cost": s.cost, "train_quality": s.quality} for k, s in zip(knobs, found.settings)],
            "evaluated": found.n_evaluated,
        }
    curve = pd.DataFrame(curve_rows, columns=["router", "knob", "cost", "quality"])
    decisions = pd.concat(decision_parts, ignore_index=True) if decision_parts else pd.DataFrame()
    for col in ("router", "dataset", "prompt_id", "answered_by"):
        if col in decisions:
            decisions[col] = decisions[col].astype("string")
    meta = {
        "answer_kind": kind,
        "candidate_models": [dtrain.models[c] for c in search.candidates_],
        "latency_proxy": latency.describe(),
        "folds": folds,
        "families": chosen,
        "single_latency_s": {m: float(dtest.latency[:, j].mean()) for j, m in enumerate(dtest.models)},
    }
    return CascadeReplay(curve, decisions, metrics, meta)


def _family_metrics(ref: Reference, found: FamilySearch, outcomes: list[CascadeOutcome], knobs: list[float], strong: int | None) -> dict[str, float]:
    d = outcomes[found.default]
    total_success = float(d.success.sum())
    entry = {
        "knob": knobs[found.default],
        "success_rate": float(d.success.mean()),
        "input_tokens": float(d.input_tokens.mean()),
        "output_tokens": float(d.output_tokens.mean()),
        "usd_per_request": float(d.cost.mean()),
        "usd_per_success": float(d.cost.sum() / total_success) if total_success > 0 else float("inf"),
        "latency_s": float(d.latency.mean()),
        "added_latency_s": float(d.added_latency.mean()),
        "calls_per_request": float(d.n_calls.mean()),
    }
    costs = [float(o.cost.mean()) for o in outcomes]
    quals = [float(o.success.mean()) for o in outcomes]
    share = None if strong is None else [float(np.mean([strong in c for c in o.called])) for o in outcomes]
    # a family whose front is one setting keeps its AIQ: the search found nothing better than that setting
    entry.update(curve_metrics(ref, costs, quals, share))
    entry["margin_vs_fixed"] = margin_above(ref.fixed_x, ref.fixed_y, entry["usd_per_request"], entry["success_rate"])
    entry["settings"] = float(len(outcomes))
    return entry


# ----------------------------------------------------------------------------- replay hook


def cascade_predictions(train: OutcomeMatrix, test: OutcomeMatrix, learned, fitted: dict, prices, *, folds: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """Router predictions for the cascades: out-of-fold on the training prompts, the fitted router's on the test prompts.

    Of the predictors fitted (``fitted``: predictor -> router, its certification
    evidence), the one whose cross-fitted predictions have the lowest Brier
    score on the evidence prompts; its out-of-fold predictions of every
    training prompt are then cross-fitted. With a given router (``--router``)
    nothing is out-of-fold: its predictions on the training prompts are used
    as they are (it must not have seen the test prompts).
    """
    from training.fit import cross_fit
    from training.replay import router_scores

    if fitted:

        def brier(kind):
            evidence = fitted[kind][1]  # by-prompt evidence first: the same prompts and folds for every predictor
            return float(np.mean((evidence[0].p - evidence[0].success) ** 2)) if evidence and evidence[0].n else math.inf

        kind = min(fitted, key=brier)
        router = fitted[kind][0]
        p_train, _, _ = cross_fit(train, prices, predictor=kind, seed=seed, folds=folds)
        return p_train, router_scores(router, test, prices).p, f"{kind} (out-of-fold on the training prompts)"
    item = learned[0]
    return router_scores(item.router, train, prices).p, router_scores(item.router, test, prices).p, f"{item.name} (given router; in-sample on the training prompts)"


def add_cascade_rows(train, test, learned, fitted, prices, ref, curve, metrics, *, folds: int = 3, seed: int = 0, max_models: int = 8, echo=lambda msg: None):
    """``thrifty replay --cascades``: the ``cascade/<family>`` rows merged into a replay's curve and metrics."""
    p_train, p_test, source = cascade_predictions(train, test, learned, fitted, prices, folds=folds, seed=seed)
    echo(f"searching cascades on {train.n_prompts} training prompts (router predictions: {source})")
    rep = replay_cascades(train, test, p_train, p_test, ref, folds=folds, seed=seed, max_models=max_models, echo=echo)
    metrics = dict(metrics)
    for model, seconds in rep.meta["single_latency_s"].items():
        if model in metrics:
            metrics[model] = {**metrics[model], "latency_s": seconds, "added_latency_s": 0.0, "calls_per_request": 1.0}
    metrics.update(rep.metrics)
    return pd.concat([curve, rep.curve], ignore_index=True), metrics, rep.decisions, {**rep.meta, "predictions": source}
