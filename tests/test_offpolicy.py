"""Exploration propensities and off-policy estimators, checked against exact full-matrix values."""

import random
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from models import load_catalog
from router.decision import Candidate, Decision
from router.explore import explore
from training.dataset import OutcomeMatrix
from training.fit import resolve_prices
from training.offpolicy import PartialLog, doubly_robust, epsilon_greedy, estimate, ips, snips
from training.offpolicy_study import coverage_study, hide_outcomes


def _decision(acceptable=(True, True, True, False), fallback=False):
    cands = tuple(Candidate(m, 0.9, 10, 10, 0.001 * (i + 1), ok) for i, (m, ok) in enumerate(zip("abcd", acceptable)))
    return Decision(model="a", candidates=cands, policy="threshold", knob=0.5, fallback=fallback)


def test_explore_frequencies_match_recorded_propensities():
    rng = random.Random(0)
    picks = [explore(_decision(), 0.3, rng) for _ in range(20000)]
    freq = Counter(d.model for d in picks)
    assert "d" not in freq  # never an unacceptable model
    for d in picks[:200]:
        expected = 0.7 + 0.1 if d.model == "a" else 0.1
        assert d.propensity == pytest.approx(expected)
        assert d.ranking[0] == d.model and sorted(d.ranking) == list("abcd")
        assert d.explored == (d.model != "a")
    assert freq["a"] / 20000 == pytest.approx(0.8, abs=0.015)
    assert freq["b"] / 20000 == pytest.approx(0.1, abs=0.01)


def test_a_fallback_explores_every_allowed_candidate():
    rng = random.Random(0)
    picks = [explore(_decision(acceptable=(True, False, False, False), fallback=True), 0.4, rng) for _ in range(4000)]
    assert {d.model for d in picks} == set("abcd")
    for d in picks[:100]:
        assert d.propensity == pytest.approx(0.6 + 0.1 if d.model == "a" else 0.1)
    lone = Decision(model="a", candidates=_decision().candidates[:1], policy="threshold", knob=0.5, fallback=False)
    assert explore(lone, 0.9, rng).propensity == 1.0
    with pytest.raises(ValueError):
        explore(_decision(), 1.5, rng)


def test_estimators_on_a_hand_made_log():
    # 4 prompts, 2 models; target picks model 1 everywhere
    log = PartialLog(action=np.array([0, 1, 1, 0]), propensity=np.array([0.5, 0.5, 0.25, 0.75]),
                     success=np.array([1.0, 1.0, 0.0, 0.0]), cost=np.array([1.0, 2.0, 2.0, 1.0]))
    target = np.array([1, 1, 1, 1])
    # weights: 0, 2, 4, 0 -> IPS = (2*1 + 4*0) / 4 = 0.5 ; SNIPS = 2 / 6
    assert ips(log, target, log.success) == pytest.approx(0.5)
    assert snips(log, target, log.success) == pytest.approx(1 / 3)
    q = np.full((4, 2), 0.5)
    # DR = mean(0.5 + w*(r - 0.5)) = mean(0.5, 0.5+2*0.5, 0.5+4*(-0.5), 0.5) = (0.5+1.5-1.5+0.5)/4
    assert doubly_robust(log, target, log.success, q) == pytest.approx(0.25)


def test_epsilon_greedy_propensities_are_probabilities():
    rng = np.random.default_rng(0)
    preferred = rng.integers(0, 5, size=50000)
    action, prop = epsilon_greedy(preferred, 5, 0.25, rng)
    assert np.allclose(prop[action == preferred], 0.75 + 0.05) and np.allclose(prop[action != preferred], 0.05)
    assert np.mean(action != preferred) == pytest.approx(0.2, abs=0.01)


def test_intervals_cover_the_exact_value_on_a_synthetic_matrix():
    rng = np.random.default_rng(1)
    n, m = 3000, 4
    S = (rng.random((n, m)) < np.array([0.3, 0.5, 0.7, 0.9])).astype(float)
    C = np.tile([1.0, 2.0, 4.0, 8.0], (n, 1))
    preferred, target = rng.integers(0, m, n), rng.integers(0, m, n)
    exact = S[np.arange(n), target].mean()
    from training.offpolicy import simulate_partial_log

    hits = 0
    for sim in range(30):
        log = simulate_partial_log(S, C, preferred, 0.4, seed=sim)
        est = estimate(log, target, q_success=np.tile(S.mean(0), (n, 1)), n_boot=200, seed=sim)
        hits += est["success"]["snips"].covers(exact)
    assert hits >= 24  # nominal 95%: at least 80% of 30 intervals


def test_coverage_on_shared_routerbench(data_dir):
    frame = pd.read_parquet(data_dir / "outcomes" / "routerbench-subset.parquet")
    matrix = OutcomeMatrix.from_frame(frame)
    prices, _ = resolve_prices(matrix, load_catalog().prices())
    study = coverage_study(matrix, prices, n_sims=12, n_boot=150)
    assert study["prompts"] > 1500 and study["logging_target_agreement"] < 0.9
    for estimator in ("snips", "dr"):
        assert study["coverage"]["success"][estimator] >= 0.6
        assert abs(study["mean_error"]["success"][estimator]) < 0.03


def test_hide_outcomes_leaves_one_model_per_prompt(data_dir):
    frame = pd.read_parquet(data_dir / "outcomes" / "routellm-gsm8k.parquet")
    matrix = OutcomeMatrix.from_frame(frame)
    partial = hide_outcomes(matrix, np.zeros(matrix.n_prompts, dtype=int), 0.3, seed=0)
    assert (partial.observed.sum(axis=1) == 1).all()
    assert np.isfinite(partial.propensity[partial.observed]).all() and not partial.is_complete
