"""Two ``thrifty serve`` replicas (real processes, two ports) sharing one PostgreSQL store and one MLflow registry.

* a budget holds across replicas: 50 concurrent requests spread over both,
  admitted no more than the budget's worth, the spend settled exactly;
* every answered request is stored exactly once, also when one replica is
  killed with ``kill -9`` in the middle of the load;
* promoting a new champion reaches every replica (each polls the registry).

Each test prints its counts (``pytest -s``).
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from contextlib import ExitStack

import httpx
import pytest

from tests.reliability_support import run_load, serve_process, stored_decisions, write_serve_config
from tests.serving_fixtures import (  # noqa: F401  (fixtures)
    ANTHROPIC_UPSTREAM_KEY,
    EASY,
    OPENAI_UPSTREAM_KEY,
    UPSTREAM,
    fake,
    fake_server,
    router_path,
)

CLIENT = "thr-replicas-client-0001"
KEYS = (OPENAI_UPSTREAM_KEY, ANTHROPIC_UPSTREAM_KEY)
MAX_TOKENS = 1000
LIMIT = 0.1


@pytest.fixture
def replicas(fake, fake_server, router_path, tmp_path, postgres_url):
    """Start ``n`` replicas of one config on one PostgreSQL database and one THRIFTY_HOME (MLflow registry)."""
    stack = ExitStack()

    def start(n: int = 2, *, home=None, **overrides):
        config = write_serve_config(tmp_path, fake_server[1], router_path, client_key=CLIENT, store_url=postgres_url,
                                    **overrides)
        return [stack.enter_context(serve_process(config, upstream_keys=KEYS, home=home or tmp_path / "home",
                                                  startup_s=180)) for _ in range(n)]

    with stack:
        yield start


def chat() -> dict:
    return {"model": "oai-large", "max_tokens": MAX_TOKENS, "messages": [{"role": "user", "content": EASY}]}


def test_a_budget_holds_across_replicas(fake, replicas, postgres_url):
    from models.catalog import load_catalog
    from models.store import open_store
    from serving.budgets import max_request_cost, period_bounds

    fake.configure(UPSTREAM["oai-large"], output_tokens=MAX_TOKENS, delay_before_headers=0.5)
    first, second = replicas(budgets={"load": {"amount_usd": LIMIT, "period": "day"}})

    async def main():
        async with httpx.AsyncClient(timeout=60, headers={"authorization": f"Bearer {CLIENT}"}) as client:
            return await asyncio.gather(*(client.post(f"{(first, second)[i % 2].url}/v1/chat/completions", json=chat())
                                          for i in range(50)))

    responses = asyncio.run(main())
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert len(ok) + len(refused) == 50 and ok and refused
    catalog = load_catalog([first.log_path.parent / "catalog.yaml"], include_default=False)
    one_max = max_request_cost(chat(), [catalog.get("oai-large")], default_max_tokens=4096, max_attempts=3)
    assert len(ok) <= LIMIT // one_max  # booked at admission, across both replicas
    assert fake.count() == len(ok)  # a refused request never reaches an upstream
    assert all(r.json()["error"]["code"] == "budget_exceeded" for r in refused)
    with open_store(postgres_url, create=False) as store:
        spent, settled = store.budget_spent("load", period_bounds("day")[0])
        actual = sum(store.decision(r.headers["x-thrifty-decision-id"])["cost_usd"] for r in ok)
    assert spent == pytest.approx(actual) and settled == len(ok)
    assert spent <= LIMIT + one_max  # overspend at most one request's maximum cost
    print(f"\nREPLICAS budget: admitted={len(ok)} refused={len(refused)} spent=${spent:.6f} limit=${LIMIT} "
          f"max_per_request=${one_max:.6f}")


def test_every_answered_request_is_stored_once_when_a_replica_is_killed(fake, replicas, postgres_url):
    for upstream in UPSTREAM.values():
        fake.configure(upstream, delay_before_headers=0.1, delay_per_chunk=0.1)
    doomed, survivor = replicas()
    results: dict[str, list] = {"doomed": [], "survivor": []}
    threads = [threading.Thread(target=run_load, args=(server.url, CLIENT), daemon=True,
                                kwargs={"requests": 150, "concurrency": 6, "stop_after_error": name == "doomed",
                                        "results": results[name]})
               for name, server in (("doomed", doomed), ("survivor", survivor))]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(results["doomed"]) < 20 and time.monotonic() < deadline:
        time.sleep(0.02)
    doomed.proc.send_signal(signal.SIGKILL)
    doomed.proc.wait(timeout=30)
    for t in threads:
        t.join(timeout=180)
    assert not any(t.is_alive() for t in threads)
    rows = stored_decisions(postgres_url)  # asserts one row per decision id

    answered = {name: {r.decision_id for r in rs if r.complete} for name, rs in results.items()}
    cut = [r for r in results["doomed"] if r.decision_id is not None and not r.complete]
    assert len(results["survivor"]) == 150 and len(answered["survivor"]) == 150  # the other replica never noticed
    assert answered["doomed"] and answered["doomed"] | answered["survivor"] <= set(rows)
    assert all(rows[d]["status"] == "ok" for d in answered["doomed"] | answered["survivor"])
    unanswered = set(rows) - answered["doomed"] - answered["survivor"]
    assert unanswered <= {r.decision_id for r in cut}  # stored but cut: only requests of the killed replica
    print(f"\nREPLICAS kill-9: answered={len(answered['doomed'])}+{len(answered['survivor'])} stored={len(rows)} "
          f"cut_mid_response={len(cut)} stored_but_not_delivered={len(unanswered)}")


def test_a_promoted_champion_reaches_every_replica(fake, replicas, router_path, thrifty_home):
    from router.persist import load_router_file
    from training.tracking import register_router, start_run

    router = load_router_file(router_path)
    with start_run("thrifty-tests"):
        first = register_router(router, "thrifty")
    servers = replicas(2, home=thrifty_home, router_uri=None, reload_interval_s=0.5)

    def versions() -> list[str]:
        return [httpx.get(f"{s.url}/healthz", timeout=10).json()["router_version"] for s in servers]

    assert versions() == [f"thrifty/{first}"] * 2
    with start_run("thrifty-tests"):
        second = register_router(router, "thrifty")  # the new champion
    deadline = time.monotonic() + 60
    while versions() != [f"thrifty/{second}"] * 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert versions() == [f"thrifty/{second}"] * 2
    answer = httpx.post(f"{servers[1].url}/v1/chat/completions", headers={"authorization": f"Bearer {CLIENT}"},
                        json={"model": "thrifty", "messages": [{"role": "user", "content": EASY}]})
    assert answer.status_code == 200 and answer.headers["x-thrifty-router-version"] == f"thrifty/{second}"
