"""Exploration with known propensities.

Production logs show only the model the router chose, so a router retrained
on them learns nothing about models it never picks. Spending a small share of
traffic on other *acceptable* models, and recording the probability of every
choice, makes those logs usable for off-policy evaluation and
propensity-weighted retraining.

ε-greedy over the acceptable candidates: with probability ``1 - ε`` the
policy's choice, otherwise a uniform pick among the acceptable candidates
(the policy's choice included). The chosen model's propensity is
``(1 - ε)·[chosen = greedy] + ε / k`` for ``k`` acceptable candidates.
When fewer than two candidates are acceptable — a router that falls back to
one fixed model, say — the pool is every candidate the request allows:
otherwise a router that never beats its fallback would never collect the
logs that could teach it to.
"""

from __future__ import annotations

import random
from dataclasses import replace

from router.decision import Decision


def explore(decision: Decision, epsilon: float, rng: random.Random) -> Decision:
    if not 0 <= epsilon <= 1:
        raise ValueError(f"exploration epsilon must be in [0, 1], got {epsilon}")
    pool = [c for c in decision.candidates if c.acceptable]
    if len(pool) < 2:
        pool = list(decision.candidates)
    if epsilon == 0 or len(pool) < 2:
        return decision
    k = len(pool)
    explored = rng.random() < epsilon
    chosen = rng.choice(pool).model if explored else decision.model
    propensity = (1 - epsilon) * (chosen == decision.model) + epsilon / k
    # the chosen model first, then the policy's own order for fail-over
    ordered = tuple(sorted(decision.candidates, key=lambda c: c.model != chosen))
    return replace(decision, model=chosen, candidates=ordered, propensity=propensity, explored=chosen != decision.model)
