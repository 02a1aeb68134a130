"""Routing policies: from predicted success and expected cost to one model.

Two policies, each with one knob:

* :class:`Threshold` — the cheapest model whose predicted success is at least
  ``threshold``. If no model qualifies, the fallback is the model most likely
  to succeed (or a fixed model, when ``fallback`` names one).
* :class:`Tradeoff` — the model maximising ``p_success - lam * expected_cost``
  (``lam`` in success per USD). ``lam = 0`` buys the best predicted model at
  any price; a large ``lam`` buys the cheapest.

Both work on whole matrices (replay sweeps thousands of prompts per setting)
and expose a ranking for fail-over. ``mask`` marks the models a request allows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MOST_LIKELY = "most_likely"


@dataclass(frozen=True)
class Threshold:
    threshold: float
    fallback: str = MOST_LIKELY
    name = "threshold"

    @property
    def knob(self) -> float:
        return self.threshold

    def acceptable(self, p: np.ndarray, cost: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return (p >= self.threshold) & mask

    def choose(self, p: np.ndarray, cost: np.ndarray, mask: np.ndarray | None = None, models=None) -> tuple[np.ndarray, np.ndarray]:
        """Chosen column per row, and whether the fallback was used."""
        mask = np.ones_like(p, dtype=bool) if mask is None else mask
        ok = self.acceptable(p, cost, mask)
        any_ok = ok.any(axis=1)
        cheapest_ok = np.argmin(np.where(ok, cost, np.inf), axis=1)
        return np.where(any_ok, cheapest_ok, self._fallback(p, mask, models)), ~any_ok

    def _fallback(self, p, mask, models) -> np.ndarray:
        if self.fallback != MOST_LIKELY and models is not None and self.fallback in list(models):
            j = list(models).index(self.fallback)
            fixed = np.full(len(p), j)
            return np.where(mask[:, j], fixed, np.argmax(np.where(mask, p, -np.inf), axis=1))
        return np.argmax(np.where(mask, p, -np.inf), axis=1)

    def rank(self, p: np.ndarray, cost: np.ndarray, mask: np.ndarray) -> list[int]:
        """Preference order for one prompt: acceptable by cost, then the rest by success."""
        ok = self.acceptable(p, cost, mask)
        good = sorted(np.flatnonzero(ok), key=lambda j: (cost[j], -p[j]))
        rest = sorted(np.flatnonzero(mask & ~ok), key=lambda j: (-p[j], cost[j]))
        return good + rest

    @staticmethod
    def grid(p: np.ndarray, cost: np.ndarray, n: int = 400) -> np.ndarray:
        """Knob values that visit every distinct decision region (quantiles of the predictions)."""
        qs = np.unique(np.quantile(p, np.linspace(0, 1, n)))
        return np.unique(np.concatenate([[0.0], qs, [1.0 + 1e-9]]))


@dataclass(frozen=True)
class Tradeoff:
    lam: float
    name = "tradeoff"

    @property
    def knob(self) -> float:
        return self.lam

    def utility(self, p, cost):
        return p - self.lam * cost

    def acceptable(self, p, cost, mask):
        return mask.copy()

    def choose(self, p, cost, mask=None, models=None):
        mask = np.ones_like(p, dtype=bool) if mask is None else mask
        u = np.where(mask, self.utility(p, cost), -np.inf)
        return np.argmax(u, axis=1), np.zeros(len(p), dtype=bool)

    def rank(self, p, cost, mask) -> list[int]:
        u = self.utility(p, cost)
        return sorted(np.flatnonzero(mask), key=lambda j: (-u[j], cost[j]))

    @staticmethod
    def grid(p: np.ndarray, cost: np.ndarray, n: int = 400, max_rows: int = 2000) -> np.ndarray:
        """λ from 0 (best predicted model) to beyond where the cheapest model always wins.

        Decisions change only where λ equals a ratio Δp/Δcost between two
        models on some prompt, so the grid is made of quantiles of those
        ratios (on up to ``max_rows`` prompts), plus 0 and a value past the last.
        """
        rows = np.linspace(0, len(p) - 1, min(len(p), max_rows)).astype(int) if len(p) else []
        ratios = []
        for i in rows:
            dp = p[i][:, None] - p[i][None, :]
            dc = cost[i][:, None] - cost[i][None, :]
            keep = (dp > 0) & (dc > 0) & np.isfinite(dc)
            ratios.append(dp[keep] / dc[keep])
        r = np.concatenate(ratios) if ratios else np.zeros(0)
        if r.size == 0:
            return np.array([0.0])
        qs = np.quantile(r, np.linspace(0, 1, n))
        return np.unique(np.concatenate([[0.0], qs, [r.max() * 1.01]]))


POLICIES = {"threshold": Threshold, "tradeoff": Tradeoff}


def make_policy(name: str, knob: float, **kw):
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; expected one of {sorted(POLICIES)}") from None
    return cls(knob, **kw)
