"""``--json``: train, replay, tune, promote and logs export print exactly one JSON object on stdout.

Everything else (progress, tables, MLflow's and the libraries' chatter) goes
to stderr. One command runs as a real process (stdout is file descriptor 1,
redirected at that level too); the others run in process through click's
runner, whose stdout and stderr are read apart.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from tests.synthetic import prices_csv, synthetic_logs
from thrifty.cli import main


def only_json(stdout: str) -> dict:
    """The one JSON object that must be all of ``stdout`` (one line), with no NaN or infinity anywhere."""
    lines = stdout.splitlines()
    assert len(lines) == 1, f"stdout is not one line: {stdout[:2000]!r}"
    obj = json.loads(lines[0], parse_constant=lambda name: pytest.fail(f"{name} in --json output"))
    assert isinstance(obj, dict)
    return obj


def finite(obj) -> bool:
    if isinstance(obj, dict):
        return all(finite(v) for v in obj.values())
    if isinstance(obj, list):
        return all(finite(v) for v in obj)
    return not isinstance(obj, float) or math.isfinite(obj)


@pytest.fixture
def logs(tmp_path):
    frame = synthetic_logs(180, seed=3)
    train_part = frame.prompt_id.str[1:].astype(int) < 120
    a, b = tmp_path / "train.parquet", tmp_path / "heldout.parquet"
    frame[train_part].to_parquet(a)
    frame[~train_part].to_parquet(b)
    return str(a), str(b), prices_csv(tmp_path / "prices.csv")


def invoke(args: list[str]) -> tuple[dict, str]:
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return only_json(result.stdout), result.stderr


def test_train_as_a_process_prints_one_object_and_registers(logs, thrifty_home):
    train, _, prices = logs
    env = {**os.environ, "THRIFTY_HOME": str(thrifty_home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, "-m", "thrifty.cli", "train", "--logs", train, "--prices", prices,
                           "--predictor", "logistic", "--json"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    out = only_json(proc.stdout)
    assert out["command"] == "train" and set(out["models"]) == {"small", "medium", "large"}
    assert out["n_train"] + out["n_test"] == 120 and out["n_rows"] == 360
    assert out["registered"]["uri"] == f"models:/thrifty/{out['registered']['version']}" and out["registered"]["alias"] == "champion"
    assert 0.5 < out["summary"]["auc"] <= 1 and out["models"]["large"]["output_usd_per_mtok"] == 40.0
    assert out["served_policy"]["policy"] in ("threshold", "tradeoff")
    assert "trained on" in proc.stderr and "registered models:/thrifty/" in proc.stderr  # the human report, on stderr
    assert finite(out)


def test_replay_tune_and_promote_print_one_object_each(logs, thrifty_home, tmp_path):
    train, heldout, prices = logs
    replay, err = invoke(["replay", "--logs", train, "--prices", prices, "--out", str(tmp_path / "replay"),
                          "--predictors", "logistic", "--knobs", "16", "--folds", "2", "--no-mlflow", "--json"])
    assert replay["command"] == "replay" and replay["mlflow_run_id"] is None
    assert set(replay["models"]) == {"small", "medium", "large"} and replay["n_test_prompts"] == 36
    on_disk = json.loads((tmp_path / "replay" / "metrics.json").read_text())
    assert replay["metrics"] == on_disk  # the same numbers as metrics.json (null where never reached)
    assert replay["files"]["metrics"] == str(tmp_path / "replay" / "metrics.json")
    assert "AIQ" in err or "aiq" in err.lower()  # the table went to stderr

    tune, _ = invoke(["tune", "--logs", train, "--prices", prices, "--name", "cheap", "--predictor", "logistic",
                      "--max-cost-per-request", "0.0005", "--no-mlflow", "--json"])
    assert tune["command"] == "tune" and tune["profile"]["name"] == "cheap"
    assert tune["profile"]["policy"] in ("threshold", "tradeoff") and os.path.isfile(tune["profile"]["path"])
    assert tune["validation"]["cost"] <= 0.0005 and isinstance(tune["test"]["target_met"], bool)
    assert tune["validation"]["n_prompts"] + tune["test"]["n_prompts"] <= 120

    # a champion (version 1) and a challenger (version 2) to compare
    for args in (["train", "--logs", train], ["retrain", "--benchmark-logs", train]):
        result = CliRunner().invoke(main, [*args, "--prices", prices, "--predictor", "logistic"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    promote, err = invoke(["promote", "--logs", heldout, "--prices", prices, "--margin", "0.5", "--json"])
    assert promote["command"] == "promote" and promote["promoted"] is False  # no router wins by half a success
    assert promote["champion"]["version"] == promote["champion_version_now"] == "1"
    assert promote["challenger"]["version"] == "2"
    assert set(promote["champion"]) == {"version", "success", "cost", "value", "method"}
    assert promote["champion"]["value"] == pytest.approx(promote["champion"]["success"] - promote["champion"]["cost"] / 0.01)
    assert "kept champion" in err


def test_logs_export_prints_one_object(tmp_path):
    import asyncio

    from models.store import DecisionRecord, open_store

    store = open_store(str(tmp_path / "outcomes.db"))

    async def write():
        for k in range(3):
            record = DecisionRecord(f"dec_{k}", time.time(), "/v1/chat/completions", "thrifty", [], "m", 1.0, "ok",
                                    answered_model="m", input_tokens=10, output_tokens=5, cost_usd=1e-5, prompt=f"p{k}")
            await store.write(record)
        await store.add_feedback("dec_0", 1.0, "test")

    asyncio.run(write())
    store.close()
    out, err = invoke(["logs", "export", "--store", str(tmp_path / "outcomes.db"), "--out", str(tmp_path / "s.parquet"),
                       "--include-unlabeled", "--json"])
    assert out == {"command": "logs export", "out": str(tmp_path / "s.parquet"), "rows": 3, "labeled": 1,
                   "include_unlabeled": True}
    assert "wrote 3 outcome rows" in err


def test_a_failing_command_prints_nothing_on_stdout(tmp_path):
    result = CliRunner().invoke(main, ["logs", "export", "--store", str(tmp_path / "none.db"), "--out",
                                       str(tmp_path / "x.parquet"), "--json"])
    assert result.exit_code == 1 and result.stdout == "" and "Error:" in result.stderr
