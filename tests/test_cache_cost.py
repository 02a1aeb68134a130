"""Prompt caching is priced at its own rates: spend, budgets, ``/metrics``, the store and exports.

The issue's probe: 1M input tokens of which 900k were read from the cache, on a
model priced like claude-3-5-haiku ($0.80 per 1M input tokens), was booked at
$0.80; at Anthropic's cache-read rate (0.1x) it costs about $0.15. The expected
values below are derived from the catalog's prices, never written out.
"""

from __future__ import annotations

import sqlite3

import httpx
import pytest
import yaml
from click.testing import CliRunner

from models.catalog import CACHE_RATIOS, ModelSpec, default_catalog, load_catalog
from serving.usage import StreamWatcher, Usage, usage_cost, usage_of
from tests.fakes.server import serve_in_thread
from tests.serving_fixtures import CLIENT_KEY, catalog_entries, fake, fake_server, make_config, router_path  # noqa: F401

INPUT, CACHED, OUTPUT = 100_000, 900_000, 10  # uncached input, input read from the cache, output


def test_the_probe_is_booked_at_about_fifteen_cents():
    spec = default_catalog().get("claude-3-5-haiku")
    read_price = spec.input_usd_per_mtok * CACHE_RATIOS["anthropic"][0]
    expected = (INPUT * spec.input_usd_per_mtok + CACHED * read_price) / 1e6
    assert usage_cost(spec, Usage(INPUT + CACHED, 0, cache_read_tokens=CACHED)) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.152, abs=1e-9)  # "about $0.15"
    assert usage_cost(spec, Usage(INPUT + CACHED, 0)) == pytest.approx(0.80)  # uncached: the old booking


def test_cache_prices_default_to_the_providers_ratios_and_catalog_fields_override_them(tmp_path):
    anthropic = ModelSpec("a", "anthropic", "a", 3.0, 15.0)
    assert anthropic.cache_prices() == pytest.approx((0.3, 3.75, 6.0))  # read 0.1x, write 1.25x (5 min), 2x (1 h)
    openai = ModelSpec("o", "openai", "o", 2.5, 10.0)
    assert openai.cache_prices() == pytest.approx((1.25, 2.5, 2.5))  # gpt-4o family: cached input at 0.5x
    compatible = ModelSpec("c", "openai-compatible", "c", 1.0, 1.0)
    assert compatible.cache_prices() == (1.0, 1.0, 1.0)  # nothing known: full price
    shipped = default_catalog()
    assert shipped.get("gpt-4.1").cache_prices()[0] == pytest.approx(0.25 * shipped.get("gpt-4.1").input_usd_per_mtok)
    path = tmp_path / "cache.yaml"
    path.write_text(yaml.safe_dump({"models": [{"id": "gpt-4o", "cached_input_usd_per_mtok": 0.1}]}))
    assert load_catalog([path]).get("gpt-4o").cache_prices()[0] == 0.1
    path.write_text(yaml.safe_dump({"models": [{"id": "gpt-4o", "cached_input_usd_per_mtok": -1}]}))
    with pytest.raises(ValueError, match="cached_input_usd_per_mtok"):
        load_catalog([path])
    # writes at their own rate, the one-hour ones at theirs
    spec = shipped.get("claude-3-5-sonnet")
    usage = Usage(1000, 0, cache_read_tokens=100, cache_write_tokens=300, cache_write_1h_tokens=200)
    read, write, write_1h = spec.cache_prices()
    assert usage_cost(spec, usage) == pytest.approx((600 * spec.input_usd_per_mtok + 100 * read + 100 * write + 200 * write_1h) / 1e6)


def test_usage_is_read_with_its_cache_parts_in_both_formats():
    openai = usage_of("openai", {"usage": {"prompt_tokens": 1000, "completion_tokens": 5,
                                           "prompt_tokens_details": {"cached_tokens": 900}}})
    assert openai == Usage(1000, 5, cache_read_tokens=900)
    anthropic = usage_of("anthropic", {"usage": {"input_tokens": 100, "output_tokens": 5, "cache_read_input_tokens": 900,
                                                 "cache_creation_input_tokens": 50,
                                                 "cache_creation": {"ephemeral_5m_input_tokens": 20, "ephemeral_1h_input_tokens": 30}}})
    assert anthropic == Usage(1050, 5, cache_read_tokens=900, cache_write_tokens=50, cache_write_1h_tokens=30)
    assert usage_of("openai", {"usage": {"prompt_tokens": 10, "prompt_tokens_details": None}}) == Usage(10, 0)
    # a stream: message_start's counts, then the cumulative counts message_delta gives replace them
    watcher = StreamWatcher("anthropic")
    watcher.observe({"type": "message_start", "message": {"usage": {"input_tokens": 100, "output_tokens": 1,
                                                                    "cache_read_input_tokens": 900}}})
    watcher.observe({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 7}})
    assert watcher.usage == Usage(1000, 7, cache_read_tokens=900)
    watcher.observe({"type": "message_delta", "delta": {}, "usage": {"output_tokens": 8, "cache_read_input_tokens": 800}})
    assert watcher.usage == Usage(900, 8, cache_read_tokens=800)


PROBES = {  # catalog id -> (provider, upstream id, priced like)
    "claude-probe": ("anthropic", "claude-fake-probe", "claude-3-5-haiku"),
    "gpt-probe": ("openai", "gpt-fake-probe", "gpt-4o"),
}


@pytest.fixture
def probe_server(fake_server, router_path, tmp_path):
    """thrifty with two probe models priced like shipped ones, a budget for the test client, its own store."""
    from serving.app import create_app

    shipped = default_catalog()
    entries = catalog_entries(fake_server[1])
    for model, (provider, upstream, like) in PROBES.items():
        price = shipped.get(like)
        entries.append({"id": model, "provider": provider, "upstream": upstream,
                        "base_url": fake_server[1] if provider == "anthropic" else f"{fake_server[1]}/v1",
                        "input_usd_per_mtok": price.input_usd_per_mtok, "output_usd_per_mtok": price.output_usd_per_mtok,
                        "context_window": 2_000_000, "max_output_tokens": 8192})
    catalog = tmp_path / "probe.yaml"
    catalog.write_text(yaml.safe_dump({"models": entries}))
    config = make_config(tmp_path, fake_server[1], router_path, catalog=[catalog],
                         budgets={"tests": {"amount_usd": 100.0, "period": "day"}})
    app = create_app(config)
    with serve_in_thread(app) as server:
        yield server.url, app, load_catalog([catalog], include_default=False), config


def test_cached_input_is_priced_in_spend_budget_metrics_store_and_export(fake, probe_server, tmp_path):
    url, app, catalog, config = probe_server
    for model, (_, upstream, _) in PROBES.items():
        fake.configure(upstream, input_tokens=INPUT, cache_read_tokens=CACHED, output_tokens=OUTPUT)
    expected_of = {}
    for model in PROBES:
        spec = catalog.get(model)
        expected_of[model] = (INPUT * spec.input_usd_per_mtok + CACHED * spec.cache_prices()[0]
                              + OUTPUT * spec.output_usd_per_mtok) / 1e6
    assert expected_of["claude-probe"] == pytest.approx(0.152 + OUTPUT * 4.0 / 1e6)

    decisions = []
    with httpx.Client(base_url=url, timeout=20) as http:
        for model in PROBES:
            for fmt in ("openai", "anthropic"):
                for stream in (False, True):
                    path = "/v1/chat/completions" if fmt == "openai" else "/v1/messages"
                    headers = {"authorization": f"Bearer {CLIENT_KEY}"} if fmt == "openai" else {"x-api-key": CLIENT_KEY}
                    body = {"model": model, "stream": stream, "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
                    response = http.post(path, json=body, headers=headers)
                    assert response.status_code == 200, response.text
                    decisions.append((response.headers["x-thrifty-decision-id"], model))
                    assert http.post("/v1/feedback", headers=headers,
                                     json={"decision_id": decisions[-1][0], "success": 1}).status_code == 200
        metrics = http.get("/metrics").text

    store = app.state.services.store
    total = 0.0
    for decision_id, model in decisions:
        record = store.decision(decision_id)
        assert record["input_tokens"] == INPUT + CACHED
        assert record["cost_usd"] == pytest.approx(expected_of[model], rel=1e-9)  # the store (cost_usd)
        assert record["attempts"][0]["cost_usd"] == pytest.approx(expected_of[model], rel=1e-9)
        total += record["cost_usd"]
    for model in PROBES:  # /metrics: spend, and the cached part of the input counted apart
        spend = 4 * expected_of[model]
        assert _metric(metrics, "thrifty_spend_usd_total", model) == pytest.approx(spend, rel=1e-9)
        assert _metric(metrics, "thrifty_tokens_total", model, 'direction="cache_read"') == 4 * CACHED
    with sqlite3.connect(config.resolved_store_url) as db:  # the budget was settled at the cached price
        spent = db.execute("SELECT SUM(spent_usd) FROM budget_spend WHERE client = 'tests'").fetchone()[0]
    assert spent == pytest.approx(total, rel=1e-9)

    from thrifty.cli import main

    export = tmp_path / "served.jsonl"
    result = CliRunner().invoke(main, ["logs", "export", "--store", str(config.resolved_store_url), "--out", str(export)])
    assert result.exit_code == 0, result.output
    import pandas as pd

    frame = pd.read_json(export, lines=True).set_index("decision_id")
    for decision_id, model in decisions:
        assert frame.loc[decision_id, "cost_usd"] == pytest.approx(expected_of[model], rel=1e-9)


def test_cache_writes_are_priced_at_the_write_rate(fake, probe_server):
    url, app, catalog, _ = probe_server
    fake.configure("claude-fake-probe", input_tokens=1000, cache_write_tokens=50_000, output_tokens=OUTPUT)
    response = httpx.post(f"{url}/v1/messages", headers={"x-api-key": CLIENT_KEY}, timeout=20,
                          json={"model": "claude-probe", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 200
    spec = catalog.get("claude-probe")
    expected = (1000 * spec.input_usd_per_mtok + 50_000 * 1.25 * spec.input_usd_per_mtok + OUTPUT * spec.output_usd_per_mtok) / 1e6
    record = app.state.services.store.decision(response.headers["x-thrifty-decision-id"])
    assert record["cost_usd"] == pytest.approx(expected, rel=1e-9)


def _metric(text: str, name: str, model: str, extra: str = "") -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and f'model="{model}"' in line and extra in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} for {model} {extra} not in /metrics")


def test_a_budget_books_the_cache_write_rate_when_the_request_marks_cache_breakpoints():
    from serving.budgets import INPUT_TOKEN_MARGIN, max_request_cost, prompt_tokens

    spec = ModelSpec("a", "anthropic", "a", 3.0, 15.0, max_output_tokens=100)
    plain = {"messages": [{"role": "user", "content": [{"type": "text", "text": "a long shared document"}]}]}
    marked = {"messages": [{"role": "user", "content": [{"type": "text", "text": "a long shared document",
                                                         "cache_control": {"type": "ephemeral", "ttl": "1h"}}]}]}
    for body, rate in ((plain, spec.input_usd_per_mtok), (marked, max(spec.cache_prices()))):
        tokens = -(-prompt_tokens(body) * INPUT_TOKEN_MARGIN // 1)
        assert max_request_cost(body, [spec], default_max_tokens=100) == pytest.approx(
            (tokens * rate + 100 * spec.output_usd_per_mtok) / 1e6)
