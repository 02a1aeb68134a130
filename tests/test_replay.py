"""``thrifty replay`` end to end on small synthetic logs, and an independent recomputation of its metrics."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from tests.synthetic import prices_csv, synthetic_logs
from training.dataset import OutcomeMatrix, complete_matrix
from training.replay import BEST_FIXED, ORACLE, RANDOM, TASK_PRIOR, run_replay, write_outputs
from models.prices import PriceTable


def brute_force_aiq(cost: np.ndarray, quality: np.ndarray, lo: float, hi: float) -> float:
    """AIQ written independently of training.metrics: Q(c) = best mix of two points with mean cost <= c."""
    cost, quality = np.asarray(cost, float), np.asarray(quality, float)

    def Q(c: float) -> float:
        best = max([q for x, q in zip(cost, quality) if x <= c + 1e-15], default=0.0)
        for i in range(len(cost)):
            for j in range(len(cost)):
                if cost[i] <= c <= cost[j] and cost[j] > cost[i]:
                    w = (c - cost[i]) / (cost[j] - cost[i])
                    best = max(best, (1 - w) * quality[i] + w * quality[j])
        return best

    # Q is linear between consecutive point costs: the trapezoidal rule on them is exact,
    # except at the jump from 0 at the cheapest point, which the grid starts at.
    start = max(lo, float(cost.min()))
    xs = np.unique(np.concatenate([[start, hi], cost[(cost > start) & (cost < hi)]]))
    ys = np.array([Q(x) for x in xs])
    return float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2) / (hi - lo))


@pytest.fixture(scope="module")
def synthetic_replay(tmp_path_factory):
    frame = synthetic_logs(240, seed=1)
    out = tmp_path_factory.mktemp("replay")
    result = run_replay(frame, PriceTable(), test_size=0.3, seed=0, n_knobs=64, folds=3)
    paths = write_outputs(result, out)
    return frame, result, paths


def test_outputs_are_written(synthetic_replay):
    _, result, paths = synthetic_replay
    for key in ("metrics", "curve", "decisions", "plot", "meta", "calibration"):
        assert paths[key].exists() and paths[key].stat().st_size > 0, key
    curve = pd.read_csv(paths["curve"])
    assert list(curve.columns) == ["router", "knob", "cost", "quality"]
    decisions = pd.read_parquet(paths["decisions"])
    assert {"router", "knob", "prompt_id", "model"} <= set(decisions.columns)
    assert len(decisions) == len(curve) * result.meta["test_prompts"]
    metrics = json.loads(paths["metrics"].read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    # every value is a number or null: no "inf" strings where other missing values are null
    assert {type(v) for entry in metrics.values() for v in entry.values()} <= {float, int, type(None)}
    assert any(entry["cost_to_best"] is None for entry in metrics.values())  # a quality never reached
    for name in ("small", "medium", "large", BEST_FIXED, RANDOM, ORACLE, TASK_PRIOR, "knn/tradeoff", "logistic/threshold", "lightgbm/tradeoff", "lightgbm/served"):
        assert name in metrics, name
        for key in ("success_rate", "input_tokens", "output_tokens", "usd_per_request", "usd_per_success", "aiq", "gap_closed", "cost_to_best", "cost_to_95",
                    "success_vs_best", "cost_vs_best"):
            assert key in metrics[name], (name, key)
    best = result.reference.best_model
    assert metrics[best]["success_vs_best"] == 1.0 and metrics[best]["cost_vs_best"] == 1.0
    served = metrics[result.meta["served_default"]]
    assert served["success_vs_best"] == pytest.approx(served["success_rate"] / metrics[best]["success_rate"])
    assert served["cost_vs_best"] == pytest.approx(served["usd_per_request"] / metrics[best]["usd_per_request"])
    assert result.meta["served_default"] == "ensemble/served" and result.meta["certificates"]["ensemble"]["confidence"] == 0.9


def test_independent_recomputation_from_decisions_and_logs(synthetic_replay):
    """curve.csv and every AIQ / gap closed in metrics.json follow from decisions.parquet and the logs alone."""
    frame, _, paths = synthetic_replay
    decisions = pd.read_parquet(paths["decisions"])
    metrics = json.loads(paths["metrics"].read_text())
    logs = frame[["dataset", "prompt_id", "model", "success", "cost_usd"]]
    joined = decisions.astype({"dataset": str, "prompt_id": str, "model": str}).merge(logs, on=["dataset", "prompt_id", "model"], how="left", validate="many_to_one")
    assert joined.success.notna().all()
    points = joined.groupby(["router", "knob"], dropna=False, sort=False).agg(cost=("cost_usd", "mean"), quality=("success", "mean")).reset_index()

    curve = pd.read_csv(paths["curve"])
    merged = curve.merge(points, on=["router", "knob"], suffixes=("", "_re"))
    assert len(merged) == len(curve)
    np.testing.assert_allclose(merged.cost, merged.cost_re, rtol=1e-12)
    np.testing.assert_allclose(merged.quality, merged.quality_re, rtol=1e-12)

    prompts = decisions[["dataset", "prompt_id"]].drop_duplicates()
    evalrows = logs.merge(prompts.astype(str), on=["dataset", "prompt_id"])
    singles = evalrows.groupby("model").agg(cost=("cost_usd", "mean"), quality=("success", "mean"))
    lo, hi = singles.cost.min(), singles.cost.max()
    fixed = brute_force_aiq(singles.cost, singles.quality, lo, hi)
    oracle_pts = points[points.router == ORACLE]
    oracle = brute_force_aiq(oracle_pts.cost, oracle_pts.quality, lo, hi)
    assert metrics[BEST_FIXED]["aiq"] == pytest.approx(fixed, abs=1e-12)
    assert metrics[ORACLE]["aiq"] == pytest.approx(oracle, abs=1e-12)
    for name, pts in points.groupby("router"):
        if len(pts) == 1:  # a single setting is a point: no AIQ is reported for it
            assert metrics[name]["aiq"] is None, name
            continue
        value = brute_force_aiq(pts.cost, pts.quality, lo, hi)
        assert metrics[name]["aiq"] == pytest.approx(value, abs=1e-12), name
        assert metrics[name]["gap_closed"] == pytest.approx((value - fixed) / (oracle - fixed), abs=1e-9), name
    # point metrics of the oracle: the cheapest model that succeeded, recomputed from the logs
    wide = evalrows.pivot_table(index="prompt_id", columns="model", values=["success", "cost_usd"])
    succ, cost = wide["success"].to_numpy(), wide["cost_usd"].to_numpy()
    pick = np.where(succ == succ.max(axis=1, keepdims=True), cost, np.inf).argmin(axis=1)
    assert metrics[ORACLE]["success_rate"] == pytest.approx(succ[np.arange(len(pick)), pick].mean())
    assert metrics[ORACLE]["usd_per_request"] == pytest.approx(cost[np.arange(len(pick)), pick].mean())


def test_learned_routers_beat_best_fixed_on_learnable_logs(synthetic_replay):
    _, result, _ = synthetic_replay
    m = result.metrics
    best = result.best_learned()
    assert m[best]["gap_closed"] > 0.5
    assert m[ORACLE]["aiq"] >= np.nanmax([v["aiq"] for v in m.values()]) - 1e-12
    # the served routers sit on or above the best-fixed hull of the held-out prompts
    for kind in ("knn", "logistic", "lightgbm"):
        assert m[f"{kind}/served"]["margin_vs_fixed"] > -0.02, kind
    assert m[RANDOM]["margin_vs_fixed"] < 0


def test_complete_matrix_drops_partial_models_then_partial_prompts():
    frame = synthetic_logs(30, seed=2)
    # "large" answers a third of the prompts: dropped; one prompt misses "small": dropped
    frame = frame[~((frame.model == "large") & (frame.prompt_id.str[1:].astype(int) % 3 != 0))]
    frame = frame[~((frame.model == "small") & (frame.prompt_id == "p1"))]
    matrix, dropped, n_dropped = complete_matrix(OutcomeMatrix.from_frame(frame))
    assert dropped == ["large"]
    assert n_dropped == 1 and matrix.n_prompts == 29 and matrix.is_complete


def test_replay_cli_writes_outputs_and_logs_to_mlflow(tmp_path, thrifty_home):
    pytest.importorskip("training.logs")
    import mlflow

    from models.settings import get_settings
    from training.cli import replay

    logs = tmp_path / "logs.parquet"
    synthetic_logs(150, seed=3).to_parquet(logs)
    prices = prices_csv(tmp_path / "prices.csv")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        replay,
        ["--logs", str(logs), "--prices", prices, "--out", str(out), "--predictors", "knn,logistic", "--knobs", "32", "--experiment", "replay-test"],
    )
    assert result.exit_code == 0, result.output
    assert "best_fixed" in result.output and "oracle" in result.output and "AIQ" in result.output
    for name in ("metrics.json", "curve.csv", "decisions.parquet", "frontier.png"):
        assert (out / name).exists(), name
    mlflow.set_tracking_uri(get_settings().resolved_tracking_uri)
    runs = mlflow.search_runs(experiment_names=["replay-test"])
    assert len(runs) == 1
    assert "metrics.replay/oracle/aiq" in runs.columns
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(runs.run_id[0])}
    assert {"metrics.json", "curve.csv", "frontier.png"} <= artifacts


def test_replay_cli_with_a_saved_router(tmp_path, thrifty_home):
    pytest.importorskip("training.logs")
    from router.persist import save_router
    from training.fit import fit_router
    from training.cli import replay

    frame = synthetic_logs(120, seed=4)
    matrix = OutcomeMatrix.from_frame(frame)
    router = fit_router(matrix, PriceTable.from_dict({"small": [0.1, 0.4], "medium": [1, 4], "large": [10, 40]}), predictor="logistic")
    path = save_router(router, tmp_path / "r.joblib")
    logs = tmp_path / "logs.parquet"
    synthetic_logs(90, seed=5).to_parquet(logs)
    out = tmp_path / "out"
    result = CliRunner().invoke(replay, ["--logs", str(logs), "--prices", prices_csv(tmp_path / "p.csv"), "--router", str(path), "--out", str(out), "--no-mlflow"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"router/threshold", "router/tradeoff", "router/served"} <= set(metrics)
    assert "knn/tradeoff" not in metrics  # nothing was trained


def test_replay_cli_rejects_a_missing_task(tmp_path, thrifty_home):
    pytest.importorskip("training.logs")
    from training.cli import replay

    logs = tmp_path / "logs.parquet"
    synthetic_logs(60, seed=6).to_parquet(logs)
    result = CliRunner().invoke(replay, ["--logs", str(logs), "--prices", prices_csv(tmp_path / "p.csv"), "--task-holdout", "nope", "--out", str(tmp_path / "o"), "--no-mlflow"])
    assert result.exit_code != 0
    assert "no such task" in result.output


def test_palette_stays_distinct_for_many_models():
    from training.plots import palette

    styles = palette(42)
    assert len({c for c, _, _ in styles}) == 42  # 42 different colours
    assert len(set(palette(130))) == 130  # beyond 60 colours, marker and line style keep series apart
    assert len({c for c, _, _ in palette(8)}) == 8
