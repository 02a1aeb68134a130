"""Off-policy replay: a router's value estimated from logs where only one model answered each prompt.

Production logs show the outcome of the model the serving policy chose, with
the probability it chose it (the propensity). For a target router's decision
``d_i`` on prompt ``i`` the estimators are, with ``w_i = 1[a_i = d_i] / p_i``:

* IPS: ``mean(w_i * r_i)`` — unbiased when every propensity is right and
  positive, high variance when they are small;
* SNIPS: ``sum(w_i * r_i) / sum(w_i)`` — self-normalised, slightly biased,
  much lower variance;
* DR (doubly robust): ``mean(q(i, d_i) + w_i * (r_i - q(i, a_i)))`` — a
  reward model ``q`` carries the estimate where the logs are silent, and the
  importance-weighted residual corrects its bias.

``r`` is success or cost (the same estimators give a router's expected cost).
Confidence intervals are percentile bootstraps over prompts. Everything here
is a pure function of arrays: no caches, no state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PartialLog:
    """One logged action per prompt: ``action`` (model column), its ``propensity`` and observed outcomes."""

    action: np.ndarray  # (n,) int
    propensity: np.ndarray  # (n,) float in (0, 1]
    success: np.ndarray  # (n,)
    cost: np.ndarray  # (n,)


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float

    def covers(self, x: float) -> bool:
        return self.low <= x <= self.high


def _weights(log: PartialLog, decisions: np.ndarray) -> np.ndarray:
    return (log.action == decisions) / log.propensity


def ips(log: PartialLog, decisions: np.ndarray, reward: np.ndarray) -> float:
    return float(np.mean(_weights(log, decisions) * reward))


def snips(log: PartialLog, decisions: np.ndarray, reward: np.ndarray) -> float:
    w = _weights(log, decisions)
    total = w.sum()
    return float((w * reward).sum() / total) if total > 0 else float("nan")


def doubly_robust(log: PartialLog, decisions: np.ndarray, reward: np.ndarray, q: np.ndarray) -> float:
    """``q``: (n, m) predicted reward of every model on every prompt."""
    rows = np.arange(len(decisions))
    w = _weights(log, decisions)
    return float(np.mean(q[rows, decisions] + w * (reward - q[rows, log.action])))


ESTIMATORS = ("ips", "snips", "dr")


def estimate(
    log: PartialLog,
    decisions: np.ndarray,
    *,
    q_success: np.ndarray | None = None,
    q_cost: np.ndarray | None = None,
    n_boot: int = 500,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, Estimate]]:
    """Success and cost of a target policy by every estimator, with bootstrap intervals.

    Returns ``{"success": {"ips": Estimate, ...}, "cost": {...}}``; DR only when
    the matching reward model (``q_success`` / ``q_cost``) is given.
    """
    rng = np.random.default_rng(seed)
    n = len(decisions)
    boots = rng.integers(0, n, size=(n_boot, n))
    alpha = (1 - level) / 2
    out: dict[str, dict[str, Estimate]] = {}
    for target, reward, q in (("success", log.success, q_success), ("cost", log.cost, q_cost)):
        fns = {
            "ips": lambda idx: ips(_take(log, idx), decisions[idx], reward[idx]),
            "snips": lambda idx: snips(_take(log, idx), decisions[idx], reward[idx]),
        }
        if q is not None:
            fns["dr"] = lambda idx, q=q: doubly_robust(_take(log, idx), decisions[idx], reward[idx], q[idx])
        out[target] = {}
        everything = np.arange(n)
        for name, fn in fns.items():
            samples = np.array([fn(idx) for idx in boots])
            samples = samples[np.isfinite(samples)]
            lo, hi = np.quantile(samples, [alpha, 1 - alpha]) if samples.size else (np.nan, np.nan)
            out[target][name] = Estimate(fn(everything), float(lo), float(hi))
    return out


def _take(log: PartialLog, idx: np.ndarray) -> PartialLog:
    return PartialLog(log.action[idx], log.propensity[idx], log.success[idx], log.cost[idx])


def epsilon_greedy(preferred: np.ndarray, n_models: int, epsilon: float, rng: np.random.Generator, acceptable: np.ndarray | None = None):
    """Log one action per prompt: the preferred model with probability ``1 - ε``, else uniform
    among the acceptable models (all, when none is given). Returns (actions, propensities)."""
    n = len(preferred)
    acceptable = np.ones((n, n_models), dtype=bool) if acceptable is None else acceptable.copy()
    acceptable[np.arange(n), preferred] = True
    k = acceptable.sum(axis=1)
    explore = rng.random(n) < epsilon
    # uniform pick among acceptable models: the r-th True of each row
    r = (rng.random(n) * k).astype(int)
    ranks = np.cumsum(acceptable, axis=1) - 1
    uniform = np.argmax((ranks == r[:, None]) & acceptable, axis=1)
    action = np.where(explore, uniform, preferred)
    prop = epsilon / k + (1 - epsilon) * (action == preferred)
    return action, prop


def simulate_partial_log(success: np.ndarray, cost: np.ndarray, preferred: np.ndarray, epsilon: float, seed: int) -> PartialLog:
    """Hide all but one outcome per prompt of a full matrix, as a logging policy would."""
    rng = np.random.default_rng(seed)
    action, prop = epsilon_greedy(preferred, success.shape[1], epsilon, rng)
    rows = np.arange(len(action))
    return PartialLog(action, prop, success[rows, action], cost[rows, action])
