"""``thrifty tune``: targets, the choice of a setting on a validation split, the saved profile."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from models.prices import PriceTable
from tests.synthetic import prices_csv, synthetic_logs
from training.dataset import OutcomeMatrix
from training.targets import Target, TargetError
from training.tune import certify_setting

PRICES = PriceTable.from_dict({"small": [0.1, 0.4], "medium": [1, 4], "large": [10, 40]})


def test_target_parsing():
    assert Target.parse("0.8").quality == 0.8
    assert Target.parse("95%").relative == pytest.approx(0.95)
    assert Target.parse(max_cost=0.01).cost_cap == 0.01
    assert Target.parse(budget=100, requests=50_000).cost_cap == pytest.approx(0.002)
    assert Target.parse("0.98", relative=True).relative == pytest.approx(0.98)
    assert Target.parse("95%", relative=True).relative == pytest.approx(0.95)
    with pytest.raises(ValueError, match="--relative applies to --target-quality"):
        Target.parse(max_cost=0.01, relative=True)
    with pytest.raises(ValueError, match="or add --relative"):
        Target.parse("2")
    for bad in ({"target_quality": "1.5"}, {"target_quality": "x"}, {"budget": 10}, {}, {"target_quality": "0.8", "max_cost": 1.0}):
        with pytest.raises(ValueError):
            Target.parse(**bad)


def test_certify_setting_meets_the_target_with_the_confidence_or_says_why_not():
    rng = np.random.default_rng(0)
    n = 2000
    best = (rng.random(n) < 0.9).astype(float)
    # three settings of one policy, safe to cheap: the best model itself, 2 and 10 points of success lost
    lose = lambda share: np.where(rng.random(n) < share, 0.0, best)  # noqa: E731
    success = np.column_stack([best, lose(0.02), lose(0.1)])
    cost = np.tile([4.0, 2.0, 1.0], (n, 1))
    policies, knobs = ["tradeoff"] * 3, [0.0, 1.0, 2.0]
    assert certify_setting(policies, knobs, success, cost, best, Target(relative=0.95))["knob"] == 1.0  # 2% lost: within 5%
    assert certify_setting(policies, knobs, success, cost, best, Target(relative=0.8))["knob"] == 2.0
    assert certify_setting(policies, knobs, success, cost, best, Target(max_cost=4.0))["knob"] == 0.0  # the best under the cap
    assert certify_setting(policies, knobs, success, cost, best, Target(max_cost=1.5))["knob"] == 2.0
    with pytest.raises(TargetError, match="cannot be met with 90% confidence on the 2000 prompts of the validation split"):
        certify_setting(policies, knobs, success, cost, best, Target(quality=0.95))
    with pytest.raises(TargetError, match="cannot be met"):
        certify_setting(policies, knobs, success, cost, best, Target(max_cost=0.5))
    # a setting a hair above the floor on these prompts is not certified
    with pytest.raises(TargetError, match="p = "):
        certify_setting(["tradeoff"] * 2, [1.0, 2.0], success[:, 1:], cost[:, 1:], best, Target(relative=0.985))


@pytest.fixture
def logs_file(tmp_path):
    path = tmp_path / "logs.parquet"
    synthetic_logs(600, seed=8).to_parquet(path)
    return str(path)


def _tune(args, tmp_path):
    pytest.importorskip("training.logs")
    from training.cli import tune

    return CliRunner().invoke(tune, ["--prices", prices_csv(tmp_path / "prices.csv"), "--predictor", "logistic", "--no-mlflow", *args])


def test_tune_writes_a_profile_that_serving_reads(tmp_path, thrifty_home, logs_file):
    from models.settings import get_settings
    from router.persist import load_router
    from router.profiles import load_profiles

    result = _tune(["--logs", logs_file, "--name", "cheap-but-good", "--target-quality", "90%"], tmp_path)
    assert result.exit_code == 0, result.output
    assert "on 180 test prompts (not used for the choice)" in result.output
    profiles = load_profiles(get_settings().profiles_dir)
    profile = profiles["cheap-but-good"]
    assert profile.policy in ("threshold", "tradeoff")
    target = profile.target
    assert target["test_prompts"] == 180 and target["validation_prompts"] == 126  # 30% of the 420 tuning prompts
    assert target["confidence"] == 0.9
    assert set(target["test"]) >= {"cost", "quality", "target_met"}
    assert target["validation"]["quality"] >= 0.9 * target["validation"]["best_single"] - 1e-12
    # the profile names the router it was tuned for, and that router loads
    router = load_router(profile.router_uri)
    decision = router.route("What is the capital of Peru? (case 9999)", router.prices_, profile.make_policy())
    assert decision.model in ("small", "medium", "large")


def test_tune_with_a_budget_and_with_a_cost_cap(tmp_path, thrifty_home, logs_file):
    result = _tune(["--logs", logs_file, "--name", "budget", "--budget", "5", "--requests", "100000"], tmp_path)
    assert result.exit_code == 0, result.output
    assert "budget $5 for 100000 requests" in result.output
    result = _tune(["--logs", logs_file, "--name", "capped", "--max-cost-per-request", "0.00002", "--policy", "tradeoff"], tmp_path)
    assert result.exit_code == 0, result.output
    from models.settings import get_settings

    data = json.loads((get_settings().profiles_dir / "capped.json").read_text())
    assert data["policy"] == "tradeoff"
    assert data["target"]["validation"]["cost"] <= 0.00002


def test_tune_refuses_an_impossible_target(tmp_path, thrifty_home, logs_file):
    from models.settings import get_settings

    result = _tune(["--logs", logs_file, "--name", "impossible", "--target-quality", "1.0"], tmp_path)
    assert result.exit_code != 0
    assert "cannot be met" in result.output and "validation split" in result.output and "confidence" in result.output
    assert not (get_settings().profiles_dir / "impossible.json").exists()
    result = _tune(["--logs", logs_file, "--name", "too-cheap", "--max-cost-per-request", "1e-12"], tmp_path)
    assert result.exit_code != 0 and "cannot be met" in result.output


def test_tune_serves_the_most_likely_model_when_a_reachable_floor_is_not_certified(tmp_path, thrifty_home, logs_file):
    """As train does: a quality target the best model meets but nothing cheaper is certified for is said, not refused."""
    from models.settings import get_settings

    result = _tune(["--logs", logs_file, "--name", "unsure", "--target-quality", "0.999", "--relative", "--confidence", "0.999"], tmp_path)
    assert result.exit_code == 0, result.output
    assert "NOT CERTIFIED" in result.output and "most likely model" in result.output
    data = json.loads((get_settings().profiles_dir / "unsure.json").read_text())
    assert (data["policy"], data["knob"]) == ("threshold", 2.0)
    assert data["target"]["validation"]["certified"] is False and "cannot be met" in data["target"]["validation"]["not_certified"]


def test_tune_needs_exactly_one_target(tmp_path, thrifty_home, logs_file):
    result = _tune(["--logs", logs_file, "--name", "x"], tmp_path)
    assert result.exit_code != 0 and "exactly one target" in result.output
    result = _tune(["--logs", logs_file, "--name", "x", "--budget", "5"], tmp_path)
    assert result.exit_code != 0 and "--requests" in result.output


def test_tune_with_a_registered_router_logs_to_mlflow(tmp_path, thrifty_home, logs_file):
    pytest.importorskip("training.logs")
    import mlflow

    from models.settings import get_settings
    from router.persist import save_router
    from training.fit import fit_router
    from training.cli import tune

    router = fit_router(OutcomeMatrix.from_frame(synthetic_logs(150, seed=9)), PRICES, predictor="knn")
    path = save_router(router, tmp_path / "r.joblib")
    result = CliRunner().invoke(
        tune,
        ["--logs", logs_file, "--prices", prices_csv(tmp_path / "p.csv"), "--router", str(path), "--name", "mine", "--target-quality", "0.5", "--experiment", "tune-test"],
    )
    assert result.exit_code == 0, result.output
    data = json.loads((get_settings().profiles_dir / "mine.json").read_text())
    assert data["router_uri"] == str(path)
    mlflow.set_tracking_uri(get_settings().resolved_tracking_uri)
    runs = mlflow.search_runs(experiment_names=["tune-test"])
    assert len(runs) == 1 and "metrics.test/quality" in runs.columns
