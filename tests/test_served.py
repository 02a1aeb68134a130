"""The served default: the policy and knob ``thrifty train`` stores, chosen on out-of-fold predictions of the training prompts."""

from __future__ import annotations

import numpy as np
import pytest

from models.prices import PriceTable
from router.policy import Threshold, Tradeoff
from tests.synthetic import synthetic_logs
from training.dataset import OutcomeMatrix
from training.served import FALLBACK_KNOB, fit_served_router, select_policy

PRICES = PriceTable.from_dict({"small": [0.1, 0.4], "medium": [1, 4], "large": [10, 40]})


def test_selection_falls_back_to_the_best_model_when_predictions_carry_no_signal():
    rng = np.random.default_rng(0)
    n = 400
    success = (rng.random((n, 3)) < [0.5, 0.6, 0.8]).astype(float)
    cost = np.tile([1.0, 2.0, 10.0], (n, 1))
    p = rng.random((n, 3))  # predictions unrelated to the outcomes
    sel = select_policy(p, cost, success, cost, ["a", "b", "c"])
    assert sel.fallback == "c" and sel.knob == FALLBACK_KNOB
    policy = sel.make_policy()
    assert isinstance(policy, Threshold) and policy.fallback == "c"
    assert (policy.choose(p, cost, None, ["a", "b", "c"])[0] == 2).all()


def test_selection_picks_a_setting_above_the_hull_when_predictions_are_right():
    rng = np.random.default_rng(1)
    n = 600
    kind = rng.integers(0, 3, n)  # prompt kind k is solved by models >= k
    success = (np.arange(3)[None, :] >= kind[:, None]).astype(float)
    cost = np.tile([1.0, 2.0, 10.0], (n, 1))
    p = np.clip(success * 0.9 + 0.05 + rng.normal(0, 0.02, success.shape), 0, 1)
    sel = select_policy(p, cost, success, cost, ["a", "b", "c"])
    assert sel.fallback is None
    assert sel.margin > 0.2 and sel.lcb > 0
    assert sel.quality > 0.95


def test_fit_served_router_stores_a_default_policy_chosen_on_training_prompts():
    matrix = OutcomeMatrix.from_frame(synthetic_logs(180, seed=7))
    router, sel = fit_served_router(matrix, PRICES, predictor="logistic", seed=0, folds=3)
    assert router.policy_ == sel.make_policy()
    assert router.selection_["policy"] == sel.policy
    assert sel.fallback is None  # the synthetic prompts are learnable: the router beats best fixed
    assert isinstance(router.policy_, (Threshold, Tradeoff))
    d = router.route("Compute 12 * 7 + 12 and give the number. (case 1000)", PRICES)
    assert d.model in ("small", "medium", "large")


def test_fit_served_router_keeps_its_policy_on_partial_logs():
    frame = synthetic_logs(120, seed=10)
    # production-like logs: one model per prompt
    frame = frame[frame.prompt_id.str[1:].astype(int) % 3 == frame.model.map({"small": 0, "medium": 1, "large": 2})]
    router, sel = fit_served_router(OutcomeMatrix.from_frame(frame), PRICES, predictor="logistic", folds=2)
    assert router.policy_ == Threshold(0.7) and sel.policy == "threshold" and sel.knob == 0.7


def test_choosing_the_default_returns_a_new_router_and_leaves_the_fitted_one_unchanged():
    from training.fit import fit_with_oof
    from training.served import choose_default

    matrix = OutcomeMatrix.from_frame(synthetic_logs(150, seed=7))
    router, P, C = fit_with_oof(matrix, PRICES, predictor="logistic", folds=3)
    before = router.policy_
    served, sel = choose_default(router, matrix, P, C)
    assert router.policy_ is before and not hasattr(router, "selection_")
    assert served is not router and served.policy_ == sel.make_policy() and served.selection_ == sel.to_dict()
    assert served.success_ is router.success_  # the fitted predictors are shared, not refitted
    with pytest.raises(ValueError, match="trailing underscore"):
        router.with_policy(before, selection={})
