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


class LightGBMSuccess(_CalibratedSuccess):
    """One gradient-boosted model shared by all models: prompt features plus model identity.

    Sharing lets a rarely-logged model borrow the difficulty signal learned
    from the others; the model id is a categorical feature, so trees can still
    split per model. Targets in [0,1] use LightGBM's cross-entropy objective.
    Early stopping and calibration both use the held-out prompts.
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
        n_jobs: int = 2,
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

    def _fit_raw(self, X, Y, W, X_cal=None, Y_cal=None):
        import lightgbm as lgb

        params = {
            "objective": "cross_entropy",
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_child_samples,
            "feature_fraction": self.feature_fraction,
            "lambda_l2": self.lambda_l2,
            "num_threads": self.n_jobs,
            "seed": self.random_state,
            "deterministic": True,
            "force_col_wise": True,
            "verbosity": -1,
            "max_cat_to_onehot": 64,
        }
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
        self.best_iteration_ = booster.best_iteration or booster.current_iteration()
        # Keep only the trees up to the best iteration: smaller model, faster predict.
        self.booster_ = lgb.Booster(model_str=booster.model_to_string(num_iteration=self.best_iteration_))
        return self

    def _raw(self, X):
        n, m = len(X), self.n_models_
        data = np.empty((n * m, X.shape[1] + 1))
        data[:, :-1] = np.repeat(X, m, axis=0)
        data[:, -1] = np.tile(np.arange(m, dtype=np.float64), n)
        return self.booster_.predict(data, num_threads=1).reshape(n, m)

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
    """Shared prompt factors with per-model skills (IRT / logistic matrix factorisation).

    ``logit P(success_ij) = b_j + a_j · θ(x_i)``: a low-dimensional prompt
    embedding ``θ`` (``n_factors`` numbers: a difficulty and the kinds of
    skill a prompt asks for) is predicted from the features by one map shared
    by every model — linear (``hidden=0``: a reduced-rank logistic regression)
    or a one-hidden-layer ``tanh`` network — and each model only learns its
    skill vector ``a_j`` and bias ``b_j``. A model with few logged outcomes
    borrows the prompt map learned from all the others; models that agree on
    which prompts are hard pool their evidence about them.

    Fitted jointly by full-batch L-BFGS on the weighted cross-entropy of the
    observed entries (``NaN`` = unobserved; fractional targets enter the loss
    as they are), with an L2 penalty ``alpha`` on every weight, from a seeded
    initialisation (deterministic). With ``early_stopping`` the iterate with
    the lowest loss on the held-out prompts is kept (the same prompts then
    calibrate each model, as for ``LightGBMSuccess``). The fitted maps are
    folded into the standardisation, so prediction is two matrix products.
    """

    def __init__(
        self,
        n_factors: int = 8,
        hidden: int = 64,
        alpha: float = 1e-3,
        max_iter: int = 300,
        early_stopping: bool = True,
        holdout: float = 0.2,
        calibration: str = "platt",
        random_state: int = 0,
    ):
        self.n_factors = n_factors
        self.hidden = hidden
        self.alpha = alpha
        self.max_iter = max_iter
        self.early_stopping = early_stopping
        self.holdout = holdout
        self.calibration = calibration
        self.random_state = random_state

    # -- parameters as one flat vector (for L-BFGS) ---------------------
    def _shapes(self, d: int, m: int) -> list[tuple[int, ...]]:
        k = self.n_factors
        if self.hidden:
            return [(d, self.hidden), (self.hidden,), (self.hidden, k), (m, k), (m,)]
        return [(d, k), (m, k), (m,)]

    @staticmethod
    def _unpack(theta: np.ndarray, shapes) -> list[np.ndarray]:
        out, i = [], 0
        for shape in shapes:
            size = int(np.prod(shape))
            out.append(theta[i : i + size].reshape(shape))
            i += size
        return out

    def _forward(self, params, Z):
        """Logits (n, m) and the intermediate values the gradient needs."""
        if self.hidden:
            W1, b1, W2, A, b = params
            H = np.tanh(Z @ W1 + b1)
            T = H @ W2
            return T @ A.T + b, (H, T)
        V, A, b = params
        T = Z @ V
        return T @ A.T + b, (None, T)

    def _loss_grad(self, theta, shapes, Z, Y, M, total):
        params = self._unpack(theta, shapes)
        S, (H, T) = self._forward(params, Z)
        # weighted cross-entropy with soft targets, stable form: log(1+e^s) - y s
        loss = float(np.sum(M * (np.logaddexp(0.0, S) - Y * S))) / total
        R = M * (0.5 * (1.0 + np.tanh(0.5 * S)) - Y) / total  # dL/dS
        weights = params[:-1] if not self.hidden else [params[0], params[2], params[3]]
        loss += 0.5 * self.alpha * sum(float(np.sum(w * w)) for w in weights)
        A = params[-2]
        gA = R.T @ T + self.alpha * A
        gb = R.sum(axis=0)
        gT = R @ A
        if self.hidden:
            W1, b1, W2 = params[0], params[1], params[2]
            gW2 = H.T @ gT + self.alpha * W2
            gP = (gT @ W2.T) * (1.0 - H * H)
            gW1 = Z.T @ gP + self.alpha * W1
            grads = [gW1, gP.sum(axis=0), gW2, gA, gb]
        else:
            V = params[0]
            grads = [Z.T @ gT + self.alpha * V, gA, gb]
        return loss, np.concatenate([g.ravel() for g in grads])

    def _fit_raw(self, X, Y, W, X_cal=None, Y_cal=None):
        from scipy.optimize import minimize

        n, d = X.shape
        m = Y.shape[1]
        self.mean_ = X.mean(axis=0) if n else np.zeros(d)
        self.scale_ = X.std(axis=0) if n else np.ones(d)
        self.scale_[self.scale_ == 0] = 1.0
        Z = (X - self.mean_) / self.scale_
        seen = ~np.isnan(Y)
        M = np.where(seen, W, 0.0)
        Yf = np.where(seen, Y, 0.0)
        total = max(float(M.sum()), 1e-12)
        rng = np.random.default_rng(self.random_state)
        shapes = self._shapes(d, m)
        rate = np.clip(self.base_rate_, 1e-3, 1 - 1e-3)
        k = self.n_factors
        scale = lambda fan_in: 1.0 / np.sqrt(max(fan_in, 1))  # noqa: E731
        if self.hidden:
            h = self.hidden
            init = [rng.normal(0, scale(d), (d, h)), np.zeros(h), rng.normal(0, scale(h), (h, k)), rng.normal(0, scale(k), (m, k))]
        else:
            init = [rng.normal(0, scale(d), (d, k)), rng.normal(0, scale(k), (m, k))]
        init.append(np.log(rate / (1 - rate)))
        theta0 = np.concatenate([p.ravel() for p in init])
        self.n_iter_ = 0
        if not seen.any():
            best = theta0
        else:
            watch = bool(self.early_stopping and X_cal is not None and len(X_cal) and (~np.isnan(Y_cal)).any())
            state = {"best": theta0, "best_loss": np.inf, "it": 0}
            if watch:
                Zc = (X_cal - self.mean_) / self.scale_
                seen_c = ~np.isnan(Y_cal)
                Mc, Yc = seen_c.astype(np.float64), np.where(seen_c, Y_cal, 0.0)
                total_c = float(Mc.sum())

                def callback(xk):
                    state["it"] += 1
                    S, _ = self._forward(self._unpack(xk, shapes), Zc)
                    val = float(np.sum(Mc * (np.logaddexp(0.0, S) - Yc * S))) / total_c
                    if val < state["best_loss"]:
                        state["best"], state["best_loss"], state["best_it"] = xk.copy(), val, state["it"]

            res = minimize(
                self._loss_grad,
                theta0,
                args=(shapes, Z, Yf, M, total),
                jac=True,
                method="L-BFGS-B",
                callback=callback if watch else None,
                options={"maxiter": self.max_iter, "maxcor": 20},
            )
            best = state["best"] if watch and np.isfinite(state["best_loss"]) else res.x
            self.n_iter_ = int(state.get("best_it", res.nit)) if watch else int(res.nit)
        params = self._unpack(best, shapes)
        # fold the standardisation into the first map and the factor map into the skills
        first, A, b = params[0], params[-2], params[-1]
        self.W_ = first / self.scale_[:, None]
        if self.hidden:
            self.c_ = params[1] - self.mean_ @ self.W_
            self.M_ = params[2] @ A.T  # (hidden, m)
        else:
            self.M_ = None
            self.W_ = self.W_ @ A.T  # (d, m): a rank-k logistic regression
            b = b - self.mean_ @ self.W_
            self.c_ = None
        self.skills_ = A  # (m, k) per-model skill vectors
        self.intercept_ = b
        return self

    def _raw(self, X):
        if self.M_ is not None:
            return sigmoid(np.tanh(X @ self.W_ + self.c_) @ self.M_ + self.intercept_)
        return sigmoid(X @ self.W_ + self.intercept_)


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


SUCCESS_PREDICTORS = {
    "lightgbm": LightGBMSuccess,
    "logistic": LogisticSuccess,
    "knn": KNNSuccess,
    "irt": IRTSuccess,
    "ensemble": EnsembleSuccess,
}
