"""IRTSuccess: models share one prompt map (latent types and a shared difficulty) and keep per-model skills."""

import pickle
import time

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from router.predictors import IRTSuccess, LogisticSuccess, UnknownPredictorError, get_predictor, make_success_predictor, predictor_names


def planted(n: int = 1200, m: int = 16, d: int = 12, seed: int = 0):
    """Prompts of four kinds (readable from the features) with a hidden difficulty; models with a skill per kind.

    Every model's success depends on the same two things — which kind of prompt
    it is and how hard it is (not readable from the features) — so a predictor
    that pools the models learns the kind map from all of them at once.
    """
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    kind = np.argmax(X[:, :4] * np.array([1.0, 1.2, 0.8, 1.1]), axis=1)
    skill = rng.normal(0.0, 1.6, size=(4, m))  # model j's strength on each kind
    strength = rng.normal(0.3, 0.7, size=m)
    difficulty = rng.normal(size=n)
    logit = strength + skill[kind] - 1.2 * difficulty[:, None]
    P = 1.0 / (1.0 + np.exp(-logit))
    Y = (rng.random((n, m)) < P).astype(float)
    return X, Y, P, kind


def sparse(Y: np.ndarray, share: float, seed: int = 1) -> np.ndarray:
    """Keep ``share`` of the entries (partial logs: each model saw few prompts)."""
    keep = np.random.default_rng(seed).random(Y.shape) < share
    return np.where(keep, Y, np.nan)


def mean_auc(P_hat: np.ndarray, Y: np.ndarray) -> float:
    return float(np.mean([roc_auc_score(Y[:, j], P_hat[:, j]) for j in range(Y.shape[1])]))


def test_one_registry_names_every_predictor():
    assert predictor_names() == ["knn", "logistic", "lightgbm", "irt", "ensemble"]
    assert "irt" not in get_predictor("ensemble").members  # out-of-fold results did not justify it (router/predictors.py)
    assert not get_predictor("irt").replayed and get_predictor("ensemble").replayed
    est = make_success_predictor("irt", seed=3)
    assert isinstance(est, IRTSuccess) and est.random_state == 3
    ens = make_success_predictor("ensemble", seed=4)
    assert [type(m).__name__ for m in ens.members] == ["KNNSuccess", "LogisticSuccess", "LightGBMSuccess"]
    with pytest.raises(UnknownPredictorError, match="unknown predictor 'forest'; choose from knn, logistic, lightgbm, irt, ensemble"):
        get_predictor("forest")


def test_every_cli_predictor_choice_reads_the_registry():
    """train, retrain and tune offer exactly the registered predictors; replay accepts any of them (irt too)."""
    import click

    from training import cli

    for command in (cli.train, cli.retrain, cli.tune):
        option = next(p for p in command.params if p.name == "predictor")
        assert isinstance(option.type, click.Choice) and list(option.type.choices) == predictor_names(), command.name
    option = next(p for p in cli.replay.params if p.name == "predictors")
    assert option.default == "knn,logistic,lightgbm,ensemble"
    with pytest.raises(click.BadParameter, match="unknown predictor 'forest'"):
        option.process_value(click.Context(cli.replay), "knn,forest")
    assert option.process_value(click.Context(cli.replay), "irt, knn") == ["irt", "knn"]


def test_recovers_planted_structure_better_than_per_model_logistic_on_sparse_logs():
    X, Y, P, kind = planted(n=1600, m=24, d=12, seed=0)
    train, test = slice(0, 1200), slice(1200, None)
    Y_obs = sparse(Y[train], share=0.1)  # ~120 outcomes per model, a different sample for each
    assert (~np.isnan(Y_obs)).sum(axis=0).max() < 150
    auc_irt = mean_auc(IRTSuccess(n_types=8, n_factors=4, random_state=0).fit(X[train], Y_obs).predict_proba(X[test]), Y[test])
    auc_lr = max(mean_auc(LogisticSuccess(C=C, random_state=0).fit(X[train], Y_obs).predict_proba(X[test]), Y[test]) for C in (0.05, 0.5))
    # the best the features allow: each kind's true mean success per model (the difficulty is unreadable)
    by_kind = np.array([P[train][kind[train] == k].mean(axis=0) for k in range(4)])
    achievable = mean_auc(by_kind[kind[test]], Y[test])
    assert auc_irt > auc_lr + 0.03, (auc_irt, auc_lr, achievable)
    assert auc_irt > achievable - 0.12, (auc_irt, achievable)


def test_learns_each_models_success_per_prompt_kind():
    X, Y, P, kind = planted(seed=2)
    irt = IRTSuccess(n_types=8, n_factors=4, random_state=0).fit(X[:900], Y[:900])
    Ph = irt.predict_proba(X[900:])
    true_k = np.array([P[900:][kind[900:] == k].mean(axis=0) for k in range(4)])
    pred_k = np.array([Ph[kind[900:] == k].mean(axis=0) for k in range(4)])
    assert np.corrcoef(true_k.ravel(), pred_k.ravel())[0, 1] > 0.9
    assert np.abs(true_k - pred_k).mean() < 0.08


def test_handles_nan_weights_and_fractional_targets():
    X, Y, P, _ = planted(n=400, m=6, d=8, seed=4)
    Y = sparse(Y, share=0.5, seed=5)
    Y[:, 5] = np.nan  # a model never logged
    Y[::7, 0] = np.where(np.isnan(Y[::7, 0]), np.nan, 0.4)  # judge scores
    W = np.where(np.isnan(Y), np.nan, np.random.default_rng(6).uniform(0.2, 3.0, Y.shape))
    est = IRTSuccess(n_types=4, n_factors=2, random_state=0).fit(X, Y, W, models=[f"m{j}" for j in range(6)])
    p = est.predict_proba(X)
    assert p.shape == (400, 6) and np.isfinite(p).all() and ((p > 0) & (p < 1)).all()
    assert est.models_ == [f"m{j}" for j in range(6)]
    assert abs(float(p[:, 5].mean()) - 0.5) < 0.15  # nothing learned for the unlogged model: near the prior


def test_a_prompt_weight_counts_like_repeating_the_prompt():
    X, Y, _, _ = planted(n=300, m=4, d=6, seed=7)
    Y = sparse(Y, share=0.7, seed=3)
    W = np.where(np.isnan(Y), np.nan, 1.0)
    W[:100] = np.where(np.isnan(Y[:100]), np.nan, 2.0)
    repeated_X, repeated_Y = np.vstack([X, X[:100]]), np.vstack([Y, Y[:100]])
    kw = dict(n_types=4, n_factors=2, holdout=0.0, calibration="none", random_state=0)
    weighted = IRTSuccess(**kw).fit(X, Y, W)
    repeated = IRTSuccess(**kw).fit(repeated_X, repeated_Y)
    # the standardisation differs (repeated rows move the feature means), so compare the
    # objectives at one parameter vector, then the fitted predictions loosely
    shapes = weighted._shapes(X.shape[1], Y.shape[1])
    flat = np.random.default_rng(0).normal(0, 0.3, sum(int(np.prod(s)) for s in shapes))
    Z = np.random.default_rng(1).normal(size=X.shape)
    M, Mr = (~np.isnan(Y)).astype(float), (~np.isnan(repeated_Y)).astype(float)
    Yf, Yr = np.nan_to_num(Y), np.nan_to_num(repeated_Y)
    w = np.r_[np.full(100, 2.0), np.ones(200)]
    lw, gw = weighted._loss_grad(flat, shapes, Z, M * Yf, M * (1 - Yf), M, w, float(w @ M.sum(1)))
    Zr = np.vstack([Z, Z[:100]])
    lr, gr = weighted._loss_grad(flat, shapes, Zr, Mr * Yr, Mr * (1 - Yr), Mr, np.ones(400), float(Mr.sum()))
    assert lw == pytest.approx(lr, rel=1e-10)
    np.testing.assert_allclose(gw, gr, rtol=1e-7, atol=1e-12)
    assert np.abs(weighted.predict_proba(X) - repeated.predict_proba(X)).mean() < 0.05


def test_gradient_matches_finite_differences():
    from scipy.optimize import approx_fprime

    rng = np.random.default_rng(0)
    n, d, m = 40, 5, 4
    Z = rng.normal(size=(n, d))
    Y = rng.random((n, m))  # fractional scores
    Y[rng.random((n, m)) < 0.3] = np.nan
    M = (~np.isnan(Y)).astype(float)
    Yf = np.nan_to_num(Y)
    w = rng.uniform(0.5, 2.0, n)
    est = IRTSuccess(n_types=5, n_factors=2, n_nodes=5, alpha=0.01, alpha_skill=0.003)
    shapes = est._shapes(d, m)
    flat = rng.normal(0, 0.5, sum(int(np.prod(s)) for s in shapes))
    args = (shapes, Z, M * Yf, M * (1 - Yf), M, w, float(w @ M.sum(1)))
    numeric = approx_fprime(flat, lambda t: est._loss_grad(t, *args)[0], 1e-6)
    np.testing.assert_allclose(est._loss_grad(flat, *args)[1], numeric, atol=1e-6)


def test_fractional_scores_are_soft_targets():
    """A judge score s counts as s of a success and 1 - s of a failure: a model always scored 0.3 is predicted at 0.3."""
    X, Y, _, _ = planted(n=400, m=4, d=6, seed=8)
    Y = Y.copy()
    Y[:, 0] = 0.3
    Y[::2, 1] = np.where(Y[::2, 1] > 0.5, 0.8, 0.2)  # graded, not 0/1
    p = IRTSuccess(n_types=4, n_factors=2, random_state=0).fit(X, Y).predict_proba(X)
    assert np.isfinite(p).all()
    assert abs(float(p[:, 0].mean()) - 0.3) < 0.02 and float(p[:, 0].std()) < 0.05


def test_deterministic_and_pickle_roundtrip():
    X, Y, _, _ = planted(n=500, m=8, d=10, seed=9)
    Y = sparse(Y, share=0.6)
    a = IRTSuccess(random_state=5).fit(X, Y)
    b = IRTSuccess(random_state=5).fit(X, Y)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    c = pickle.loads(pickle.dumps(a))
    np.testing.assert_array_equal(a.predict_proba(X), c.predict_proba(X))
    assert IRTSuccess(random_state=6).fit(X, Y).predict_proba(X[:5]).shape == (5, 8)


def test_one_prompt_is_two_small_matrix_products():
    X, Y, _, _ = planted(n=600, m=16, d=78, seed=10)
    est = IRTSuccess(max_iter=30).fit(X, Y)
    x = X[:1]
    for _ in range(200):  # warm up
        est.predict_proba(x)
    reps = 2000
    t = time.perf_counter()
    for _ in range(reps):
        est.predict_proba(x)
    per_call = (time.perf_counter() - t) / reps
    assert per_call < 1e-4, f"{per_call * 1e6:.1f} µs per prompt"


def test_lightgbm_threads_follow_the_setting_else_the_cores_this_process_may_use(monkeypatch):
    import os

    from models.settings import get_settings
    from router.predictors import LightGBMSuccess

    X, Y, _, _ = planted(n=300, m=3, d=4, seed=11)

    def threads_used():
        text = LightGBMSuccess(n_estimators=3, min_child_samples=5).fit(X, Y).booster_.model_to_string()
        return int(next(line for line in text.splitlines() if line.startswith("[num_threads:")).split()[1].rstrip("]"))

    monkeypatch.delenv("THRIFTY_THREADS", raising=False)
    get_settings.cache_clear()
    assert threads_used() == len(os.sched_getaffinity(0))
    monkeypatch.setenv("THRIFTY_THREADS", "1")
    get_settings.cache_clear()
    assert threads_used() == 1
    get_settings.cache_clear()
