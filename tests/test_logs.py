"""Outcome-log ingestion: formats, defaults, the shared data, RouterBench's wide layout, and every bad input."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.outcomes import OPTIONAL_COLUMNS, OUTCOME_COLUMNS
from models.prices import Price, PriceTable
from models.tokens import count_tokens
from tests.fixtures_logs import shared_data, small_log, write_log  # noqa: F401  (fixture)
from training.logs import LogError, read_log_file, read_logs, routerbench_wide_to_long

PRICES = PriceTable({"cheap": Price(1.0, 2.0), "big": Price(10.0, 30.0)})
RAW_ROUTERBENCH = ("arc_challenge_test.csv", "mbpp_test.csv", "winograde_test.csv")


def assert_canonical_dtypes(frame: pd.DataFrame) -> None:
    expected = {**OUTCOME_COLUMNS, **{c: t for c, t in OPTIONAL_COLUMNS.items() if c in frame}}
    assert list(frame.columns) == list(expected)
    for column, dtype in expected.items():
        if dtype == "string":
            assert frame[column].dtype == pd.StringDtype(), (column, frame[column].dtype)
        else:
            assert frame[column].dtype == np.dtype(dtype), (column, frame[column].dtype)


def raises_log_error(path, row, column, *fragments):
    """Context manager: a LogError naming ``path``, ``row`` and ``column`` (and ``fragments``)."""

    class Checker:
        def __enter__(self):
            self.ctx = pytest.raises(LogError)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            handled = self.ctx.__exit__(*exc)
            error = self.info.value
            message = str(error)
            assert error.path == str(path)
            assert error.row == row, message
            assert error.column == column, message
            assert str(path) in message
            if row is not None:
                assert f"row {row}" in message
            if column is not None:
                assert f"column {column!r}" in message
            for fragment in fragments:
                assert fragment in message, (fragment, message)
            return handled

    return Checker()


# --------------------------------------------------------------------------- formats and defaults


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".ndjson", ".csv"])
def test_reads_each_format_and_fills_defaults(tmp_path, suffix):
    path = write_log(small_log(), tmp_path / f"my-logs{suffix}")
    frame = read_log_file(path, PRICES)

    assert_canonical_dtypes(frame)
    assert len(frame) == 6
    assert (frame["dataset"] == "my-logs").all()
    assert (frame["task"] == "my-logs").all()
    assert frame["prompt_id"].tolist() == ["p1", "p1", "p2", "p2", "p3", "p3"]
    assert frame["success"].tolist() == [1.0, 1.0, 0.0, 1.0, 1.0, 1.0]
    assert frame["input_tokens"].tolist() == [count_tokens(p) for p in small_log()["prompt"]]
    expected_out = [count_tokens(r) if isinstance(r, str) else 0 for r in small_log()["response"]]
    assert frame["output_tokens"].tolist() == expected_out
    assert frame["output_tokens"].iat[2] == 0  # no response: nothing billed for output
    price = [PRICES[m] for m in frame["model"]]
    expected_cost = [p.cost(i, o) for p, i, o in zip(price, frame["input_tokens"], frame["output_tokens"])]
    np.testing.assert_allclose(frame["cost_usd"], expected_cost, rtol=1e-12)
    assert (frame["cost_source"] == "priced").all()
    assert frame["score_raw"].isna().all() and frame["latency_s"].isna().all() and frame["answer"].isna().all()


def test_keeps_given_columns_and_optional_ones_drops_unknown(tmp_path):
    log = small_log().assign(
        dataset="served",
        task=["math", "math", "math", "trivia", "chat", "chat"],
        input_tokens=[5, 5, 4, 4, 3, 3],
        output_tokens=[1, 6, 0, 5, 1, 3],
        cost_usd=[0.5, None, 0.25, 1.0, None, 2.0],
        cost_source="billed",
        propensity=[0.5, 0.5, 0.2, 0.8, 1.0, 1.0],
        decision_id=["d1", "d1", "d2", "d2", "d3", "d3"],
        something_else=1,
    )
    frame = read_log_file(write_log(log, tmp_path / "served.parquet"), PRICES)

    assert_canonical_dtypes(frame)
    assert "something_else" not in frame and "split" not in frame
    assert frame["propensity"].tolist() == [0.5, 0.5, 0.2, 0.8, 1.0, 1.0]
    assert frame["decision_id"].tolist() == ["d1", "d1", "d2", "d2", "d3", "d3"]
    assert frame["task"].tolist() == ["math", "math", "math", "trivia", "chat", "chat"]
    assert frame["input_tokens"].tolist() == [5, 5, 4, 4, 3, 3]  # recorded counts win over o200k
    # recorded costs are kept; the two missing ones are priced from the recorded tokens
    assert frame["cost_usd"].iloc[[0, 2, 3, 5]].tolist() == [0.5, 0.25, 1.0, 2.0]
    assert frame["cost_usd"].iat[1] == pytest.approx(PRICES["big"].cost(5, 6))
    assert frame["cost_usd"].iat[4] == pytest.approx(PRICES["cheap"].cost(3, 1))
    assert frame["cost_source"].tolist() == ["billed", "priced", "billed", "billed", "priced", "billed"]


def test_recorded_cost_without_source_is_observed_and_needs_no_prices(tmp_path):
    log = small_log().assign(cost_usd=0.01)
    frame = read_log_file(write_log(log, tmp_path / "a.csv"))
    assert (frame["cost_source"] == "observed").all()
    assert (frame["cost_usd"] == 0.01).all()


def test_csv_keeps_ids_and_answers_as_text(tmp_path):
    path = tmp_path / "ids.csv"
    path.write_text("prompt_id,prompt,model,success,answer,cost_usd\n007,hi,m,1,NA,0\n17,yo,m,0,,0\n")
    frame = read_log_file(path)
    assert frame["prompt_id"].tolist() == ["007", "17"]
    assert frame["answer"].iat[0] == "NA" and pd.isna(frame["answer"].iat[1])


def test_jsonl_numeric_ids_become_text(tmp_path):
    path = tmp_path / "ids.jsonl"
    path.write_text('{"prompt_id": 3, "prompt": "a", "model": "m", "success": true, "cost_usd": 0}\n'
                    '{"prompt_id": 4, "prompt": "b", "model": "m", "success": false, "cost_usd": 0}\n')
    frame = read_log_file(path)
    assert frame["prompt_id"].tolist() == ["3", "4"]
    assert frame["success"].tolist() == [1.0, 0.0]


def test_several_files_at_once_are_concatenated_in_order(tmp_path):
    first = write_log(small_log(), tmp_path / "first.csv")
    second = write_log(small_log().assign(model=["x", "y"] * 3), tmp_path / "second.jsonl")
    third = write_log(small_log().iloc[:2], tmp_path / "third.parquet")
    prices = PRICES.merged(PriceTable({"x": Price(0, 0), "y": Price(0, 0)}))

    frame = read_logs([first, second, third], prices)

    assert_canonical_dtypes(frame)
    assert frame["dataset"].tolist() == ["first"] * 6 + ["second"] * 6 + ["third"] * 2
    assert frame["model"].iloc[6:12].tolist() == ["x", "y"] * 3
    # the same prompt_id in different datasets is no conflict
    assert (frame.groupby("dataset")["prompt_id"].nunique() == [3, 3, 1]).all()


def test_identical_duplicate_rows_are_dropped(tmp_path):
    log = pd.concat([small_log(), small_log().iloc[[3]]], ignore_index=True)
    frame = read_log_file(write_log(log, tmp_path / "dup.csv"), PRICES)
    assert len(frame) == 6


def test_progress_bar_over_files_on_a_terminal_only(tmp_path, capsys, monkeypatch):
    from training import progress

    paths = [write_log(small_log(), tmp_path / f"f{i}.csv") for i in range(2)]
    read_logs(paths, PRICES, progress=True)
    assert "2/2" not in capsys.readouterr().err  # stderr is not a terminal here
    monkeypatch.setattr(progress, "on_terminal", lambda: True)
    read_logs(paths, PRICES, progress=True)
    assert "2/2" in capsys.readouterr().err


def test_reading_writes_nothing(tmp_path):
    path = write_log(small_log(), tmp_path / "pure.parquet")
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    read_log_file(path, PRICES)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before


# --------------------------------------------------------------------------- the shared data


def test_reads_every_shared_outcome_file(shared_data):
    paths = sorted((shared_data / "outcomes").glob("*.parquet"))
    assert len(paths) >= 9
    frame = read_logs(paths)  # no prices: every shared row has its cost
    assert_canonical_dtypes(frame)
    start = 0
    for path in paths:  # files are concatenated in the order given
        raw = pd.read_parquet(path)
        part = frame.iloc[start : start + len(raw)]
        start += len(raw)
        assert (part["dataset"] == path.stem).all(), path.name
        for column in ("prompt_id", "prompt", "model", "cost_source", "response"):
            same = part[column].reset_index(drop=True).equals(raw[column].astype("string"))
            assert same, (path.name, column)
        for column in ("success", "input_tokens", "output_tokens", "cost_usd"):
            np.testing.assert_array_equal(part[column].to_numpy(), raw[column].to_numpy(), err_msg=path.name)
    assert start == len(frame)
    assert set(frame["split"].dropna()) == {"train", "test"}


def test_reading_mmlu_pro_keeps_every_row(shared_data):
    # (its read time is measured in bench/, not asserted here)
    frame = read_log_file(shared_data / "outcomes" / "mmlu-pro.parquet")
    assert len(frame) == 347_215


# --------------------------------------------------------------------------- RouterBench wide format


def raw_wide(shared_data: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(shared_data / "raw" / "routerbench" / name)


def wide_models(wide: pd.DataFrame) -> list[str]:
    return [c.removesuffix("|total_cost") for c in wide.columns if c.endswith("|total_cost")]


def test_routerbench_wide_csv_is_converted(shared_data):
    path = shared_data / "raw" / "routerbench" / "mbpp_test.csv"
    wide = pd.read_csv(path)
    models = wide_models(wide)
    frame = read_log_file(path)

    assert_canonical_dtypes(frame)
    assert len(models) == 11
    assert len(frame) == len(wide) * len(models)  # mbpp: every model labelled on every prompt
    assert (frame["dataset"] == "routerbench").all() and (frame["task"] == "mbpp").all()
    assert (frame["cost_source"] == "observed").all()
    long = frame.set_index(["prompt_id", "model"])
    for _, row in wide.iloc[:5].iterrows():
        prompt = "\n".join(ast.literal_eval(row["prompt"]))
        for model in models:
            got = long.loc[(row["sample_id"], model)]
            assert got["prompt"] == prompt
            assert got["success"] == row[model]
            assert got["cost_usd"] == row[f"{model}|total_cost"]
            response = "\n".join(ast.literal_eval(row[f"{model}|model_response"]))
            assert got["response"] == response
            assert got["input_tokens"] == count_tokens(prompt)
            assert got["output_tokens"] == count_tokens(response)
    first = long.loc[("mbpp.dev.1", "claude-v1")]
    assert first["prompt"] == "Write a python function to identify non-prime numbers."


def test_routerbench_raw_csvs_match_the_shared_long_file(shared_data):
    paths = [shared_data / "raw" / "routerbench" / name for name in RAW_ROUTERBENCH]
    mine = read_logs(paths)
    subset = pd.read_parquet(shared_data / "outcomes" / "routerbench-subset.parquet")
    test = subset[subset["split"] == "test"]
    joined = mine.merge(test, on=["prompt_id", "model"], how="outer", suffixes=("", "_shared"), indicator=True)
    both = joined[joined["_merge"] == "both"]

    assert len(both) == len(test) - 1  # see below: one label lives in RouterDC's train file
    for column in ("prompt", "task", "response"):
        assert (both[column].astype(object) == both[f"{column}_shared"].astype(object)).all(), column
    for column in ("success", "cost_usd", "input_tokens", "output_tokens"):
        np.testing.assert_array_equal(both[column].to_numpy(), both[f"{column}_shared"].to_numpy(), err_msg=column)
    # arc-challenge.val.136: gpt-3.5's label is only in the copy stored in RouterDC's train file
    missing = joined[joined["_merge"] == "right_only"]
    assert missing[["prompt_id", "model"]].values.tolist() == [["arc-challenge.val.136", "gpt-3.5-turbo-1106"]]
    # five lone copies with the prompt stored twice: the shared file merged them into its train split
    extra = joined[joined["_merge"] == "left_only"]
    assert len(extra) == 5 and set(extra["model"]) == {"gpt-3.5-turbo-1106"}
    assert set(extra["prompt_id"]) <= set(subset.loc[subset["split"] == "train", "prompt_id"])


def test_routerbench_repeated_sample_is_merged(shared_data):
    """arc-challenge.val.172 is stored twice: the prompt once, and the prompt repeated with only gpt-3.5's label."""
    wide = raw_wide(shared_data, "arc_challenge_test.csv")
    copies = wide[wide["sample_id"] == "arc-challenge.val.172"]
    single = copies.loc[copies["prompt"].str.len().idxmin()]
    frame = routerbench_wide_to_long(wide, "arc.csv")
    rows = frame[frame["prompt_id"] == "arc-challenge.val.172"].set_index("model")

    assert len(copies) == 2 and len(rows) == 11  # ten labels from the single copy, gpt-3.5's from the other
    assert rows.loc["gpt-3.5-turbo-1106", "success"] == 1.0
    assert rows.loc["gpt-3.5-turbo-1106", "cost_usd"] == single["gpt-3.5-turbo-1106|total_cost"]
    assert rows.loc["claude-v1", "cost_usd"] == single["claude-v1|total_cost"]
    assert set(rows["prompt"]) == {"\n".join(ast.literal_eval(single["prompt"]))}


@pytest.mark.parametrize("suffix", [".pkl", ".pickle", ".parquet"])
def test_routerbench_wide_in_pickle_and_parquet(shared_data, tmp_path, suffix):
    wide = raw_wide(shared_data, "winograde_test.csv").iloc[:40]
    frame = read_log_file(write_log(wide, tmp_path / f"routerbench_0shot{suffix}"))
    assert len(frame) == 40 * 11
    assert (frame["task"] == "winogrande").all()
    np.testing.assert_array_equal(
        frame.loc[frame["model"] == "claude-v2", "cost_usd"].to_numpy(), wide["claude-v2|total_cost"].to_numpy()
    )


def test_routerbench_prompt_as_real_list_or_plain_text():
    wide = pd.DataFrame(
        {
            "sample_id": ["a", "b", "c"],
            "prompt": [["turn one", "turn two"], "plain [not a list]", "[1, 2]"],
            "eval_name": ["t", "t", "t"],
            "m": [1.0, 0.0, np.nan],
            "m|model_response": ["['ok']", "no", "x"],
            "m|total_cost": [0.1, 0.2, 0.3],
        }
    )
    frame = routerbench_wide_to_long(wide, "frame", dataset="rb")
    assert frame["prompt"].tolist() == ["turn one\nturn two", "plain [not a list]"]  # c: unlabelled, no row
    assert frame["response"].tolist() == ["ok", "no"]
    assert (frame["dataset"] == "rb").all()


# --------------------------------------------------------------------------- bad input: one test per rule


def write_csv(tmp_path: Path, rows: list[dict], name: str = "logs.csv") -> Path:
    return write_log(pd.DataFrame(rows), tmp_path / name)


def good_row(i: int, **changes) -> dict:
    return {"prompt_id": f"p{i}", "prompt": f"prompt {i}", "model": "cheap", "success": 1, "cost_usd": 0.001, **changes}


def log_with(tmp_path: Path, bad_row: int, suffix: str = ".csv", **changes) -> Path:
    """Five good rows, row ``bad_row`` (1-based) changed."""
    rows = [good_row(i, **(changes if i == bad_row else {})) for i in range(1, 6)]
    frame = pd.DataFrame(rows)
    return write_log(frame, tmp_path / f"logs{suffix}")


def test_missing_required_column(tmp_path):
    path = write_log(small_log().drop(columns="success"), tmp_path / "logs.csv")
    with raises_log_error(path, None, "success", "missing required column"):
        read_log_file(path, PRICES)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
@pytest.mark.parametrize(
    "value, fragment",
    [("yes", "'yes' is not a number"), (1.5, "1.5 is outside [0, 1]"), (-0.5, "-0.5 is outside [0, 1]"), (None, "missing value")],
)
def test_bad_success(tmp_path, suffix, value, fragment):
    rows = [good_row(i) for i in range(1, 6)]
    rows[3]["success"] = value
    if suffix == ".parquet" and isinstance(value, str):
        frame = pd.DataFrame(rows).astype({"success": "string"})
    else:
        frame = pd.DataFrame(rows)
    path = write_log(frame, tmp_path / f"logs{suffix}")
    with raises_log_error(path, 4, "success", fragment):
        read_log_file(path)


def test_nan_success_in_parquet(tmp_path):
    path = log_with(tmp_path, 2, ".parquet", success=np.nan)
    with raises_log_error(path, 2, "success", "missing value (NaN)"):
        read_log_file(path)


@pytest.mark.parametrize("column", ["input_tokens", "output_tokens"])
@pytest.mark.parametrize(
    "value, fragment", [("many", "'many' is not a number"), (-3, "-3 is negative"), (2.5, "2.5 is not a whole number")]
)
def test_bad_token_counts(tmp_path, column, value, fragment):
    path = log_with(tmp_path, 3, **{column: value})
    with raises_log_error(path, 3, column, fragment):
        read_log_file(path)


@pytest.mark.parametrize("value, fragment", [("cheap", "'cheap' is not a number"), (-0.01, "-0.01 is negative")])
def test_bad_cost(tmp_path, value, fragment):
    path = log_with(tmp_path, 5, cost_usd=value)
    with raises_log_error(path, 5, "cost_usd", fragment):
        read_log_file(path)


@pytest.mark.parametrize("column", ["prompt_id", "model"])
@pytest.mark.parametrize("value", ["", "   "])
def test_empty_id_or_model(tmp_path, column, value):
    path = log_with(tmp_path, 2, ".jsonl", **{column: value})
    with raises_log_error(path, 2, column, f"empty {column}"):
        read_log_file(path)


def test_empty_id_in_csv_is_missing(tmp_path):
    path = log_with(tmp_path, 4, prompt_id=None)
    with raises_log_error(path, 4, "prompt_id", "empty prompt_id"):
        read_log_file(path)


def test_same_prompt_id_with_two_texts(tmp_path):
    rows = [good_row(1), good_row(2), good_row(1, model="big", prompt="another text")]
    path = write_csv(tmp_path, rows)
    with raises_log_error(path, 3, "prompt", "prompt_id 'p1'", "'another text'", "'prompt 1'", "row 1"):
        read_log_file(path)


def test_same_prompt_id_with_two_texts_across_files(tmp_path):
    first = write_log(pd.DataFrame([good_row(1)]).assign(dataset="d"), tmp_path / "a.csv")
    second = write_log(pd.DataFrame([good_row(9), good_row(1, model="big", prompt="changed")]).assign(dataset="d"), tmp_path / "b.csv")
    with raises_log_error(second, 2, "prompt", f"{first} row 1"):
        read_logs([first, second])


def test_conflicting_duplicate_names_both_rows(tmp_path):
    rows = [good_row(1), good_row(2), good_row(3), good_row(2, success=0)]
    path = write_csv(tmp_path, rows)
    with raises_log_error(path, 4, "success", "conflicting duplicate", "prompt_id 'p2'", "model 'cheap'", "at row 2"):
        read_log_file(path)


def test_duplicates_across_files_name_both_files(tmp_path):
    first = write_log(pd.DataFrame([good_row(1), good_row(2)]).assign(dataset="d"), tmp_path / "a.parquet")
    second = write_log(pd.DataFrame([good_row(3), good_row(2)]).assign(dataset="d"), tmp_path / "b.jsonl")
    with raises_log_error(second, 2, "prompt_id", "duplicate outcome", f"{first} row 2", "must not overlap"):
        read_logs([first, second])


def test_model_without_price(tmp_path):
    rows = [good_row(1), good_row(2, model="mystery", cost_usd=None), good_row(3, cost_usd=None)]
    path = write_csv(tmp_path, rows)
    with raises_log_error(path, 2, "cost_usd", "'mystery'", "--prices", "catalog"):
        read_log_file(path, PRICES)
    with raises_log_error(path, 2, "cost_usd", "'mystery'"):
        read_log_file(path)  # no prices at all


def test_no_cost_column_and_no_prices(tmp_path):
    path = write_log(small_log(), tmp_path / "logs.jsonl")
    with raises_log_error(path, 1, "cost_usd", "no price for model 'cheap'"):
        read_log_file(path)


@pytest.mark.parametrize("suffix", [".parquet", ".pkl", ".jsonl"])
def test_corrupt_file(tmp_path, suffix):
    path = tmp_path / f"broken{suffix}"
    path.write_bytes(b"\x00\x01 this is not a valid file {{{")
    with raises_log_error(path, None, None, "cannot read the file"):
        read_log_file(path)


def test_pickle_of_something_else(tmp_path):
    path = tmp_path / "list.pkl"
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with raises_log_error(path, None, None, "not a pandas DataFrame"):
        read_log_file(path)


def test_unknown_extension_and_missing_file(tmp_path):
    path = tmp_path / "logs.xlsx"
    path.write_text("x")
    with raises_log_error(path, None, None, "unknown file type '.xlsx'"):
        read_log_file(path)
    with raises_log_error(tmp_path / "gone.csv", None, None, "no such file"):
        read_log_file(tmp_path / "gone.csv")


def test_wide_bad_success_and_cost_name_the_model_column(tmp_path, shared_data):
    wide = raw_wide(shared_data, "mbpp_test.csv").iloc[:10].copy()
    wide.loc[6, "claude-v1"] = 2.0
    path = write_log(wide, tmp_path / "wide.csv")
    with raises_log_error(path, 7, "claude-v1", "2 is outside [0, 1]"):
        read_log_file(path)
    wide.loc[6, "claude-v1"] = 1.0
    wide.loc[3, "claude-v2|total_cost"] = -1.0
    write_log(wide, path)
    with raises_log_error(path, 4, "claude-v2|total_cost", "-1 is negative"):
        read_log_file(path)


def test_wide_repeated_sample_with_conflicting_labels(tmp_path, shared_data):
    wide = raw_wide(shared_data, "mbpp_test.csv").iloc[:4]
    copy = wide.iloc[[1]].assign(**{"claude-v1": 1.0 - wide["claude-v1"].iat[1]})
    path = write_log(pd.concat([wide, copy], ignore_index=True), tmp_path / "wide.csv")
    with raises_log_error(path, 5, "claude-v1", "rows [2, 5]", "different successes"):
        read_log_file(path)


def test_wide_missing_column(tmp_path, shared_data):
    wide = raw_wide(shared_data, "mbpp_test.csv").iloc[:3].drop(columns="claude-v1")
    path = write_log(wide, tmp_path / "wide.csv")
    with raises_log_error(path, None, "claude-v1", "RouterBench"):
        read_log_file(path)


def test_log_error_survives_pickling():
    error = LogError("logs.csv", "1.5 is outside [0, 1]", row=17, column="success")
    assert str(error) == "logs.csv: row 17, column 'success': 1.5 is outside [0, 1]"
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.path, copy.row, copy.column, str(copy)) == ("logs.csv", 17, "success", str(error))
    assert isinstance(error, ValueError)
