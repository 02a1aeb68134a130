"""Certifying a routing setting: its quality loss against the best single model is within a target, with a stated confidence.

The question: of the settings of a router's knob, which may be served when
the user asks for, say, 98% of the best single model's success with 90%
confidence? Each setting ``k`` is a hypothesis ``H_k: E[L_k] > 0`` about its
per-prompt loss

* relative target ``r``:  ``L_k = r * s_best - s_k``  (success ``s`` of the
  chosen model and of the best single model on the same prompt: *paired*);
* absolute target ``q``:  ``L_k = q - s_k``.

``E[L_k] <= 0`` is exactly "mean success >= r x the best model's" (or >= q).
The losses are measured on cross-fitted (out-of-fold) predictions of the
training prompts: each prompt is routed by a router that never saw it.

**Learn-then-Test with fixed-sequence testing** (Angelopoulos, Bates, Candès,
Jordan, Lei 2021). The settings are ordered from safe (everything to the best
model) to cheap, before any outcome is looked at, and tested in that order at
the full level ``delta = 1 - confidence``; the first setting not rejected
stops the sequence. Every setting rejected before the stop is certified, and
the family-wise error is at most ``delta``: with probability ``1 - delta``
*no* certified setting has a loss above the target, so the cheapest of them
may be served. The order costs little power because loss grows with
cheapness along a knob; each policy family is one sequence, tested at
``delta / families`` (Bonferroni).

**The test of one setting: a betting (capital) test** — Waudby-Smith &
Ramdas, "Estimating means of bounded random variables by betting" (JRSS-B
2024), the WSR p-value LTT recommends. With ``X = (L - lo) / (hi - lo)`` in
[0, 1] and ``m`` the image of 0, a gambler bets against the null
``E[X] >= m``: capital ``K_t = prod_i (1 + lambda_i (m - X_i))`` with each
stake ``lambda_i`` set from the earlier outcomes only. Under the null the
capital is a non-negative supermartingale, so by Ville's inequality
``P(max_t K_t >= 1/delta) <= delta`` whatever the distribution: the p-value
``1 / max_t K_t`` is valid with no assumption beyond boundedness and
independence. Why not the alternatives:

* Hoeffding ignores the variance. The paired loss is 0 or ``r - 1`` on most
  prompts (both models right, or both wrong) and large only where the two
  disagree, so its variance is far below the worst case: on
  routerbench-subset Hoeffding certified no setting at all (its margin
  ``2 sqrt(ln(1/delta) / 2n)`` exceeds the whole 2% allowance at n = 2,200).
* Empirical Bernstein (Maurer & Pontil) adapts to the variance but pays a
  ``7 R ln(2/delta) / 3(n-1)`` term: 0.8 points of success at n = 2,200,
  half the allowance; it served 0.80-0.85 of the best model's cost where
  the betting test served 0.77-0.83 (same router, same target).
* Wilson / normal intervals are not distribution-free (they are exact only
  asymptotically); the betting test is within a log factor of them.

Per-prompt losses are treated as independent draws; cross-fitting (each
prompt predicted by a model fitted on other prompts) makes that hold
approximately, as in cross-conformal prediction. The prompts are betted on
in a seeded random order, so a certificate is reproducible.
"""

from __future__ import annotations

import math

import numpy as np


def betting_pvalues(loss: np.ndarray, low: float, high: float, *, delta: float = 0.1, seed: int = 0) -> np.ndarray:
    """One p-value per column of ``loss`` (``(n, k)``) for ``H0: E[loss] > 0``; small = the column is safe.

    ``low``/``high`` bound every loss. ``delta`` only sizes the stakes (the
    plug-in of Waudby-Smith & Ramdas); the p-values are valid for any level.
    """
    loss = np.asarray(loss, dtype=np.float64)
    if loss.ndim == 1:
        loss = loss[:, None]
    n = loss.shape[0]
    if not high > 0 > low:
        raise ValueError(f"losses must be bounded by low < 0 < high, got [{low}, {high}]")
    if n == 0:
        return np.ones(loss.shape[1])
    x = (np.clip(loss, low, high) - low) / (high - low)
    m = -low / (high - low)  # the image of a zero loss
    x = x[np.random.default_rng(seed).permutation(n)]
    t = np.arange(1, n + 1, dtype=np.float64)[:, None]
    mean = (0.5 + np.cumsum(x, axis=0)) / (t + 1)
    var = (0.25 + np.cumsum((x - mean) ** 2, axis=0)) / (t + 1)
    var_before = np.vstack([np.full((1, x.shape[1]), 0.25), var[:-1]])
    stake = np.sqrt(2 * math.log(1 / delta) / (var_before * t * np.log1p(t)))
    stake = np.minimum(stake, 0.75 / (1 - m))  # keeps every factor 1 + stake (m - x) >= 1/4
    log_capital = np.cumsum(np.log1p(stake * (m - x)), axis=0)
    return np.minimum(1.0, np.exp(-np.maximum(log_capital.max(axis=0), 0.0)))


def fixed_sequence(pvalues: np.ndarray, delta: float) -> int:
    """How many leading hypotheses fixed-sequence testing rejects at level ``delta`` (stops at the first p > delta)."""
    above = np.flatnonzero(np.asarray(pvalues) > delta)
    return int(above[0]) if len(above) else len(pvalues)


def paired_loss(chosen_success: np.ndarray, best_success: np.ndarray, *, relative: float | None = None, absolute: float | None = None):
    """Per-prompt loss against the target, and its bounds ``(loss, low, high)``; ``E[loss] <= 0`` meets the target.

    ``chosen_success``: ``(n, k)`` success of each setting's choice; ``best_success``: ``(n,)``.
    """
    s = np.asarray(chosen_success, dtype=np.float64)
    if (relative is None) == (absolute is None):
        raise ValueError("give exactly one of a relative or an absolute quality target")
    if relative is not None:
        return relative * np.asarray(best_success, dtype=np.float64)[:, None] - s, -1.0, float(relative)
    return absolute - s, min(float(absolute) - 1.0, -1e-12), float(absolute)
