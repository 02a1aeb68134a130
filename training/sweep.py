"""Sweeping a policy's knob over predictions: the model each setting chooses, per prompt.

Pure array functions shared by the choice of the served default
(:mod:`training.served`), ``thrifty tune`` (:mod:`training.tune`) and replay
(:mod:`training.replay`). ``p`` and ``cost`` are ``(n, m)`` predicted success
and expected cost; a choice is one column index per prompt.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from router.policy import POLICIES as POLICY_CLASSES
from router.policy import make_policy

POLICIES = tuple(POLICY_CLASSES)  # the policies every sweep visits


def knob_grid(policy: str, p: np.ndarray, cost: np.ndarray, n: int = 256, extra: Sequence[float] = ()) -> np.ndarray:
    """The policy's knob values that visit its decision regions, from one end of its range to the other, plus ``extra``."""
    try:
        cls = POLICY_CLASSES[policy]
    except KeyError:
        raise ValueError(f"unknown policy {policy!r}; expected one of {sorted(POLICY_CLASSES)}") from None
    grid = cls.grid(p, cost, n=n)
    if len(extra):
        grid = np.unique(np.concatenate([grid, np.asarray(list(extra), dtype=np.float64)]))
    return grid


def sweep_policy(
    policy: str,
    p: np.ndarray,
    cost: np.ndarray,
    knobs: Sequence[float] | None = None,
    n: int = 256,
    keep: Sequence[float] = (),
    models: Sequence[str] | None = None,
    **policy_kw,
) -> Iterator[tuple[float, np.ndarray]]:
    """Yield ``(knob, choices)`` for every knob of the grid.

    A knob whose choices equal the previous knob's is skipped (it adds no
    point), unless it is in ``keep``.
    """
    knobs = knob_grid(policy, p, cost, n) if knobs is None else knobs
    keep = set(float(k) for k in keep)
    previous = None
    for knob in knobs:
        choice, _ = make_policy(policy, float(knob), **policy_kw).choose(p, cost, None, models)
        if previous is not None and np.array_equal(choice, previous) and float(knob) not in keep:
            continue
        previous = choice
        yield float(knob), choice


def outcome_of(choice: np.ndarray, success: np.ndarray, cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logged success and cost of the chosen model, per prompt."""
    rows = np.arange(len(choice))
    return success[rows, choice], cost[rows, choice]


def best_model_index(success: np.ndarray, cost: np.ndarray) -> int:
    """Highest mean success; ties go to the cheaper model."""
    return int(np.lexsort((cost.mean(axis=0), -success.mean(axis=0)))[0])


def policy_kwargs(policy: str, best_model: str | None) -> dict:
    """Threshold policies fall back to the best single model of the training prompts, not to the most likely one.

    With the most-likely fallback, a threshold above every prediction sends
    each prompt to the model with the highest *predicted* success, which on
    held-out prompts is worse than the best single model (the winner's curse
    of noisy predictions); with the best-model fallback the top of the sweep
    is exactly the best single model, so the curve spans the whole range.
    """
    if policy == "threshold" and best_model is not None:
        return {"fallback": best_model}
    return {}
