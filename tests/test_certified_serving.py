"""Serving a certified router: the promise in /v1/route and /v1/models, novelty in decisions and metrics, one price table."""

from __future__ import annotations

import logging

import pytest

from router.certificate import Certificate
from router.persist import load_router_file, save_router
from router.policy import Tradeoff
from tests.serving_fixtures import CLIENT_KEY, EASY, HARD, PRICES, fake, fake_server, make_config, router_path  # noqa: F401

HEADERS = {"x-api-key": CLIENT_KEY}


def certified_router(router_path, tmp_path, *, cut: float, certified_prices: dict):
    """The test router with a certificate: cheapest model always (a huge λ), unless a prompt is more novel than ``cut``."""
    router = load_router_file(router_path)
    certificate = Certificate(
        certified=True, policy="tradeoff", knob=1e9, best_model="claude-large", target="98% of the best single model's success",
        confidence=0.9, relative=0.98, floor=0.95, best_success=0.97, success=0.96, success_vs_best=0.99, cost_vs_best=0.41,
        p_value=0.01, n_prompts=160, novelty_cut=cut, prices_sha256="0123456789abcdef", prices=certified_prices,
    )
    # the prices the router was fitted with are the ones it was certified under
    from models.prices import PriceTable

    router.prices_ = PriceTable.from_dict(certified_prices)
    return save_router(router.with_policy(Tradeoff(1e9), certificate_=certificate), tmp_path / "certified.joblib")


@pytest.fixture
def client(fake, fake_server, router_path, tmp_path, caplog):  # noqa: F811
    from fastapi.testclient import TestClient

    from serving.app import create_app

    certified_prices = {m: list(p) for m, p in PRICES.items()}
    certified_prices["oai-mini"] = [0.2, 0.8]  # the catalog has halved oai-mini's price since
    path = certified_router(router_path, tmp_path, cut=3.0, certified_prices=certified_prices)
    config = make_config(tmp_path, fake_server[1], path)
    with caplog.at_level(logging.WARNING, logger="thrifty.serving"), TestClient(create_app(config)) as test_client:
        yield test_client, certified_prices


def test_route_shows_novelty_and_what_the_default_promises(client):
    http, _ = client
    familiar = http.post("/v1/route", json={"prompt": EASY}, headers=HEADERS).json()
    assert familiar["model"] == "oai-mini" and not familiar["guarded"]
    assert 0 < familiar["novelty"] < 3.0
    cert = familiar["certificate"]
    assert cert["certified"] and cert["confidence"] == 0.9 and cert["floor"] == 0.95 and cert["expected_cost_vs_best"] == 0.41
    assert cert["best_model"] == "claude-large" and cert["catalog_prices_differ"] == ["oai-mini"]
    # a prompt unlike anything the router learned from goes to the best model
    novel = "| id | v |\n|---|---|\n" + "".join(f"| {i} | {i * 7.3:.1f} |\n" for i in range(40)) + "Σ ∫ ∂ 数据 表格 合計?"
    shifted = http.post("/v1/route", json={"prompt": novel}, headers=HEADERS).json()
    assert shifted["novelty"] > 3.0 and shifted["guarded"] and shifted["model"] == "claude-large"
    # a catalog model id is passed through: no promise attached
    assert http.post("/v1/route", json={"prompt": EASY, "model": "oai-large"}, headers=HEADERS).json()["certificate"] is None


def test_the_router_decides_under_the_prices_it_was_certified_under_and_says_the_catalog_differs(client, caplog):
    http, certified = client
    decision = http.post("/v1/route", json={"prompt": EASY}, headers=HEADERS).json()
    chosen = decision["candidates"][0]
    expected = (chosen["expected_input_tokens"] * certified["oai-mini"][0] + chosen["expected_output_tokens"] * certified["oai-mini"][1]) / 1e6
    assert chosen["model"] == "oai-mini" and chosen["expected_cost"] == pytest.approx(expected, rel=1e-9)

    def said():  # the warm-up's first decision at start-up (the fixture's setup) says it, then no request does
        return [r.getMessage() for r in [*caplog.get_records("setup"), *caplog.records] if "certified under" in r.getMessage()]

    assert len(said()) == 1 and "oai-mini: $0.2/$0.8 certified, $0.1/$0.4 in the catalog" in said()[0]
    http.post("/v1/route", json={"prompt": HARD}, headers=HEADERS)
    assert len(said()) == 1  # once per router version


def test_models_listing_and_the_novelty_histogram(client):
    http, _ = client
    listing = http.get("/v1/models", headers=HEADERS).json()["data"]
    thrifty = next(m for m in listing if m["id"] == "thrifty")
    assert thrifty["certificate"]["target"] == "98% of the best single model's success"
    assert next(m for m in listing if m["id"] == "best")["certificate"] is None  # a tuned profile has its own policy
    http.post("/v1/route", json={"prompt": EASY}, headers=HEADERS)
    metrics = http.get("/metrics").text
    assert "thrifty_decision_novelty_bucket" in metrics and "thrifty_decision_novelty_count 1.0" in metrics
