"""Fail-over, same-model retries, fallbacks, deadlines, broken streams and circuit breakers,
against the fault-injecting fake provider.

The real OpenAI and Anthropic SDKs -> thrifty (tight timeouts) -> the fake on
loopback. Routed requests use the test router (``tests/serving_fixtures.py``):

    EASY -> oai-mini, then claude-small, claude-large, oai-large   (all acceptable)
    HARD -> claude-large, then oai-large                          (oai-mini, claude-small unacceptable)

A model requested by id fails over to its configured ``fallbacks`` (here
oai-large -> claude-large, claude-small) or the request's ``fallback_models``.
Context windows: claude-* 200000 tokens, oai-* 128000. Mid-stream recovery:
``tests/test_recovery.py``.
"""

from __future__ import annotations

import json
import time

import anthropic
import httpx
import openai
import pytest

from tests.fakes.server import ThreadedServer, serve_in_thread
from tests.reliability_support import ask, attempts_of, record_of
from tests.serving_fixtures import (  # noqa: F401  (fixtures)
    CLIENT_KEY,
    EASY,
    HARD,
    UPSTREAM,
    anthropic_sdk,
    fake,
    fake_server,
    make_config,
    openai_sdk,
    router_path,
    sse_events,
)

HANG = 30.0  # how long a hanging upstream would keep a request; every test here ends far sooner
FAST = dict(
    deadline_s=6.0,
    attempt_timeout_s=1.5,
    first_token_timeout_s=1.5,
    stream_idle_timeout_s=1.0,
    retry_after_max_s=1.0,
    breaker_failures=3,
    breaker_cooldown_s=1.0,
    breaker_max_cooldown_s=4.0,
    max_attempts=3,
    fallbacks={"oai-large": ["claude-large", "claude-small"]},
)


@pytest.fixture(scope="module")
def rthrifty(fake_server, router_path, tmp_path_factory):
    """thrifty with tight reliability settings, its own store."""
    from serving.app import create_app

    tmp = tmp_path_factory.mktemp("reliability")
    config = make_config(tmp, fake_server[1], router_path, **FAST)
    app = create_app(config)
    server = ThreadedServer(app).start()
    yield server.url, app
    server.stop()


@pytest.fixture
def svc(rthrifty, fake):
    """The running app's services, with every circuit breaker closed."""
    _, app = rthrifty
    app.state.services.dispatcher.breakers.reset()
    yield app.state.services
    app.state.services.dispatcher.breakers.reset()


@pytest.fixture
def oc(rthrifty):
    with openai_sdk(rthrifty[0]) as client:
        yield client


@pytest.fixture
def ac(rthrifty):
    with anthropic_sdk(rthrifty[0]) as client:
        yield client


@pytest.fixture
def raw(rthrifty):
    with httpx.Client(base_url=rthrifty[0], headers={"authorization": f"Bearer {CLIENT_KEY}"}, timeout=20) as client:
        yield client


# -- 1. fail-over along the router's own ranking ---------------------------------------------------------


# fault -> (fake behaviour, error kind, calls of the failing model: a transient fault is retried once)
FAULTS = {
    "429-no-retry-after": (dict(status=429), "rate_limit", 1),
    "500": (dict(status=500), "server", 2),
    "503": (dict(status=503), "server", 2),
    "connection-reset": (dict(reset_connection=True), "connection", 2),
    "no-response": (dict(delay_before_headers=HANG), "timeout", 1),
}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_failing_model_fails_over_to_the_next_acceptable_candidate(fault, sdk, stream, fake, svc, oc, ac):
    change, kind, calls = FAULTS[fault]
    fake.configure(UPSTREAM["oai-mini"], **change)
    started = time.monotonic()
    headers, model, text = ask(sdk, oc, ac, EASY, stream=stream)
    assert time.monotonic() - started < HANG / 2  # failed over; did not wait for the hang
    assert model == headers["x-thrifty-model"] == "claude-small" and text == f"Answer from {UPSTREAM['claude-small']}."
    assert headers["x-thrifty-attempts"] == str(calls + 1)
    assert fake.count(UPSTREAM["oai-mini"]) == calls and fake.count(UPSTREAM["claude-small"]) == 1
    record = record_of(svc, headers)
    assert record["status"] == "ok" and record["chosen_model"] == "oai-mini" and record["answered_model"] == "claude-small"
    assert attempts_of(record) == [("oai-mini", "error", kind)] * calls + [("claude-small", "ok", None)]
    assert record["attempts"][0]["http_status"] == change.get("status")


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_a_single_transient_5xx_is_retried_once_on_the_same_model(status, sdk, stream, fake, svc, oc, ac):
    fake.configure(UPSTREAM["oai-mini"], status=status, fail_times=1)
    headers, model, text = ask(sdk, oc, ac, EASY, stream=stream)
    assert model == headers["x-thrifty-model"] == "oai-mini" and text == f"Answer from {UPSTREAM['oai-mini']}."
    assert fake.count(UPSTREAM["oai-mini"]) == 2 and fake.count() == 2  # no other model was asked
    record = record_of(svc, headers)
    assert attempts_of(record) == [("oai-mini", "error", "server"), ("oai-mini", "ok", None)]
    assert record["attempts"][0]["http_status"] == status and headers["x-thrifty-attempts"] == "2"


def test_an_overloaded_529_goes_to_the_next_candidate_without_a_retry(fake, svc, ac):
    fake.configure(UPSTREAM["claude-small"], status=529)
    headers, model, _ = ask("anthropic", None, ac, EASY, extra_headers={"x-thrifty-allowed-models": "claude-small,claude-large"})
    assert model == "claude-large" and fake.count(UPSTREAM["claude-small"]) == 1
    assert attempts_of(record_of(svc, headers)) == [("claude-small", "error", "server"), ("claude-large", "ok", None)]


def test_fail_over_never_leaves_the_acceptable_models(fake, svc, oc):
    """HARD: claude-large (retried once) then oai-large; the cheap models are predicted to fail and are never tried."""
    fake.configure(UPSTREAM["claude-large"], status=500)
    fake.configure(UPSTREAM["oai-large"], status=503)
    with pytest.raises(openai.InternalServerError) as info:
        oc.chat.completions.create(model="thrifty", messages=[{"role": "user", "content": HARD}])
    assert fake.count(UPSTREAM["oai-mini"]) == fake.count(UPSTREAM["claude-small"]) == 0
    record = record_of(svc, info.value.response.headers)
    assert attempts_of(record) == [("claude-large", "error", "server")] * 2 + [("oai-large", "error", "server")]
    assert record["status"] == "error" and record["http_status"] == 503


def test_attempts_are_bounded_by_max_attempts(fake, svc, oc):
    for upstream in UPSTREAM.values():
        fake.configure(upstream, status=500)
    with pytest.raises(openai.InternalServerError) as info:
        oc.chat.completions.create(model="thrifty", messages=[{"role": "user", "content": EASY}])
    assert fake.count() == FAST["max_attempts"] == 3 and fake.count(UPSTREAM["claude-large"]) == 0
    tried = [a[0] for a in attempts_of(record_of(svc, info.value.response.headers))]
    assert tried == ["oai-mini", "oai-mini", "claude-small"]


def test_a_model_requested_by_id_without_fallbacks_is_never_swapped_for_another(fake, svc, oc):
    fake.configure(UPSTREAM["oai-mini"], status=500)
    with pytest.raises(openai.InternalServerError) as info:
        oc.chat.completions.create(model="oai-mini", messages=[{"role": "user", "content": EASY}])
    assert fake.count() == fake.count(UPSTREAM["oai-mini"]) == 2  # the one retry of a transient 500, nothing else
    assert attempts_of(record_of(svc, info.value.response.headers)) == [("oai-mini", "error", "server")] * 2


# -- fallbacks of a model requested by id -------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_model_requested_by_id_fails_over_to_its_configured_fallbacks(fault, sdk, stream, fake, svc, oc, ac):
    change, kind, calls = FAULTS[fault]
    fake.configure(UPSTREAM["oai-large"], **change)
    started = time.monotonic()
    headers, model, text = ask(sdk, oc, ac, HARD, stream=stream, model="oai-large")
    assert time.monotonic() - started < HANG / 2
    assert model == headers["x-thrifty-model"] == "claude-large" and text == f"Answer from {UPSTREAM['claude-large']}."
    record = record_of(svc, headers)
    assert record["requested_model"] == record["chosen_model"] == "oai-large" and record["answered_model"] == "claude-large"
    assert attempts_of(record) == [("oai-large", "error", kind)] * calls + [("claude-large", "ok", None)]
    assert headers["x-thrifty-attempts"] == str(calls + 1)


def test_fallback_accounting_every_attempt_its_cost_and_the_answering_model(fake, svc, oc):
    from tests.serving_fixtures import PRICES

    fake.configure(UPSTREAM["oai-large"], status=503)
    fake.configure(UPSTREAM["claude-large"], input_tokens=1000, output_tokens=200)
    headers, model, _ = ask("openai", oc, None, HARD, model="oai-large")
    record = record_of(svc, headers)
    expected = (1000 * PRICES["claude-large"][0] + 200 * PRICES["claude-large"][1]) / 1e6
    assert headers["x-thrifty-model"] == record["answered_model"] == model == "claude-large"
    assert [(a["model"], a["status"], a["http_status"]) for a in record["attempts"]] == [
        ("oai-large", "error", 503), ("oai-large", "error", 503), ("claude-large", "ok", None)]
    assert not any(a["cost_usd"] for a in record["attempts"][:2])  # refused calls cost nothing
    last = record["attempts"][2]
    assert (last["input_tokens"], last["output_tokens"]) == (1000, 200) and last["cost_usd"] == pytest.approx(expected)
    assert (record["input_tokens"], record["output_tokens"]) == (1000, 200)
    assert record["cost_usd"] == pytest.approx(expected)
    # the expected cost in the headers is the answering model's price on the decision's token estimates
    chosen = record["candidates"][0]
    estimate = (chosen["expected_input_tokens"] * PRICES["claude-large"][0]
                + chosen["expected_output_tokens"] * PRICES["claude-large"][1]) / 1e6
    assert float(headers["x-thrifty-expected-cost"]) == pytest.approx(estimate, abs=1e-8)


def test_a_requests_fallback_models_replace_the_configured_ones(fake, svc, oc, ac):
    fake.configure(UPSTREAM["oai-large"], status=429)
    fake.configure(UPSTREAM["oai-mini"], status=429)
    headers, model, _ = ask("anthropic", None, ac, HARD, model="oai-large",
                            extra_body={"thrifty": {"fallback_models": ["oai-mini", "claude-small"]}})
    assert model == "claude-small" and fake.count(UPSTREAM["claude-large"]) == 0
    assert [a[0] for a in attempts_of(record_of(svc, headers))] == ["oai-large", "oai-mini", "claude-small"]
    # the same list on a routed request: tried after the decision's own candidates
    fake.configure(UPSTREAM["claude-large"], status=401)
    fake.configure(UPSTREAM["oai-large"], status=401)
    headers, model, _ = ask("openai", oc, None, HARD, extra_body={"thrifty": {"fallback_models": ["claude-small"]}})
    assert model == "claude-small"
    assert [a[0] for a in attempts_of(record_of(svc, headers))] == ["claude-large", "oai-large", "claude-small"]


def test_no_fallbacks_when_a_request_asks_for_none_or_allows_none(fake, svc, oc):
    fake.configure(UPSTREAM["oai-large"], status=429)
    with pytest.raises(openai.RateLimitError):
        oc.chat.completions.create(model="oai-large", messages=[{"role": "user", "content": HARD}],
                                   extra_body={"thrifty": {"fallback_models": []}})
    with pytest.raises(openai.RateLimitError):
        oc.chat.completions.create(model="oai-large", messages=[{"role": "user", "content": HARD}],
                                   extra_headers={"x-thrifty-allowed-models": "oai-large"})
    assert fake.count() == fake.count(UPSTREAM["oai-large"]) == 2  # one call per request, no fallback


def test_unknown_fallback_models_are_a_400_naming_the_field(fake, svc, raw):
    response = raw.post("/v1/chat/completions", json={
        "model": "oai-large", "messages": [{"role": "user", "content": HARD}],
        "thrifty": {"fallback_models": ["claude-large", "no-such-model"]}})
    assert response.status_code == 400 and fake.count() == 0
    error = response.json()["error"]
    assert error["param"] == "thrifty.fallback_models" and "no-such-model" in error["message"]
    schema = raw.get("/openapi.json").json()["components"]["schemas"]["ThriftyOptions"]
    assert "fallback_models" in schema["properties"]


def test_fallbacks_skip_a_model_whose_breaker_is_open(fake, svc, oc):
    for _ in range(FAST["breaker_failures"]):
        svc.dispatcher.breakers.failure("claude-large")
    fake.configure(UPSTREAM["oai-large"], status=500)
    headers, model, _ = ask("openai", oc, None, HARD, model="oai-large")
    assert model == "claude-small" and fake.count(UPSTREAM["claude-large"]) == 0
    assert attempts_of(record_of(svc, headers)) == [
        ("oai-large", "error", "server"), ("oai-large", "error", "server"),
        ("claude-large", "skipped", "circuit_open"), ("claude-small", "ok", None)]


def test_fallbacks_naming_a_model_outside_the_catalog_are_refused_at_start(fake_server, router_path, tmp_path):
    from serving.config import ConfigError
    from serving.services import build_services

    config = make_config(tmp_path, fake_server[1], router_path, fallbacks={"oai-large": ["claude-larg"]})
    with pytest.raises(ConfigError, match="claude-larg"):
        build_services(config)


# -- 429 and Retry-After ----------------------------------------------------------------------------------------


def test_429_retry_after_that_fits_is_honoured_on_the_same_model(fake, svc, oc):
    fake.configure(UPSTREAM["oai-mini"], status=429, retry_after=0.3, fail_times=1)
    started = time.monotonic()
    headers, model, _ = ask("openai", oc, None, EASY)
    assert time.monotonic() - started >= 0.3  # it waited as told
    assert model == "oai-mini" and fake.count(UPSTREAM["claude-small"]) == 0
    assert attempts_of(record_of(svc, headers)) == [("oai-mini", "error", "rate_limit"), ("oai-mini", "ok", None)]


def test_429_retry_after_that_does_not_fit_fails_over_at_once(fake, svc, ac):
    fake.configure(UPSTREAM["oai-mini"], status=429, retry_after=HANG)
    started = time.monotonic()
    headers, model, _ = ask("anthropic", None, ac, EASY)
    assert time.monotonic() - started < HANG / 2
    assert model == "claude-small" and fake.count(UPSTREAM["oai-mini"]) == 1
    assert attempts_of(record_of(svc, headers)) == [("oai-mini", "error", "rate_limit"), ("claude-small", "ok", None)]


def test_429_on_the_only_model_reaches_the_client_with_its_retry_after(fake, svc, oc):
    fake.configure(UPSTREAM["oai-mini"], status=429, retry_after=20)
    with pytest.raises(openai.RateLimitError) as info:
        oc.chat.completions.create(model="oai-mini", messages=[{"role": "user", "content": EASY}])
    assert info.value.response.headers["retry-after"] == "20" and fake.count() == 1


# -- slow and silent upstreams: time out, then fail over ---------------------------------------------------------


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_slow_first_token_fails_over(sdk, fake, svc, oc, ac):
    fake.configure(UPSTREAM["oai-mini"], delay_first_chunk=HANG)  # headers at once, then nothing
    started = time.monotonic()
    headers, model, text = ask(sdk, oc, ac, EASY, stream=True)
    assert time.monotonic() - started < HANG / 2
    assert model == "claude-small" and text.startswith("Answer from")
    assert attempts_of(record_of(svc, headers)) == [("oai-mini", "error", "timeout"), ("claude-small", "ok", None)]


def test_a_request_never_outlives_its_deadline(fake, fake_server, router_path, tmp_path):
    """Every model hangs: the request ends at its deadline (2 s) with a 504, not after the hang."""
    from serving.app import create_app

    config = make_config(tmp_path, fake_server[1], router_path, **{**FAST, "deadline_s": 2.0})
    app = create_app(config)
    for upstream in UPSTREAM.values():
        fake.configure(upstream, delay_before_headers=HANG)
    with serve_in_thread(app) as server:
        started = time.monotonic()
        response = httpx.post(f"{server.url}/v1/chat/completions", headers={"authorization": f"Bearer {CLIENT_KEY}"},
                              json={"model": "thrifty", "messages": [{"role": "user", "content": EASY}]}, timeout=20)
        elapsed = time.monotonic() - started
        record = app.state.services.store.decision(response.headers["x-thrifty-decision-id"])
    assert elapsed < 2.0 + 3 and response.status_code == 504 and response.json()["error"]["code"] == "upstream_timeout"
    # 1.5 s for the first attempt, the 0.5 s left for the second, none for a third
    assert attempts_of(record) == [("oai-mini", "error", "timeout"), ("claude-small", "error", "timeout")]
    # the second attempt was cut by the deadline, not by its own timeout: no verdict against claude-small
    assert app.state.services.dispatcher.breakers.consecutive_failures("claude-small") == 0


# -- streams: before the first token, fail over; after it, an error event -----------------------------------------


EARLY_STREAM_FAULTS = {
    "cut-before-first-token": dict(cut_after_chunks=1),
    "malformed-first-chunk": dict(malformed_after_chunks=0),
    "stalled-before-first-token": dict(stall_after_chunks=1),
    "ends-without-any-token": dict(text="", omit_final_event=True),
}


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
@pytest.mark.parametrize("first, second", [("oai-mini", "claude-small"), ("claude-small", "claude-large")],
                         ids=["openai-upstream", "anthropic-upstream"])
@pytest.mark.parametrize("fault", list(EARLY_STREAM_FAULTS))
def test_stream_failing_before_its_first_token_fails_over(fault, first, second, sdk, fake, svc, oc, ac):
    fake.configure(UPSTREAM[first], **EARLY_STREAM_FAULTS[fault])
    allowed = {"x-thrifty-allowed-models": f"{first},{second}"}
    messages = [{"role": "user", "content": EASY}]
    if sdk == "openai":
        response = oc.chat.completions.with_raw_response.create(model="thrifty", messages=messages, stream=True,
                                                                extra_headers=allowed)
        text = "".join(c.choices[0].delta.content or "" for c in response.parse() if c.choices)
        headers = response.headers
    else:
        with ac.messages.stream(model="thrifty", max_tokens=50, messages=messages, extra_headers=allowed) as events:
            text = events.get_final_message().content[0].text
            headers = events.response.headers
    assert headers["x-thrifty-model"] == second and text == f"Answer from {UPSTREAM[second]}."
    record = record_of(svc, headers)
    assert [a[:2] for a in attempts_of(record)] == [(first, "error"), (second, "ok")] and record["status"] == "ok"


LATE_STREAM_FAULTS = {
    "cut-mid-way": (dict(cut_after_chunks=4), "stream"),
    "stalled-mid-way": (dict(stall_after_chunks=4), "timeout"),
    "malformed-chunk": (dict(malformed_after_chunks=4), "stream"),
    "no-final-event": (dict(omit_final_event=True), "stream"),
}


@pytest.mark.parametrize("fmt", ["openai", "anthropic"])
@pytest.mark.parametrize("model", ["oai-mini", "claude-small"])
@pytest.mark.parametrize("fault", list(LATE_STREAM_FAULTS))
def test_stream_failing_after_bytes_reached_the_client_ends_with_an_error_event(fault, model, fmt, fake, svc, raw):
    change, kind = LATE_STREAM_FAULTS[fault]
    fake.configure(UPSTREAM[model], text="one two three four five six seven eight nine ten", **change)
    path = "/v1/chat/completions" if fmt == "openai" else "/v1/messages"
    body = {"model": model, "stream": True, "max_tokens": 50, "messages": [{"role": "user", "content": EASY}]}
    response = raw.post(path, json=body)
    assert response.status_code == 200
    events = sse_events(response.text)
    name, data = events[-1]
    if fmt == "openai":
        assert name is None and json.loads(data)["error"]["message"]
        assert all(d != "[DONE]" for _, d in events)
        assert not any(json.loads(d).get("choices", [{}])[0].get("finish_reason") for _, d in events[:-1])
    else:
        assert name == "error" and json.loads(data)["type"] == "error" and json.loads(data)["error"]["message"]
        assert "message_stop" not in [n for n, _ in events] and "message_delta" not in [n for n, _ in events]
    assert any("one" in d for _, d in events[:-1])  # bytes of the answer did reach the client first
    assert fake.count() == 1  # too late to fail over
    record = record_of(svc, response.headers)
    assert record["status"] == "error" and record["error_kind"] == kind and record["answered_model"] == model
    assert attempts_of(record) == [(model, "error", kind)]


@pytest.mark.parametrize("model", ["oai-mini", "claude-small"])
@pytest.mark.parametrize("fault", list(LATE_STREAM_FAULTS))
def test_the_sdks_raise_on_a_broken_stream_instead_of_returning_a_truncated_answer(fault, model, fake, svc, oc, ac):
    change, _ = LATE_STREAM_FAULTS[fault]
    fake.configure(UPSTREAM[model], text="one two three four five six seven eight nine ten", **change)
    messages = [{"role": "user", "content": EASY}]
    received = []
    with pytest.raises(openai.APIError):
        for chunk in oc.chat.completions.create(model=model, messages=messages, stream=True):
            received += [c.delta.content for c in chunk.choices if c.delta.content]
    assert received  # part of the answer arrived, and the SDK still raised
    with pytest.raises(anthropic.APIStatusError):
        with ac.messages.stream(model=model, max_tokens=50, messages=messages) as events:
            events.get_final_message()


# -- context length: a larger context window, or a clear 400 -----------------------------------------------------


def test_context_length_error_goes_to_a_model_with_a_larger_window(fake, svc, oc):
    fake.configure(UPSTREAM["oai-mini"], context_length_error=True)
    headers, model, _ = ask("openai", oc, None, EASY)
    # oai-mini (128k) -> claude-small (200k); never oai-mini again
    assert model == "claude-small" and fake.count(UPSTREAM["oai-mini"]) == 1
    assert attempts_of(record_of(svc, headers)) == [("oai-mini", "error", "context_length"), ("claude-small", "ok", None)]


def test_context_length_error_skips_candidates_that_are_not_larger(fake, svc, ac):
    # HARD: claude-large (200k) fails; oai-large (128k) cannot help: a clear 400, one upstream call
    fake.configure(UPSTREAM["claude-large"], context_length_error=True)
    with pytest.raises(anthropic.BadRequestError) as info:
        ac.messages.create(model="thrifty", max_tokens=50, messages=[{"role": "user", "content": HARD}])
    message = info.value.body["error"]["message"]
    assert "200000" in message and "context window" in message
    assert fake.count() == 1 and fake.count(UPSTREAM["claude-large"]) == 1


def test_context_length_error_on_a_passthrough_model_is_a_clear_400(fake, svc, oc):
    fake.configure(UPSTREAM["oai-mini"], context_length_error=True)
    with pytest.raises(openai.BadRequestError) as info:
        oc.chat.completions.create(model="oai-mini", messages=[{"role": "user", "content": EASY}])
    assert info.value.body["code"] == "context_length_exceeded" and "128000" in info.value.body["message"]
    assert fake.count() == 1


def test_context_length_error_on_a_model_requested_by_id_goes_to_a_larger_fallback(fake, svc, ac):
    fake.configure(UPSTREAM["oai-large"], context_length_error=True)
    headers, model, _ = ask("anthropic", None, ac, HARD, stream=True, model="oai-large")
    assert model == "claude-large" and fake.count() == 2  # 128k -> 200k; never oai-large again
    assert attempts_of(record_of(svc, headers)) == [("oai-large", "error", "context_length"), ("claude-large", "ok", None)]


def test_other_upstream_4xx_are_returned_not_retried(fake, svc, oc):
    fake.configure(UPSTREAM["oai-mini"], status=400, error_message="temperature is not supported")
    with pytest.raises(openai.BadRequestError) as info:
        oc.chat.completions.create(model="thrifty", messages=[{"role": "user", "content": EASY}])
    assert "temperature" in info.value.body["message"] and fake.count() == 1


CONTENT_POLICY = "The response was filtered due to the prompt triggering Azure OpenAI's content management policy."


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_a_content_policy_400_is_returned_as_is_never_tried_elsewhere(stream, fake, svc, oc, ac):
    """Another provider is not asked to take a prompt one provider's policy refused: the client gets the 400."""
    fake.configure(UPSTREAM["oai-large"], status=400, error_message=CONTENT_POLICY, error_code="content_filter")
    with pytest.raises(openai.BadRequestError) as info:
        ask("openai", oc, None, HARD, stream=stream, model="oai-large")  # fallbacks configured: not used
    assert info.value.body["message"] == CONTENT_POLICY
    with pytest.raises(anthropic.BadRequestError) as info:
        ask("anthropic", None, ac, HARD, stream=stream, model="oai-large")
    assert info.value.body["error"]["message"] == CONTENT_POLICY
    assert fake.count() == fake.count(UPSTREAM["oai-large"]) == 2  # one call per request
    record = record_of(svc, info.value.response.headers)
    assert record["status"] == "error" and record["http_status"] == 400
    assert attempts_of(record) == [("oai-large", "error", "bad_request")]


# -- content filter: the provider's answer, passed through -----------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("model", ["oai-mini", "claude-small"])
def test_content_filter_refusal_is_the_answer_not_a_failure(model, stream, fake, svc, oc, ac):
    fake.configure(UPSTREAM[model], content_filter=True)
    messages = [{"role": "user", "content": EASY}]
    headers = {"x-thrifty-allowed-models": f"{model},claude-large"}
    if not stream:
        response = oc.chat.completions.with_raw_response.create(model="thrifty", messages=messages, extra_headers=headers)
        assert response.parse().choices[0].finish_reason == "content_filter"
        message = ac.messages.create(model="thrifty", max_tokens=20, messages=messages, extra_headers=headers)
        assert message.stop_reason == "refusal"
    else:
        response = oc.chat.completions.with_raw_response.create(model="thrifty", messages=messages, stream=True,
                                                                extra_headers=headers)
        finishes = [c.choices[0].finish_reason for c in response.parse() if c.choices and c.choices[0].finish_reason]
        assert finishes == ["content_filter"]
        with ac.messages.stream(model="thrifty", max_tokens=20, messages=messages, extra_headers=headers) as events:
            assert events.get_final_message().stop_reason == "refusal"
    assert fake.count() == fake.count(UPSTREAM[model]) == 2  # answered by the refusing model, never retried
    record = record_of(svc, response.headers)
    assert record["status"] == "ok" and record["finish_reason"] == ("content_filter" if model.startswith("oai") else "refusal")


# -- circuit breaker: a flapping model is taken out, then probed back -------------------------------------------------


def test_circuit_breaker_takes_a_failing_model_out_and_probes_it_back_with_back_off(fake, svc, oc, raw):
    breakers = svc.dispatcher.breakers
    fake.configure(UPSTREAM["oai-mini"], status=503)
    # 3 consecutive failures: the first request's call and its retry, the second request's call (no retry: open)
    for _ in range(2):
        assert ask("openai", oc, None, EASY)[1] == "claude-small"
    assert fake.count(UPSTREAM["oai-mini"]) == FAST["breaker_failures"] == 3 and breakers.state("oai-mini") == "open"
    # open: skipped without a call, logged as skipped
    headers, model, _ = ask("openai", oc, None, EASY)
    assert model == "claude-small" and fake.count(UPSTREAM["oai-mini"]) == 3
    assert attempts_of(record_of(svc, headers)) == [("oai-mini", "skipped", "circuit_open"), ("claude-small", "ok", None)]
    assert headers["x-thrifty-attempts"] == "1"
    assert 'thrifty_circuit_open{model="oai-mini"} 1.0' in raw.get("/metrics").text
    # a passthrough request to the open model: a quick 503 with Retry-After, no upstream call
    response = raw.post("/v1/chat/completions", json={"model": "oai-mini", "messages": [{"role": "user", "content": EASY}]})
    assert response.status_code == 503 and response.json()["error"]["code"] == "models_unavailable"
    assert int(response.headers["retry-after"]) >= 1 and fake.count(UPSTREAM["oai-mini"]) == 3

    # half-open after the first cool-down: one probe; it fails, so the breaker opens again, for twice as long
    assert breakers.cooldown("oai-mini") == FAST["breaker_cooldown_s"]
    time.sleep(breakers.retry_in("oai-mini") + 0.1)
    assert ask("openai", oc, None, EASY)[1] == "claude-small" and fake.count(UPSTREAM["oai-mini"]) == 4
    assert breakers.cooldown("oai-mini") == 2 * FAST["breaker_cooldown_s"]
    assert ask("openai", oc, None, EASY)[1] == "claude-small" and fake.count(UPSTREAM["oai-mini"]) == 4

    # the model recovers: the next probe succeeds and closes the breaker
    fake.configure(UPSTREAM["oai-mini"], status=None)
    time.sleep(breakers.retry_in("oai-mini") + 0.1)
    for _ in range(3):
        assert ask("openai", oc, None, EASY)[1] == "oai-mini"
    assert fake.count(UPSTREAM["oai-mini"]) == 7 and breakers.cooldown("oai-mini") == 0
    assert 'thrifty_circuit_open{model="oai-mini"} 0.0' in raw.get("/metrics").text


def test_breaker_cooldown_starts_short_and_backs_off_exponentially_to_a_cap():
    from serving.reliability import Breakers

    now = [0.0]
    breakers = Breakers(failures=2, cooldown_s=2.0, max_cooldown_s=60.0, backoff=2.0, clock=lambda: now[0])
    breakers.failure("m")
    assert breakers.state("m") == "closed" and breakers.acquire("m") == "call"
    breakers.failure("m")
    seen = []
    for _ in range(8):  # the model stays down: every probe fails
        assert breakers.acquire("m") is None
        seen.append(breakers.retry_in("m"))
        now[0] += breakers.retry_in("m")
        assert breakers.acquire("m") == "probe" and breakers.acquire("m") is None  # one probe at a time
        breakers.failure("m")
    assert seen == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    now[0] += 60.0
    assert breakers.acquire("m") == "probe"
    breakers.success("m")  # back: closed, and the next opening starts short again
    assert breakers.state("m") == "closed" and breakers.cooldown("m") == 0
    breakers.failure("m")
    breakers.failure("m")
    assert breakers.retry_in("m") == 2.0


FLAP = dict(FAST, breaker_failures=2, breaker_cooldown_s=0.05, breaker_max_cooldown_s=1.5, same_model_retries=0)


def test_a_primary_that_flaps_is_probed_and_used_again_within_seconds(fake, fake_server, router_path, tmp_path):
    """The issue's scenario scaled down 40x: a primary down for 1.5 s (60 s) with a first cool-down of
    0.05 s (2 s) and a cap of 1.5 s (60 s). While it is down every request is answered by the next
    candidate and the primary sees only the probes; once it is back, a probe finds it within the
    current cool-down (at most the cap) and it answers again."""
    from serving.app import create_app

    app = create_app(make_config(tmp_path, fake_server[1], router_path, **FLAP))
    fake.configure(UPSTREAM["oai-mini"], status=503)
    with serve_in_thread(app) as server, openai_sdk(server.url) as client:
        breakers = app.state.services.dispatcher.breakers
        started, answered = time.monotonic(), []
        while time.monotonic() - started < 1.5 or len(answered) < 30:  # the outage
            answered.append(ask("openai", client, None, EASY)[1])
            time.sleep(0.02)
        outage = time.monotonic() - started
        outage_calls = fake.count(UPSTREAM["oai-mini"])
        cooldown = breakers.cooldown("oai-mini")
        fake.configure(UPSTREAM["oai-mini"], status=None)  # recovered
        recovered = time.monotonic()
        while ask("openai", client, None, EASY)[1] != "oai-mini":
            assert time.monotonic() - recovered < FLAP["breaker_max_cooldown_s"] + 3.0, "the primary was not probed back"
            time.sleep(0.02)
        back_after = time.monotonic() - recovered
    assert set(answered) == {"claude-small"}
    # the primary saw the failures that opened its breaker and at most one probe per cool-down, not every request
    assert outage_calls <= FLAP["breaker_failures"] + _probes_due(outage, FLAP) < len(answered)
    assert 0 < cooldown <= FLAP["breaker_max_cooldown_s"] and back_after <= cooldown + 3.0


def _probes_due(seconds: float, config: dict) -> int:
    """How many probes the back-off schedule allows within ``seconds`` of the breaker opening."""
    t, cooldown, probes = 0.0, config["breaker_cooldown_s"], 0
    while t + cooldown <= seconds:
        t, probes = t + cooldown, probes + 1
        cooldown = min(config["breaker_max_cooldown_s"], 2 * cooldown)
    return probes


def test_a_broken_stream_counts_against_the_model(fake, svc, raw):
    fake.configure(UPSTREAM["oai-mini"], text="a b c d e f g h", cut_after_chunks=4)
    body = {"model": "oai-mini", "stream": True, "messages": [{"role": "user", "content": EASY}]}
    for _ in range(FAST["breaker_failures"]):
        assert sse_events(raw.post("/v1/chat/completions", json=body).text)[-1][1].startswith('{"error"')
    assert svc.dispatcher.breakers.state("oai-mini") == "open"


def test_rate_limits_do_not_open_the_breaker(fake, svc, oc):
    fake.configure(UPSTREAM["oai-mini"], status=429)
    for _ in range(FAST["breaker_failures"] + 1):
        assert ask("openai", oc, None, EASY)[1] == "claude-small"
    assert svc.dispatcher.breakers.state("oai-mini") == "closed"
    assert fake.count(UPSTREAM["oai-mini"]) == FAST["breaker_failures"] + 1


def test_failovers_are_counted_in_metrics(fake, svc, oc, raw):
    fake.configure(UPSTREAM["oai-mini"], status=500)
    ask("openai", oc, None, EASY)
    assert 'thrifty_failovers_total{kind="server",model="oai-mini"}' in raw.get("/metrics").text
