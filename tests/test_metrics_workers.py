"""``/metrics`` under ``thrifty serve --workers 2``: every scrape shows the whole server.

A real server process with two workers; requests on fresh connections are
spread over both (each worker's own share is read from its files in the
multiprocess directory); twelve scrapes, answered by whichever worker, all
show the same totals, equal to the requests sent. The directory is the
server's own and is gone once it exits.
"""

from __future__ import annotations

import re
import shutil
import signal
import time
from pathlib import Path

import httpx
import psutil

from tests.reliability_support import run_load, serve_process, write_serve_config
from tests.serving_fixtures import (  # noqa: F401  (fixtures)
    ANTHROPIC_UPSTREAM_KEY,
    OPENAI_UPSTREAM_KEY,
    fake,
    fake_server,
    router_path,
)

CLIENT = "thr-metrics-client-0001"
REQUESTS = 80
REQUESTS_TOTAL = re.compile(r'^thrifty_requests_total\{endpoint="(/v1/[a-z/]+)",status="(\d+)"\} ([0-9.e+]+)$', re.M)


def answered(metrics_text: str) -> float:
    return sum(float(n) for _, _, n in REQUESTS_TOTAL.findall(metrics_text))


def worker_totals(directory: Path, pids: list[int], scratch: Path) -> dict[int, float]:
    """Requests counted by each worker alone: its own files, read by prometheus_client's collector."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    totals = {}
    for pid in pids:
        own = scratch / str(pid)
        own.mkdir(parents=True)
        for f in directory.glob(f"*_{pid}.db"):
            shutil.copy(f, own / f.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(own))
        totals[pid] = answered(generate_latest(registry).decode())
    return totals


def test_every_scrape_shows_the_whole_server(fake, fake_server, router_path, tmp_path):
    config = write_serve_config(tmp_path, fake_server[1], router_path, client_key=CLIENT)
    with serve_process(config, upstream_keys=(OPENAI_UPSTREAM_KEY, ANTHROPIC_UPSTREAM_KEY), home=tmp_path / "home",
                       extra_args=("--workers", "2"), startup_s=240) as server:
        deadline = time.monotonic() + 240  # both workers serving, not just the first one up
        while server.log().count("Application startup complete") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        pids = [int(p) for p in re.findall(r"Started server process \[(\d+)\]", server.log())]
        workers = [p for p in psutil.Process(server.proc.pid).children() if p.pid in pids]
        assert len(workers) == 2
        directory = Path(workers[0].environ()["PROMETHEUS_MULTIPROC_DIR"])
        assert directory.is_dir() and directory.name.startswith("thrifty-metrics-")

        results = run_load(server.url, CLIENT, requests=REQUESTS, concurrency=8)  # a new connection per request
        assert len(results) == REQUESTS and all(r.complete for r in results)
        deadline = time.monotonic() + 30  # a request is counted just after its last byte: let the last ones land
        while answered(httpx.get(f"{server.url}/metrics").text) < REQUESTS and time.monotonic() < deadline:
            time.sleep(0.05)

        scrapes = []
        for _ in range(12):
            with httpx.Client() as client:  # a fresh connection: any worker may answer
                scrapes.append(client.get(f"{server.url}/metrics").text)
        totals = [answered(text) for text in scrapes]
        assert totals == [REQUESTS] * 12
        assert all('thrifty_requests_in_flight 0.0' in text for text in scrapes)  # live workers summed
        per_worker = worker_totals(directory, [w.pid for w in workers], tmp_path / "split")
        assert sum(per_worker.values()) == REQUESTS and all(n > 0 for n in per_worker.values()), per_worker

        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=60) in (0, -signal.SIGTERM)
    assert not directory.exists()
    print(f"\nMETRICS --workers 2: requests={REQUESTS} per_worker={sorted(per_worker.values())} scrapes={totals}")
