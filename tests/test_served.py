"""The served default: the cheapest setting certified to keep the quality target, and shift awareness.

The guarantee is checked empirically on a synthetic population whose true
success probabilities are known: over many training samples, the certified
setting's *true* success falls below the target in at most the promised
share of them (and an uncertified choice of the same settings does not keep
that promise, so the check has teeth).
"""

from __future__ import annotations

import numpy as np
import pytest

from models.prices import PriceTable
from router.policy import Threshold, Tradeoff
from tests.synthetic import synthetic_logs
from training.certify import betting_pvalues, fixed_sequence, paired_loss
from training.dataset import OutcomeMatrix
from training.served import FALLBACK_KNOB, Evidence, Setting, _sequence, certify_default, fit_served_router, serve
from training.targets import Target

PRICES = PriceTable.from_dict({"small": [0.1, 0.4], "medium": [1, 4], "large": [10, 40]})
MODELS = ["cheap", "mid", "best"]
COST = np.array([1.0, 3.0, 10.0])


def population(n: int, rng: np.random.Generator, noise: float = 0.15):
    """Prompts of a latent kind z: every model solves easy ones, only the dearer models harder ones.

    Returns true success probabilities (n, 3), predictions (truth plus noise) and costs.
    """
    z = rng.random(n)
    truth = np.column_stack([np.where(z < 0.5, 0.92, 0.1), np.where(z < 0.75, 0.92, 0.3), np.full(n, 0.92)])
    p = np.clip(truth + rng.normal(0, noise, truth.shape), 0, 1)
    return truth, p, np.tile(COST, (n, 1))


def sample_evidence(n: int, seed: int) -> Evidence:
    rng = np.random.default_rng(seed)
    truth, p, cost = population(n, rng)
    success = (rng.random(truth.shape) < truth).astype(float)
    return Evidence("prompts", p, cost, rng.random(n), success, cost)


def true_success(setting: Setting, truth: np.ndarray, p: np.ndarray, cost: np.ndarray) -> float:
    ev = Evidence("population", p, cost, np.zeros(len(p)), truth, cost)
    choice = setting.choose(ev, MODELS, 2)
    return float(truth[np.arange(len(p)), choice].mean())


def test_the_certified_setting_keeps_the_target_at_the_promised_rate_over_many_samples():
    target, confidence, runs = Target(relative=0.98), 0.9, 200
    truth, p, cost = population(40_000, np.random.default_rng(12345))
    floor = 0.98 * 0.92
    certified_misses, naive_misses, savings = 0, 0, []
    for seed in range(runs):
        ev = sample_evidence(800, seed)
        setting, cert = certify_default(
            [ev], MODELS, target=target, confidence=confidence, policies=("tradeoff",), n_knobs=24, novelty_quantiles=(), seed=seed
        )
        quality = true_success(setting, truth, p, cost)
        certified_misses += quality < floor
        if cert.certified:
            savings.append(cert.cost_vs_best)
        # the same settings chosen without the confidence: the cheapest whose sample success reaches the target
        settings = _sequence("tradeoff", None, ev, 24)
        rows = np.arange(ev.n)[:, None]
        choice = np.stack([s.choose(ev, MODELS, 2) for s in settings], axis=1)
        sample_ok = ev.success[rows, choice].mean(axis=0) >= 0.98 * ev.success[:, 2].mean()
        if sample_ok.any():  # else the best model itself: no miss
            cheapest = min(np.flatnonzero(sample_ok), key=lambda k: ev.cost[rows, choice][:, k].mean())
            naive_misses += true_success(settings[cheapest], truth, p, cost) < floor
    # the promise: at most 10% of the samples certify a setting below the target (3 standard errors of slack over 200 runs)
    assert certified_misses / runs <= 0.1 + 3 * np.sqrt(0.1 * 0.9 / runs), certified_misses
    assert naive_misses / runs > 0.15, naive_misses  # without the confidence the cheapest "meeting" setting often misses
    assert len(savings) > runs / 5 and np.median(savings) < 0.7  # and certification still finds real savings


def test_nothing_certified_when_predictions_carry_no_signal_says_so_and_serves_the_best_model():
    rng = np.random.default_rng(0)
    truth, _, cost = population(600, rng)
    success = (rng.random(truth.shape) < truth).astype(float)
    ev = Evidence("prompts", rng.random(truth.shape), cost, rng.random(600), success, cost)
    setting, cert = certify_default([ev], MODELS, target=Target(relative=1.0))  # every prompt routed away from the best model costs
    assert not cert.certified and setting == Setting("threshold", FALLBACK_KNOB, None)
    assert cert.best_model == "best" and cert.cost_vs_best == 1.0
    assert "first setting not certified" in cert.reason and "x the success at" in cert.reason and "p = " in cert.reason
    assert "NOT" not in cert.describe() and "no setting cheaper than the best single model is certified" in cert.describe()


def test_a_cheaper_model_tied_with_the_best_becomes_the_safe_end():
    """Near-ties at the top: the cheaper twin is certified alone, and the fallback and the guard use it."""
    rng = np.random.default_rng(5)
    n = 3000
    best = (rng.random(n) < 0.9).astype(float)
    twin = np.where(rng.random(n) < 0.97, best, 1 - best)  # the same prompts right, 3% flipped either way
    cheap = (rng.random(n) < 0.3).astype(float)
    success = np.column_stack([cheap, twin, best])
    cost = np.tile([1.0, 5.0, 10.0], (n, 1))
    p = np.clip(success * 0.0 + np.array([0.3, 0.9, 0.9]) + rng.normal(0, 0.01, success.shape), 0, 1)  # no prompt-level signal
    ev = Evidence("prompts", p, cost, rng.random(n), success, cost)
    setting, cert = certify_default([ev], ["cheap", "twin", "best"], target=Target(relative=0.95))
    assert cert.best_model == "best" and cert.safe_model == "twin" and cert.guard_model == "twin"
    assert cert.certified and cert.cost_vs_best == pytest.approx(0.5, abs=0.02)


def test_an_absolute_target_above_the_best_model_is_refused_with_the_numbers():
    _, cert = certify_default([sample_evidence(300, 1)], MODELS, target=Target(quality=0.99))
    assert not cert.certified and "the best single model reaches only" in cert.reason


def test_betting_pvalues_and_fixed_sequence():
    rng = np.random.default_rng(3)
    safe = rng.choice([-1.0, 0.0], size=(500, 1), p=[0.3, 0.7])  # mean loss -0.3
    unsafe = rng.choice([0.5, 0.0], size=(500, 1), p=[0.3, 0.7])  # mean loss +0.15
    p = betting_pvalues(np.hstack([safe, unsafe]), -1.0, 1.0)
    assert p[0] < 1e-3 and p[1] == 1.0
    assert fixed_sequence([0.01, 0.02, 0.5, 0.01], 0.05) == 2  # stops at the first failure, never resumes
    loss, low, high = paired_loss(np.array([[1.0], [0.0]]), np.array([1.0, 1.0]), relative=0.9)
    np.testing.assert_allclose(loss[:, 0], [-0.1, 0.9])
    assert (low, high) == (-1.0, 0.9)


def shifted_evidence(n: int, seed: int) -> list[Evidence]:
    """Familiar prompts are predicted well; on prompts of held-out tasks (novel) cheap models look good and fail."""
    rng = np.random.default_rng(seed)
    truth, p, cost = population(n, rng, noise=0.05)
    familiar = Evidence("prompts", p, cost, rng.uniform(0.5, 1.2, n), (rng.random(truth.shape) < truth).astype(float), cost)
    novel = rng.random(n) < 0.5  # half of the held-out tasks' prompts are far from the rest
    p_new = np.where(novel[:, None], np.array([0.95, 0.95, 0.9]), p)  # confidently wrong on novel prompts
    truth_new = np.where(novel[:, None], np.array([0.1, 0.2, 0.92]), truth)
    tasks = Evidence("tasks", p_new, cost, np.where(novel, rng.uniform(3, 5, n), rng.uniform(0.5, 1.2, n)),
                     (rng.random(truth.shape) < truth_new).astype(float), cost)
    return [familiar, tasks]


def test_novelty_cut_is_calibrated_on_held_out_tasks():
    evidence = shifted_evidence(1500, 4)
    setting, cert = certify_default(evidence, MODELS)
    assert cert.certified and cert.cost_vs_best < 0.9
    # novel prompts go to the best model, familiar ones are routed
    assert cert.novelty_cut is not None and cert.novelty_cut < 3 and np.mean(evidence[0].novelty > cert.novelty_cut) <= 0.1
    assert set(cert.evidence) == {"prompts", "tasks"}
    # without the held-out tasks nothing calls for a cut, and the saving is larger
    setting_in, cert_in = certify_default(evidence[:1], MODELS)
    assert cert_in.certified and cert_in.cost_vs_best <= cert.cost_vs_best


def test_a_shift_in_the_prompts_moves_decisions_toward_the_best_model():
    """A router whose certificate carries a novelty cut sends prompts unlike its training prompts to the best model."""
    from tests.synthetic import price_table
    from training.fit import fit_router

    matrix = OutcomeMatrix.from_frame(synthetic_logs(240, seed=21))
    router = fit_router(matrix, price_table(), predictor="logistic")
    evidence = shifted_evidence(1500, 4)
    _, cert = certify_default(evidence, MODELS)
    # the calibrated cut, applied to this router's own novelty scale and models
    from router.certificate import Certificate

    cut = float(np.quantile(router.novelty_.reference_scores_, 0.99))
    cheap = Tradeoff(1e9)  # the cheapest model for every prompt, unless its novelty sends it to the best model
    served = router.with_policy(cheap, certificate_=Certificate.from_dict({**cert.to_dict(), "best_model": "large", "safe_model": "large", "novelty_cut": cut}))
    familiar = [t for t in synthetic_logs(60, seed=99).drop_duplicates("prompt_id").prompt if "Prove" not in t]
    # the same traffic after a shift: tables to compute over, a kind of prompt the router never saw
    shifted = [
        "| id | name | value |\n|---|---|---|\n" + "".join(f"| {j} | item{j} | {j * 3.7 + i:.2f} |\n" for j in range(8 + i % 5)) + f"Sum the value column. ({t})"
        for i, t in enumerate(familiar)
    ]
    f_scores, s_scores = served.score(familiar, price_table()), served.score(shifted, price_table())
    assert np.median(s_scores.novelty) > np.median(f_scores.novelty) + 0.5
    to_best = lambda scores: float(np.mean(np.asarray(scores.models)[served.default_choice(scores)] == "large"))  # noqa: E731
    assert to_best(s_scores) > to_best(f_scores) + 0.5
    decision = served.route(shifted[0], price_table())
    assert decision.model == "large" and decision.guarded and decision.novelty > cut
    assert served.route(familiar[0], price_table()).novelty < decision.novelty
    # a tuned profile's policy is not overridden by the default's novelty cut
    assert served.route(shifted[0], price_table(), cheap).model == "small"


def test_fit_served_router_stores_a_certified_default_chosen_on_training_prompts():
    matrix = OutcomeMatrix.from_frame(synthetic_logs(600, seed=7))
    router, cert = fit_served_router(matrix, PRICES, predictor="logistic", seed=0, folds=3, target=Target(relative=0.9), confidence=0.8)
    assert router.certificate_ == cert
    assert cert.best_model == "large" and cert.prices == router.prices_.to_dict() and len(cert.prices_sha256) == 16
    assert isinstance(router.policy_, (Threshold, Tradeoff))
    if cert.certified:
        assert router.policy_.knob == cert.knob and cert.cost_vs_best < 1
    d = router.route("Compute 12 * 7 + 12 and give the number. (case 1000)", PRICES)
    assert d.model in ("small", "medium", "large") and d.novelty is not None


def test_fit_served_router_keeps_its_policy_on_partial_logs():
    frame = synthetic_logs(120, seed=10)
    # production-like logs: one model per prompt
    frame = frame[frame.prompt_id.str[1:].astype(int) % 3 == frame.model.map({"small": 0, "medium": 1, "large": 2})]
    router, cert = fit_served_router(OutcomeMatrix.from_frame(frame), PRICES, predictor="logistic", folds=2)
    assert router.policy_ == Threshold(0.7) and cert.policy == "threshold" and cert.knob == 0.7
    assert not cert.certified and "answered by every model" in cert.reason


def test_serving_the_default_returns_a_new_router_and_leaves_the_fitted_one_unchanged():
    from training.fit import fit_router
    from training.served import collect_evidence

    matrix = OutcomeMatrix.from_frame(synthetic_logs(150, seed=7))
    router = fit_router(matrix, PRICES, predictor="logistic")
    before = router.policy_
    served, cert = serve(router, collect_evidence(matrix, PRICES, predictor="logistic"))
    assert router.policy_ is before and not hasattr(router, "certificate_")
    assert served is not router and served.certificate_ == cert
    assert served.success_ is router.success_  # the fitted predictors are shared, not refitted
    with pytest.raises(ValueError, match="trailing underscore"):
        router.with_policy(before, certificate={})


def test_a_prompt_far_outside_every_feature_range_is_most_novel_not_nan():
    """A feature billions of standard deviations out would overflow float32 into NaN, which passes any novelty cut."""
    from router.novelty import NoveltyScorer

    X = np.random.default_rng(0).normal(size=(200, 8))
    scorer = NoveltyScorer(k=5).fit(X)
    typical, extreme, broken = X[:1] * 0.5, np.full((1, 8), 1e30), np.array([[np.nan, np.inf, -np.inf, 0, 0, 0, 0, 0]])
    scores = scorer.score(np.vstack([typical, extreme, broken]))
    assert np.isfinite(scores).all()
    assert scores[0] < 3 and scores[1] > 1e5 and scores[2] > 1e5
