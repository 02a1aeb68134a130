"""Per-model predictors of success and of output tokens.

All are scikit-learn-style estimators over a prompt-by-model layout:

* ``X``: features of ``n`` prompts, shape ``(n, d)``;
* ``Y``: outcomes, shape ``(n, m)`` for the ``m`` models, with ``NaN`` where a
  model has no logged outcome for a prompt (production logs are partial);
* ``W``: optional sample weights of the same shape (propensity weights when
  retraining on a router's own traffic).

``predict_proba(X)`` / ``predict(X)`` return an ``(n, m)`` matrix in the
order of ``models_``. Success predictors hold out a share of the prompts
(``holdout``), fit on the rest and calibrate each model on the held-out part.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from router.calibration import ColumnCalibrator, binary_targets, sigmoid


def prompt_holdout(n: int, share: float, random_state: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a fit part and a held-out part of ``n`` prompts."""
    rng = np.random.default_rng(random_state)
    order = rng.permutation(n)
    k = int(round(n * share)) if n >= 10 else 0
    return np.sort(order[k:]), np.sort(order[:k])


def _check(X: np.ndarray, Y: np.ndarray, W: np.ndarray | None, models):
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    if Y.ndim != 2 or X.shape[0] != Y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows and Y shape {Y.shape}; expected Y of shape (n_prompts, n_models)")
    if models is not None and len(models) != Y.shape[1]:
        raise ValueError(f"{len(models)} model names for {Y.shape[1]} columns of Y")
    W = np.ones_like(Y) if W is None else np.asarray(W, dtype=np.float64)
    return X, Y, W, list(models) if models is not None else [str(j) for j in range(Y.shape[1])]


class _CalibratedSuccess:
    """Shared fit/holdout/calibrate skeleton; subclasses implement ``_fit_raw`` and ``_raw``."""

    holdout: float
    calibration: str
    random_state: int

    def fit(self, X, Y, W=None, models=None):
        X, Y, W, self.models_ = _check(X, Y, W, models)
        fit_idx, cal_idx = prompt_holdout(len(X), self.holdout, self.random_state)
        self.base_rate_ = np.array(
            [np.average(Y[~np.isnan(Y[:, j]), j], weights=W[~np.isnan(Y[:, j]), j]) if (~np.isnan(Y[:, j])).any() else 0.5 for j in range(Y.shape[1])]
        )
        self._fit_raw(X[fit_idx], Y[fit_idx], W[fit_idx], X[cal_idx], Y[cal_idx])
        self.calibrator_ = ColumnCalibrator(self.calibration)
        if len(cal_idx):
            self.calibrator_.fit(self._raw(X[cal_idx]), Y[cal_idx])
        else:
            self.calibrator_.fit(np.full((0, Y.shape[1]), 0.5), np.full((0, Y.shape[1]), np.nan))
        return self

    def predict_proba(self, X) -> np.ndarray:
        return self.calibrator_.transform(self._raw(np.asarray(X, dtype=np.float64)))


class LogisticSuccess(_CalibratedSuccess):
    """One L2-regularised logistic regression per model (the scikit-learn baseline).

    Prediction is one matrix product for all models, so it adds microseconds
    per decision. Fractional successes (judge scores) enter as weighted 0/1 rows.
    """

    def __init__(self, C: float = 0.5, holdout: float = 0.2, calibration: str = "platt", random_state: int = 0):
        self.C = C
        self.holdout = holdout
        self.calibration = calibration
        self.random_state = random_state

    def _fit_raw(self, X, Y, W, X_cal=None, Y_cal=None):
        from sklearn.linear_model import LogisticRegression

        self.mean_ = X.mean(axis=0) if len(X) else np.zeros(X.shape[1])
        self.scale_ = X.std(axis=0) if len(X) else np.ones(X.shape[1])
        self.scale_[self.scale_ == 0] = 1.0
        Z = (X - self.mean_) / self.scale_
        m = Y.shape[1]
        self.coef_ = np.zeros((X.shape[1], m))
        self.intercept_ = np.zeros(m)
        for j in range(m):
            seen = ~np.isnan(Y[:, j])
            y, w = binary_targets(Y[seen, j], W[seen, j])
            Zj = Z[seen]
            frac = (Y[seen, j] > 0) & (Y[seen, j] < 1)
            if frac.any():
                Zj = np.vstack([Zj, Zj[frac]])
            if len(np.unique(y)) < 2:  # every outcome identical: a constant model
                rate = float(np.clip(y.mean() if len(y) else self.base_rate_[j], 1e-3, 1 - 1e-3))
                self.intercept_[j] = np.log(rate / (1 - rate))
                continue
            lr = LogisticRegression(C=self.C, max_iter=500).fit(Zj, y, sample_weight=w)
            self.coef_[:, j] = lr.coef_[0]
            self.intercept_[j] = lr.intercept_[0]
        return self

    def _raw(self, X):
        return sigmoid(((X - self.mean_) / self.scale_) @ self.coef_ + self.intercept_)


def _training_threads() -> int:
    """THRIFTY_THREADS, else the cores this process may run on (read when fitting, never at import)."""
    from models.settings import get_settings

    return get_settings().training_threads


class LightGBMSuccess(_CalibratedSuccess):
    """One gradient-boosted model shared by all models: prompt features plus model identity.

    Sharing lets a rarely-logged model borrow the difficulty signal learned
    from the others; the model id is a categorical feature, so trees can still
    split per model. Targets in [0,1] use LightGBM's cross-entropy objective.
    Early stopping and calibration both use the held-out prompts. ``n_jobs``:
    training threads (default: ``THRIFTY_THREADS``, else the cores this process
    may run on); prediction always runs on one thread (one prompt at a time).
    """

    def __init__(
        self,
        n_estimators: int = 400,
        learning_rate: float = 0.05,
        num_leaves: int = 15,
        min_child_samples: int = 40,
        feature_fraction: float = 0.8,
        lambda_l2: float = 1.0,
        early_stopping_rounds: int = 40,
        holdout: float = 0.2,
        calibration: str = "platt",
        n_jobs: int | None = None,
        random_state: int = 0,
    ):
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.feature_fraction = feature_fraction
        self.lambda_l2 = lambda_l2
        self.early_stopping_rounds = early_stopping_rounds
        self.holdout = holdout
        self.calibration = calibration
        self.n_jobs = n_jobs
        self.random_state = random_state

    @staticmethod
    def _long(X, Y, W=None):
        n, m = Y.shape
        seen = ~np.isnan(Y)
        rows, cols = np.nonzero(seen)
        data = np.hstack([X[rows], cols[:, None].astype(np.float64)])
        w = None if W is None else W[rows, cols]
        return data, Y[rows, cols], w

    def _booster_params(self) -> dict:
        """LightGBM parameters of the booster (a distributed fit trains with the same ones)."""
        return {
            "objective": "cross_entropy",
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_child_samples,
            "feature_fraction": self.feature_fraction,
            "lambda_l2": self.lambda_l2,
            "num_threads": self.n_jobs or _training_threads(),
            "seed": self.random_state,
            "deterministic": True,
            "force_col_wise": True,
            "verbosity": -1,
            "max_cat_to_onehot": 64,
        }

    def _fit_raw(self, X, Y, W, X_cal=None, Y_cal=None):
        import lightgbm as lgb

        params = self._booster_params()
        self.n_models_ = Y.shape[1]
        cat = [X.shape[1]]
        data, y, w = self._long(X, Y, W)
        train = lgb.Dataset(data, y, weight=w, categorical_feature=cat, free_raw_data=True)
        valid_sets, callbacks = [], []
        if X_cal is not None and len(X_cal) and (~np.isnan(Y_cal)).any():
            vdata, vy, _ = self._long(X_cal, Y_cal)
            valid_sets = [lgb.Dataset(vdata, vy, categorical_feature=cat, reference=train)]
            callbacks = [lgb.early_stopping(self.early_stopping_rounds, verbose=False)]
        booster = lgb.train(params, train, num_boost_round=self.n_estimators, valid_sets=valid_sets, callbacks=callbacks)
        return self._keep_trees(booster, booster.best_iteration or booster.current_iteration())

    def _keep_trees(self, booster, best_iteration: int) -> "LightGBMSuccess":
        import lightgbm as lgb

        self.best_iteration_ = best_iteration
        # Keep only the trees up to the best iteration: smaller model, faster predict.
        self.booster_ = lgb.Booster(model_str=booster.model_to_string(num_iteration=best_iteration))
        return self

    def _raw(self, X):
        n, m = len(X), self.n_models_
        # one row per (prompt, model): the prompt's features, then the model id (filled by broadcasting,
        # which for one prompt costs a fraction of np.repeat/np.tile with cold caches)
        data = np.empty((n, m, X.shape[1] + 1))
        data[:, :, :-1] = X[:, None, :]
        data[:, :, -1] = np.arange(m, dtype=np.float64)
        return self.booster_.predict(data.reshape(n * m, -1), num_threads=1).reshape(n, m)

    def __getstate__(self):
        state = self.__dict__.copy()
        if "booster_" in state:  # Boosters pickle through their text form
            state["booster_"] = state["booster_"].model_to_string()
        return state

    def __setstate__(self, state):
        import lightgbm as lgb

        if isinstance(state.get("booster_"), str):
            state["booster_"] = lgb.Booster(model_str=state["booster_"])
        self.__dict__.update(state)


class IRTSuccess(_CalibratedSuccess):
    """Item-response model: prompt types and a shared difficulty, with per-model skills.

    Every prompt has a latent *type* ``c`` (one of ``n_types``: the kind of
    work it asks for) and a latent *difficulty* ``u ~ N(0, 1)``; model ``j``
    succeeds with probability::

        P(success_ij | c, u) = sigmoid(b_j + a_j · θ_c + d_j u)

    with ``θ_c`` a type's position in a ``n_factors``-dimensional skill space,
    ``a_j`` the model's skills there, ``b_j`` its overall strength and ``d_j``
    how strongly the shared difficulty affects it (the 2PL item-response
    model, with prompts as items). The type is predicted from the features by
    a softmax map shared by all models; the difficulty is integrated out
    (Gauss–Hermite, ``n_nodes`` points) so that within-prompt agreement of the
    models ("every model failed this one") is explained by the difficulty
    instead of being memorised by the feature map. So every model's outcomes
    teach the one feature map, and a model only adds its own ``n_factors + 2``
    numbers: a model logged on few prompts borrows what the others taught.

    Fitted by full-batch L-BFGS on the marginal likelihood of the observed
    entries (``NaN`` = unobserved; fractional scores enter as soft targets;
    sample weights scale a prompt's likelihood term by the mean weight of its
    logged calls — exact for served logs, one call per prompt), with L2
    penalties ``alpha`` on the feature map and ``alpha_skill`` on the skill
    factors, from a seeded initialisation: deterministic. Prediction is
    ``softmax(X W + c) @ S`` with ``S`` the (type, model) success
    probabilities, difficulty already integrated: two small matrix products.
    """

    def __init__(
        self,
        n_types: int = 16,
        n_factors: int = 4,
        n_nodes: int = 7,
        alpha: float = 1e-3,
        alpha_skill: float = 1e-4,
        max_iter: int = 300,
        holdout: float = 0.2,
        calibration: str = "platt",
        random_state: int = 0,
    ):
        self.n_types = n_types
        self.n_factors = n_factors
        self.n_nodes = n_nodes
        self.alpha = alpha
        self.alpha_skill = alpha_skill
        self.max_iter = max_iter
        self.holdout = holdout
        self.calibration = calibration
        self.random_state = random_state

    # -- parameters as one flat vector (for L-BFGS) ---------------------
    def _shapes(self, d: int, m: int) -> list[tuple[int, ...]]:
        K, k = self.n_types, self.n_factors
        return [(d, K), (K,), (K, k), (m, k), (m,), (m,)]  # W, c, θ, a, b, d

    @staticmethod
    def _unpack(flat: np.ndarray, shapes) -> list[np.ndarray]:
        out, i = [], 0
        for shape in shapes:
            size = int(np.prod(shape))
            out.append(flat[i : i + size].reshape(shape))
            i += size
        return out

    def _nodes(self) -> tuple[np.ndarray, np.ndarray]:
        """Gauss–Hermite points and log-weights for an expectation over u ~ N(0, 1)."""
        u, w = np.polynomial.hermite_e.hermegauss(max(int(self.n_nodes), 1))
        return u, np.log(w / w.sum())

    @staticmethod
    def _log_softmax(G: np.ndarray) -> np.ndarray:
        G = G - G.max(axis=1, keepdims=True)
        return G - np.log(np.exp(G).sum(axis=1, keepdims=True))

    def _type_success(self, theta, a, b, d) -> np.ndarray:
        """(n_types, m) success probability of each model on each type, difficulty integrated out."""
        u, logw = self._nodes()
        L = theta @ a.T + b
        return sum(np.exp(lw) * sigmoid(L + d * t) for t, lw in zip(u, logw))

    def _loss_grad(self, flat, shapes, Z, MY, MN, M, weight, total):
        W, c, theta, a, b, d = self._unpack(flat, shapes)
        u, logw = self._nodes()
        log_pi = self._log_softmax(Z @ W + c)  # (n, K) prior of each prompt's type
        L = theta @ a.T + b  # (K, m)
        # log-likelihood of each prompt's outcomes under each (type, difficulty node)
        J = np.stack(
            [log_pi + lw + MY @ (-np.logaddexp(0.0, -(L + d * t))).T + MN @ (-np.logaddexp(0.0, L + d * t)).T for t, lw in zip(u, logw)],
            axis=2,
        )  # (n, K, Q)
        top = J.max(axis=(1, 2), keepdims=True)
        lse = top[:, 0, 0] + np.log(np.exp(J - top).sum(axis=(1, 2)))
        R = np.exp(J - lse[:, None, None]) * weight[:, None, None]  # weighted posterior over (type, node)
        loss = -float(weight @ lse) / total
        loss += 0.5 * self.alpha * float(np.sum(W * W))
        loss += 0.5 * self.alpha_skill * float(np.sum(theta * theta) + np.sum(a * a))
        gG = (np.exp(log_pi) * weight[:, None] - R.sum(axis=2)) / total
        gL = np.zeros_like(L)
        gd = np.zeros_like(d)
        for q, t in enumerate(u):
            Rq = R[:, :, q]
            G = ((Rq.T @ M) * sigmoid(L + d * t) - Rq.T @ MY) / total
            gL += G
            gd += t * G.sum(axis=0)
        grads = (
            Z.T @ gG + self.alpha * W,
            gG.sum(axis=0),
            gL @ a + self.alpha_skill * theta,
            gL.T @ theta + self.alpha_skill * a,
            gL.sum(axis=0),
            gd,
        )
        return loss, np.concatenate([g.ravel() for g in grads])

    def _fit_raw(self, X, Y, W, X_cal=None, Y_cal=None):
        from scipy.optimize import minimize

        n, dim = X.shape
        m = Y.shape[1]
        self.mean_ = X.mean(axis=0) if n else np.zeros(dim)
        self.scale_ = X.std(axis=0) if n else np.ones(dim)
        self.scale_[self.scale_ == 0] = 1.0
        Z = (X - self.mean_) / self.scale_
        seen = ~np.isnan(Y)
        M = seen.astype(np.float64)
        Yf = np.where(seen, Y, 0.0)
        # A prompt's outcomes share its latent type and difficulty, so a weight
        # applies to the prompt's whole likelihood term: the mean weight of its
        # logged calls (exact for served logs, one call per prompt, and for
        # weights constant per prompt, where weight 2 = the prompt logged twice).
        count = M.sum(axis=1)
        weight = np.where(count > 0, np.where(seen, W, 0.0).sum(axis=1) / np.maximum(count, 1), 0.0)
        total = float(weight @ count)
        K, k = self.n_types, self.n_factors
        shapes = self._shapes(dim, m)
        rng = np.random.default_rng(self.random_state)
        rate = np.clip(self.base_rate_, 1e-3, 1 - 1e-3)
        init = [
            rng.normal(0.0, 1.0 / np.sqrt(max(dim, 1)), (dim, K)),
            np.zeros(K),
            rng.normal(0.0, 1.0, (K, k)),
            rng.normal(0.0, 1.0 / np.sqrt(max(k, 1)), (m, k)),
            np.log(rate / (1 - rate)),
            np.ones(m),
        ]
        flat = np.concatenate([p.ravel() for p in init])
        self.n_iter_ = 0
        if total > 0:
            res = minimize(
                self._loss_grad,
                flat,
                args=(shapes, Z, M * Yf, M * (1.0 - Yf), M, weight, total),
                jac=True,
                method="L-BFGS-B",
                options={"maxiter": self.max_iter, "maxcor": 20},
            )
            flat, self.n_iter_ = res.x, int(res.nit)
        Wm, c, theta, a, b, d = self._unpack(flat, shapes)
        # fold the standardisation into the type map
        self.W_ = Wm / self.scale_[:, None]
        self.c_ = c - self.mean_ @ self.W_
        self.type_success_ = self._type_success(theta, a, b, d)  # (K, m)
        self.theta_, self.skills_, self.strength_, self.discrimination_ = theta, a, b, d
        return self

    def prompt_types(self, X) -> np.ndarray:
        """(n, n_types): each prompt's predicted distribution over the latent types."""
        G = np.asarray(X, dtype=np.float64) @ self.W_ + self.c_
        E = np.exp(G - G.max(axis=1, keepdims=True))
        return E / E.sum(axis=1, keepdims=True)

    def _raw(self, X):
        return self.prompt_types(X) @ self.type_success_


class KNNSuccess:
    """RouterBench's k-nearest-neighbours baseline: a model's success on the k most similar training prompts."""

    def __init__(self, k: int = 40):
        self.k = k

    def fit(self, X, Y, W=None, models=None):
        X, Y, W, self.models_ = _check(X, Y, W, models)
        self.mean_ = X.mean(axis=0)
        self.scale_ = X.std(axis=0)
        self.scale_[self.scale_ == 0] = 1.0
        Z = (X - self.mean_) / self.scale_
        self.Z_ = Z / np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)
        self.Y_ = Y
        self.prior_ = np.array([np.nanmean(Y[:, j]) if (~np.isnan(Y[:, j])).any() else 0.5 for j in range(Y.shape[1])])
        return self

    def predict_proba(self, X) -> np.ndarray:
        Z = (np.asarray(X, dtype=np.float64) - self.mean_) / self.scale_
        Z = Z / np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)
        out = np.empty((len(Z), self.Y_.shape[1]))
        k = min(self.k, len(self.Z_))
        for start in range(0, len(Z), 512):  # bounded memory for the similarity block
            sim = Z[start : start + 512] @ self.Z_.T
            nn = np.argpartition(-sim, k - 1, axis=1)[:, :k]
            vals = self.Y_[nn]  # (b, k, m)
            seen = ~np.isnan(vals)
            sums = np.where(seen, vals, 0).sum(axis=1)
            counts = seen.sum(axis=1)
            # one pseudo-observation at the model's prior keeps empty neighbourhoods defined
            out[start : start + 512] = (sums + self.prior_) / (counts + 1)
        return out


class TokenRegressor:
    """Expected output tokens per model: ridge regression on log(1 + tokens).

    Models differ several-fold in the tokens they spend on the same prompt, so
    the expected cost of a call is predicted per prompt and model rather than
    read off a static price. The retransformation uses Duan's smearing factor,
    so predictions estimate the mean, not the median, token count.
    """

    def __init__(self, alpha: float = 3.0):
        self.alpha = alpha

    def fit(self, X, T, W=None, models=None):
        X, T, W, self.models_ = _check(X, T, W, models)
        self.mean_ = X.mean(axis=0) if len(X) else np.zeros(X.shape[1])
        self.scale_ = X.std(axis=0) if len(X) else np.ones(X.shape[1])
        self.scale_[self.scale_ == 0] = 1.0
        Z = (X - self.mean_) / self.scale_
        d, m = X.shape[1], T.shape[1]
        self.coef_ = np.zeros((d, m))
        self.intercept_ = np.zeros(m)
        self.smear_ = np.ones(m)
        eye = self.alpha * np.eye(d)
        for j in range(m):
            seen = ~np.isnan(T[:, j])
            if not seen.any():
                continue
            y = np.log1p(np.maximum(T[seen, j], 0))
            Zj, w = Z[seen], W[seen, j]
            mu = np.average(y, weights=w)
            zc = np.average(Zj, axis=0, weights=w)
            A = (Zj - zc) * np.sqrt(w)[:, None]
            b = (y - mu) * np.sqrt(w)
            coef = np.linalg.solve(A.T @ A + eye, A.T @ b)
            self.coef_[:, j] = coef
            self.intercept_[j] = mu - zc @ coef
            resid = y - (Zj @ coef + self.intercept_[j])
            self.smear_[j] = float(np.average(np.exp(resid), weights=w))
        return self

    def predict(self, X) -> np.ndarray:
        Z = (np.asarray(X, dtype=np.float64) - self.mean_) / self.scale_
        pred = np.exp(np.clip(Z @ self.coef_ + self.intercept_, -20, 20)) * self.smear_ - 1.0
        return np.maximum(pred, 0.0)


class EnsembleSuccess:
    """The mean of several success predictors' (calibrated) probabilities.

    The members err differently — neighbours see local structure, the linear
    model global directions, the trees interactions with the model id — so
    their average ranks prompts better than any one of them (measured on
    out-of-fold predictions of the training prompts of the shared logs). By
    default: ``KNNSuccess``, ``LogisticSuccess`` and ``LightGBMSuccess``.
    """

    def __init__(self, members=None, random_state: int = 0):
        self.members = members
        self.random_state = random_state

    def _default_members(self):
        return [KNNSuccess(), LogisticSuccess(random_state=self.random_state), LightGBMSuccess(random_state=self.random_state)]

    def fit(self, X, Y, W=None, models=None):
        X, Y, W, self.models_ = _check(X, Y, W, models)
        self.members_ = list(self.members) if self.members is not None else self._default_members()
        for member in self.members_:
            member.fit(X, Y, W, models=self.models_)
        return self

    @classmethod
    def from_fitted(cls, members, models) -> "EnsembleSuccess":
        """An ensemble of predictors already fitted on the same features and models."""
        ens = cls(members=list(members))
        ens.members_ = list(members)
        ens.models_ = list(models)
        return ens

    def predict_proba(self, X) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        return np.mean([member.predict_proba(X) for member in self.members_], axis=0)


# -- the registry of success predictors -----------------------------------------------------
#
# Hyperparameters chosen on out-of-fold predictions of the *training* split
# (3-fold by prompt; gap closed of the λ-tradeoff sweep) of routerbench-subset,
# llmrouter-14task and zeroeval-gsm8k + zeroeval-math-l5: k = 100 neighbours
# beat 15 and 40 on all three (200 on one), C = 0.05 beat 0.5 and 5 on all three.
KNN_K = 100
LOGISTIC_C = 0.05
# IRTSuccess, chosen the same way (mean over the three logs of the out-of-fold
# gap closed, λ-tradeoff sweep): 16 prompt types, 4 skill factors, alpha = 1e-3
# on the type map: 0.160 (0.178 / 0.244 / 0.059), against 8 types 0.113, 32 types
# 0.135, 8 factors 0.152, alpha = 3e-3 0.146. Continuous prompt embeddings
# (a_j · θ(x) with θ linear: at most 0.132; a tanh network: 0.050-0.149,
# unstable across settings) did worse. Not an ensemble member: adding it to
# kNN + logistic + LightGBM lowered the ensemble's out-of-fold gap closed
# (0.180 -> 0.171) while its AUC rose by under 0.001.
IRT_TYPES = 16
IRT_FACTORS = 4
IRT_ALPHA = 1e-3


class UnknownPredictorError(ValueError):
    """A success predictor name that is not registered."""


@dataclass(frozen=True)
class PredictorKind:
    """A registered kind of success predictor: ``build(seed)`` makes an unfitted one.

    ``members``: for an ensemble, the registered kinds it averages (replay fits
    them once and averages their predictions instead of fitting them again).
    ``replayed``: trained by ``thrifty replay`` unless ``--predictors`` says otherwise.
    """

    name: str
    build: Callable[[int], object]
    description: str
    members: tuple[str, ...] = ()
    replayed: bool = True


_PREDICTORS: dict[str, PredictorKind] = {}


def register_predictor(kind: PredictorKind) -> PredictorKind:
    if kind.name in _PREDICTORS:
        raise ValueError(f"a success predictor named {kind.name!r} is already registered")
    missing = [m for m in kind.members if m not in _PREDICTORS]
    if missing:
        raise UnknownPredictorError(f"ensemble {kind.name!r} names unregistered member(s) {missing}")
    _PREDICTORS[kind.name] = kind
    return kind


def get_predictor(name: str) -> PredictorKind:
    """The registered predictor kind called ``name`` (``UnknownPredictorError`` names the choices)."""
    try:
        return _PREDICTORS[name]
    except KeyError:
        raise UnknownPredictorError(f"unknown predictor {name!r}; choose from {', '.join(predictor_names())}") from None


def predictor_names() -> list[str]:
    """Every registered success predictor, in registration order."""
    return list(_PREDICTORS)


def make_success_predictor(name: str, seed: int = 0):
    """An unfitted success predictor of the registered kind ``name``."""
    return get_predictor(name).build(seed)


def _ensemble(seed: int) -> EnsembleSuccess:
    return EnsembleSuccess([make_success_predictor(m, seed) for m in get_predictor("ensemble").members], random_state=seed)


register_predictor(PredictorKind("knn", lambda seed: KNNSuccess(k=KNN_K), "RouterBench's k-nearest-neighbours router"))
register_predictor(PredictorKind("logistic", lambda seed: LogisticSuccess(C=LOGISTIC_C, random_state=seed), "one logistic regression per model"))
register_predictor(PredictorKind("lightgbm", lambda seed: LightGBMSuccess(random_state=seed), "gradient-boosted trees shared by all models"))
register_predictor(
    PredictorKind(
        "irt",
        lambda seed: IRTSuccess(n_types=IRT_TYPES, n_factors=IRT_FACTORS, alpha=IRT_ALPHA, random_state=seed),
        "item-response model: prompt types and difficulty, per-model skills",
        replayed=False,
    )
)
register_predictor(PredictorKind("ensemble", _ensemble, "the mean of kNN, logistic and LightGBM", members=("knn", "logistic", "lightgbm")))
