"""thrifty end to end: the real OpenAI and Anthropic SDKs -> thrifty -> the fake provider server."""

from __future__ import annotations

import json

import anthropic
import httpx
import openai
import pytest

from tests.serving_fixtures import (  # noqa: F401  (fixtures)
    ANTHROPIC_UPSTREAM_KEY,
    CLIENT_KEY,
    EASY,
    HARD,
    OPENAI_UPSTREAM_KEY,
    OTHER_CLIENT_KEY,
    UPSTREAM,
    anthropic_client,
    fake,
    fake_server,
    http,
    make_config,
    openai_client,
    router_path,
    sse_events,
    stored,
    thrifty,
)

TOOL_CALL = {"name": "get_weather", "arguments": {"city": "Paris"}}
OPENAI_TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
ANTHROPIC_TOOLS = [{"name": "get_weather", "description": "Current weather of a city",
                    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
ROUTED = {EASY: "oai-mini", HARD: "claude-large"}  # what the test router decides


def answer_tools(fake):
    for upstream in UPSTREAM.values():
        fake.configure(upstream, tool_call=TOOL_CALL)


# -- the matrix: both SDKs x stream or not x tools or not x each provider ---------------------------


def call_openai(client, prompt, *, stream, tools, **kw):
    """(headers, model, text, tool calls, finish reason, usage) of one OpenAI SDK call through thrifty."""
    args = dict(model="thrifty", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt}], **kw)
    if tools:
        args["tools"] = OPENAI_TOOLS
    if not stream:
        raw = client.chat.completions.with_raw_response.create(**args)
        completion = raw.parse()
        message = completion.choices[0].message
        calls = [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []]
        return raw.headers, completion.model, message.content or "", calls, completion.choices[0].finish_reason, completion.usage
    raw = client.chat.completions.with_raw_response.create(**args, stream=True, stream_options={"include_usage": True})
    text, calls, finish, usage, model = "", {}, None, None, None
    for chunk in raw.parse():
        model = chunk.model
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            for call in choice.delta.tool_calls or []:
                entry = calls.setdefault(call.index, ["", ""])
                entry[0] += (call.function.name or "") if call.function else ""
                entry[1] += (call.function.arguments or "") if call.function else ""
            finish = choice.finish_reason or finish
    return raw.headers, model, text, [(n, json.loads(a)) for n, a in calls.values()], finish, usage


def call_anthropic(client, prompt, *, stream, tools, **kw):
    args = dict(model="thrifty", max_tokens=200, system="Be brief.", messages=[{"role": "user", "content": prompt}], **kw)
    if tools:
        args["tools"] = ANTHROPIC_TOOLS
    if not stream:
        raw = client.messages.with_raw_response.create(**args)
        message = raw.parse()
        headers = raw.headers
    else:
        with client.messages.stream(**args) as events:
            message = events.get_final_message()
            headers = events.response.headers
    text = "".join(b.text for b in message.content if b.type == "text")
    calls = [(b.name, b.input) for b in message.content if b.type == "tool_use"]
    return headers, message.model, text, calls, message.stop_reason, message.usage


@pytest.mark.parametrize("prompt", [EASY, HARD], ids=["to-openai-model", "to-anthropic-model"])
@pytest.mark.parametrize("tools", [False, True], ids=["text", "tools"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_both_sdks_reach_both_providers(sdk, stream, tools, prompt, fake, thrifty, openai_client, anthropic_client):
    answer_tools(fake)
    expected = ROUTED[prompt]
    upstream = UPSTREAM[expected]
    if sdk == "openai":
        headers, model, text, calls, finish, usage = call_openai(openai_client, prompt, stream=stream, tools=tools)
    else:
        headers, model, text, calls, finish, usage = call_anthropic(anthropic_client, prompt, stream=stream, tools=tools)

    assert model == expected == headers["x-thrifty-model"]
    if tools:
        assert calls == [("get_weather", {"city": "Paris"})]
        assert finish == ("tool_calls" if sdk == "openai" else "tool_use")
    else:
        assert calls == [] and text == f"Answer from {upstream}."
        assert finish == ("stop" if sdk == "openai" else "end_turn")
    # the upstream received its own wire format, system prompt and tools included
    call = fake.last(upstream)
    assert call.endpoint == ("anthropic" if expected.startswith("claude") else "openai")
    if call.endpoint == "anthropic":
        assert call.body["system"] == "Be brief." and isinstance(call.body["max_tokens"], int)
        if tools:
            assert call.body["tools"][0]["input_schema"]["required"] == ["city"]
    else:
        assert call.body["messages"][0] == {"role": "system", "content": "Be brief."}
        if tools:
            assert call.body["tools"][0]["function"]["name"] == "get_weather"
        if stream:
            assert call.body["stream_options"] == {"include_usage": True}
    # usage reached the client and the store
    in_tokens = usage.prompt_tokens if sdk == "openai" else usage.input_tokens
    out_tokens = usage.completion_tokens if sdk == "openai" else usage.output_tokens
    assert in_tokens > 0 and out_tokens > 0
    record = stored(thrifty, headers["x-thrifty-decision-id"])
    assert record["status"] == "ok" and record["answered_model"] == expected
    assert (record["input_tokens"], record["output_tokens"]) == (in_tokens, out_tokens)
    assert record["stream"] == int(stream)


@pytest.mark.parametrize("prompt", [EASY, HARD], ids=["openai-model", "anthropic-model"])
def test_tool_results_round_trip_openai_sdk(prompt, fake, openai_client):
    answer_tools(fake)
    messages = [{"role": "user", "content": prompt}]
    first = openai_client.chat.completions.create(model="thrifty", messages=messages, tools=OPENAI_TOOLS)
    call = first.choices[0].message.tool_calls[0]
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"}]
    second = openai_client.chat.completions.create(model=first.model, messages=messages, tools=OPENAI_TOOLS)
    assert second.choices[0].finish_reason == "stop" and second.choices[0].message.content.startswith("Answer from")
    upstream_body = fake.last(UPSTREAM[first.model]).body
    if first.model.startswith("claude"):
        results = [b for m in upstream_body["messages"] for b in m["content"] if isinstance(b, dict) and b["type"] == "tool_result"]
        assert results == [{"type": "tool_result", "tool_use_id": call.id, "content": "18C and sunny"}]
    else:
        assert upstream_body["messages"][-1] == {"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"}


@pytest.mark.parametrize("prompt", [EASY, HARD], ids=["openai-model", "anthropic-model"])
def test_tool_results_round_trip_anthropic_sdk(prompt, fake, anthropic_client):
    answer_tools(fake)
    messages = [{"role": "user", "content": prompt}]
    first = anthropic_client.messages.create(model="thrifty", max_tokens=100, messages=messages, tools=ANTHROPIC_TOOLS)
    use = next(b for b in first.content if b.type == "tool_use")
    messages += [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18C"}]}]
    second = anthropic_client.messages.create(model=first.model, max_tokens=100, messages=messages, tools=ANTHROPIC_TOOLS)
    assert second.stop_reason == "end_turn" and second.content[0].text.startswith("Answer from")
    upstream_body = fake.last(UPSTREAM[first.model]).body
    if first.model.startswith("oai"):
        assert {"role": "tool", "tool_call_id": use.id, "content": "18C"} in upstream_body["messages"]
        assert upstream_body["messages"][-2]["tool_calls"][0]["id"] == use.id


def test_images_reach_the_other_provider(fake, openai_client):
    png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
    openai_client.chat.completions.create(model="claude-small", messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}}]}])
    blocks = fake.last("claude-fake-small").body["messages"][0]["content"]
    assert blocks[1] == {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}}


# -- routing by model name, decision headers and constraints --------------------------------------------


@pytest.mark.parametrize("sdk, model", [("openai", "claude-small"), ("anthropic", "oai-large"), ("openai", "oai-large")])
def test_catalog_id_passes_through_unrouted_and_is_logged(sdk, model, fake, thrifty, openai_client, anthropic_client):
    if sdk == "openai":
        raw = openai_client.chat.completions.with_raw_response.create(model=model, messages=[{"role": "user", "content": HARD}])
        answered = raw.parse().model
    else:
        raw = anthropic_client.messages.with_raw_response.create(model=model, max_tokens=50, messages=[{"role": "user", "content": HARD}])
        answered = raw.parse().model
    assert answered == model == raw.headers["x-thrifty-model"]
    assert raw.headers["x-thrifty-policy"] == "passthrough"
    assert fake.count(UPSTREAM[model]) == 1 and fake.count() == 1
    record = stored(thrifty, raw.headers["x-thrifty-decision-id"])
    assert record["requested_model"] == model and record["chosen_model"] == model and record["propensity"] == 1.0
    assert [c["model"] for c in record["candidates"]] == [model]
    assert record["candidates"][0]["p_success"] is not None  # scored by the router all the same


def test_decision_headers_match_the_stored_decision(fake, thrifty, openai_client):
    raw = openai_client.chat.completions.with_raw_response.create(model="thrifty", messages=[{"role": "user", "content": HARD}])
    h = raw.headers
    record = stored(thrifty, h["x-thrifty-decision-id"])
    chosen = record["candidates"][0]
    assert chosen["model"] == h["x-thrifty-model"] == record["chosen_model"] == "claude-large"
    assert float(h["x-thrifty-p-success"]) == pytest.approx(chosen["p_success"], abs=1e-4)
    assert float(h["x-thrifty-expected-cost"]) == pytest.approx(chosen["expected_cost"], abs=1e-8)
    assert {c["model"] for c in record["candidates"]} == {"oai-mini", "claude-small", "claude-large", "oai-large"}
    assert all(c["p_success"] is not None and c["expected_cost"] > 0 for c in record["candidates"])
    assert record["router_version"] == h["x-thrifty-router-version"] and record["router_version"].startswith("router.joblib@")
    assert record["prompt"].endswith(HARD) and record["client"] == "tests" and record["propensity"] == 1.0
    spec = thrifty.services.catalog.get("claude-large")
    assert record["cost_usd"] == pytest.approx(spec.cost(record["input_tokens"], record["output_tokens"]))
    assert record["latency_s"] > 0 and len(record["attempts"]) == 1 and record["attempts"][0]["status"] == "ok"
    # what the dashboard shows of the decision: its time (before any upstream call) and the prompt's novelty
    assert 0 < record["decision_latency_s"] < record["latency_s"]
    assert record["novelty"] > 0


def test_constraints_by_header_and_by_body(fake, openai_client, anthropic_client):
    def model_of(raw):
        return raw.headers["x-thrifty-model"]

    chat = openai_client.chat.completions.with_raw_response
    messages = [{"role": "user", "content": EASY}]
    # header: allowed models
    assert model_of(chat.create(model="thrifty", messages=messages,
                                extra_headers={"x-thrifty-allowed-models": "claude-small, oai-large"})) == "claude-small"
    # body: allowed models (the SDKs send it through extra_body)
    assert model_of(chat.create(model="thrifty", messages=messages, extra_body={"thrifty": {"allowed_models": ["oai-large"]}})) == "oai-large"
    raw = anthropic_client.messages.with_raw_response.create(
        model="thrifty", max_tokens=50, messages=messages, extra_body={"thrifty": {"allowed_models": ["claude-small", "oai-large"]}})
    assert model_of(raw) == "claude-small"
    # both apply: the intersection
    assert model_of(chat.create(model="thrifty", messages=messages,
                                extra_headers={"x-thrifty-allowed-models": "oai-mini,claude-small,claude-large"},
                                extra_body={"thrifty": {"allowed_models": ["claude-large", "oai-large"]}})) == "claude-large"
    # a minimum quality no cheap model meets on a hard prompt
    hard = [{"role": "user", "content": HARD}]
    raw = chat.create(model="thrifty", messages=hard, extra_headers={"x-thrifty-min-quality": "0.9",
                                                                     "x-thrifty-allowed-models": "oai-mini,oai-large"})
    assert model_of(raw) == "oai-large"
    # a maximum cost only the cheap models meet
    raw = chat.create(model="thrifty", messages=hard, extra_body={"thrifty": {"max_cost": 0.0001}})
    assert model_of(raw) in ("oai-mini", "claude-small")
    assert "thrifty" not in fake.last().body  # the extra field never reaches an upstream


def test_tuned_profiles_route_by_name(fake, openai_client):
    hard = [{"role": "user", "content": HARD}]
    raw = openai_client.chat.completions.with_raw_response.create(model="cheap-only", messages=hard)
    assert raw.headers["x-thrifty-model"] in ("oai-mini", "claude-small")
    raw = openai_client.chat.completions.with_raw_response.create(model="best", messages=[{"role": "user", "content": EASY}])
    assert raw.headers["x-thrifty-policy"] == "tradeoff"


def test_models_lists_profiles_and_catalog_in_both_styles(openai_client, anthropic_client):
    ids = [m.id for m in openai_client.models.list()]
    assert {"thrifty", "cheap-only", "best"} <= set(ids)
    assert {"oai-mini", "claude-small", "claude-large", "oai-large"} <= set(ids)
    assert [m.id for m in anthropic_client.models.list()] == ids


# -- /v1/route, /v1/feedback, /metrics, /healthz ---------------------------------------------------------


@pytest.mark.parametrize("payload", [
    {"model": "thrifty", "messages": [{"role": "user", "content": HARD}]},
    {"model": "thrifty", "max_tokens": 10, "system": "x", "messages": [{"role": "user", "content": [{"type": "text", "text": HARD}]}]},
    {"prompt": HARD},
])
def test_route_decides_without_calling_upstream(payload, fake, thrifty, http):
    response = http.post("/v1/route", json=payload)
    assert response.status_code == 200, response.text
    decision = response.json()
    assert decision["model"] == "claude-large" == response.headers["x-thrifty-model"]
    assert decision["decision_id"] == response.headers["x-thrifty-decision-id"]
    assert decision["candidates"][0]["model"] == "claude-large" and decision["propensity"] == 1.0
    assert fake.count() == 0
    assert stored(thrifty, decision["decision_id"])["status"] == "routed"
    narrowed = http.post("/v1/route", json=payload, headers={"x-thrifty-allowed-models": "oai-mini"}).json()
    assert narrowed["model"] == "oai-mini" and narrowed["fallback"] is True


def test_a_prompt_of_over_a_million_characters_is_routed(fake, fake_server, router_path, tmp_path):
    """Longer than the tokenizer wrapper's encoder accepts: still counted, priced and routed (it was a 500)."""
    from serving.app import create_app
    from tests.fakes.server import serve_in_thread

    prompt = "prove that there are infinitely many primes. " * 25_000  # 1.1 million characters
    app = create_app(make_config(tmp_path, fake_server[1], router_path))  # the default 8 MB body limit
    with serve_in_thread(app) as server:
        response = httpx.post(f"{server.url}/v1/route", json={"prompt": prompt}, timeout=60,
                              headers={"authorization": f"Bearer {CLIENT_KEY}"})
    assert response.status_code == 200, response.text[:300]
    assert response.json()["candidates"][0]["expected_input_tokens"] > 200_000
    assert fake.count() == 0


def test_feedback_attaches_to_a_decision(fake, thrifty, http, openai_client):
    raw = openai_client.chat.completions.with_raw_response.create(model="thrifty", messages=[{"role": "user", "content": EASY}])
    decision_id = raw.headers["x-thrifty-decision-id"]
    response = http.post("/v1/feedback", json={"decision_id": decision_id, "success": 1, "source": "test"})
    assert response.status_code == 200 and response.json()["status"] == "recorded"
    response = http.post("/v1/feedback", json={"decision_id": decision_id, "score": 0.25, "source": "judge"})
    assert response.status_code == 200
    feedback = stored(thrifty, decision_id)["feedback"]
    assert [(f["success"], f["source"]) for f in feedback] == [(1.0, "test"), (0.25, "judge")]


@pytest.mark.parametrize("success, stored_as", [(True, 1.0), (False, 0.0), (1, 1.0), (0, 0.0), (0.5, 0.5), (0.25, 0.25)])
def test_feedback_accepts_booleans_and_numbers_in_the_unit_interval(success, stored_as, fake, thrifty, http, openai_client):
    raw = openai_client.chat.completions.with_raw_response.create(model="thrifty", messages=[{"role": "user", "content": EASY}])
    decision_id = raw.headers["x-thrifty-decision-id"]
    response = http.post("/v1/feedback", json={"decision_id": decision_id, "success": success})
    assert response.status_code == 200, response.text
    assert response.json()["success"] == stored_as
    assert [f["success"] for f in stored(thrifty, decision_id)["feedback"]] == [stored_as]


def test_feedback_refuses_infinite_and_nan_numbers(fake, http):
    for raw in (b'{"decision_id": "dec_x", "success": true, "score_raw": 1e999}',
                b'{"decision_id": "dec_x", "success": NaN}', b'{"decision_id": "dec_x", "score": Infinity}'):
        response = http.post("/v1/feedback", content=raw, headers={"content-type": "application/json"})
        assert response.status_code == 400 and response.json()["error"]["param"] in ("score_raw", "success", "score")


def test_feedback_on_a_decision_no_model_answered_is_a_clear_409(fake, thrifty, http):
    routed = http.post("/v1/route", json={"prompt": EASY}).json()["decision_id"]
    response = http.post("/v1/feedback", json={"decision_id": routed, "success": True})
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "decision_not_answered" and "/v1/route" in error["message"] and error["param"] == "decision_id"
    fake.configure(UPSTREAM["oai-large"], status=400)
    failed = http.post("/v1/chat/completions", json={**GOOD_OPENAI, "model": "oai-large"})
    assert failed.status_code == 400
    response = http.post("/v1/feedback", json={"decision_id": failed.headers["x-thrifty-decision-id"], "success": 0})
    assert response.status_code == 409 and "'error'" in response.json()["error"]["message"]
    assert stored(thrifty, routed)["feedback"] == []


def test_only_the_deciding_client_or_an_admin_may_give_feedback(fake, fake_server, router_path, tmp_path):
    """Another client's decision is answered exactly as an unknown id; an admin client may rate any decision."""
    from serving.app import create_app
    from tests.fakes.server import serve_in_thread

    keys = {"alice": "thr-alice-key-000001", "bob": "thr-bob-key-0000002", "ops": "thr-ops-admin-key-03"}
    config = make_config(tmp_path, fake_server[1], router_path, api_keys=keys, admin_keys=["ops"])
    with serve_in_thread(create_app(config)) as server:
        def post(client: str, path: str, body: dict) -> httpx.Response:
            return httpx.post(f"{server.url}{path}", json=body, headers={"authorization": f"Bearer {keys[client]}"}, timeout=20)

        made = post("alice", "/v1/chat/completions", GOOD_OPENAI)
        decision_id = made.headers["x-thrifty-decision-id"]
        foreign = post("bob", "/v1/feedback", {"decision_id": decision_id, "success": 1})
        unknown = post("bob", "/v1/feedback", {"decision_id": "dec_does_not_exist", "success": 1})
        assert foreign.status_code == unknown.status_code == 404
        assert foreign.json() == json.loads(unknown.text.replace("dec_does_not_exist", decision_id))  # indistinguishable
        assert post("alice", "/v1/feedback", {"decision_id": decision_id, "success": 1}).status_code == 200
        assert post("ops", "/v1/feedback", {"decision_id": decision_id, "score": 0.5, "source": "review"}).status_code == 200
    from models.store import open_store

    with open_store(config.resolved_store_url, create=False) as store:
        feedback = store.decision(decision_id)["feedback"]
    assert [(f["success"], f["source"]) for f in feedback] == [(1.0, "user"), (0.5, "review")]


@pytest.mark.parametrize("payload, status", [
    ({"decision_id": "dec_unknown", "success": 1}, 404),
    ({"decision_id": "DECISION", "score": 1.5}, 400),
    ({"decision_id": "DECISION", "score": -0.1}, 400),
    ({"decision_id": "DECISION", "success": 1.5}, 400),
    ({"decision_id": "DECISION", "success": -1}, 400),
    ({"decision_id": "DECISION", "success": 1, "score": 1}, 400),
    ({"decision_id": "DECISION", "success": True, "source": "s" * 201}, 400),
    ({"decision_id": "DECISION"}, 400),
    ({"decision_id": "DECISION", "success": "yes"}, 400),
    ({"success": 1}, 400),
])
def test_bad_feedback_is_refused(payload, status, fake, http, openai_client):
    raw = openai_client.chat.completions.with_raw_response.create(model="thrifty", messages=[{"role": "user", "content": EASY}])
    if payload.get("decision_id") == "DECISION":
        payload = {**payload, "decision_id": raw.headers["x-thrifty-decision-id"]}
    response = http.post("/v1/feedback", json=payload)
    assert response.status_code == status, response.text
    assert response.json()["error"]["message"]


def test_metrics_count_requests_decisions_spend_latency_and_errors(fake, thrifty, http, openai_client):
    openai_client.chat.completions.create(model="thrifty", messages=[{"role": "user", "content": EASY}])
    fake.configure("gpt-fake-large", status=500)
    with pytest.raises(openai.InternalServerError):
        openai_client.chat.completions.create(model="oai-large", messages=[{"role": "user", "content": EASY}])
    text = httpx_get(http, "/metrics")
    assert 'thrifty_requests_total{endpoint="/v1/chat/completions",status="200"}' in text
    assert 'thrifty_decisions_total{model="oai-mini",profile="thrifty"}' in text
    assert 'thrifty_decisions_total{model="oai-large",profile="passthrough"}' in text
    assert 'thrifty_spend_usd_total{model="oai-mini"}' in text
    assert 'thrifty_request_latency_seconds_bucket{endpoint="/v1/chat/completions",le="0.5"}' in text
    assert 'thrifty_upstream_latency_seconds_count{model="oai-mini"}' in text
    assert 'thrifty_upstream_errors_total{kind="server",model="oai-large"}' in text
    assert 'thrifty_tokens_total{direction="output",model="oai-mini"}' in text


def httpx_get(http, path):
    response = http.get(path)
    assert response.status_code == 200
    return response.text


def test_healthz(http):
    body = http.get("/healthz", headers={"authorization": ""}).json()
    assert body["status"] == "ok" and body["router_version"].startswith("router.joblib@") and "thrifty" in body["profiles"]


# -- auth --------------------------------------------------------------------------------------------------


def test_wrong_key_is_401_in_each_sdk(fake, thrifty):
    wrong = "thr-wrong-key-000000"
    oc = openai.OpenAI(base_url=f"{thrifty.url}/v1", api_key=wrong, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        oc.chat.completions.create(model="thrifty", messages=[{"role": "user", "content": EASY}])
    assert info.value.body["code"] == "invalid_api_key"
    ac = anthropic.Anthropic(base_url=thrifty.url, api_key=wrong, max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as info:
        ac.messages.create(model="thrifty", max_tokens=10, messages=[{"role": "user", "content": EASY}])
    assert info.value.body["error"]["type"] == "authentication_error"
    assert fake.count() == 0


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer thr-wrong-key-000000"}, {"x-api-key": "nope-nope-nope"},
                                     {"authorization": "Basic dGhyOng="}])
@pytest.mark.parametrize("method, path", [("POST", "/v1/chat/completions"), ("POST", "/v1/messages"), ("POST", "/v1/route"),
                                          ("POST", "/v1/feedback"), ("GET", "/v1/models")])
def test_missing_or_wrong_key_is_401_before_anything(headers, method, path, fake, thrifty):
    import httpx

    # even a malformed body: authentication comes first
    response = httpx.request(method, thrifty.url + path, content=b"{not json", headers=headers)
    assert response.status_code == 401
    body = response.json()
    if path == "/v1/messages":
        assert body["error"]["type"] == "authentication_error"
    else:
        assert body["error"]["code"] == "invalid_api_key"
    assert fake.count() == 0


def test_any_configured_key_in_either_header(fake, thrifty):
    import httpx

    body = {"model": "thrifty", "messages": [{"role": "user", "content": EASY}]}
    response = httpx.post(f"{thrifty.url}/v1/chat/completions", json=body, headers={"x-api-key": OTHER_CLIENT_KEY})
    assert response.status_code == 200
    assert stored(thrifty, response.headers["x-thrifty-decision-id"])["client"] == "other"


# -- bad input: 4xx in the endpoint's style, never an upstream call -----------------------------------------

GOOD_OPENAI = {"model": "thrifty", "messages": [{"role": "user", "content": "hi"}]}
GOOD_ANTHROPIC = {"model": "thrifty", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}

BAD_INPUTS = [
    ("malformed-json", b'{"model": "thrifty", "messages": [', {}, 400),
    ("not-an-object", b"[1, 2]", {}, 400),
    ("empty-body", b"", {}, 400),
    ("messages-not-a-list", {"messages": "hi"}, {}, 400),
    ("empty-messages", {"messages": []}, {}, 400),
    ("model-wrong-type", {"model": 42}, {}, 400),
    ("stream-wrong-type", {"stream": "yes"}, {}, 400),
    ("max-tokens-negative", {"max_tokens": -1}, {}, 400),
    ("bad-role", {"messages": [{"role": "wizard", "content": "hi"}]}, {}, 400),
    ("content-wrong-type", {"messages": [{"role": "user", "content": 12}]}, {}, 400),
    ("unknown-model", {"model": "gpt-99-ultra"}, {}, 404),
    ("unknown-profile-ish", {"model": "thrifty-turbo"}, {}, 404),
    ("thrifty-field-unknown-key", {"thrifty": {"colour": "red"}}, {}, 400),
    ("min-quality-out-of-range", {"thrifty": {"min_quality": 2}}, {}, 400),
    ("allowed-unknown-model", {"thrifty": {"allowed_models": ["nope"]}}, {}, 400),
    ("header-not-a-number", {}, {"x-thrifty-max-cost": "cheap"}, 400),
    ("header-allowed-empty", {}, {"x-thrifty-allowed-models": ","}, 400),
    ("allowed-excludes-passthrough", {"model": "oai-mini", "thrifty": {"allowed_models": ["oai-large"]}}, {}, 400),
    ("too-long", {"messages": [{"role": "user", "content": "x" * 300_000}]}, {}, 413),
]


@pytest.mark.parametrize("style", ["openai", "anthropic"])
@pytest.mark.parametrize("case, change, headers, status", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_a_4xx_in_the_right_style_without_upstream_calls(style, case, change, headers, status, fake, http):
    path = "/v1/chat/completions" if style == "openai" else "/v1/messages"
    if isinstance(change, bytes):
        response = http.post(path, content=change, headers={"content-type": "application/json", **headers})
    else:
        base = GOOD_OPENAI if style == "openai" else GOOD_ANTHROPIC
        response = http.post(path, json={**base, **change}, headers=headers)
    assert response.status_code == status, response.text
    body = response.json()
    if style == "openai":
        assert set(body["error"]) == {"message", "type", "param", "code"} and body["error"]["message"]
    else:
        assert body["type"] == "error" and body["error"]["type"] and body["error"]["message"]
    assert fake.count() == 0


def test_sdk_errors_for_unknown_models(fake, openai_client, anthropic_client):
    with pytest.raises(openai.NotFoundError) as info:
        openai_client.chat.completions.create(model="gpt-99", messages=[{"role": "user", "content": "hi"}])
    assert info.value.body["code"] == "model_not_found"
    with pytest.raises(anthropic.NotFoundError) as info:
        anthropic_client.messages.create(model="gpt-99", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert info.value.body["error"]["type"] == "not_found_error"
    assert fake.count() == 0


def test_unknown_path_and_method_are_4xx(http):
    assert http.get("/v1/nothing").status_code == 404
    assert http.get("/v1/chat/completions").status_code == 405


# -- upstream failures reach the client as proper errors ------------------------------------------------------


def test_upstream_rate_limit_is_a_429_with_retry_after(fake, thrifty, openai_client, anthropic_client):
    fake.configure("gpt-fake-mini", status=429, retry_after=3)
    with pytest.raises(openai.RateLimitError) as info:
        openai_client.chat.completions.create(model="oai-mini", messages=[{"role": "user", "content": EASY}])
    assert info.value.response.headers["retry-after"] == "3"
    record = stored(thrifty, info.value.response.headers["x-thrifty-decision-id"])
    assert record["status"] == "error" and record["error_kind"] == "rate_limit" and record["attempts"][0]["http_status"] == 429
    with pytest.raises(anthropic.RateLimitError):
        anthropic_client.messages.create(model="oai-mini", max_tokens=10, messages=[{"role": "user", "content": EASY}])


def test_upstream_context_length_error_is_a_400(fake, openai_client):
    fake.configure("claude-fake-large", context_length_error=True)
    with pytest.raises(openai.BadRequestError) as info:
        openai_client.chat.completions.create(model="claude-large", messages=[{"role": "user", "content": HARD}])
    assert info.value.body["code"] == "context_length_exceeded"


@pytest.mark.parametrize("model", ["oai-mini", "claude-large"])
def test_cut_stream_ends_with_an_error_event(model, fake, thrifty, openai_client, anthropic_client):
    fake.configure(UPSTREAM[model], text="a b c d e f g h i j", cut_after_chunks=4)
    with pytest.raises(openai.APIError):
        for _ in openai_client.chat.completions.create(model=model, messages=[{"role": "user", "content": EASY}], stream=True):
            pass
    with pytest.raises(anthropic.APIStatusError):
        with anthropic_client.messages.stream(model=model, max_tokens=50, messages=[{"role": "user", "content": EASY}]) as s:
            s.get_final_message()


@pytest.mark.parametrize("model", ["oai-mini", "claude-large"])
def test_stream_without_final_event_is_an_error_not_a_success(model, fake, thrifty, http):
    fake.configure(UPSTREAM[model], omit_final_event=True)
    response = http.post("/v1/messages", json={**GOOD_ANTHROPIC, "model": model, "stream": True})
    events = sse_events(response.text)
    assert events[-1][0] == "error" and json.loads(events[-1][1])["type"] == "error"
    assert "message_stop" not in [name for name, _ in events]
    record = stored(thrifty, response.headers["x-thrifty-decision-id"])
    assert record["status"] == "error" and record["error_kind"] == "stream"


def test_content_filter_passes_through_translated(fake, openai_client, anthropic_client):
    fake.configure("gpt-fake-mini", content_filter=True)
    message = anthropic_client.messages.create(model="oai-mini", max_tokens=10, messages=[{"role": "user", "content": EASY}])
    assert message.stop_reason == "refusal"
    fake.configure("claude-fake-small", content_filter=True)
    completion = openai_client.chat.completions.create(model="claude-small", messages=[{"role": "user", "content": EASY}])
    assert completion.choices[0].finish_reason == "content_filter"


def test_raw_sse_sequences_are_exactly_what_the_sdks_expect(fake, http):
    response = http.post("/v1/chat/completions", json={**GOOD_OPENAI, "model": "claude-small", "stream": True})
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert all(name is None for name, _ in events) and events[-1][1] == "[DONE]"
    chunks = [json.loads(d) for _, d in events[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and all("usage" not in c for c in chunks)

    response = http.post("/v1/messages", json={**GOOD_ANTHROPIC, "model": "oai-mini", "stream": True})
    names = [name for name, _ in sse_events(response.text)]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert names.count("content_block_start") == names.count("content_block_stop") == 1


def test_upstream_keys_never_leak(fake, thrifty, http, openai_client):
    secrets = [OPENAI_UPSTREAM_KEY, ANTHROPIC_UPSTREAM_KEY]
    original = fake.api_keys
    fake.api_keys = {"something-else-entirely"}  # the fake now rejects (and echoes) thrifty's upstream key
    try:
        bodies = []
        for path, payload in (("/v1/chat/completions", {**GOOD_OPENAI, "model": "oai-mini"}),
                              ("/v1/messages", {**GOOD_ANTHROPIC, "model": "claude-small"}),
                              ("/v1/chat/completions", {**GOOD_OPENAI, "model": "oai-mini", "stream": True})):
            response = http.post(path, json=payload)
            assert response.status_code == 502
            bodies.append(response.text + json.dumps(dict(response.headers)))
    finally:
        fake.api_keys = original
    assert fake.count() == 3
    store_bytes = b"".join(p.read_bytes() for p in thrifty.store_path.parent.glob(thrifty.store_path.name + "*"))
    for secret in secrets:
        assert all(secret not in body for body in bodies)
        assert secret.encode() not in store_bytes
        assert secret not in repr(thrifty.services) and secret not in repr(thrifty.config)


def test_client_going_away_mid_stream_closes_upstream_and_keeps_the_record(fake, thrifty, http):
    import time

    import httpx

    fake.configure("gpt-fake-mini", text=" ".join(["word"] * 40), delay_per_chunk=0.05)
    with httpx.stream("POST", f"{thrifty.url}/v1/chat/completions", json={**GOOD_OPENAI, "stream": True},
                      headers={"authorization": http.headers["authorization"]}) as response:
        decision_id = response.headers["x-thrifty-decision-id"]
        next(response.iter_bytes())  # read the first event, then hang up
    deadline = time.monotonic() + 5
    while (record := stored(thrifty, decision_id)) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert record is not None and record["status"] == "client_closed" and record["answered_model"] == "oai-mini"


def test_concurrent_streams_through_the_async_sdks(fake, thrifty):
    import asyncio

    fake.configure("gpt-fake-mini", delay_per_chunk=0.01)
    fake.configure("claude-fake-large", delay_per_chunk=0.01)

    async def main():
        oc = openai.AsyncOpenAI(base_url=f"{thrifty.url}/v1", api_key=OTHER_CLIENT_KEY, max_retries=0,
                                http_client=openai.DefaultAioHttpClient())
        ac = anthropic.AsyncAnthropic(base_url=thrifty.url, api_key=OTHER_CLIENT_KEY, max_retries=0,
                                      http_client=anthropic.DefaultAioHttpClient())

        async def one_openai(prompt):
            stream = await oc.chat.completions.create(model="thrifty", messages=[{"role": "user", "content": prompt}], stream=True)
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

        async def one_anthropic(prompt):
            async with ac.messages.stream(model="thrifty", max_tokens=50, messages=[{"role": "user", "content": prompt}]) as s:
                return (await s.get_final_message()).content[0].text

        try:
            jobs = [one_openai(EASY if i % 2 else HARD) for i in range(10)]
            jobs += [one_anthropic(HARD if i % 2 else EASY) for i in range(10)]
            return await asyncio.gather(*jobs)
        finally:
            await oc.close()
            await ac.close()

    texts = asyncio.run(main())
    assert sorted(set(texts)) == ["Answer from claude-fake-large.", "Answer from gpt-fake-mini."]
    assert fake.count() == 20
