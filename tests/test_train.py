"""thrifty train: logs in, a registered router out, reloaded with identical decisions."""

import json

import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from models import load_catalog
from router.persist import load_router
from tests.synthetic import prices_csv, synthetic_logs
from thrifty.cli import main
from training.train import train


def _run(*args):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result


def test_train_registers_champion_and_reload_is_identical(thrifty_home, tmp_path):
    logs = tmp_path / "logs.parquet"
    synthetic_logs(240).to_parquet(logs)
    prices = prices_csv(tmp_path / "prices.csv")
    out = tmp_path / "out"
    result = _run("train", "--logs", str(logs), "--prices", prices, "--predictor", "logistic", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "registered models:/thrifty/1 as models:/thrifty@champion" in result.output
    assert "served default: " in result.output and "98% of the best single model's success" in result.output
    client = MlflowClient()
    version = client.get_model_version_by_alias("thrifty", "champion")
    assert str(version.version) == "1"
    run = client.get_run(version.run_id)
    assert len(run.data.params["data_sha256"]) == 64 and len(run.data.params["prices_sha256"]) == 64
    assert 0.5 < run.data.metrics["test/mean_auc"] <= 1.0
    assert any(k.startswith("test/large/brier") for k in run.data.metrics)
    assert run.data.metrics["certificate/confidence"] == 0.9 and "certificate/expected_cost_vs_best" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(version.run_id)}
    assert {"calibration.png", "metrics.json", "prices.json", "certificate.json"} <= artifacts
    # the same outputs beside the run, where the command says they are
    assert {p.name for p in out.iterdir()} == {"calibration.png", "metrics.json", "prices.json", "certificate.json"}
    assert f"to {out}" in result.output
    certificate = json.loads((out / "certificate.json").read_text())
    assert certificate["confidence"] == 0.9 and certificate["relative"] == 0.98 and certificate["best_model"] == "large"
    loaded = load_router("models:/thrifty@champion")
    for key in ("certified", "policy", "knob", "floor", "target", "prices_sha256"):
        assert getattr(loaded.certificate_, key) == certificate[key], key
    assert version.tags["certified"] in ("True", "False")

    # a second run becomes version 2 and takes the alias
    assert _run("train", "--logs", str(logs), "--prices", prices, "--predictor", "logistic").exit_code == 0
    assert str(client.get_model_version_by_alias("thrifty", "champion").version) == "2"


def test_train_cli_reports_bad_logs_without_registering(thrifty_home, tmp_path):
    frame = synthetic_logs(30)
    frame.loc[7, "success"] = 1.5
    logs = tmp_path / "bad.csv"
    frame.to_csv(logs, index=False)
    result = _run("train", "--logs", str(logs))
    assert result.exit_code != 0
    assert "bad.csv" in result.output and "success" in result.output
    assert not (thrifty_home / "mlflow.db").exists() or not MlflowClient().search_registered_models()


@pytest.mark.parametrize(
    "names",
    [
        ["routerbench-subset"],
        ["llmrouter-14task"],
        ["routellm-gsm8k"],
        ["routellm-mmlu"],
        ["routellm-mtbench"],
        ["routerarena-subset"],
        ["zeroeval-gsm8k", "zeroeval-math-l5"],
    ],
)
def test_train_on_shared_logs(thrifty_home, data_dir, names):
    paths = [data_dir / "outcomes" / f"{n}.parquet" for n in names]
    result = train(paths, load_catalog([data_dir / "prices.csv"]), name="t")
    frame = pd.concat([pd.read_parquet(p) for p in paths])
    assert result.n_rows == len(frame)
    assert set(result.metrics) == set(frame["model"].unique())
    assert str(MlflowClient().get_model_version_by_alias("t", "champion").version) == result.version
    loaded = load_router("models:/t@champion")
    prompts = frame.drop_duplicates("prompt")["prompt"].tolist()[:200]
    prices = result.router.prices_
    assert [result.router.route(p, prices) for p in prompts] == [loaded.route(p, prices) for p in prompts]


def test_train_on_mmlu_pro_reload_reproduces_1000_decisions(thrifty_home, data_dir):
    path = data_dir / "outcomes" / "mmlu-pro.parquet"
    result = train([path], load_catalog([data_dir / "prices.csv"]), name="mmlu")
    assert result.n_rows == 347_215
    assert result.summary()["auc"] > 0.6
    loaded = load_router("models:/mmlu@champion")
    prompts = pd.read_parquet(path, columns=["prompt_id", "prompt"]).drop_duplicates("prompt_id")["prompt"].tolist()[:1000]
    prices = result.router.prices_
    original = result.router.score(prompts, prices)
    reloaded = loaded.score(prompts, prices)
    assert (original.p == reloaded.p).all() and (original.cost == reloaded.cost).all()
    assert [result.router.route(p, prices) for p in prompts] == [loaded.route(p, prices) for p in prompts]
