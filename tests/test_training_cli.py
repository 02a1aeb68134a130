"""The training CLI's shared options: several files after one flag, relative targets, progress bars only on a terminal."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from tests.synthetic import prices_csv, synthetic_logs
from training import cli, progress


@pytest.fixture
def two_logs(tmp_path):
    frame = synthetic_logs(600, seed=8)
    first = frame.prompt_id.str[1:].astype(int) < 300
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    frame[first].to_parquet(a)
    frame[~first].to_parquet(b)
    return str(a), str(b)


def _params(command, args):
    return command.make_context(command.name, list(args)).params


def test_file_options_take_several_values_after_one_flag(two_logs, tmp_path):
    a, b = two_logs
    prices = prices_csv(tmp_path / "prices.csv")
    spread = _params(cli.replay, ["--logs", a, b, "--prices", prices, "--out", "o"])
    repeated = _params(cli.replay, ["--logs", a, "--logs", b, "--prices", prices, "--out", "o"])
    assert spread["logs"] == repeated["logs"] == (a, b)
    assert spread["prices"] == (prices,)
    mixed = _params(cli.train, [f"--logs={a}", b, "--seed", "3", "--logs", a])
    assert mixed["logs"] == (a, b, a) and mixed["seed"] == 3
    assert _params(cli.retrain, ["--benchmark-logs", a, b])["benchmark_logs"] == (a, b)
    # a value after an ordinary option is that option's, not one more file
    with pytest.raises(Exception, match="unexpected extra argument"):
        _params(cli.train, ["--logs", a, "--seed", "1", b])


def test_a_missing_file_is_named(two_logs):
    result = CliRunner().invoke(cli.train, ["--logs", two_logs[0], "nope.parquet"])
    assert result.exit_code != 0 and "nope.parquet: no such file" in result.output  # checked by training.sources: --logs takes directories and URLs too


def test_tune_with_two_files_after_one_flag_and_a_relative_target(two_logs, tmp_path, thrifty_home):
    from models.settings import get_settings

    args = ["--logs", *two_logs, "--prices", prices_csv(tmp_path / "p.csv"), "--predictor", "logistic", "--no-mlflow", "--name", "rel"]
    result = CliRunner().invoke(cli.tune, [*args, "--target-quality", "0.9", "--relative"])
    assert result.exit_code == 0, result.output
    assert "success >= 90% of the best single model" in result.output
    profile = json.loads((get_settings().profiles_dir / "rel.json").read_text())
    assert profile["target"]["relative"] == pytest.approx(0.9) and profile["target"]["test_prompts"] == 180
    result = CliRunner().invoke(cli.tune, [*args, "--max-cost-per-request", "0.001", "--relative"])
    assert result.exit_code == 2 and "--relative applies to --target-quality only" in result.output


def test_no_bar_is_drawn_off_a_terminal(two_logs, tmp_path, thrifty_home):
    result = CliRunner().invoke(cli.train, ["--logs", *two_logs, "--prices", prices_csv(tmp_path / "p.csv"), "--predictor", "logistic", "--no-register"])
    assert result.exit_code == 0, result.output
    assert "\r" not in result.output and "it/s" not in result.output and "step/s" not in result.output


def test_a_message_gets_its_own_line_while_a_bar_is_drawn(monkeypatch, capsys):
    monkeypatch.setattr(progress, "on_terminal", lambda: True)
    with progress.bar(total=3, desc="work") as shown:
        shown.update(1)
        progress.say("halfway there")
        shown.update(1)
    err = capsys.readouterr().err
    assert "work" in err  # the bar was drawn
    assert "halfway there" in re.split(r"[\r\n]", err)  # and the message is alone between line breaks


def test_an_error_closes_the_bar_before_it_is_reported(monkeypatch, capsys):
    monkeypatch.setattr(progress, "on_terminal", lambda: True)
    with pytest.raises(RuntimeError):
        with progress.bar(total=3, desc="work") as shown:
            shown.update(1)
            raise RuntimeError("boom")
    assert capsys.readouterr().err.endswith("\n")  # the bar's line is finished: the error starts on a new one
