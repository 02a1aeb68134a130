"""Baselines a router is replayed against: single models, random, oracle, per-task prior.

Each baseline is a function from the logged outcomes to model choices (column
indices into the evaluation models), one choice per prompt, for each setting
of its knob. The learned baselines (RouterBench's k-nearest-neighbours router,
the scikit-learn and LightGBM routers) are ordinary :class:`router.Router`
objects fitted by :func:`training.fit.fit_router` and swept like any router.

Conventions:

* **Oracle**: for each prompt the cheapest model that succeeded; when none
  succeeded, the cheapest model; with fractional successes (judge scores) the
  cheapest among the models with the best score. Its curve sweeps a price of
  quality ``λ`` (success per USD) over the *true* outcomes: each prompt goes
  to ``argmax_j success_j - λ cost_j`` (ties: the cheaper model). ``λ = 0``
  is the oracle point; ``λ → ∞`` the per-prompt cheapest model. Every such
  point lies on the true cost–quality frontier of any per-prompt choice.
* **Per-task prior**: is *given* the task label. On each task it knows each
  model's mean success and mean cost on the training prompts of that task and
  sends every prompt of the task to ``argmax_j S[task, j] - λ C[task, j]``
  (ties: the cheaper model); ``λ = 0`` is the best fixed model of each task.
  A task absent from the training prompts uses the statistics of all of them.
* **Random**: each prompt goes to a model drawn uniformly at random (seeded).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np


def lagrangian_choice(value: np.ndarray, cost: np.ndarray, lam: float) -> np.ndarray:
    """Per row, the column maximising ``value - lam * cost``; ties go to the cheaper column, then the first."""
    u = value - lam * cost
    best = u.max(axis=1, keepdims=True)
    tied = u >= best - 1e-12 * np.maximum(1.0, np.abs(best))
    return np.argmin(np.where(tied, cost, np.inf), axis=1)


def ratio_grid(value: np.ndarray, cost: np.ndarray, n: int, max_rows: int = 4000) -> np.ndarray:
    """Values of ``λ`` at which some row's choice can change: quantiles of the ratios Δvalue/Δcost.

    Includes 0 and a value past the largest ratio (where every row takes its
    cheapest column). With at most ``n`` distinct ratios, every ratio and the
    midpoints between them are used, so the sweep is exact.
    """
    rows = np.linspace(0, len(value) - 1, min(len(value), max_rows)).astype(int) if len(value) else []
    ratios = []
    for i in rows:
        dv = value[i][:, None] - value[i][None, :]
        dc = cost[i][:, None] - cost[i][None, :]
        keep = (dv > 0) & (dc > 0)
        ratios.append(dv[keep] / dc[keep])
    r = np.unique(np.concatenate(ratios)) if ratios else np.zeros(0)
    if r.size == 0:
        return np.array([0.0])
    if r.size <= n:
        mids = (r[1:] + r[:-1]) / 2
        grid = np.concatenate([[0.0], r, mids, [r[-1] * 1.01 + 1e-12]])
    else:
        grid = np.concatenate([[0.0], np.quantile(r, np.linspace(0, 1, n)), [r[-1] * 1.01 + 1e-12]])
    return np.unique(grid)


def oracle_choice(success: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """The cheapest model that succeeded (the cheapest of the best, for fractional scores)."""
    return lagrangian_choice(success, cost, 0.0)


def oracle_sweep(success: np.ndarray, cost: np.ndarray, n: int = 512) -> Iterator[tuple[float, np.ndarray]]:
    """(λ, choices) over the true outcomes, from the oracle point to the per-prompt cheapest model."""
    for lam in ratio_grid(success, cost, n):
        yield float(lam), lagrangian_choice(success, cost, lam)


def task_table(tasks: np.ndarray, success: np.ndarray, cost: np.ndarray) -> tuple[dict[str, int], np.ndarray, np.ndarray]:
    """Per task (and overall, last row): mean success and mean cost of each model on training prompts."""
    names = sorted(set(map(str, tasks)))
    index = {t: i for i, t in enumerate(names)}
    S = np.zeros((len(names) + 1, success.shape[1]))
    C = np.zeros_like(S)
    for t, i in index.items():
        rows = tasks == t
        S[i] = np.nanmean(success[rows], axis=0)
        C[i] = np.nanmean(cost[rows], axis=0)
    S[-1] = np.nanmean(success, axis=0)
    C[-1] = np.nanmean(cost, axis=0)
    return index, np.nan_to_num(S, nan=0.0), np.nan_to_num(C, nan=np.inf)


def task_prior_sweep(
    train_tasks: np.ndarray,
    train_success: np.ndarray,
    train_cost: np.ndarray,
    eval_tasks: np.ndarray,
    n: int = 512,
) -> Iterator[tuple[float, np.ndarray]]:
    """(λ, choices): on each task, the best fixed trade-off learned on the training prompts of that task."""
    index, S, C = task_table(np.asarray(train_tasks), train_success, train_cost)
    rows = np.array([index.get(str(t), len(index)) for t in eval_tasks], dtype=int)
    finite_C = np.where(np.isfinite(C), C, 1e9)
    for lam in ratio_grid(S, finite_C, n):
        per_task = lagrangian_choice(S, finite_C, lam)  # one choice per task row
        yield float(lam), per_task[rows]


def random_choice(n_prompts: int, n_models: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n_models, size=n_prompts)
