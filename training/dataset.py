"""Outcome logs as a prompt-by-model matrix, and splits by prompt.

Logs arrive long (one row per call); routers learn from a matrix with one row
per unique prompt and one column per model, ``NaN`` where a model was not
called (always so for production traffic, where only the chosen model ran).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import pandas as pd
from scipy.optimize import nnls

from models.prices import Price, PriceTable


@dataclass(frozen=True)
class OutcomeMatrix:
    """Outcomes of ``n`` unique prompts × ``m`` models (columns in the order of ``models``)."""

    prompt_keys: np.ndarray  # (n,) "dataset/prompt_id"
    datasets: np.ndarray  # (n,)
    tasks: np.ndarray  # (n,)
    texts: list[str]
    models: list[str]
    success: np.ndarray  # (n, m), NaN = not observed
    input_tokens: np.ndarray  # (n, m)
    output_tokens: np.ndarray  # (n, m)
    cost: np.ndarray  # (n, m) USD of the logged call
    propensity: np.ndarray | None = None  # (n, m) probability the logging policy chose the model
    answers: np.ndarray | None = None  # (n, m) object: the logged parsed answer (None = none), for cascades

    @property
    def n_prompts(self) -> int:
        return len(self.texts)

    @property
    def observed(self) -> np.ndarray:
        return ~np.isnan(self.success)

    @property
    def is_complete(self) -> bool:
        """Every model has an outcome for every prompt (a benchmark matrix)."""
        return bool(self.observed.all())

    def prompt_tokens(self) -> np.ndarray:
        """Input tokens per prompt (the mean over the models that saw it)."""
        with np.errstate(invalid="ignore"):
            return np.nan_to_num(np.nanmean(np.where(self.observed, self.input_tokens, np.nan), axis=1))

    def subset(self, idx) -> "OutcomeMatrix":
        idx = np.asarray(idx)
        pick = lambda a: None if a is None else a[idx]  # noqa: E731
        return replace(
            self,
            prompt_keys=self.prompt_keys[idx],
            datasets=self.datasets[idx],
            tasks=self.tasks[idx],
            texts=[self.texts[i] for i in idx],
            success=self.success[idx],
            input_tokens=self.input_tokens[idx],
            output_tokens=self.output_tokens[idx],
            cost=self.cost[idx],
            propensity=pick(self.propensity),
            answers=pick(self.answers),
        )

    def select_models(self, models: list[str]) -> "OutcomeMatrix":
        cols = [self.models.index(m) for m in models]
        pick = lambda a: None if a is None else a[:, cols]  # noqa: E731
        return replace(
            self,
            models=list(models),
            success=self.success[:, cols],
            input_tokens=self.input_tokens[:, cols],
            output_tokens=self.output_tokens[:, cols],
            cost=self.cost[:, cols],
            propensity=pick(self.propensity),
            answers=pick(self.answers),
        )

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> "OutcomeMatrix":
        """Pivot a canonical outcome frame (see ``models.outcomes``)."""
        keys = frame["dataset"].astype(str) + "/" + frame["prompt_id"].astype(str)
        key_codes, key_uniques = pd.factorize(keys, sort=True)
        model_codes, model_uniques = pd.factorize(frame["model"].astype(str), sort=True)
        n, m = len(key_uniques), len(model_uniques)

        def grid(column: str, dtype=np.float64) -> np.ndarray:
            out = np.full((n, m), np.nan)
            out[key_codes, model_codes] = frame[column].to_numpy(dtype=dtype, na_value=np.nan)
            return out

        first = np.unique(key_codes, return_index=True)[1]  # first row of each prompt
        propensity = grid("propensity") if "propensity" in frame else None
        answers = None
        if "answer" in frame and frame["answer"].notna().any():
            answers = np.full((n, m), None, dtype=object)
            answers[key_codes, model_codes] = frame["answer"].astype(object).where(frame["answer"].notna(), None).to_numpy()
        return cls(
            prompt_keys=np.asarray(key_uniques, dtype=object),
            datasets=frame["dataset"].astype(str).to_numpy()[first],
            tasks=frame["task"].astype(str).to_numpy()[first],
            texts=frame["prompt"].iloc[first].astype(str).tolist(),  # convert n_prompts texts, not every row's
            models=[str(x) for x in model_uniques],
            success=grid("success"),
            input_tokens=grid("input_tokens"),
            output_tokens=grid("output_tokens"),
            cost=grid("cost_usd"),
            propensity=propensity,
            answers=answers,
        )


def split_by_prompt(
    matrix: OutcomeMatrix, test_size: float = 0.3, seed: int = 0, task_holdout: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Train and test row indices such that no prompt text is on both sides.

    Prompts are grouped by their text (the same question may appear under two
    datasets); with ``task_holdout`` the test side is that whole task instead.
    """
    if task_holdout is not None:
        test = matrix.tasks == task_holdout
        if not test.any():
            raise ValueError(f"--task-holdout {task_holdout!r}: no such task; tasks are {sorted(set(matrix.tasks))}")
        if test.all():
            raise ValueError(f"--task-holdout {task_holdout!r} is the only task: nothing left to train on")
        groups = _text_groups(matrix.texts)
        test_groups = set(groups[test])
        test = np.isin(groups, list(test_groups))
        return np.flatnonzero(~test), np.flatnonzero(test)
    if not 0 < test_size < 1:
        raise ValueError(f"test size must be in (0, 1), got {test_size}")
    groups = _text_groups(matrix.texts)
    unique = np.unique(groups)
    rng = np.random.default_rng(seed)
    test_groups = rng.choice(unique, size=max(1, int(round(len(unique) * test_size))), replace=False)
    test = np.isin(groups, test_groups)
    return np.flatnonzero(~test), np.flatnonzero(test)


def prompt_folds(texts: Sequence[str], folds: int, seed: int) -> list[np.ndarray]:
    """Row indices of ``folds`` parts, with all rows of one prompt text in the same part."""
    groups = _text_groups(list(texts))
    unique = np.unique(groups)
    rng = np.random.default_rng(seed)
    assignment = dict(zip(rng.permutation(unique), np.arange(len(unique)) % folds))
    part = np.array([assignment[g] for g in groups])
    return [np.flatnonzero(part == k) for k in range(folds)]


def task_folds(tasks: Sequence[str], folds: int) -> list[np.ndarray]:
    """Row indices of up to ``folds`` parts, each holding whole tasks (one task per part when there are at most ``folds``).

    Tasks are dealt largest first to the part with the fewest rows so far, so
    parts are about equal in size; deterministic.
    """
    tasks = np.asarray(tasks).astype(str)
    names, counts = np.unique(tasks, return_counts=True)
    k = min(folds, len(names))
    sizes, owner = np.zeros(k, dtype=int), {}
    for i in np.lexsort((names, -counts)):
        part = int(np.argmin(sizes))
        owner[names[i]] = part
        sizes[part] += counts[i]
    part_of = np.array([owner[t] for t in tasks])
    return [np.flatnonzero(part_of == j) for j in range(k)]


def _text_groups(texts: list[str]) -> np.ndarray:
    return pd.factorize(pd.Series(texts))[0]


def complete_matrix(matrix: OutcomeMatrix, min_coverage: float = 0.9) -> tuple[OutcomeMatrix, list[str], int]:
    """The part of the logs where every model answered every prompt.

    Models that answered fewer than ``min_coverage`` of the prompts are dropped
    first (one partial model would otherwise remove most prompts), then every
    prompt some remaining model did not answer. Returns the matrix, the dropped
    models and the number of dropped prompts.
    """
    seen = matrix.observed & ~np.isnan(matrix.cost)
    coverage = seen.mean(axis=0)
    keep = [m for m, c in zip(matrix.models, coverage) if c >= min_coverage]
    if len(keep) < 2:
        raise ValueError(f"fewer than two models answered at least {min_coverage:.0%} of the prompts: nothing to route between")
    dropped = [m for m in matrix.models if m not in keep]
    sub = matrix.select_models(keep)
    rows = np.flatnonzero((sub.observed & ~np.isnan(sub.cost)).all(axis=1))
    if len(rows) < 2:
        raise ValueError("fewer than two prompts were answered by every model")
    return sub.subset(rows), dropped, matrix.n_prompts - len(rows)


def implied_prices(matrix: OutcomeMatrix) -> PriceTable:
    """Per-token prices that best explain each model's logged costs (non-negative least squares).

    Used for models no catalog prices, when the logs record observed costs
    (RouterBench): the router then predicts cost from predicted tokens with
    these prices, exactly as it does with list prices.
    """
    prices = {}
    for j, model in enumerate(matrix.models):
        seen = matrix.observed[:, j] & ~np.isnan(matrix.cost[:, j])
        if not seen.any():
            continue
        A = np.column_stack([matrix.input_tokens[seen, j], matrix.output_tokens[seen, j]]) / 1e6
        coef, _ = nnls(A, matrix.cost[seen, j])
        prices[model] = Price(float(coef[0]), float(coef[1]))
    return PriceTable(prices)


def propensity_weights(matrix: OutcomeMatrix, clip: float = 20.0) -> np.ndarray | None:
    """Inverse-propensity weights for logs of a router's own traffic, 1 for benchmark rows.

    Served logs over-represent the models the router already prefers; weighting
    each logged call by 1/propensity makes every model's training prompts
    representative again. Weights are clipped at ``clip`` (a few tiny
    propensities would otherwise dominate) and scaled to mean 1 over the
    observed entries.
    """
    if matrix.propensity is None or np.isnan(matrix.propensity).all():
        return None
    p = matrix.propensity
    w = np.where(np.isnan(p), 1.0, 1.0 / np.clip(p, 1.0 / clip, 1.0))
    w = np.where(matrix.observed, w, np.nan)
    return w / np.nanmean(w)


def frame_hash(frame: pd.DataFrame) -> str:
    """A content hash of the outcome rows that training uses (order-independent)."""
    cols = [c for c in ("dataset", "prompt_id", "prompt", "model", "success", "input_tokens", "output_tokens", "cost_usd") if c in frame]
    rows = pd.util.hash_pandas_object(frame[cols], index=False).to_numpy()
    return hashlib.sha256(np.sort(rows).tobytes()).hexdigest()
