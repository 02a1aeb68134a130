"""Router core: features, calibrated predictors, token predictions, policies and decisions."""

import pickle

import numpy as np
import pytest

from models.prices import Price, PriceTable
from router import (
    LightGBMSuccess,
    LogisticSuccess,
    RoutingError,
    TextFeaturizer,
    Threshold,
    TokenRegressor,
    Tradeoff,
)
from router.calibration import ColumnCalibrator
from router.persist import load_router, save_router
from tests.synthetic import price_table, synthetic_logs, synthetic_router
from training.dataset import OutcomeMatrix

TABLE = price_table()


@pytest.fixture(scope="module")
def matrix():
    return OutcomeMatrix.from_frame(synthetic_logs(300, seed=1))


@pytest.fixture(scope="module", params=["logistic", "lightgbm"])
def router(request, matrix):
    return synthetic_router(request.param, matrix, n_estimators=200)


def test_featurizer_is_deterministic_and_batch_equals_single(matrix):
    f1 = TextFeaturizer(n_components=8).fit(matrix.texts)
    f2 = TextFeaturizer(n_components=8).fit(matrix.texts)
    X = f1.transform(matrix.texts[:20])
    assert np.array_equal(X, f2.transform(matrix.texts[:20]))
    assert np.array_equal(X[3], f1.transform_one(matrix.texts[3]))
    assert X.shape == (20, f1.n_features_out_) and len(f1.feature_names_) == f1.n_features_out_
    # unseen vocabulary still yields a finite row
    assert np.isfinite(f1.transform_one("zzz qqq entirely unseen words")).all()


def test_router_sends_each_kind_to_the_cheapest_model_that_solves_it(router):
    easy = router.route("What is the capital of Norway? (case 9001)", TABLE)
    math = router.route("Compute 37 * 12 + 37 and give the number. (case 9002)", TABLE)
    hard = router.route("Prove rigorously the theorem about Kenya manifolds of dimension 7. (case 9003)", TABLE)
    assert (easy.model, math.model, hard.model) == ("small", "medium", "large")


def test_decision_exposes_every_candidate(router):
    d = router.route("What is 4 plus 5 times 5? (case 1)", TABLE)
    assert sorted(d.ranking) == ["large", "medium", "small"]
    assert d.ranking[0] == d.model and d.policy == "threshold" and d.knob == 0.6
    for c in d.candidates:
        assert 0 <= c.p_success <= 1 and c.expected_output_tokens > 0
        price = TABLE[c.model]
        assert c.expected_cost == pytest.approx(price.cost(c.expected_input_tokens, c.expected_output_tokens))
    # acceptable candidates come before the rest in the fail-over order
    flags = [c.acceptable for c in d.candidates]
    assert flags == sorted(flags, reverse=True)


def test_expected_tokens_differ_per_model(router):
    d = router.route("Name a famous dish from Peru. (case 5)", TABLE)
    tokens = {c.model: c.expected_output_tokens for c in d.candidates}
    assert tokens["large"] > 3 * tokens["small"]


def test_prices_are_an_explicit_argument(router):
    text = "What is the capital of Chile? (case 77)"
    assert router.route(text, TABLE).model == "small"
    # make 'small' the most expensive model: the same prompt now goes elsewhere
    pricey = PriceTable({**TABLE.prices, "small": Price(1000.0, 4000.0)})
    assert router.route(text, pricey).model != "small"


def test_constraints_narrow_the_decision(router):
    text = "Prove that there are infinitely many primes of the form 4k+1 using Peru notation. (case 8)"
    only_cheap = router.route(text, TABLE, allowed=["small", "medium"])
    assert only_cheap.model in ("small", "medium") and sorted(only_cheap.ranking) == ["medium", "small"]
    free = router.route(text, TABLE)
    small_cost = next(c.expected_cost for c in free.candidates if c.model == "small")
    capped = router.route(text, TABLE, max_cost=small_cost * 1.01)
    assert free.model == "large" and capped.model == "small"
    over = router.route(text, TABLE, max_cost=small_cost / 2)
    assert over.fallback and over.model == "large"  # nothing fits the cap: the policy's own choice, flagged
    impossible = router.route("What is the capital of Japan? (case 3)", TABLE, min_quality=0.9999)
    assert impossible.fallback
    with pytest.raises(RoutingError, match="not known to this router"):
        router.route(text, TABLE, allowed=["nope"])


def test_threshold_policy_and_its_fallback():
    p = np.array([[0.9, 0.95, 0.99], [0.2, 0.3, 0.4]])
    cost = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    idx, fb = Threshold(0.92).choose(p, cost)
    assert idx.tolist() == [1, 2] and fb.tolist() == [False, True]
    idx, _ = Threshold(0.92, fallback="a").choose(p, cost, models=["a", "b", "c"])
    assert idx.tolist() == [1, 0]
    assert Threshold(0.92).rank(p[0], cost[0], np.ones(3, bool)) == [1, 2, 0]


def test_tradeoff_policy_moves_from_best_to_cheapest():
    p = np.array([[0.5, 0.7, 0.9]])
    cost = np.array([[0.001, 0.01, 0.1]])
    assert Tradeoff(0.0).choose(p, cost)[0][0] == 2
    assert Tradeoff(1e4).choose(p, cost)[0][0] == 0
    assert Tradeoff(10.0).choose(p, cost)[0][0] == 1  # 0.7-0.1 beats 0.9-1.0 and 0.5-0.01
    grid = Tradeoff.grid(p, cost)
    picks = {int(Tradeoff(lam).choose(p, cost)[0][0]) for lam in grid}
    assert picks == {0, 1, 2}  # the sweep visits every decision


def test_platt_calibration_fixes_overconfidence():
    rng = np.random.default_rng(0)
    true_p = rng.uniform(0.2, 0.8, size=(4000, 1))
    y = (rng.random(true_p.shape) < true_p).astype(float)
    overconfident = 1 / (1 + np.exp(-4 * np.log(true_p / (1 - true_p))))
    cal = ColumnCalibrator("platt").fit(overconfident[:2000], y[:2000])
    fixed = cal.transform(overconfident[2000:])
    brier_raw = np.mean((overconfident[2000:] - y[2000:]) ** 2)
    brier_cal = np.mean((fixed - y[2000:]) ** 2)
    assert brier_cal < brier_raw - 0.01
    assert np.abs(fixed - true_p[2000:]).mean() < 0.05


def test_predictors_accept_partial_logs_and_fractional_scores(matrix):
    X = TextFeaturizer(n_components=8).fit_transform(matrix.texts)
    Y = matrix.success.copy()
    rng = np.random.default_rng(0)
    Y[rng.random(Y.shape) < 0.5] = np.nan  # half the outcomes unobserved
    Y[~np.isnan(Y)] *= 0.9  # judge-like scores in [0, 1]
    for est in (LogisticSuccess(), LightGBMSuccess(min_child_samples=5, n_estimators=50)):
        P = est.fit(X, Y, models=matrix.models).predict_proba(X)
        assert P.shape == Y.shape and np.isfinite(P).all() and ((P >= 0) & (P <= 1)).all()


def test_token_regressor_learns_per_model_lengths():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 3))
    T = np.column_stack([np.exp(4 + 0.5 * X[:, 0]), 10 * np.exp(4 + 0.5 * X[:, 0])])
    pred = TokenRegressor(alpha=0.1).fit(X, T).predict(X)
    ratio = pred[:, 1] / pred[:, 0]
    assert np.median(ratio) == pytest.approx(10, rel=0.05)


def test_saved_router_gives_identical_decisions(router, matrix, tmp_path):
    path = save_router(router, tmp_path / "r.joblib")
    loaded = load_router(str(path))
    texts = matrix.texts[:50]
    assert [router.route(t, TABLE) for t in texts] == [loaded.route(t, TABLE) for t in texts]
    again = pickle.loads(pickle.dumps(router))
    assert np.array_equal(again.score(texts, TABLE).p, router.score(texts, TABLE).p)
