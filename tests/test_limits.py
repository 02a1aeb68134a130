"""Request limits mean what they say, and models that cannot serve a request are left out before routing.

The real OpenAI and Anthropic SDKs (and raw HTTP where an SDK cannot send the
request) -> thrifty -> the fake provider. The test router's expectations
(``tests/serving_fixtures.py``): on HARD, the cheap models (oai-mini,
claude-small) succeed with p < 0.01 and the large ones with p > 0.99; oai-mini
is the cheapest model on every prompt.
"""

from __future__ import annotations

import anthropic
import httpx
import openai
import pytest
import yaml

from tests.fakes.server import serve_in_thread
from tests.serving_fixtures import (  # noqa: F401  (fixtures)
    CLIENT_KEY,
    EASY,
    HARD,
    anthropic_client,
    catalog_entries,
    fake,
    fake_server,
    http,
    make_config,
    openai_client,
    router_path,
    stored,
    thrifty,
)

CHEAP = ["oai-mini", "claude-small"]


def candidates(http: httpx.Client, prompt: str, headers: dict | None = None) -> dict[str, dict]:
    """The decision's candidates for ``prompt`` (by model), from /v1/route."""
    decision = http.post("/v1/route", json={"prompt": prompt}, headers=headers or {}).json()
    return {c["model"]: c for c in decision["candidates"]}


# -- max cost and min quality: refused with the best value, or degraded with a header -----------------------------


@pytest.mark.parametrize("where", ["header", "body"])
def test_a_cost_limit_no_model_meets_is_refused_naming_the_cheapest(where, fake, http, openai_client):
    cheapest = min(candidates(http, EASY).values(), key=lambda c: c["expected_cost"])
    kw = ({"extra_headers": {"x-thrifty-max-cost": "1e-10"}} if where == "header"
          else {"extra_body": {"thrifty": {"max_cost": 1e-10}}})
    with pytest.raises(openai.BadRequestError) as info:
        openai_client.chat.completions.create(model="thrifty", messages=[{"role": "user", "content": EASY}], **kw)
    error = info.value.body
    assert error["code"] == "limit_unmet"
    assert error["param"] == ("x-thrifty-max-cost" if where == "header" else "thrifty.max_cost")
    message = error["message"]
    assert "cost at most $1e-10" in message and f"the cheapest, {cheapest['model']}" in message
    assert f"${cheapest['expected_cost']:.6g}" in message and "degrade" in message
    assert fake.count() == 0


def test_a_cost_limit_degrades_to_the_cheapest_model_with_a_header(fake, http, openai_client, anthropic_client):
    ranked = sorted(candidates(http, HARD).values(), key=lambda c: c["expected_cost"])
    raw = openai_client.chat.completions.with_raw_response.create(
        model="thrifty", messages=[{"role": "user", "content": HARD}],
        extra_headers={"x-thrifty-max-cost": "1e-10", "x-thrifty-on-unmet-limit": "degrade"})
    assert raw.headers["x-thrifty-model"] == ranked[0]["model"] == "oai-mini"
    assert raw.headers["x-thrifty-limit-unmet"] == "max_cost"
    with anthropic_client.messages.with_streaming_response.create(
            model="thrifty", max_tokens=50, stream=True, messages=[{"role": "user", "content": HARD}],
            extra_body={"thrifty": {"max_cost": 1e-10, "on_unmet_limit": "degrade"}}) as response:
        assert response.headers["x-thrifty-limit-unmet"] == "max_cost"
        assert response.headers["x-thrifty-model"] == "oai-mini"
        assert "message_stop" in response.text()
    routed = http.post("/v1/route", json={"prompt": HARD, "thrifty": {"max_cost": 1e-10, "on_unmet_limit": "degrade"}})
    decision = routed.json()
    assert decision["limit_unmet"] == "max_cost" and decision["fallback"] is True
    # fail-over goes on in order of cost
    costs = [c["expected_cost"] for c in decision["candidates"]]
    assert costs == sorted(costs)


def test_a_quality_limit_no_allowed_model_meets_is_refused_or_degraded_to_the_most_likely(fake, http, anthropic_client):
    allowed = {"x-thrifty-allowed-models": ",".join(CHEAP)}
    best = max((candidates(http, HARD, allowed)[m] for m in CHEAP), key=lambda c: c["p_success"])
    assert best["p_success"] < 0.5
    headers = {**allowed, "x-thrifty-min-quality": "0.99"}
    with pytest.raises(anthropic.BadRequestError) as info:
        anthropic_client.messages.create(model="thrifty", max_tokens=50, messages=[{"role": "user", "content": HARD}],
                                         extra_headers=headers)
    message = info.value.body["error"]["message"]
    assert "probability at least 0.99 (x-thrifty-min-quality)" in message
    assert f"the most likely, {best['model']}, is at {best['p_success']:.4f}" in message
    raw = anthropic_client.messages.with_raw_response.create(
        model="thrifty", max_tokens=50, messages=[{"role": "user", "content": HARD}],
        extra_headers={**headers, "x-thrifty-on-unmet-limit": "degrade"})
    assert raw.headers["x-thrifty-model"] == best["model"]
    assert raw.headers["x-thrifty-limit-unmet"] == "min_quality"
    assert fake.count() == 1


def test_both_limits_keep_the_cost_limit_when_it_can_be_met(fake, http):
    by_model = candidates(http, HARD)
    max_cost = max(by_model[m]["expected_cost"] for m in CHEAP) * 1.01  # the cheap models only
    body = {"model": "thrifty", "messages": [{"role": "user", "content": HARD}],
            "thrifty": {"max_cost": max_cost, "min_quality": 0.99}}
    refused = http.post("/v1/chat/completions", json=body)
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["param"] == "thrifty.min_quality" and "within the cost limit" in error["message"]
    body["thrifty"]["on_unmet_limit"] = "degrade"
    answered = http.post("/v1/chat/completions", json=body)
    best_cheap = max(CHEAP, key=lambda m: (by_model[m]["p_success"], -by_model[m]["expected_cost"]))
    assert answered.status_code == 200 and answered.headers["x-thrifty-model"] == best_cheap
    assert answered.headers["x-thrifty-limit-unmet"] == "min_quality"


def test_limits_that_are_met_change_nothing(fake, http):
    response = http.post("/v1/chat/completions", headers={"x-thrifty-min-quality": "0.99", "x-thrifty-max-cost": "1"},
                         json={"model": "thrifty", "messages": [{"role": "user", "content": HARD}]})
    assert response.status_code == 200 and "x-thrifty-limit-unmet" not in response.headers
    assert response.headers["x-thrifty-model"] in ("claude-large", "oai-large")


def test_a_passthrough_model_is_held_to_the_limits_too(fake, http):
    body = {"model": "oai-large", "messages": [{"role": "user", "content": EASY}]}
    refused = http.post("/v1/chat/completions", json=body, headers={"x-thrifty-max-cost": "1e-10"})
    assert refused.status_code == 400 and "the cheapest, oai-large" in refused.json()["error"]["message"]
    degraded = http.post("/v1/chat/completions", json=body,
                         headers={"x-thrifty-max-cost": "1e-10", "x-thrifty-on-unmet-limit": "degrade"})
    assert degraded.status_code == 200 and degraded.headers["x-thrifty-limit-unmet"] == "max_cost"
    assert fake.count() == 1


def test_the_config_may_degrade_by_default_and_a_request_may_still_refuse(fake, fake_server, router_path, tmp_path):
    from serving.app import create_app

    config = make_config(tmp_path, fake_server[1], router_path, on_unmet_limit="degrade")
    with serve_in_thread(create_app(config)) as server:
        def post(**headers):
            return httpx.post(f"{server.url}/v1/chat/completions", timeout=20,
                              headers={"authorization": f"Bearer {CLIENT_KEY}", "x-thrifty-max-cost": "1e-10", **headers},
                              json={"model": "thrifty", "messages": [{"role": "user", "content": EASY}]})

        degraded = post()
        assert degraded.status_code == 200 and degraded.headers["x-thrifty-limit-unmet"] == "max_cost"
        assert post(**{"x-thrifty-on-unmet-limit": "refuse"}).status_code == 400
        bad = post(**{"x-thrifty-on-unmet-limit": "sometimes"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "x-thrifty-on-unmet-limit"


# -- models that cannot serve a request are excluded before routing ---------------------------------------------


def test_n_above_one_leaves_anthropic_models_out(fake, thrifty, http, openai_client):
    raw = openai_client.chat.completions.with_raw_response.create(model="thrifty", n=2, messages=[{"role": "user", "content": HARD}])
    assert raw.headers["x-thrifty-model"] == "oai-large"  # claude-large would have been chosen
    record = stored(thrifty, raw.headers["x-thrifty-decision-id"])
    assert {c["model"] for c in record["candidates"]} == {"oai-mini", "oai-large"}
    assert record["attempts"][0]["model"] == "oai-large" and len(record["attempts"]) == 1
    by_id = http.post("/v1/chat/completions", json={"model": "claude-small", "n": 2, "messages": [{"role": "user", "content": EASY}]})
    assert by_id.status_code == 400
    error = by_id.json()["error"]
    assert error["param"] == "n" and "one choice per request" in error["message"]
    only_claude = http.post("/v1/chat/completions", headers={"x-thrifty-allowed-models": "claude-small,claude-large"},
                            json={"model": "thrifty", "n": 3, "messages": [{"role": "user", "content": EASY}]})
    assert only_claude.status_code == 400 and only_claude.json()["error"]["param"] == "n"
    assert fake.count() == 1


@pytest.fixture
def limited(fake_server, router_path, tmp_path):
    """thrifty whose catalog gives claude-large an output limit of 1000 tokens (the others: 8192)."""
    from serving.app import create_app

    entries = catalog_entries(fake_server[1])
    for entry in entries:
        if entry["id"] == "claude-large":
            entry["max_output_tokens"] = 1000
    catalog = tmp_path / "limited.yaml"
    catalog.write_text(yaml.safe_dump({"models": entries}))
    config = make_config(tmp_path, fake_server[1], router_path, catalog=[catalog])
    with serve_in_thread(create_app(config)) as server:
        with httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {CLIENT_KEY}"}, timeout=20) as client:
            yield client


def test_max_tokens_above_a_models_limit_leaves_it_out_before_routing(fake, limited):
    hard = [{"role": "user", "content": HARD}]
    assert limited.post("/v1/chat/completions", json={"model": "thrifty", "messages": hard}).headers["x-thrifty-model"] == "claude-large"
    for field in ("max_tokens", "max_completion_tokens"):
        response = limited.post("/v1/chat/completions", json={"model": "thrifty", "messages": hard, field: 4000})
        assert response.status_code == 200 and response.headers["x-thrifty-model"] == "oai-large"
        assert fake.last().body[field] == 4000  # forwarded as asked: within the model's limit
    anthropic_style = limited.post("/v1/messages", json={"model": "thrifty", "max_tokens": 4000, "messages": hard},
                                   headers={"x-api-key": CLIENT_KEY})
    assert anthropic_style.status_code == 200 and anthropic_style.headers["x-thrifty-model"] == "oai-large"


@pytest.mark.parametrize("model, value, limit", [
    ("claude-large", 4000, 1000), ("claude-large", 10**30, 1000), ("thrifty", 9000, 8192), ("thrifty", 2**63, 8192),
])
def test_max_tokens_above_every_allowed_limit_is_a_400_naming_the_limit(model, value, limit, fake, limited):
    response = limited.post("/v1/chat/completions", json={"model": model, "max_tokens": value,
                                                          "messages": [{"role": "user", "content": HARD}]})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "max_tokens" and error["code"] == "max_tokens_exceeded"
    assert f"ask for at most {limit}" in error["message"] and str(value) in error["message"]
    assert fake.count() == 0


# -- errors name only what the client sent -----------------------------------------------------------------------


def test_errors_name_the_header_or_field_the_client_used(fake, http):
    header = http.post("/v1/chat/completions", headers={"x-thrifty-allowed-models": "claude-large"},
                       json={"model": "cheap-only", "messages": [{"role": "user", "content": EASY}]})
    assert header.status_code == 400 and header.json()["error"]["param"] == "x-thrifty-allowed-models"
    body = http.post("/v1/chat/completions", json={"model": "oai-mini", "messages": [{"role": "user", "content": EASY}],
                                                   "thrifty": {"allowed_models": ["oai-large"]}})
    assert body.status_code == 400 and body.json()["error"]["param"] == "thrifty.allowed_models"
    assert fake.count() == 0


def test_a_router_that_knows_no_catalog_model_is_a_503_naming_no_client_parameter(router_path):
    """Never ``param: allowed_models`` for a client that sent none: the server is misconfigured, and says how."""
    from models.catalog import Catalog, ModelSpec
    from router.persist import load_router
    from serving.errors import NoRoutableModel
    from serving.routing import Constraints, LoadedRouter, RouterHolder, Routing

    loaded = LoadedRouter(load_router(str(router_path)), str(router_path), "v-test")
    routing = Routing(RouterHolder({loaded.uri: loaded}, loaded.uri), Catalog([ModelSpec("other", "openai", "o", 1, 1)]), {})
    with pytest.raises(NoRoutableModel) as info:
        routing.decide("thrifty", EASY, Constraints())
    assert info.value.status == 503 and info.value.param == "model"
    assert "none of its router's models can be reached" in info.value.message and "oai-mini" in info.value.message


def test_fallbacks_that_cannot_serve_the_request_are_left_out(fake, fake_server, router_path, tmp_path):
    """A model requested by id fails over along its configured fallbacks, minus those that cannot serve it (n > 1)."""
    from serving.app import create_app
    from tests.serving_fixtures import UPSTREAM

    config = make_config(tmp_path, fake_server[1], router_path, fallbacks={"oai-mini": ["claude-small", "oai-large"]},
                         same_model_retries=0)
    fake.configure(UPSTREAM["oai-mini"], status=503)
    with serve_in_thread(create_app(config)) as server:
        response = httpx.post(f"{server.url}/v1/chat/completions", headers={"authorization": f"Bearer {CLIENT_KEY}"},
                              json={"model": "oai-mini", "n": 2, "messages": [{"role": "user", "content": EASY}]}, timeout=20)
    assert response.status_code == 200 and response.headers["x-thrifty-model"] == "oai-large"
    assert [c.model for c in fake.calls] == [UPSTREAM["oai-mini"], UPSTREAM["oai-large"]]  # claude-small never called
