"""Durable logs: requests answered == records stored, with thrifty as a real process.

Three runs of ``thrifty serve`` under a bounded load of both formats, JSON and
SSE, against the fake provider, each on both store backends (SQLite in WAL
mode with ``synchronous=NORMAL``, the default; and PostgreSQL):

* a 5xx storm: every upstream fails 35% of its calls; fail-over answers most
  requests, the rest get a proper 5xx; every response has its record;
* SIGTERM mid-load: the server stops accepting, lets in-flight requests
  finish (graceful drain), exits 0; no started response is cut, and every
  answered request has its record;
* kill -9 mid-load: no drain at all; every request whose complete answer
  reached the client has its record in the file (the record is committed
  before the last byte of the answer is sent; WAL with synchronous=NORMAL
  survives a process kill, and PostgreSQL rolls back what the dead process
  left uncommitted).

Each test prints its counts (``pytest -s``).
"""

from __future__ import annotations

import signal
import threading
import time

import pytest

from models.store import url_scheme
from tests.reliability_support import run_load, serve_process, stored_decisions, write_serve_config
from tests.serving_fixtures import (  # noqa: F401  (fixtures)
    ANTHROPIC_UPSTREAM_KEY,
    OPENAI_UPSTREAM_KEY,
    UPSTREAM,
    fake,
    fake_server,
    router_path,
)

CLIENT = "thr-durability-client-0001"


@pytest.fixture
def start(fake, fake_server, router_path, tmp_path, store_url):
    def start(**overrides):
        config = write_serve_config(tmp_path, fake_server[1], router_path, client_key=CLIENT, store_url=store_url, **overrides)
        return serve_process(config, upstream_keys=(OPENAI_UPSTREAM_KEY, ANTHROPIC_UPSTREAM_KEY), home=tmp_path / "home")

    return start


def load_in_background(url: str, results: list, **kw) -> threading.Thread:
    thread = threading.Thread(target=run_load, args=(url, CLIENT), kwargs={**kw, "results": results}, daemon=True)
    thread.start()
    return thread


def wait_for(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)


def slow_upstreams(fake) -> None:
    """Requests that stay in flight a while (~0.1 s to headers, ~0.5 s per stream)."""
    for upstream in UPSTREAM.values():
        fake.configure(upstream, delay_before_headers=0.1, delay_per_chunk=0.1)


def signal_under_load(server, sig) -> tuple[list, threading.Thread]:
    """300 requests at concurrency 10 against ``server``, and ``sig`` sent to it once 20 have finished."""
    results: list = []
    thread = load_in_background(server.url, results, requests=300, concurrency=10, stop_after_error=True)
    wait_for(lambda: len(results) >= 20, timeout=30)
    server.proc.send_signal(sig)
    return results, thread


def test_5xx_storm_every_response_has_its_record(fake, start, store_url):
    for upstream in UPSTREAM.values():
        fake.configure(upstream, status=500, fail_rate=0.35)
    with start() as server:
        results = run_load(server.url, CLIENT, requests=160, concurrency=8)
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=30) in (0, -signal.SIGTERM)
    rows = stored_decisions(store_url)

    answered = [r for r in results if r.decision_id is not None]
    complete = [r for r in answered if r.complete]
    assert len(results) == 160 and len(answered) == 160 and all(r.error is None for r in results)
    assert len(rows) == len(answered) and set(rows) == {r.decision_id for r in answered}
    assert {r.decision_id for r in complete} == {d for d, row in rows.items() if row["status"] == "ok"}
    assert {r.status for r in answered} <= {200, 502, 503}  # a 5xx only when every attempt failed
    calls = fake.count()
    assert calls > len(results) and len(complete) > 0.8 * len(results)  # fail-over absorbed most failures
    print(f"\nDURABILITY 5xx-storm [{url_scheme(store_url)}]: requests={len(results)} answered={len(answered)} (200={len(complete)}, "
          f"5xx={len(answered) - len(complete)}) stored={len(rows)} upstream_calls={calls}")


def test_sigterm_drains_in_flight_requests_and_keeps_every_record(fake, start, store_url):
    slow_upstreams(fake)
    with start() as server:
        results, thread = signal_under_load(server, signal.SIGTERM)
        code = server.proc.wait(timeout=30)
        thread.join(timeout=60)
        log = server.log()
    # uvicorn drains, runs the app's shutdown (the store writes what is queued), then re-raises the signal
    assert code in (0, -signal.SIGTERM) and not thread.is_alive()
    assert "Waiting for application shutdown" in log and "Application shutdown complete" in log
    rows = stored_decisions(store_url)

    answered = [r for r in results if r.decision_id is not None]
    refused = [r for r in results if r.decision_id is None]
    assert all(r.complete for r in answered), [r for r in answered if not r.complete]  # none cut by the shutdown
    assert all(r.error in ("ConnectError", "RemoteProtocolError", "ReadError") for r in refused)
    assert len(rows) == len(answered) and set(rows) == {r.decision_id for r in answered}
    assert all(row["status"] == "ok" for row in rows.values())
    print(f"\nDURABILITY SIGTERM [{url_scheme(store_url)}]: requests={len(results)} answered={len(answered)} stored={len(rows)} "
          f"refused_after_signal={len(refused)}")


def test_kill_9_keeps_the_record_of_every_answered_request(fake, start, store_url):
    slow_upstreams(fake)
    with start() as server:
        results, thread = signal_under_load(server, signal.SIGKILL)
        server.proc.wait(timeout=30)
        thread.join(timeout=60)
    assert not thread.is_alive()
    rows = stored_decisions(store_url)

    answered = {r.decision_id for r in results if r.complete}
    cut = [r for r in results if r.decision_id is not None and not r.complete]
    assert answered and answered <= set(rows)
    assert all(rows[d]["status"] == "ok" for d in answered)
    print(f"\nDURABILITY kill-9 [{url_scheme(store_url)}]: requests={len(results)} answered={len(answered)} stored={len(rows)} "
          f"answered_and_stored={len(answered & set(rows))} cut_mid_response={len(cut)} "
          f"stored_but_not_delivered={len(set(rows) - answered)}")
