"""Fail-over, deadlines, broken streams and circuit breakers, against the fault-injecting fake provider.

The real OpenAI and Anthropic SDKs -> thrifty (tight timeouts) -> the fake on
loopback. Routed requests use the test router (``tests/serving_fixtures.py``):

    EASY -> oai-mini, then claude-small, claude-large, oai-large   (all acceptable)
    HARD -> claude-large, then oai-large                          (oai-mini, claude-small unacceptable)

Context windows: claude-* 200000 tokens, oai-* 128000.
"""

from __future__ import annotations

import json
import time

import anthropic
import httpx
import openai
import pytest

from tests.fakes.server import ThreadedServer, serve_in_thread
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
    breaker_cooldown_s=2.0,
    max_attempts=3,
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


def ask(sdk, oc, ac, prompt=EASY, *, stream=False, model="thrifty"):
    """One request through an SDK: (headers, answering model, text)."""
    if sdk == "openai":
        messages = [{"role": "user", "content": prompt}]
        if not stream:
            response = oc.chat.completions.with_raw_response.create(model=model, messages=messages)
            completion = response.parse()
            return response.headers, completion.model, completion.choices[0].message.content
        response = oc.chat.completions.with_raw_response.create(model=model, messages=messages, stream=True)
        text, answered = "", None
        for chunk in response.parse():
            answered = chunk.model
            text += "".join(c.delta.content or "" for c in chunk.choices)
        return response.headers, answered, text
    if not stream:
        messages = [{"role": "user", "content": prompt}]
        response = ac.messages.with_raw_response.create(model=model, max_tokens=50, messages=messages)
        message = response.parse()
        return response.headers, message.model, message.content[0].text
    with ac.messages.stream(model=model, max_tokens=50, messages=[{"role": "user", "content": prompt}]) as events:
        message = events.get_final_message()
        return events.response.headers, message.model, message.content[0].text


def record_of(svc, headers) -> dict:
    return svc.store.decision(headers["x-thrifty-decision-id"])


def attempts_of(record) -> list[tuple[str, str, str | None]]:
    return [(a["model"], a["status"], a["error_kind"]) for a in record["attempts"]]


# -- 1. fail-over along the router's own ranking ---------------------------------------------------------


FAULTS = {
    "429-no-retry-after": (dict(status=429), "rate_limit"),
    "500": (dict(status=500), "server"),
    "503": (dict(status=503), "server"),
    "connection-reset": (dict(reset_connection=True), "connection"),
    "no-response": (dict(delay_before_headers=HANG), "timeout"),
}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_failing_model_fails_over_to_the_next_acceptable_candidate(fault, sdk, stream, fake, svc, oc, ac):
    change, kind = FAULTS[fault]
    fake.configure(UPSTREAM["oai-mini"], **change)
    started = time.monotonic()
    headers, model, text = ask(sdk, oc, ac, EASY, stream=stream)
    assert time.monotonic() - started < HANG / 2  # failed over; did not wait for the hang
    assert model == headers["x-thrifty-model"] == "claude-small" and text == f"Answer from {UPSTREAM['claude-small']}."
    assert headers["x-thrifty-attempts"] == "2"
    assert fake.count(UPSTREAM["oai-mini"]) == 1 and fake.count(UPSTREAM["claude-small"]) == 1
    record = record_of(svc, headers)
    assert record["status"] == "ok" and record["chosen_model"] == "oai-mini" and record["answered_model"] == "claude-small"
    assert attempts_of(record) == [("oai-mini", "error", kind), ("claude-small", "ok", None)]
    assert record["attempts"][0]["http_status"] == change.get("status")


def test_fail_over_never_leaves_the_acceptable_models(fake, svc, oc):
    """HARD: claude-large then oai-large; the cheap models are predicted to fail and are never tried."""
    fake.configure(UPSTREAM["claude-large"], status=500)
    fake.configure(UPSTREAM["oai-large"], status=503)
    with pytest.raises(openai.InternalServerError) as info:
        oc.chat.completions.create(model="thrifty", messages=[{"role": "user", "content": HARD}])
    assert fake.count(UPSTREAM["oai-mini"]) == fake.count(UPSTREAM["claude-small"]) == 0
    record = record_of(svc, info.value.response.headers)
    assert attempts_of(record) == [("claude-large", "error", "server"), ("oai-large", "error", "server")]
    assert record["status"] == "error" and record["http_status"] == 503


def test_attempts_are_bounded_by_max_attempts(fake, svc, oc):
    for upstream in UPSTREAM.values():
        fake.configure(upstream, status=500)
    with pytest.raises(openai.InternalServerError) as info:
        oc.chat.completions.create(model="thrifty", messages=[{"role": "user", "content": EASY}])
    assert fake.count() == FAST["max_attempts"] == 3 and fake.count(UPSTREAM["oai-large"]) == 0
    tried = [a[0] for a in attempts_of(record_of(svc, info.value.response.headers))]
    assert tried == ["oai-mini", "claude-small", "claude-large"]


def test_a_passthrough_model_is_never_swapped_for_another(fake, svc, oc):
    fake.configure(UPSTREAM["oai-mini"], status=500)
    with pytest.raises(openai.InternalServerError):
        oc.chat.completions.create(model="oai-mini", messages=[{"role": "user", "content": EASY}])
    assert fake.count() == fake.count(UPSTREAM["oai-mini"]) == 1


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


def test_other_upstream_4xx_are_returned_not_retried(fake, svc, oc):
    fake.configure(UPSTREAM["oai-mini"], status=400, error_message="temperature is not supported")
    with pytest.raises(openai.BadRequestError) as info:
        oc.chat.completions.create(model="thrifty", messages=[{"role": "user", "content": EASY}])
    assert "temperature" in info.value.body["message"] and fake.count() == 1


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


def test_circuit_breaker_takes_a_flapping_model_out_and_probes_it_back(fake, svc, oc, raw):
    fake.configure(UPSTREAM["oai-mini"], status=503)
    for _ in range(FAST["breaker_failures"]):
        assert ask("openai", oc, None, EASY)[1] == "claude-small"
    assert fake.count(UPSTREAM["oai-mini"]) == 3
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

    # half-open after the cool-down: one probe; it fails, so the breaker opens again
    time.sleep(FAST["breaker_cooldown_s"] + 0.1)
    assert ask("openai", oc, None, EASY)[1] == "claude-small" and fake.count(UPSTREAM["oai-mini"]) == 4
    assert ask("openai", oc, None, EASY)[1] == "claude-small" and fake.count(UPSTREAM["oai-mini"]) == 4

    # the model recovers: the next probe succeeds and closes the breaker
    time.sleep(FAST["breaker_cooldown_s"] + 0.1)
    fake.configure(UPSTREAM["oai-mini"], status=None)
    for _ in range(3):
        assert ask("openai", oc, None, EASY)[1] == "oai-mini"
    assert fake.count(UPSTREAM["oai-mini"]) == 7
    assert 'thrifty_circuit_open{model="oai-mini"} 0.0' in raw.get("/metrics").text


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
