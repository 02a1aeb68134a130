"""How unlike its training prompts a prompt is: a novelty score for shift awareness.

The score of a prompt is its mean Euclidean distance to its ``k`` nearest
training prompts in the featurizer's space (standardised features), divided
by the median of the same distance among the training prompts themselves
(each to its ``k`` nearest *other* training prompts). So 1.0 is a typical
training prompt; a prompt at 2.0 is twice as far from anything the router
learned from as a typical one. The training prompts' own scores are kept
(``reference_scores_``), so a score can also be read as a quantile.

Scoring one prompt is one product with at most ``max_reference`` stored
prompts (a seeded sample of the training prompts, kept in float32): tens of
microseconds.
"""

from __future__ import annotations

import numpy as np


LIMIT = 1e6  # standardised units: the bound of each feature of a scored prompt

class NoveltyScorer:
    """Distance to the nearest training prompts, in units of the training prompts' own typical distance.

    Parameters
    ----------
    k: neighbours averaged.
    max_reference: training prompts kept for the comparison (a seeded sample).
    random_state: seed of that sample.
    """

    def __init__(self, k: int = 10, max_reference: int = 1000, random_state: int = 0):
        self.k = k
        self.max_reference = max_reference
        self.random_state = random_state

    def fit(self, X) -> "NoveltyScorer":
        X = np.asarray(X, dtype=np.float64)
        if len(X) < 2:
            raise ValueError(f"novelty needs at least two training prompts, got {len(X)}")
        self.mean_ = X.mean(axis=0)
        self.scale_ = X.std(axis=0)
        self.scale_[self.scale_ == 0] = 1.0
        keep = np.arange(len(X))
        if len(X) > self.max_reference:
            keep = np.sort(np.random.default_rng(self.random_state).choice(len(X), self.max_reference, replace=False))
        ref = ((X[keep] - self.mean_) / self.scale_).astype(np.float32)
        self.reference_ = np.ascontiguousarray(ref)
        self.reference_sq_ = np.einsum("ij,ij->i", ref, ref)
        self.k_ = int(max(1, min(self.k, len(keep) - 1)))
        raw = np.array([self._distance(z, exclude=i) for i, z in enumerate(self.reference_)])
        self.unit_ = float(np.median(raw)) or 1e-12
        self.reference_scores_ = np.sort(raw / self.unit_)
        return self

    def _distance(self, z: np.ndarray, exclude: int | None = None) -> float:
        """Mean Euclidean distance from one standardised prompt ``z`` to its ``k`` nearest reference prompts."""
        # Far outside the training prompts is far enough: bounded so float32 cannot overflow (an overflow
        # would give NaN, and a NaN novelty would pass every novelty cut as familiar).
        z = np.clip(np.nan_to_num(z, nan=0.0, posinf=LIMIT, neginf=-LIMIT), -LIMIT, LIMIT).astype(np.float32)
        sq = self.reference_sq_ - 2.0 * (self.reference_ @ z) + float(z @ z)
        if exclude is not None:
            sq[exclude] = np.inf
        k = self.k_
        return float(np.sqrt(np.maximum(np.partition(sq, k - 1)[:k], 0.0)).mean())

    def score(self, X) -> np.ndarray:
        """Novelty of each prompt (row of features): 1.0 = as far from the training prompts as a typical training prompt.

        Row by row, so a prompt's score does not depend on the prompts scored
        with it (a batched matrix product may round differently).
        """
        Z = (np.asarray(X, dtype=np.float64) - self.mean_) / self.scale_
        return np.array([self._distance(z) for z in Z], dtype=np.float64) / self.unit_

    def quantile(self, score: float) -> float:
        """Share of training prompts less novel than ``score``."""
        return float(np.searchsorted(self.reference_scores_, score, side="right") / len(self.reference_scores_))
