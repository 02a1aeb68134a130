"""Spend limits per client and period: reserve the maximum cost at admission, settle on completion."""

from __future__ import annotations

import asyncio
import math
import time
from datetime import datetime, timezone

import anthropic
import httpx
import openai
import pytest

from models.store import url_scheme
from serving.budgets import INPUT_TOKEN_MARGIN, max_request_cost, period_bounds, prompt_tokens
from tests.fakes.server import serve_in_thread
from tests.serving_fixtures import (  # noqa: F401  (fixtures)
    CLIENT_KEY,
    EASY,
    OTHER_CLIENT_KEY,
    UPSTREAM,
    fake,
    fake_server,
    make_config,
    router_path,
)

MAX_TOKENS = 1000
LIMIT = 0.1  # USD per day for the client "tests"


def utc(*args) -> float:
    return datetime(*args, tzinfo=timezone.utc).timestamp()


@pytest.mark.parametrize("period, now, expected", [
    ("hour", utc(2026, 3, 5, 14, 37, 12), (utc(2026, 3, 5, 14), utc(2026, 3, 5, 15))),
    ("day", utc(2026, 3, 5, 14, 37), (utc(2026, 3, 5), utc(2026, 3, 6))),
    ("week", utc(2026, 3, 5, 14, 37), (utc(2026, 3, 2), utc(2026, 3, 9))),  # Monday to Monday
    ("month", utc(2026, 2, 15), (utc(2026, 2, 1), utc(2026, 3, 1))),
    ("month", utc(2026, 12, 31, 23, 59), (utc(2026, 12, 1), utc(2027, 1, 1))),
    (600.0, 1_000_123.0, (999_600.0, 1_000_200.0)),
])
def test_budget_periods(period, now, expected):
    assert period_bounds(period, now) == expected


def test_maximum_cost_covers_the_dearest_candidate_and_every_attempt(fake_server):
    from models.catalog import ModelSpec

    cheap = ModelSpec("a", "openai", "a", 1.0, 2.0, max_output_tokens=100)
    dear = ModelSpec("b", "anthropic", "b", 3.0, 15.0, max_output_tokens=8000)
    body = {"messages": [{"role": "user", "content": "hello there " * 50}]}
    tokens = math.ceil(prompt_tokens(body) * INPUT_TOKEN_MARGIN)
    assert tokens > 100
    # no max_tokens: each model's own output limit; the dearest wins; two more attempts' input on top
    assert max_request_cost(body, [cheap, dear], default_max_tokens=4096, max_attempts=3) == pytest.approx(
        dear.cost(tokens, 8000) + 2 * dear.cost(tokens, 0))
    assert max_request_cost({**body, "max_tokens": 10}, [cheap, dear], default_max_tokens=4096) == pytest.approx(
        dear.cost(tokens, 10))


@pytest.fixture
def budgeted(fake, fake_server, router_path, tmp_path, store_url):
    """A thrifty whose client "tests" may spend $0.10 a day (client "other" has no budget), on each store backend."""
    from serving.app import create_app

    def start():
        config = make_config(tmp_path, fake_server[1], router_path, store_url=store_url,
                             budgets={"tests": {"amount_usd": LIMIT, "period": "day"}})
        app = create_app(config)
        return app, serve_in_thread(app)

    return start


def chat(model: str = "oai-large") -> dict:
    return {"model": model, "max_tokens": MAX_TOKENS, "messages": [{"role": "user", "content": EASY}]}


def test_budget_holds_under_50_concurrent_requests_and_survives_a_restart(fake, budgeted, store_url):
    # every answer uses its whole output limit, slowly: 50 requests are in flight at once
    fake.configure(UPSTREAM["oai-large"], output_tokens=MAX_TOKENS, delay_before_headers=0.5)
    app, server_cm = budgeted()
    with server_cm as server:
        services = app.state.services
        spec = services.catalog.get("oai-large")
        one_max = max_request_cost(chat(), [spec], default_max_tokens=4096, max_attempts=services.config.max_attempts)

        async def main():
            async with httpx.AsyncClient(base_url=server.url, timeout=30,
                                         headers={"authorization": f"Bearer {CLIENT_KEY}"}) as client:
                return await asyncio.gather(*(client.post("/v1/chat/completions", json=chat()) for _ in range(50)))

        responses = asyncio.run(main())
        ok = [r for r in responses if r.status_code == 200]
        refused = [r for r in responses if r.status_code == 429]
        assert len(ok) + len(refused) == 50 and ok and refused
        assert len(ok) <= LIMIT // one_max  # reserved at admission: no more than the budget's worth in flight
        assert fake.count() == len(ok)  # a refused request never reaches an upstream
        for r in refused:
            error = r.json()["error"]
            assert error["code"] == "budget_exceeded" and error["type"] == "insufficient_quota"
            assert "budget of $0.1 per day" in error["message"] and int(r.headers["retry-after"]) >= 1
            assert r.headers["x-thrifty-decision-id"]  # logged like any other answer
        start, _ = period_bounds("day")
        spent, settled = services.store.budget_spent("tests", start)
        actual = sum(services.store.decision(r.headers["x-thrifty-decision-id"])["cost_usd"] for r in ok)
        assert spent == pytest.approx(actual) and settled == len(ok)  # refused requests book nothing
        assert spent <= LIMIT + one_max  # overspend at most one request's maximum cost (here: none)
        rows = [services.store.decision(r.headers["x-thrifty-decision-id"]) for r in refused]
        assert all(row["status"] == "error" and row["error_kind"] == "budget" and row["http_status"] == 429 for row in rows)
        assert 'thrifty_budget_rejections_total{client="tests"}' in httpx.get(f"{server.url}/metrics").text
    print(f"\nBUDGET 50 concurrent [{url_scheme(store_url)}]: admitted={len(ok)} refused={len(refused)} spent=${spent:.6f} limit=${LIMIT} "
          f"max_per_request=${one_max:.6f}")

    # a restart keeps the spend: the next request does not fit any more
    fake.reset()
    app, server_cm = budgeted()
    with server_cm as server:
        with openai.OpenAI(base_url=f"{server.url}/v1", api_key=CLIENT_KEY, max_retries=2) as oc:
            with pytest.raises(openai.RateLimitError) as info:
                oc.chat.completions.create(**chat())
        assert info.value.body["code"] == "budget_exceeded"
        with anthropic.Anthropic(base_url=server.url, api_key=CLIENT_KEY, max_retries=2) as ac:
            with pytest.raises(anthropic.RateLimitError) as info:
                ac.messages.create(**chat())
        assert info.value.body["error"]["type"] == "rate_limit_error"
        # x-should-retry: false -- the SDKs did not retry (max_retries=2): one refusal each
        metrics = httpx.get(f"{server.url}/metrics").text
        assert 'thrifty_budget_rejections_total{client="tests"} 2.0' in metrics
        # another client, without a budget, is not affected
        response = httpx.post(f"{server.url}/v1/chat/completions", json=chat(),
                              headers={"authorization": f"Bearer {OTHER_CLIENT_KEY}"})
        assert response.status_code == 200
    assert fake.count() == 1


def test_a_request_dearer_than_the_whole_budget_is_refused_with_a_clear_message(fake, budgeted):
    app, server_cm = budgeted()
    with server_cm as server:
        response = httpx.post(f"{server.url}/v1/messages", headers={"x-api-key": CLIENT_KEY},
                              json={**chat("claude-large"), "max_tokens": 8000})
    assert response.status_code == 429
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    assert "exceeds the whole budget" in body["error"]["message"] and fake.count() == 0


def test_the_budget_resets_with_its_period(fake, fake_server, router_path, tmp_path, store_url):
    from serving.app import create_app

    config = make_config(tmp_path, fake_server[1], router_path, max_attempts=1, store_url=store_url,
                         budgets={"*": {"amount_usd": 0.02, "period": 2.0}})
    fake.configure(UPSTREAM["oai-large"], output_tokens=MAX_TOKENS)
    with serve_in_thread(create_app(config)) as server, \
            httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {OTHER_CLIENT_KEY}"}) as client:
        start, end = period_bounds(2.0)
        if end - time.time() < 1.0:  # keep the two requests in one period
            time.sleep(end - time.time() + 0.05)
        first, second = client.post("/v1/chat/completions", json=chat()), client.post("/v1/chat/completions", json=chat())
        assert (first.status_code, second.status_code) == (200, 429)  # "*" applies to each client: "other" too
        time.sleep(max(0.0, period_bounds(2.0)[1] - time.time()) + 0.05)
        assert client.post("/v1/chat/completions", json=chat()).status_code == 200


def test_budgets_must_name_configured_clients(fake_server, router_path, tmp_path):
    with pytest.raises(ValueError, match="unknown client"):
        make_config(tmp_path, fake_server[1], router_path, budgets={"typo": {"amount_usd": 1}})
