"""Champion and challenger: promote only a router that beats the one serving, on the same held-out logs.

Both routers are replayed on the same logs with their own default policy:

* on a full matrix (every model on every prompt) the replay is exact;
* on served logs (one model per prompt, with propensities) the values are
  off-policy estimates — self-normalised IPS, or doubly robust with the
  router's own predictions as the reward model — with bootstrap intervals.

The compared metric is a net value per request, ``success − cost / usd_per_success``
(a success is worth ``usd_per_success`` dollars), so a challenger cannot win by
buying quality at any price, nor by saving money with failures. The
challenger is promoted when its value exceeds the champion's by ``margin``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from models.prices import PriceTable
from router.router import Router
from training.dataset import OutcomeMatrix
from training.offpolicy import PartialLog, estimate


@dataclass(frozen=True)
class RouterValue:
    success: float
    cost: float
    value: float
    method: str  # "exact", "snips" or "dr"
    success_low: float = float("nan")
    success_high: float = float("nan")


@dataclass(frozen=True)
class PromotionDecision:
    champion: RouterValue
    challenger: RouterValue
    margin: float
    usd_per_success: float
    promote: bool

    def to_dict(self) -> dict:
        return asdict(self)


def _served_choice(router: Router, matrix: OutcomeMatrix, prices: PriceTable) -> tuple[np.ndarray, np.ndarray]:
    """Column (in ``matrix.models``) each prompt's decision picks, and the router's success predictions there."""
    known = [m for m in router.models_ if m in matrix.models and m in prices]
    if not known:
        raise ValueError("the router knows none of the models in these logs")
    s = router.score(matrix.texts, prices, known)
    idx, _ = router.policy_.choose(s.p, s.cost, models=s.models)
    cols = np.array([matrix.models.index(m) for m in s.models])
    q = np.full(matrix.success.shape, np.nan)
    q[:, cols] = s.p
    return cols[idx], q


def router_value(router: Router, matrix: OutcomeMatrix, prices: PriceTable, usd_per_success: float, estimator: str = "dr", seed: int = 0) -> RouterValue:
    decisions, q = _served_choice(router, matrix, prices)
    rows = np.arange(matrix.n_prompts)
    if matrix.is_complete:
        success = float(matrix.success[rows, decisions].mean())
        cost = float(matrix.cost[rows, decisions].mean())
        return RouterValue(success, cost, success - cost / usd_per_success, "exact")
    if matrix.propensity is None:
        raise ValueError("partial logs need a propensity column to be replayed off-policy (export them from thrifty serve)")
    observed = matrix.observed
    if (observed.sum(axis=1) != 1).any():
        raise ValueError("off-policy replay expects exactly one logged model per prompt")
    action = observed.argmax(axis=1)
    log = PartialLog(action, matrix.propensity[rows, action], matrix.success[rows, action], matrix.cost[rows, action])
    q_success = np.nan_to_num(q, nan=float(np.nanmean(q)))
    q_cost = np.nan_to_num(np.nanmean(matrix.cost, axis=0), nan=0.0)[None, :].repeat(matrix.n_prompts, axis=0)
    est = estimate(log, decisions, q_success=q_success, q_cost=q_cost, seed=seed)
    s, c = est["success"][estimator], est["cost"][estimator]
    return RouterValue(s.value, c.value, s.value - c.value / usd_per_success, estimator, s.low, s.high)


def compare(
    champion: Router,
    challenger: Router,
    matrix: OutcomeMatrix,
    prices: PriceTable,
    *,
    margin: float = 0.0,
    usd_per_success: float = 0.01,
    estimator: str = "dr",
) -> PromotionDecision:
    if usd_per_success <= 0:
        raise ValueError("--usd-per-success must be positive")
    a = router_value(champion, matrix, prices, usd_per_success, estimator)
    b = router_value(challenger, matrix, prices, usd_per_success, estimator)
    return PromotionDecision(a, b, margin, usd_per_success, promote=b.value > a.value + margin)
