"""Downloading public logs: resumable HTTP download and the RouterBench fetch, against a loopback server."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pandas as pd
import pytest

from tests.fixtures_logs import file_server, shared_data  # noqa: F401  (fixtures)
from training.fetch import DownloadError, download, fetch_routerbench

BODY = bytes(range(256)) * 4096  # 1 MiB with every byte value


def test_download_whole_file(file_server, tmp_path):
    file_server.files["/data.bin"] = BODY
    dest = download(file_server.url("/data.bin"), tmp_path / "sub" / "data.bin", progress=False)
    assert dest == tmp_path / "sub" / "data.bin"
    assert dest.read_bytes() == BODY
    assert not (tmp_path / "sub" / "data.bin.part").exists()
    assert file_server.requests[0]["range"] is None


def test_dropped_download_resumes_on_the_next_call(file_server, tmp_path):
    file_server.files["/data.bin"] = BODY
    file_server.drop_after["/data.bin"] = 300_000
    url = file_server.url("/data.bin")
    dest, part = tmp_path / "data.bin", tmp_path / "data.bin.part"

    with pytest.raises(DownloadError) as failure:
        download(url, dest, progress=False, chunk_size=4096, retries=0)
    assert url in str(failure.value) and "resume" in str(failure.value)
    assert not dest.exists()
    assert part.stat().st_size == 300_000  # kept for the next call

    download(url, dest, progress=False)
    assert file_server.requests[-1]["range"] == "bytes=300000-"
    assert dest.read_bytes() == BODY
    assert not part.exists()


def test_dropped_download_resumes_within_one_call(file_server, tmp_path):
    file_server.files["/data.bin"] = BODY
    file_server.drop_after["/data.bin"] = 123_457
    dest = download(file_server.url("/data.bin"), tmp_path / "data.bin", progress=False, chunk_size=1000)
    assert dest.read_bytes() == BODY
    assert [r["range"] for r in file_server.requests] == [None, "bytes=123457-"]


def test_server_ignoring_range_restarts_from_zero(file_server, tmp_path):
    file_server.files["/data.bin"] = BODY
    file_server.ignore_range = True
    (tmp_path / "data.bin.part").write_bytes(b"stale bytes that must not stay")
    dest = download(file_server.url("/data.bin"), tmp_path / "data.bin", progress=False)
    assert file_server.requests[0]["range"] == "bytes=30-"
    assert dest.read_bytes() == BODY


def test_complete_part_file_is_finished_on_416(file_server, tmp_path):
    file_server.files["/data.bin"] = BODY
    (tmp_path / "data.bin.part").write_bytes(BODY)
    dest = download(file_server.url("/data.bin"), tmp_path / "data.bin", progress=False)
    assert dest.read_bytes() == BODY
    assert len(file_server.requests) == 1  # the 416 alone: nothing downloaded again


def test_oversized_part_file_is_downloaded_again(file_server, tmp_path):
    file_server.files["/data.bin"] = BODY[:1000]
    (tmp_path / "data.bin.part").write_bytes(b"x" * 5000)
    dest = download(file_server.url("/data.bin"), tmp_path / "data.bin", progress=False)
    assert dest.read_bytes() == BODY[:1000]
    assert [r["range"] for r in file_server.requests] == ["bytes=5000-", None]


def test_http_error_names_status_and_url(file_server, tmp_path):
    url = file_server.url("/missing.pkl")
    with pytest.raises(DownloadError, match=r"HTTP 404") as failure:
        download(url, tmp_path / "missing.pkl", progress=False)
    assert url in str(failure.value)
    assert not (tmp_path / "missing.pkl").exists()


def test_existing_destination_is_not_downloaded(file_server, tmp_path):
    dest = tmp_path / "data.bin"
    dest.write_bytes(b"already here")
    download(file_server.url("/data.bin"), dest, progress=False)
    assert dest.read_bytes() == b"already here"
    assert file_server.requests == []


def test_hf_token_is_sent_as_bearer(file_server, tmp_path, monkeypatch):
    file_server.files["/data.bin"] = b"abc"
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    download(file_server.url("/data.bin"), tmp_path / "data.bin", progress=False)
    assert file_server.requests[0]["authorization"] == "Bearer hf_test_token"


def test_no_token_no_authorization(file_server, tmp_path, monkeypatch):
    file_server.files["/data.bin"] = b"abc"
    monkeypatch.delenv("HF_TOKEN", raising=False)
    download(file_server.url("/data.bin"), tmp_path / "data.bin", progress=False)
    assert file_server.requests[0]["authorization"] is None


def test_progress_bar_shows_bytes_on_a_terminal_only(file_server, tmp_path, capsys, monkeypatch):
    from training import progress

    file_server.files["/data.bin"] = BODY
    download(file_server.url("/data.bin"), tmp_path / "plain.bin", progress=True)
    assert "plain.bin" not in capsys.readouterr().err  # stderr is not a terminal here: no bar
    monkeypatch.setattr(progress, "on_terminal", lambda: True)
    download(file_server.url("/data.bin"), tmp_path / "data.bin", progress=True)
    assert "data.bin" in capsys.readouterr().err


# --------------------------------------------------------------------------- RouterBench


@pytest.fixture
def routerbench_pickle(shared_data, tmp_path):
    """RouterBench's published layout: one pickled wide DataFrame, built from the raw CSV samples."""
    raw = shared_data / "raw" / "routerbench"
    wide = pd.concat([pd.read_csv(raw / name) for name in ("mbpp_test.csv", "winograde_test.csv")], ignore_index=True)
    wide = wide.drop(columns="Unnamed: 0")
    return wide, pickle.dumps(wide)


def test_fetch_routerbench_downloads_resumes_and_converts(file_server, tmp_path, routerbench_pickle):
    wide, payload = routerbench_pickle
    file_server.files["/routerbench_0shot.pkl"] = payload
    file_server.drop_after["/routerbench_0shot.pkl"] = len(payload) // 3
    cache = tmp_path / "cache"

    parquet = fetch_routerbench(cache, url=file_server.url("/routerbench_0shot.pkl"), progress=False)

    assert parquet == cache / "routerbench" / "routerbench.parquet"
    assert (cache / "routerbench" / "routerbench_0shot.pkl").read_bytes() == payload  # resumed, identical
    assert [r["range"] for r in file_server.requests] == [None, f"bytes={len(payload) // 3}-"]
    assert sorted(p.name for p in (cache / "routerbench").iterdir()) == ["routerbench.parquet", "routerbench_0shot.pkl"]

    long = pd.read_parquet(parquet)
    models = [c.removesuffix("|total_cost") for c in wide.columns if c.endswith("|total_cost")]
    assert len(long) == len(wide) * len(models)
    assert (long["dataset"] == "routerbench").all() and (long["cost_source"] == "observed").all()
    cells = long.set_index(["prompt_id", "model"])
    for model in models:
        expected = wide.set_index("sample_id")
        got = cells.xs(model, level="model").loc[expected.index]
        np.testing.assert_array_equal(got["success"].to_numpy(), expected[model].to_numpy(), err_msg=model)
        np.testing.assert_array_equal(
            got["cost_usd"].to_numpy(), expected[f"{model}|total_cost"].to_numpy(), err_msg=model
        )


def test_fetch_routerbench_reuses_the_converted_file(file_server, tmp_path, routerbench_pickle):
    _, payload = routerbench_pickle
    file_server.files["/rb.pkl"] = payload
    url = file_server.url("/rb.pkl")
    parquet = fetch_routerbench(tmp_path, url=url, progress=False)
    converted_at = parquet.stat().st_mtime_ns

    assert fetch_routerbench(tmp_path, url=url, progress=False) == parquet
    assert parquet.stat().st_mtime_ns == converted_at  # not converted again
    assert len(file_server.requests) == 1  # nor downloaded again

    pickle_path = tmp_path / "routerbench" / "routerbench_0shot.pkl"
    newer = parquet.stat().st_mtime + 10
    os.utime(pickle_path, (newer, newer))  # a newer pickle must be converted again
    fetch_routerbench(tmp_path, url=url, progress=False)
    assert parquet.stat().st_mtime_ns != converted_at


def test_cli_fetch_then_train_on_the_download(file_server, thrifty_home, tmp_path, routerbench_pickle):
    """The main job's path for a new user: `thrifty data fetch routerbench`, then `thrifty train` on it."""
    from click.testing import CliRunner
    from mlflow import MlflowClient

    from thrifty.cli import main

    _, payload = routerbench_pickle
    file_server.files["/routerbench_0shot.pkl"] = payload
    runner = CliRunner()
    fetched = runner.invoke(main, ["data", "fetch", "routerbench", "--url", file_server.url("/routerbench_0shot.pkl")], catch_exceptions=False)
    assert fetched.exit_code == 0, fetched.output
    path = fetched.stdout.strip().splitlines()[-1]
    assert path == str(thrifty_home / "cache" / "routerbench" / "routerbench.parquet")
    trained = runner.invoke(main, ["train", "--logs", path, "--predictor", "logistic"], catch_exceptions=False)
    assert trained.exit_code == 0, trained.output
    assert "served default:" in trained.output and "models:/thrifty@champion" in trained.output
    assert str(MlflowClient().get_model_version_by_alias("thrifty", "champion").version) == "1"


def test_cli_fetch_reports_an_unreachable_url(thrifty_home):
    from click.testing import CliRunner

    from thrifty.cli import main

    result = CliRunner().invoke(main, ["data", "fetch", "routerbench", "--url", "http://127.0.0.1:9/none.pkl"])
    assert result.exit_code != 0 and "127.0.0.1:9" in result.output
