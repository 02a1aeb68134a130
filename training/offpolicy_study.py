"""Validating off-policy replay on full-matrix logs, where the exact answer is known.

A benchmark matrix shows every model on every prompt, so any router's exact
success and cost can be replayed. Hiding all but one outcome per prompt — the
one an exploring logging policy picked, with its known propensity — turns it
into a production-like partial log. The estimators in ``training.offpolicy``
must then recover the exact values within their intervals; ``coverage`` counts
how often they do over many simulated logs.
"""

from __future__ import annotations

import numpy as np

from models.prices import PriceTable
from router.policy import Threshold, Tradeoff
from training.dataset import OutcomeMatrix, split_by_prompt
from training.fit import fit_router
from training.offpolicy import ESTIMATORS, estimate, simulate_partial_log


def _decisions(router, matrix: OutcomeMatrix, prices: PriceTable, policy) -> tuple[np.ndarray, np.ndarray]:
    """Column of each prompt's decision (in ``matrix.models`` order) and the router's success matrix."""
    s = router.score(matrix.texts, prices)
    cols = np.array([matrix.models.index(m) for m in s.models])
    idx, _ = policy.choose(s.p, s.cost)
    p_full = np.full(matrix.success.shape, np.nan)
    p_full[:, cols] = s.p
    return cols[idx], p_full


def coverage_study(
    matrix: OutcomeMatrix,
    prices: PriceTable,
    *,
    epsilon: float = 0.3,
    n_sims: int = 40,
    n_boot: int = 300,
    seed: int = 0,
    predictor: str = "logistic",
) -> dict:
    """How often each estimator's 95% interval covers the exact full-matrix value.

    The logging policy is a router fitted on 40% of the prompts (threshold
    policy, ε-greedy exploration); the target is a second router fitted on the
    same part with a cost-aware trade-off policy, so the two disagree often.
    Logs are simulated on the other 60%.
    """
    fit_idx, eval_idx = split_by_prompt(matrix, 0.6, seed)
    fit_part, evalset = matrix.subset(fit_idx), matrix.subset(eval_idx)
    if not evalset.is_complete:
        raise ValueError("the coverage study needs a full matrix: every model on every prompt")
    router = fit_router(fit_part, prices, predictor=predictor, seed=seed)
    preferred, q_success = _decisions(router, evalset, prices, Threshold(0.7))
    cost_scale = float(np.median(evalset.cost))
    target, _ = _decisions(router, evalset, prices, Tradeoff(0.5 / max(cost_scale, 1e-12)))
    rows = np.arange(evalset.n_prompts)
    exact = {"success": float(evalset.success[rows, target].mean()), "cost": float(evalset.cost[rows, target].mean())}
    q_cost = evalset.cost.mean(axis=0)[None, :].repeat(evalset.n_prompts, axis=0)  # a deliberately crude cost model
    hits = {t: {e: 0 for e in ESTIMATORS} for t in exact}
    widths = {t: {e: [] for e in ESTIMATORS} for t in exact}
    errors = {t: {e: [] for e in ESTIMATORS} for t in exact}
    for sim in range(n_sims):
        log = simulate_partial_log(evalset.success, evalset.cost, preferred, epsilon, seed=seed * 1000 + sim)
        est = estimate(log, target, q_success=np.nan_to_num(q_success, nan=0.5), q_cost=q_cost, n_boot=n_boot, seed=sim)
        for t in exact:
            for e in ESTIMATORS:
                hits[t][e] += est[t][e].covers(exact[t])
                widths[t][e].append(est[t][e].high - est[t][e].low)
                errors[t][e].append(est[t][e].value - exact[t])
    agreement = float(np.mean(preferred == target))
    return {
        "prompts": int(evalset.n_prompts),
        "models": len(matrix.models),
        "epsilon": epsilon,
        "simulations": n_sims,
        "logging_target_agreement": agreement,
        "exact": exact,
        "coverage": {t: {e: hits[t][e] / n_sims for e in ESTIMATORS} for t in exact},
        "mean_interval_width": {t: {e: float(np.mean(widths[t][e])) for e in ESTIMATORS} for t in exact},
        "mean_error": {t: {e: float(np.mean(errors[t][e])) for e in ESTIMATORS} for t in exact},
    }


def hide_outcomes(matrix: OutcomeMatrix, preferred: np.ndarray, epsilon: float, seed: int) -> OutcomeMatrix:
    """A partial copy of ``matrix``: only the logged model's outcome per prompt, with its propensity."""
    log = simulate_partial_log(matrix.success, matrix.cost, preferred, epsilon, seed)
    rows = np.arange(matrix.n_prompts)
    keep = np.zeros(matrix.success.shape, dtype=bool)
    keep[rows, log.action] = True
    hide = lambda a: np.where(keep, a, np.nan)  # noqa: E731
    propensity = np.full(matrix.success.shape, np.nan)
    propensity[rows, log.action] = log.propensity
    from dataclasses import replace

    return replace(
        matrix,
        success=hide(matrix.success),
        input_tokens=hide(matrix.input_tokens),
        output_tokens=hide(matrix.output_tokens),
        cost=hide(matrix.cost),
        propensity=propensity,
    )
