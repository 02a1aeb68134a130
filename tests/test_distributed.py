"""Training on Dask: a LocalCluster fit registers a normal router whose decisions match a one-process fit's.

Tolerance, on 1,600 prompts of routerbench-subset (11 models; 320 held out),
seed 0: under a fixed policy (threshold 0.7; trade-off λ = 10) the two routers
choose the same model for at least 75 % of the held-out prompts, their success
probabilities differ by at most 0.05 on average, and their mean held-out AUCs
by at most 0.01. Measured: 86.9 % (threshold 0.7) and 90.9 % (λ = 10)
agreement, mean |Δp| 0.012, AUC 0.5825 vs 0.5800; on all of routerbench-subset
87-88 % and 0.02. The served policy itself is chosen on local out-of-fold fits
and is identical. The fits are not bit-exact because data-parallel LightGBM
builds each feature's histogram bins from one worker's rows (not from a sample
of all rows) and sums the workers' histograms in another order, so some split
thresholds move and some trees split differently (89 vs 101 boosting rounds
kept here); the features, the token model and everything after the booster are
computed by the same code.
"""

from __future__ import annotations

import json

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from models import load_catalog
from router.features import TextFeaturizer
from router.persist import load_router
from router.policy import Threshold, make_policy
from router.predictors import LightGBMSuccess, TokenRegressor
from router.router import Router
from thrifty.cli import main
from training import tracking
from training.dataset import OutcomeMatrix, split_by_prompt
from tests.synthetic import price_table, synthetic_logs
from training.dataset import frame_hash
from training.distributed import DaskError, _valid_loss_curve, dask_client, early_stopping_iteration, parse_address, read_logs_dask
from training.logs import LogError, read_logs
from training.train import train

AGREEMENT, MEAN_DP, AUC_GAP = 0.75, 0.05, 0.01


@pytest.fixture(scope="module")
def client():
    # Two worker processes of one thread: LightGBM's network is one per process,
    # so data-parallel training needs real processes, as on a cluster.
    with dask_client("local:2") as c:
        yield c


@pytest.mark.timeout(900)  # two full trainings with MLflow registration; about a minute on a quiet machine
def test_dask_fit_registers_a_normal_router_matching_one_process(client, thrifty_home, data_dir, tmp_path):
    # 1,600 prompts of routerbench-subset (11 models), as a directory of 3 Parquet parts
    frame = pd.read_parquet(data_dir / "outcomes" / "routerbench-subset.parquet")
    frame = frame[frame["prompt_id"].isin(sorted(frame["prompt_id"].unique())[:1600])]
    directory = tmp_path / "routerbench-subset"
    directory.mkdir()
    for k, idx in enumerate(np.array_split(np.arange(len(frame)), 3)):
        frame.iloc[idx].to_parquet(directory / f"part.{k}.parquet", index=False)
    logs = [str(directory)]
    catalog = load_catalog([data_dir / "prices.csv"])
    kw = dict(predictor="lightgbm", seed=0, select_prompts=300)
    local = train(logs, catalog, **kw)
    dask = train(logs, catalog, **kw, dask_client=client)
    assert (local.version, dask.version) == ("1", "2")
    runs = [MlflowClient().get_run(MlflowClient().get_model_version("thrifty", v).run_id) for v in ("1", "2")]
    assert runs[0].data.params["data_sha256"] == runs[1].data.params["data_sha256"]  # the workers read the same rows
    assert runs[1].data.params["dask_workers"] == "2"

    # what serving loads: the registered router, the usual classes, a plain Booster
    router = load_router(tracking.model_uri("thrifty", tracking.CHAMPION))
    assert type(router) is Router and type(router.success_) is LightGBMSuccess
    assert type(router.featurizer_) is TextFeaturizer and type(router.tokens_) is TokenRegressor
    assert isinstance(router.success_.booster_, lgb.Booster) and not hasattr(router.success_, "client")
    assert router.success_.booster_.current_iteration() == dask.router.success_.best_iteration_
    one = load_router("models:/thrifty/1")

    frame = read_logs(logs, catalog.prices())
    matrix = OutcomeMatrix.from_frame(frame)
    test = matrix.subset(split_by_prompt(matrix, 0.2, 0)[1])
    prices = router.prices_
    a, b = one.score(test.texts, prices), router.score(test.texts, prices)
    np.testing.assert_allclose(a.output_tokens, b.output_tokens, rtol=1e-9)  # same features, same token model
    # same features, same novelty scorer: the certified default's novelty cut means the same on both
    np.testing.assert_allclose(a.novelty, b.novelty, rtol=1e-6)
    assert np.abs(a.p - b.p).mean() <= MEAN_DP
    # chosen on local out-of-fold fits, so identical (compared as JSON: a NaN margin equals itself there)
    assert json.dumps(local.certificate.to_dict(), sort_keys=True, default=str) == json.dumps(dask.certificate.to_dict(), sort_keys=True, default=str)
    for policy in (Threshold(0.7), make_policy("tradeoff", 10.0)):  # the fits compared under one policy each
        same = np.mean([one.decide(a, i, policy).model == router.decide(b, i, policy).model for i in range(len(test.texts))])
        assert same >= AGREEMENT, (policy.name, same)
    assert abs(local.summary()["auc"] - dask.summary()["auc"]) <= AUC_GAP


def test_workers_read_the_same_frame_as_one_process(client, tmp_path):
    frame = synthetic_logs(60, seed=5)
    directory = tmp_path / "served.parquet"
    directory.mkdir()
    for k, idx in enumerate(np.array_split(np.arange(len(frame)), 3)):
        frame.iloc[idx].to_parquet(directory / f"part.{k}.parquet", index=False)
    extra = tmp_path / "extra.jsonl"
    synthetic_logs(10, seed=6, dataset="extra").to_json(extra, orient="records", lines=True)
    sources = [str(directory), extra.as_uri()]
    one = read_logs(sources, price_table())
    on_workers = read_logs_dask(client, sources, price_table())
    assert isinstance(on_workers["prompt"].dtype, pd.CategoricalDtype)  # one copy of each text
    expected = one.assign(response=pd.NA, answer=pd.NA).astype({"response": "string", "answer": "string"})
    pd.testing.assert_frame_equal(on_workers.astype({"prompt": "string"}), expected)
    assert frame_hash(on_workers) == frame_hash(one)

    bad = frame.iloc[:5].copy()
    bad.iloc[3, bad.columns.get_loc("success")] = 2.0
    bad.to_parquet(directory / "part.1.parquet", index=False)
    with pytest.raises(LogError) as info:  # raised on a worker, reported as in one process
        read_logs_dask(client, sources, price_table())
    assert info.value.path == str(directory / "part.1.parquet") and (info.value.row, info.value.column) == (4, "success")


def test_replayed_early_stopping_matches_lightgbm(data_dir):
    """The held-out loss curve summed on the workers is LightGBM's own metric, and the stopping rule is its callback's."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 5))
    Y = np.where(rng.random((300, 3)) < 0.9, (rng.random((300, 3)) < 1 / (1 + np.exp(-X[:, :1]))).astype(float), np.nan)
    fit, held = slice(0, 200), slice(200, 300)
    predictor = LightGBMSuccess(n_estimators=60, min_child_samples=5, early_stopping_rounds=5)
    data, y, _ = predictor._long(X[fit], Y[fit])
    vdata, vy, _ = predictor._long(X[held], Y[held])
    train_set = lgb.Dataset(data, y, categorical_feature=[5])
    record: dict = {}
    full = lgb.train({**predictor._booster_params()}, train_set, num_boost_round=60,
                     valid_sets=[lgb.Dataset(vdata, vy, categorical_feature=[5], reference=train_set)],
                     callbacks=[lgb.record_evaluation(record)])
    curve, n = _valid_loss_curve(full.model_to_string(), X[held], Y[held])
    np.testing.assert_allclose(curve / n, record["valid_0"]["cross_entropy"], rtol=1e-6)
    stopped = lgb.train(predictor._booster_params(), lgb.Dataset(data, y, categorical_feature=[5]), num_boost_round=60,
                        valid_sets=[lgb.Dataset(vdata, vy, categorical_feature=[5])], callbacks=[lgb.early_stopping(5, verbose=False)])
    assert early_stopping_iteration(curve / n, 5) == stopped.best_iteration
    assert early_stopping_iteration(np.array([3.0, 2.0, 2.5, 2.6, 1.0]), 2) == 2  # stops at round 4, before the late dip
    assert early_stopping_iteration(np.array([3.0, 2.0, 1.0]), 5) == 3


@pytest.mark.parametrize(
    "spec, fragment",
    [("local:0", "whole number"), ("local:two", "whole number"), ("", "needs a scheduler address")],
)
def test_bad_addresses(spec, fragment):
    with pytest.raises(DaskError, match=fragment):
        parse_address(spec)


def test_addresses():
    assert parse_address("local") == (None, 2)
    assert parse_address("local:3") == (None, 3)
    assert parse_address("10.0.0.5:8786") == ("tcp://10.0.0.5:8786", 0)
    assert parse_address("tls://sched:8786") == ("tls://sched:8786", 0)


def test_unreachable_scheduler_is_one_clear_error():
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DaskError, match=f"cannot reach the Dask scheduler at tcp://127.0.0.1:{port}"):
        with dask_client(f"127.0.0.1:{port}", timeout=1.0):
            pass


def test_cli_refuses_dask_with_another_predictor(thrifty_home, data_dir):
    logs = str(data_dir / "outcomes" / "routerbench-subset.parquet")
    result = CliRunner().invoke(main, ["train", "--logs", logs, "--dask", "local", "--predictor", "logistic", "--no-register"])
    assert result.exit_code == 2 and "--dask fits the lightgbm predictor only" in result.output
    result = CliRunner().invoke(main, ["train", "--logs", logs, "--dask", "local:x", "--no-register"])
    assert result.exit_code == 1 and result.output.count("Error:") == 1 and "local:N" in result.output
