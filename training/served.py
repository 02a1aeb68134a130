"""The served default: the cheapest setting certified to keep a quality target, with a stated confidence.

What ``model: thrifty`` serves after ``thrifty train``. The user states a
target (default: 98% of the best single model's success) and a confidence
(default 90%). The served setting — a policy, its knob, and a novelty cut
above which a prompt goes to the best model — is the *cheapest* one whose
quality loss against the best single model is certified to be within the
target at that confidence (:mod:`training.certify`: Learn-then-Test,
fixed-sequence, betting test). When no setting cheaper than the best model
is certified, the best model is served, and the certificate says why with
the numbers.

**Evidence.** Settings are judged on cross-fitted predictions of the
training prompts only (a test split kept apart stays untouched):

* ``prompts``: K folds by prompt text — prompts like the training prompts;
* ``tasks``: when the logs carry two or more task labels, folds made of
  whole tasks (one task per fold when there are at most K; "leave tasks
  out") — prompts of tasks the router never saw, which is what production
  drift looks like. Their novelty scores are measured against each fold's
  router, so this evidence also shows how much the cheap choices lose on
  unfamiliar prompts.

A setting is certified only if it passes on every evidence set (an
intersection-union test: each at the family's level), so the promise holds
for familiar prompts and for new tasks alike.

**Settings.** First the *safe model*: the cheapest single model certified
to keep the target on its own (the best model itself, unless a cheaper one
ties with it — the top of zeroeval-gsm8k). Then two policy families
(``threshold`` with the safe model as fallback, ``tradeoff``), each crossed
with novelty cuts (none, and the 90/95/99% quantiles of the novelty of
held-out training prompts): a prompt more novel than the cut goes to the
safe model. Each (family, cut) is
one fixed sequence from safe to cheap, tested at ``delta / (families + 1)``
(the single models' sequence is the + 1).
Shift awareness is thus calibrated, not guessed: the cut is used only when
the held-out tasks show that cheap choices lose on novel prompts, and the
prompts it sends to the best model are exactly those.

**Prices.** Cost enters twice: the expected cost the policy weighs (the
router's price table) and the logged cost the saving is measured with. The
certificate stores the price table it was certified under; the router
decides under that table (see :mod:`router.certificate`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from models.prices import PriceTable
from router.certificate import Certificate, prices_digest
from router.policy import make_policy
from router.router import Router
from training.certify import betting_pvalues, fixed_sequence, paired_loss
from training.dataset import OutcomeMatrix, prompt_folds, task_folds
from training.fit import cross_fit, fit_router
from training.sweep import POLICIES, best_model_index, knob_grid, policy_kwargs
from training.targets import Target

FALLBACK_KNOB = 2.0  # a threshold no probability reaches: every request takes the fallback model
MIN_COMPLETE_PROMPTS = 30  # fewer prompts answered by every model: the default policy is left as it is
DEFAULT_PREDICTOR = "ensemble"  # what `thrifty train` fits unless --predictor says otherwise
DEFAULT_TARGET = Target(relative=0.98)
DEFAULT_CONFIDENCE = 0.9
NOVELTY_QUANTILES = (0.99, 0.95, 0.9)
_EVIDENCE_NAMES = {"prompts": "held-out training prompts", "tasks": "prompts of held-out training tasks"}
METHOD = "Learn-then-Test, fixed sequence per (policy, novelty cut), Bonferroni over them; betting test (Waudby-Smith & Ramdas)"


@dataclass
class Evidence:
    """Cross-fitted predictions of ``n`` training prompts and their logged outcomes (complete rows only)."""

    name: str  # "prompts" or "tasks"
    p: np.ndarray  # (n, m) predicted success
    cost_pred: np.ndarray  # (n, m) expected cost under the router's prices
    novelty: np.ndarray  # (n,)
    success: np.ndarray  # (n, m) logged
    cost: np.ndarray  # (n, m) logged

    @property
    def n(self) -> int:
        return len(self.p)

    def averaged(self, others: Sequence["Evidence"]) -> "Evidence":
        """The evidence of an ensemble: the mean of the members' predicted success (same folds, so the rest is shared)."""
        return Evidence(self.name, np.mean([self.p, *[o.p for o in others]], axis=0), self.cost_pred, self.novelty, self.success, self.cost)


def evidence_prompts(matrix: OutcomeMatrix, max_prompts: int | None, seed: int = 0) -> OutcomeMatrix:
    """The prompts the evidence is cross-fitted on: all, or a seeded sample of ``max_prompts`` on large logs."""
    if max_prompts is None or matrix.n_prompts <= max_prompts:
        return matrix
    return matrix.subset(np.sort(np.random.default_rng(seed).choice(matrix.n_prompts, max_prompts, replace=False)))


def collect_evidence(
    matrix: OutcomeMatrix, prices: PriceTable, *, predictor: str = "lightgbm", seed: int = 0, folds: int = 3, **fit_kw
) -> list[Evidence]:
    """Cross-fitted evidence on ``matrix``: by prompt, and by task when it has two or more tasks."""
    parts = {"prompts": prompt_folds(matrix.texts, folds, seed)}
    if len(set(map(str, matrix.tasks))) >= 2:
        parts["tasks"] = task_folds(matrix.tasks, folds)
    evidence = []
    for name, split in parts.items():
        P, C, N = cross_fit(matrix, prices, predictor=predictor, seed=seed, parts=split, **fit_kw)
        complete = matrix.observed.all(axis=1) & ~np.isnan(matrix.cost).any(axis=1) & ~np.isnan(P).any(axis=1)
        evidence.append(Evidence(name, P[complete], C[complete], N[complete], matrix.success[complete], matrix.cost[complete]))
    return evidence


@dataclass(frozen=True)
class Setting:
    """One candidate served default: a policy, its knob and a novelty cut (None: no cut)."""

    policy: str
    knob: float
    cut: float | None

    def choose(self, ev: Evidence, models: list[str], best: int) -> np.ndarray:
        policy = make_policy(self.policy, self.knob, **policy_kwargs(self.policy, models[best]))
        choice, _ = policy.choose(ev.p, ev.cost_pred, None, models)
        if self.cut is not None:
            choice = np.where(ev.novelty > self.cut, best, choice)
        return choice


def _sequence(policy: str, cut: float | None, first: Evidence, n_knobs: int) -> list[Setting]:
    """The settings of one family, from safe (everything to the best model) to cheap."""
    grid = knob_grid(policy, first.p, first.cost_pred, n_knobs)
    if policy == "threshold":
        knobs = [FALLBACK_KNOB, *sorted(grid, reverse=True)]
    else:
        knobs = sorted(grid)
    return [Setting(policy, float(k), cut) for k in knobs]


def _safe_model(evidence: Sequence[Evidence], best: int, relative, absolute, delta: float, seed: int) -> int:
    """The cheapest single model certified to keep the target: the safe end of every sequence.

    Models are tested from the most to the least successful on the training
    prompts (fixed sequence); for a relative target the best model itself
    always passes. When the top models are near-ties, a cheaper one may be
    certified, and then the fallback and the novelty guard use it.
    """
    first = evidence[0]
    order = np.lexsort((first.cost.mean(axis=0), -first.success.mean(axis=0)))
    pvalues = np.zeros(len(order))
    for ev in evidence:
        loss, low, high = paired_loss(ev.success[:, order], ev.success[:, best], relative=relative, absolute=absolute)
        pv = betting_pvalues(loss, low, high, delta=delta, seed=seed)
        if relative is not None:
            pv[order == best] = 0.0
        pvalues = np.maximum(pvalues, pv)
    passed = order[: fixed_sequence(pvalues, delta)]
    if not len(passed):
        return best
    return int(min(passed, key=lambda j: first.cost[:, j].mean()))


def certify_default(
    evidence: Sequence[Evidence],
    models: Sequence[str],
    *,
    target: Target = DEFAULT_TARGET,
    confidence: float = DEFAULT_CONFIDENCE,
    policies: Sequence[str] = POLICIES,
    n_knobs: int = 96,
    novelty_quantiles: Sequence[float] | None = None,
    seed: int = 0,
) -> tuple[Setting, Certificate]:
    """The cheapest certified setting (else everything to the best model) and its certificate (without prices).

    ``evidence[0]`` is the in-distribution evidence (``prompts``): the saving is
    measured there; every evidence set must pass.
    """
    if target.quality is None and target.relative is None:
        raise ValueError("the served default is certified against a quality target (--target-quality), not a cost target")
    if not 0 < confidence < 1:
        raise ValueError(f"--confidence {confidence}: give a probability in (0, 1), e.g. 0.9")
    models = list(models)
    first = evidence[0]
    best = best_model_index(first.success, first.cost)
    best_success = float(first.success[:, best].mean())
    quantiles = NOVELTY_QUANTILES if novelty_quantiles is None else novelty_quantiles
    cuts = [None, *sorted({float(np.quantile(first.novelty, q)) for q in quantiles}, reverse=True)]
    families = [(policy, cut) for policy in policies for cut in cuts]
    delta = (1 - confidence) / (len(families) + 1)  # + 1: the single models' sequence below
    relative, absolute = target.relative, target.quality
    floor = relative * best_success if relative is not None else absolute
    target_text = f"{relative:.0%} of the best single model's success" if relative is not None else f"a mean success of {absolute:g}"
    safe = _safe_model(evidence, best, relative, absolute, delta, seed)

    candidates, stops = [], []
    for policy, cut in families:
        settings = _sequence(policy, cut, first, n_knobs)
        pvalues = np.zeros(len(settings))
        stats = {}
        for ev in evidence:
            choice = np.stack([s.choose(ev, models, safe) for s in settings], axis=1)
            rows = np.arange(ev.n)[:, None]
            s, c = ev.success[rows, choice], ev.cost[rows, choice]
            loss, low, high = paired_loss(s, ev.success[:, best], relative=relative, absolute=absolute)
            pv = betting_pvalues(loss, low, high, delta=delta, seed=seed)
            if relative is not None:
                pv[(choice == best).all(axis=0)] = 0.0  # everything to the best model: a loss of -(1 - r) x its success, never above 0
            pvalues = np.maximum(pvalues, pv)
            stats[ev.name] = (s.mean(axis=0) / max(float(ev.success[:, best].mean()), 1e-12), c.mean(axis=0) / max(float(ev.cost[:, best].mean()), 1e-300), pv)
        passed = fixed_sequence(pvalues, delta)
        in_success, in_cost, _ = stats[first.name]
        at = lambda j: {e: (float(v[0][j]), float(v[1][j]), float(v[2][j])) for e, v in stats.items()}  # noqa: E731
        if passed:
            k = min(range(passed), key=lambda j: (in_cost[j], -in_success[j]))
            candidates.append((in_cost[k], -in_success[k], policy, cut, settings[k], float(pvalues[k]), at(k)))
        if passed < len(settings):
            stops.append((in_cost[passed], settings[passed], float(pvalues[passed]), at(passed)))

    common = dict(
        best_model=models[best], safe_model=models[safe], target=target_text, confidence=confidence, relative=relative, absolute=absolute,
        floor=float(floor), best_success=best_success, n_prompts=first.n, method=METHOD,
    )
    if candidates:
        cost_ratio, neg_success, policy, cut, setting, p_value, per_evidence = min(candidates, key=lambda c: (c[0], c[1]))
        if cost_ratio < 1 - 1e-9:
            certificate = Certificate(
                certified=True, policy=setting.policy, knob=setting.knob, success=-neg_success * best_success,
                success_vs_best=-neg_success, cost_vs_best=float(cost_ratio), p_value=p_value, novelty_cut=cut,
                evidence={e: {"success_vs_best": v[0], "cost_vs_best": v[1], "p_value": v[2]} for e, v in per_evidence.items()}, **common,
            )
            return setting, certificate
    # nothing cheaper than the best model passed: say how close the cheapest failed attempt came
    reason = "no setting passed"
    if stops:
        cost_ratio, failed, p_value, per_evidence = min(stops, key=lambda s: s[0])
        shown = "; ".join(
            f"{v[0]:.3f}x the success at {v[1]:.3f}x the cost of {models[best]} on {_EVIDENCE_NAMES[e]} (p = {v[2]:.2g})"
            for e, v in per_evidence.items()
        )
        reason = (
            f"the first setting not certified ({failed.policy} knob {failed.knob:.4g}{'' if failed.cut is None else f', novelty cut {failed.cut:.2f}'}) "
            f"reached {shown}: short of {target_text} at {confidence:.0%} confidence (each p must be <= {delta:.2g})"
        )
    if absolute is not None and best_success < absolute:
        reason = f"the best single model reaches only {best_success:.3f} on the training prompts, below the target {absolute:g}"
    safe = Setting("threshold", FALLBACK_KNOB, None)
    certificate = Certificate(
        certified=False, policy="threshold", knob=FALLBACK_KNOB, success=best_success, success_vs_best=1.0, cost_vs_best=1.0,
        reason=reason, **common,
    )
    return safe, certificate


def serve(router: Router, evidence: Sequence[Evidence], **certify_kw) -> tuple[Router, Certificate]:
    """``router`` with its default policy certified on ``evidence``; the certificate carries the prices it holds under.

    The evidence must come from routers fitted with the same prices as ``router`` (its ``prices_``).
    """
    complete = [ev for ev in evidence if ev.n >= MIN_COMPLETE_PROMPTS]
    table = router.prices_.to_dict()
    if not complete or complete[0].name != "prompts":
        # partial logs (served traffic): no prompt shows every model's outcome, so no
        # setting can be replayed; the router keeps the policy it was built with
        policy = router.policy_
        certificate = Certificate(
            certified=False, policy=policy.name, knob=float(policy.knob), best_model="", target="", confidence=math.nan,
            reason=f"fewer than {MIN_COMPLETE_PROMPTS} training prompts were answered by every model: no setting can be replayed",
            prices_sha256=prices_digest(table), prices=table,
        )
        return router.with_policy(policy, certificate_=certificate), certificate
    setting, certificate = certify_default(complete, router.models_, **certify_kw)
    certificate = Certificate.from_dict({**certificate.to_dict(), "prices_sha256": prices_digest(table), "prices": table})
    policy = make_policy(setting.policy, setting.knob, **policy_kwargs(setting.policy, certificate.safe_model))
    return router.with_policy(policy, certificate_=certificate), certificate


def fit_served_router(
    matrix: OutcomeMatrix,
    prices: PriceTable,
    *,
    predictor: str = "lightgbm",
    seed: int = 0,
    folds: int = 3,
    max_select_prompts: int | None = None,
    target: Target = DEFAULT_TARGET,
    confidence: float = DEFAULT_CONFIDENCE,
    policies: Sequence[str] = POLICIES,
    fit=None,
    **fit_kw,
) -> tuple[Router, Certificate]:
    """A router fitted on every prompt of ``matrix``, its default certified on cross-fitted predictions of them.

    On large logs the evidence comes from a random subset of
    ``max_select_prompts`` prompts (the certificate needs enough prompts to be
    sure, not K extra fits on every row). This is what ``thrifty train`` serves.
    ``fit`` fits the served router (default ``fit_router``; ``training.distributed``
    passes its Dask fit); the cross-fits of the evidence stay local.
    """
    sub = evidence_prompts(matrix, max_select_prompts, seed)
    evidence = collect_evidence(sub, prices, predictor=predictor, seed=seed, folds=folds, **fit_kw)
    router = (fit or fit_router)(matrix, prices, predictor=predictor, seed=seed, **fit_kw)
    return serve(router, evidence, target=target, confidence=confidence, policies=policies, seed=seed)
