"""Per-model probability calibration fitted on held-out predictions.

A router compares probabilities across models against one threshold, so each
model's probabilities must mean what they say: an over-confident cheap model
would be picked for prompts it fails. Platt scaling (a logistic fit on the
logit of the raw probability) is the default; isotonic regression is the
non-parametric alternative for large held-out sets.
"""

from __future__ import annotations

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

EPS = 1e-6


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free logistic


def binary_targets(y: np.ndarray, w: np.ndarray | None = None):
    """Expand fractional targets in [0,1] into weighted 0/1 rows (y=1 with weight s, y=0 with weight 1-s)."""
    w = np.ones_like(y) if w is None else w
    frac = (y > 0) & (y < 1)
    if not frac.any():
        return y.astype(int), w
    yy = np.concatenate([np.where(frac, 1, y), np.zeros(frac.sum())]).astype(int)
    ww = np.concatenate([np.where(frac, w * y, w), (w * (1 - y))[frac]])
    return yy, ww


class ColumnCalibrator:
    """One calibration map per column (model) of a probability matrix.

    ``fit(P, Y)`` takes raw probabilities and outcomes with NaN where a model
    has no outcome; ``transform(P)`` returns calibrated probabilities.
    """

    def __init__(self, method: str = "platt", min_samples: int = 20):
        self.method = method
        self.min_samples = min_samples

    def fit(self, P: np.ndarray, Y: np.ndarray) -> "ColumnCalibrator":
        if self.method not in ("platt", "isotonic", "none"):
            raise ValueError(f"unknown calibration method {self.method!r}")
        m = P.shape[1]
        self.a_ = np.ones(m)
        self.b_ = np.zeros(m)
        self.iso_x_: list[np.ndarray | None] = [None] * m
        self.iso_y_: list[np.ndarray | None] = [None] * m
        if self.method == "none":
            return self
        for j in range(m):
            seen = ~np.isnan(Y[:, j])
            y, p = Y[seen, j], P[seen, j]
            if seen.sum() < self.min_samples or np.ptp(y) == 0:
                continue  # too little signal: keep the raw probabilities
            if self.method == "platt":
                yy, ww = binary_targets(y)
                z = logit(np.concatenate([p, p[(y > 0) & (y < 1)]]))
                lr = LogisticRegression(C=1e4).fit(z[:, None], yy, sample_weight=ww)
                self.a_[j], self.b_[j] = lr.coef_[0, 0], lr.intercept_[0]
            else:
                iso = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(p, y)
                self.iso_x_[j], self.iso_y_[j] = iso.X_thresholds_, iso.y_thresholds_
        return self

    def transform(self, P: np.ndarray) -> np.ndarray:
        if self.method == "platt":
            return sigmoid(logit(P) * self.a_ + self.b_)
        if self.method == "isotonic":
            out = P.copy()
            for j, (x, y) in enumerate(zip(self.iso_x_, self.iso_y_)):
                if x is not None:
                    out[:, j] = np.interp(P[:, j], x, y)
            return out
        return P
