"""Replay metrics on a dataset small enough to check by hand.

Three models with constant costs A = 1, B = 2, C = 4 (USD per request) and six prompts:

    prompt  A  B  C   oracle (cheapest that succeeded; none: cheapest)
    p1      1  1  1   A
    p2      0  1  1   B
    p3      0  0  1   C
    p4      0  1  0   B
    p5      0  0  0   A  (nobody succeeded)
    p6      1  0  1   A

Single models: A (1, 1/3), B (2, 1/2), C (4, 2/3); all three are vertices of
the best-fixed hull (slopes 1/6 then 1/12). AIQ range [1, 4]:

    AIQ(fixed)  = [(1/3 + 1/2)/2 * 1 + (1/2 + 2/3)/2 * 2] / 3 = 19/36
    oracle sweep: all A (1, 1/3) -> p2, p4 to B at λ < 1: (4/3, 2/3)
                  -> p3 to C at λ < 1/3: (11/6, 5/6), the oracle point
    AIQ(oracle) = [(1/3 + 2/3)/2 * 1/3 + (2/3 + 5/6)/2 * 1/2 + 5/6 * 13/6] / 3 = 169/216

A hand-made router R with two settings: all A (1, 1/3), and A B C C A A
(13/6, 2/3):

    AIQ(R)      = [(1/3 + 2/3)/2 * 7/6 + 2/3 * 11/6] / 3 = 65/108
    gap closed  = (65/108 - 19/36) / (169/216 - 19/36) = 16/55
    cost to reach C's 2/3: 13/6, i.e. 13/24 of C's cost;
    to 95% of it (0.6333): 1 + 0.3 * 7/2 = 2.05, i.e. 0.5125 of C's cost.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from training import baselines
from training.dataset import OutcomeMatrix
from training.metrics import aiq, apgr, cost_to_reach, cpt, gap_closed, hull_value, pareto_hull, reference
from training.replay import ORACLE, ReplayRow, replay_rows, summarise

SUCCESS = np.array(
    [
        [1, 1, 1],
        [0, 1, 1],
        [0, 0, 1],
        [0, 1, 0],
        [0, 0, 0],
        [1, 0, 1],
    ],
    dtype=float,
)
COST = np.tile([1.0, 2.0, 4.0], (6, 1))
MODELS = ["A", "B", "C"]


def hand_frame() -> pd.DataFrame:
    rows = []
    for i in range(6):
        for j, model in enumerate(MODELS):
            rows.append(
                {
                    "dataset": "hand",
                    "task": "even" if i % 2 else "odd",
                    "prompt_id": f"p{i + 1}",
                    "prompt": f"prompt number {i + 1}",
                    "model": model,
                    "success": SUCCESS[i, j],
                    "input_tokens": 10,
                    "output_tokens": 5 * (j + 1),
                    "cost_usd": COST[i, j],
                    "cost_source": "observed",
                }
            )
    return pd.DataFrame(rows)


def test_hull_keeps_only_the_non_decreasing_concave_part():
    # (3, 0.5) lies under the chord from (1, 0.4) to (5, 0.9); (6, 0.8) is past the top
    x, y = pareto_hull([1, 3, 5, 6, 2, 2], [0.4, 0.5, 0.9, 0.8, 0.3, 0.65])
    assert x.tolist() == [1, 2, 5]
    assert y.tolist() == [0.4, 0.65, 0.9]
    assert hull_value(x, y, [0.5, 1, 3.5, 10]).tolist() == pytest.approx([0.0, 0.4, 0.775, 0.9])


def test_aiq_gap_and_cost_to_reach_by_hand():
    fixed = aiq([1, 2, 4], [1 / 3, 1 / 2, 2 / 3], 1, 4)
    oracle = aiq([1, 4 / 3, 11 / 6], [1 / 3, 2 / 3, 5 / 6], 1, 4)
    router = aiq([1, 13 / 6], [1 / 3, 2 / 3], 1, 4)
    assert fixed == pytest.approx(19 / 36)
    assert oracle == pytest.approx(169 / 216)
    assert router == pytest.approx(65 / 108)
    assert gap_closed(router, fixed, oracle) == pytest.approx(16 / 55)
    assert cost_to_reach([1, 13 / 6], [1 / 3, 2 / 3], 2 / 3) / 4 == pytest.approx(13 / 24)
    assert cost_to_reach([1, 13 / 6], [1 / 3, 2 / 3], 0.95 * 2 / 3) / 4 == pytest.approx(0.5125)
    assert cost_to_reach([1, 2, 4], [1 / 3, 1 / 2, 2 / 3], 0.95 * 2 / 3) == pytest.approx(3.6)
    assert cost_to_reach([1, 2], [0.3, 0.5], 0.6) == math.inf
    # a hull starting right of the range's left end contributes nothing there
    assert aiq([2, 4], [0.5, 0.5], 1, 4) == pytest.approx(0.5 * 2 / 3)


def test_oracle_is_the_cheapest_model_that_succeeded_and_its_sweep_is_exact():
    assert baselines.oracle_choice(SUCCESS, COST).tolist() == [0, 1, 2, 1, 0, 0]
    points = set()
    for lam, choice in baselines.oracle_sweep(SUCCESS, COST):
        rows = np.arange(6)
        points.add((round(COST[rows, choice].mean(), 9), round(SUCCESS[rows, choice].mean(), 9)))
    x, y = pareto_hull(*zip(*points))
    assert x.tolist() == pytest.approx([1, 4 / 3, 11 / 6])
    assert y.tolist() == pytest.approx([1 / 3, 2 / 3, 5 / 6])


def test_task_prior_uses_the_best_model_of_each_task_on_training_prompts():
    tasks = np.array(["odd", "even"] * 3)
    # odd prompts p1 p3 p5: A 1/3, B 1/3, C 2/3 -> C; even p2 p4 p6: A 1/3, B 2/3, C 2/3 -> B (cheaper tie)
    lam, choice = next(iter(baselines.task_prior_sweep(tasks, SUCCESS, COST, np.array(["odd", "even", "unseen"]))))
    assert lam == 0.0
    assert choice.tolist() == [2, 1, 2]  # an unseen task uses all prompts: C has the best mean (2/3)


def test_apgr_and_cpt_by_hand():
    # weak 0.5, strong 0.75; router points (share 0.25, 0.75) and (0.5, 0.75)
    # curve with endpoints: (0, .5) (.25, .75) (.5, .75) (1, .75): AUC = .15625 + .5625 = .71875
    assert apgr([0.25, 0.5], [0.75, 0.75], 0.5, 0.75) == pytest.approx(0.875)
    assert cpt([0.25, 0.5], [0.75, 0.75], 0.5, 0.75, 0.5) == pytest.approx(0.125)
    assert cpt([0.25, 0.5], [0.75, 0.75], 0.5, 0.75, 0.8) == pytest.approx(0.2)
    # routing at random between the two models recovers half the gap
    assert apgr([0.3, 0.7], [0.575, 0.675], 0.5, 0.75) == pytest.approx(0.5)


def test_summarise_on_the_hand_dataset():
    matrix = OutcomeMatrix.from_frame(hand_frame())
    rows = list(replay_rows(matrix, matrix, [], None, seed=0))
    rows += [ReplayRow("R", 1.0, np.zeros(6, dtype=int)), ReplayRow("R", 0.5, np.array([0, 1, 2, 2, 0, 0]))]
    curve, decisions, metrics, ref = summarise(matrix, rows, {"R": 0.5})
    assert ref.lo == 1 and ref.hi == 4 and ref.best_model == "C"
    assert metrics["best_fixed"]["aiq"] == pytest.approx(19 / 36)
    assert metrics[ORACLE]["aiq"] == pytest.approx(169 / 216)
    assert metrics[ORACLE]["success_rate"] == pytest.approx(5 / 6)
    assert metrics[ORACLE]["usd_per_request"] == pytest.approx(11 / 6)
    assert metrics[ORACLE]["gap_closed"] == pytest.approx(1.0)
    assert metrics[ORACLE]["cost_to_best"] == pytest.approx((4 / 3) / 4)
    assert metrics["R"]["aiq"] == pytest.approx(65 / 108)
    assert metrics["R"]["gap_closed"] == pytest.approx(16 / 55)
    assert metrics["R"]["cost_to_best"] == pytest.approx(13 / 24)
    assert metrics["R"]["cost_to_95"] == pytest.approx(0.5125)
    assert metrics["R"]["knob"] == 0.5
    assert metrics["R"]["usd_per_success"] == pytest.approx(13 / 4)  # 13 USD for 4 successes
    assert metrics["R"]["output_tokens"] == pytest.approx((5 + 10 + 15 + 15 + 5 + 5) / 6)
    assert metrics["best_fixed"]["cost_to_95"] == pytest.approx(0.9)
    assert metrics["C"]["usd_per_success"] == pytest.approx(6)
    assert "apgr" not in metrics["R"]  # three models: RouteLLM's metrics are not defined
    # decisions hold one row per prompt and setting
    assert len(decisions) == 6 * len(curve)
    r = decisions[(decisions.router == "R") & (decisions.knob == 0.5)]
    assert r.model.tolist() == ["A", "B", "C", "C", "A", "A"]


def test_reference_picks_weak_and_strong_by_success():
    ref = reference(["x", "y"], np.array([5.0, 1.0]), np.array([0.6, 0.7]), [1.0], [0.9])
    assert (ref.weak, ref.strong) == ("x", "y")  # the cheaper model is also the better one here
