"""Outcome logs from directories of Parquet parts and fsspec URLs read the same as one file; bad sources fail clearly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from tests.fixtures_logs import small_log, write_log
from tests.synthetic import synthetic_logs
from thrifty.cli import main
from training.logs import LogError, read_log_file, read_logs


def _parts(frame: pd.DataFrame, directory, n: int):
    """``frame`` split into ``n`` Parquet parts in ``directory`` (as Spark/Dask write them)."""
    directory.mkdir(parents=True)
    for k, idx in enumerate(np.array_split(np.arange(len(frame)), n)):
        frame.iloc[idx].to_parquet(directory / f"part.{k}.parquet", index=False)
    (directory / "_SUCCESS").write_text("")  # marker files beside the parts are not parts
    return directory


@pytest.fixture
def log_frame():
    return synthetic_logs(40, seed=3)


def test_directory_of_parts_reads_as_the_single_file(tmp_path, log_frame):
    # no dataset column: the rows take the file's stem, and a directory's parts the directory's
    log_frame = log_frame.drop(columns="dataset")
    single = read_log_file(write_log(log_frame, tmp_path / "served.parquet"))
    assert set(single["dataset"]) == {"served"}
    directory = _parts(log_frame, tmp_path / "parts" / "served.parquet", 3)
    pd.testing.assert_frame_equal(read_log_file(directory), single)


def test_file_urls_read_as_the_single_file(tmp_path, log_frame):
    path = write_log(log_frame, tmp_path / "served.parquet")
    single = read_log_file(path)
    pd.testing.assert_frame_equal(read_log_file(path.as_uri()), single)
    directory = _parts(log_frame, tmp_path / "parts" / "served.parquet", 4)
    pd.testing.assert_frame_equal(read_log_file(directory.as_uri()), single)
    jsonl = write_log(small_log(), tmp_path / "small.jsonl")
    pd.testing.assert_frame_equal(read_logs([jsonl.as_uri()], _prices()), read_logs([jsonl], _prices()))


def test_hive_partitioned_directory_restores_the_partition_column(tmp_path, log_frame):
    single = read_log_file(write_log(log_frame, tmp_path / "served.parquet"))
    root = tmp_path / "hive" / "served.parquet"
    for model, rows in log_frame.groupby("model"):
        (root / f"model={model}").mkdir(parents=True)
        rows.drop(columns="model").to_parquet(root / f"model={model}" / "part.0.parquet", index=False)
    frame = read_log_file(root)
    key = ["dataset", "prompt_id", "model"]
    pd.testing.assert_frame_equal(frame.sort_values(key, ignore_index=True), single.sort_values(key, ignore_index=True))


def test_errors_name_the_part_and_its_row(tmp_path, log_frame):
    directory = _parts(log_frame, tmp_path / "served.parquet", 2)
    bad = log_frame.iloc[len(log_frame) // 2 :].copy()
    bad.iloc[2, bad.columns.get_loc("success")] = 3.0
    bad.to_parquet(directory / "part.1.parquet", index=False)
    with pytest.raises(LogError) as info:
        read_log_file(directory)
    assert info.value.path == str(directory / "part.1.parquet") and info.value.row == 3 and info.value.column == "success"
    with pytest.raises(LogError) as info:
        read_log_file(directory.as_uri())
    assert info.value.path == (directory / "part.1.parquet").as_uri() and info.value.row == 3


@pytest.mark.parametrize(
    "source, fragment",
    [
        ("{tmp}/empty", "directory holds no Parquet parts"),
        ("file://{tmp}/gone.parquet", "no such file or directory"),
        ("nosuchprotocol://bucket/logs.parquet", "not a readable URL"),
        ("{tmp}/gone.parquet", "no such file"),
        ("{tmp}/notes.txt", "unknown file type '.txt'"),
    ],
)
def test_bad_sources_fail_with_one_clear_error(tmp_path, source, fragment):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "_SUCCESS").write_text("")
    (tmp_path / "notes.txt").write_text("x")
    source = source.format(tmp=tmp_path)
    with pytest.raises(LogError) as info:
        read_logs([source])
    assert str(info.value).startswith(source) and fragment in str(info.value)


def test_train_cli_turns_a_bad_source_into_one_line(tmp_path, thrifty_home):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, ["train", "--logs", str(tmp_path / "empty"), "--no-register"])
    assert result.exit_code == 1
    assert result.output.count("Error:") == 1, result.output
    assert f"Error: {tmp_path / 'empty'}: directory holds no Parquet parts (*.parquet)\n" in result.output
    assert "Traceback" not in result.output


def _prices():
    from models.prices import Price, PriceTable

    return PriceTable({"cheap": Price(1.0, 2.0), "big": Price(10.0, 30.0)})
