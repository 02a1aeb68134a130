"""Mid-stream recovery: a stream that dies after tokens reached the client is finished by the next candidate.

The real SDKs -> thrifty -> the fake provider on loopback. Each model answers
the same 60-word text; the first stream breaks after 40 words (cut, stall,
malformed event) or ends without its finish, and the client must read the
whole text once, with a normal end. A fallback on ``/v1/messages`` continues an
assistant prefill (Anthropic's behaviour); one on ``/v1/chat/completions``
answers anew (OpenAI's), and only what follows the delivered part is sent.
"""

from __future__ import annotations

import json
import time

import anthropic
import httpx
import openai
import pytest

from tests.fakes.server import ThreadedServer
from tests.reliability_support import ask, attempts_of, record_of
from tests.serving_fixtures import (  # noqa: F401  (fixtures)
    CLIENT_KEY,
    EASY,
    UPSTREAM,
    anthropic_sdk,
    fake,
    fake_server,
    make_config,
    openai_sdk,
    router_path,
    sse_events,
)

HANG = 30.0
WORDS = [f"w{i:02d}" for i in range(60)]
TEXT = " ".join(WORDS) + "."
DELIVERED = " ".join(WORDS[:40]) + " "  # what the client has when the first stream breaks after 40 words
SETTINGS = dict(deadline_s=6.0, attempt_timeout_s=1.5, first_token_timeout_s=1.5, stream_idle_timeout_s=1.0,
                max_attempts=3, breaker_failures=5)


def after_words(model: str, words: int) -> int:
    """Stream events before the ``words``-th word: OpenAI sends a role chunk first; Anthropic
    message_start, ping and content_block_start."""
    return words + (3 if model.startswith("claude") else 1)


# fault -> (fake behaviour for the first model, error kind recorded for its attempt)
FAULTS = {
    "cut-after-40-tokens": (lambda m: dict(cut_after_chunks=after_words(m, 40)), "stream"),
    "stall-mid-stream": (lambda m: dict(stall_after_chunks=after_words(m, 40), stall_s=HANG), "timeout"),
    "malformed-event": (lambda m: dict(malformed_after_chunks=after_words(m, 40)), "stream"),
    "error-event": (lambda m: dict(error_event_after_chunks=after_words(m, 40)), None),  # kind: by dialect
    "no-finish-connection-closed": (lambda m: dict(omit_final_event=True), "stream"),
}
# first model -> the fallback that continues its answer; whether it continues a prefill
PAIRS = {
    "openai-to-anthropic": ("oai-mini", "claude-small", True),
    "anthropic-to-anthropic": ("claude-small", "claude-large", True),
    "openai-to-openai": ("oai-mini", "oai-large", False),
    "anthropic-to-openai": ("claude-small", "oai-mini", False),
}


@pytest.fixture(scope="module")
def server(fake_server, router_path, tmp_path_factory):
    from serving.app import create_app

    config = make_config(tmp_path_factory.mktemp("recovery"), fake_server[1], router_path, **SETTINGS)
    app = create_app(config)
    running = ThreadedServer(app).start()
    yield running.url, app
    running.stop()


@pytest.fixture
def svc(server, fake):
    services = server[1].state.services
    services.dispatcher.breakers.reset()
    yield services
    services.dispatcher.breakers.reset()
    services.dispatcher.mid_stream_recovery = True


@pytest.fixture
def oc(server):
    with openai_sdk(server[0]) as client:
        yield client


@pytest.fixture
def ac(server):
    with anthropic_sdk(server[0]) as client:
        yield client


@pytest.fixture
def raw(server):
    with httpx.Client(base_url=server[0], headers={"authorization": f"Bearer {CLIENT_KEY}"}, timeout=20) as client:
        yield client


def fallbacks(*models: str) -> dict:
    return {"extra_body": {"thrifty": {"fallback_models": list(models)}}}


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
@pytest.mark.parametrize("pair", list(PAIRS))
@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_stream_broken_mid_answer_is_finished_by_the_next_candidate(fault, pair, sdk, fake, svc, oc, ac):
    first, second, prefilled = PAIRS[pair]
    change, kind = FAULTS[fault]
    kind = kind or ("server" if first.startswith("claude") else "stream")  # Anthropic's "overloaded" is a 529
    fake.configure(UPSTREAM[first], text=TEXT, **change(first))
    fake.configure(UPSTREAM[second], text=TEXT)
    started = time.monotonic()
    headers, model, text = ask(sdk, oc, ac, EASY, stream=True, model=first, max_tokens=300, **fallbacks(second))
    assert time.monotonic() - started < HANG / 2
    # one whole answer, nothing repeated, a normal end (ask() checks the finish), under the name it started with
    assert text == TEXT and model == headers["x-thrifty-model"] == first
    record = record_of(svc, headers)
    assert record["status"] == "ok" and record["answered_model"] == second and record["response"] == TEXT
    assert attempts_of(record) == [(first, "error", kind), (second, "ok", None)]
    # each attempt's tokens and cost: the broken stream's estimated from what it sent when it reported none
    broken, continuation = record["attempts"]
    assert broken["output_tokens"] >= 40 and broken["cost_usd"] > 0 and continuation["cost_usd"] > 0
    assert record["cost_usd"] == pytest.approx(broken["cost_usd"] + continuation["cost_usd"])
    assert record["output_tokens"] == broken["output_tokens"] + continuation["output_tokens"]
    # what the fallback was asked: to continue the delivered text, or (no prefill) the question alone
    delivered = TEXT if fault == "no-finish-connection-closed" else DELIVERED
    last = fake.last(UPSTREAM[second]).body["messages"][-1]
    if prefilled:
        assert last == {"role": "assistant", "content": delivered.rstrip()}
    else:
        assert last["role"] == "user"


@pytest.mark.parametrize("fmt", ["openai", "anthropic"])
def test_the_spliced_stream_is_well_formed_in_the_clients_dialect(fmt, fake, svc, raw):
    """On the wire: the text once, one finish, one end; no error event; usage of both streams at the end."""
    fake.configure(UPSTREAM["oai-mini"], text=TEXT, cut_after_chunks=after_words("oai-mini", 40))
    fake.configure(UPSTREAM["claude-small"], text=TEXT, output_tokens=7)
    body = {"model": "oai-mini", "stream": True, "max_tokens": 300, "messages": [{"role": "user", "content": EASY}],
            "thrifty": {"fallback_models": ["claude-small"]}}
    if fmt == "openai":
        body["stream_options"] = {"include_usage": True}
    response = raw.post("/v1/chat/completions" if fmt == "openai" else "/v1/messages", json=body)
    events = sse_events(response.text)
    record = record_of(svc, response.headers)
    if fmt == "openai":
        assert events[-1] == (None, "[DONE]")
        chunks = [json.loads(d) for _, d in events[:-1]]
        assert not any("error" in c for c in chunks)
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == TEXT
        assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]] == ["stop"]
        assert {c["model"] for c in chunks} == {"oai-mini"}
        usage = chunks[-1]["usage"]
        assert chunks[-1]["choices"] == [] and usage["completion_tokens"] == record["output_tokens"]
    else:
        names = [n for n, _ in events]
        assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"] and "error" not in names
        assert names.count("content_block_start") == names.count("content_block_stop") == 1
        deltas = [json.loads(d)["delta"] for n, d in events if n == "content_block_delta"]
        assert "".join(d["text"] for d in deltas) == TEXT
        final = json.loads(events[-2][1])
        assert final["delta"]["stop_reason"] == "end_turn" and final["usage"]["output_tokens"] == record["output_tokens"]
    assert record["attempts"][1]["output_tokens"] == 7  # the continuation's usage as its upstream reported it


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
@pytest.mark.parametrize("first", ["oai-mini", "claude-small"])
@pytest.mark.parametrize("end", ["no-terminator", "cut-before-terminator"])
def test_a_stream_that_ends_after_its_finish_without_its_terminator_is_complete(end, first, sdk, fake, svc, oc, ac):
    """Decision: the finish (OpenAI finish_reason, Anthropic message_delta) makes the answer whole; a missing
    [DONE] / message_stop is supplied, nothing is asked again."""
    events = 1 + 60 + 1 if first == "oai-mini" else 3 + 60 + 2  # up to the finish chunk / message_delta
    change = dict(omit_done=True) if end == "no-terminator" else dict(cut_after_chunks=events)
    fake.configure(UPSTREAM[first], text=TEXT, **change)
    headers, model, text = ask(sdk, oc, ac, EASY, stream=True, model=first, **fallbacks("claude-large"))
    assert text == TEXT and model == first and fake.count() == 1
    record = record_of(svc, headers)
    assert record["status"] == "ok" and attempts_of(record) == [(first, "ok", None)] and record["output_tokens"] > 0


def test_a_continuation_that_breaks_is_continued_again(fake, svc, oc):
    fake.configure(UPSTREAM["oai-mini"], text=TEXT, cut_after_chunks=after_words("oai-mini", 20))
    # the continuation of " w20 ... w59." begins with a whitespace piece, then breaks after 20 more words
    fake.configure(UPSTREAM["claude-small"], text=TEXT, cut_after_chunks=3 + 1 + 20)
    fake.configure(UPSTREAM["claude-large"], text=TEXT)
    headers, _, text = ask("openai", oc, None, EASY, stream=True, model="oai-mini",
                           **fallbacks("claude-small", "claude-large"))
    assert text == TEXT
    record = record_of(svc, headers)
    assert attempts_of(record) == [("oai-mini", "error", "stream"), ("claude-small", "error", "stream"),
                                   ("claude-large", "ok", None)]
    assert fake.last(UPSTREAM["claude-large"]).body["messages"][-1]["content"] == " ".join(WORDS[:40])
    assert record["answered_model"] == "claude-large" and record["response"] == TEXT


def test_a_prefill_refused_by_the_fallback_is_asked_again_without_it(fake, svc, ac):
    fake.configure(UPSTREAM["claude-small"], text=TEXT, cut_after_chunks=after_words("claude-small", 40))
    fake.configure(UPSTREAM["claude-large"], text=TEXT, prefill="reject")
    headers, _, text = ask("anthropic", None, ac, EASY, stream=True, model="claude-small", max_tokens=300,
                           **fallbacks("claude-large"))
    assert text == TEXT
    record = record_of(svc, headers)
    assert attempts_of(record) == [("claude-small", "error", "stream"), ("claude-large", "error", "bad_request"),
                                   ("claude-large", "ok", None)]
    refused, regenerated = [c.body for c in fake.calls if c.model == UPSTREAM["claude-large"]]
    assert refused["messages"][-1]["role"] == "assistant" and regenerated["messages"][-1]["role"] == "user"
    assert regenerated["max_tokens"] == 300 > refused["max_tokens"]  # the prefilled call asked only for the rest


@pytest.mark.parametrize("fmt", ["openai", "anthropic"])
@pytest.mark.parametrize("first, second, change", [
    ("claude-small", "claude-large", dict(prefill="reject")),  # refuses the prefill, then answers differently
    ("oai-mini", "oai-large", dict()),  # answers anew (no prefill), differently
], ids=["prefill-refused", "no-prefill"])
def test_a_regenerated_answer_that_differs_ends_with_an_error_event(first, second, change, fmt, fake, svc, raw):
    fake.configure(UPSTREAM[first], text=TEXT, cut_after_chunks=after_words(first, 40))
    fake.configure(UPSTREAM[second], text="A different answer altogether, " + TEXT, **change)
    body = {"model": first, "stream": True, "max_tokens": 300, "messages": [{"role": "user", "content": EASY}],
            "thrifty": {"fallback_models": [second]}}
    response = raw.post("/v1/chat/completions" if fmt == "openai" else "/v1/messages", json=body)
    events = sse_events(response.text)
    if fmt == "openai":
        chunks = [json.loads(d) for _, d in events]
        assert "error" in chunks[-1] and all(d != "[DONE]" for _, d in events)
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[:-1] if c.get("choices"))
    else:
        names = [n for n, _ in events]
        assert names[-1] == "error" and "message_stop" not in names and "message_delta" not in names
        text = "".join(json.loads(d)["delta"].get("text", "") for n, d in events if n == "content_block_delta")
    assert text == DELIVERED  # what had been sent, nothing of the differing answer
    record = record_of(svc, response.headers)
    assert record["status"] == "error" and record["error_kind"] == "stream"
    assert attempts_of(record)[0] == (first, "error", "stream") and attempts_of(record)[-1] == (second, "error", "diverged")


def test_the_sdks_raise_when_a_stream_cannot_be_finished(fake, svc, oc, ac):
    fake.configure(UPSTREAM["oai-mini"], text=TEXT, cut_after_chunks=after_words("oai-mini", 40))
    fake.configure(UPSTREAM["oai-large"], text="Something else entirely.")
    received = []
    with pytest.raises(openai.APIError):
        for chunk in oc.chat.completions.create(model="oai-mini", messages=[{"role": "user", "content": EASY}],
                                                stream=True, **fallbacks("oai-large")):
            received += [c.delta.content for c in chunk.choices if c.delta.content]
    assert "".join(received) == DELIVERED
    with pytest.raises(anthropic.APIStatusError):
        with ac.messages.stream(model="oai-mini", max_tokens=300, messages=[{"role": "user", "content": EASY}],
                                **fallbacks("oai-large")) as events:
            events.get_final_message()


def test_a_silent_fallback_ends_the_stream_within_its_first_token_timeout(fake, svc, raw):
    fake.configure(UPSTREAM["oai-mini"], text=TEXT, cut_after_chunks=after_words("oai-mini", 40))
    fake.configure(UPSTREAM["claude-small"], delay_before_headers=HANG)
    body = {"model": "oai-mini", "stream": True, "messages": [{"role": "user", "content": EASY}],
            "thrifty": {"fallback_models": ["claude-small"]}}
    started = time.monotonic()
    response = raw.post("/v1/chat/completions", json=body)
    assert time.monotonic() - started < SETTINGS["first_token_timeout_s"] + 5 < HANG
    assert "error" in json.loads(sse_events(response.text)[-1][1])
    assert attempts_of(record_of(svc, response.headers)) == [("oai-mini", "error", "stream"),
                                                             ("claude-small", "error", "timeout")]


def test_with_recovery_off_a_broken_stream_ends_with_an_error_event(fake, svc, raw):
    svc.dispatcher.mid_stream_recovery = False  # the mid_stream_recovery setting (restored by the fixture)
    fake.configure(UPSTREAM["oai-mini"], text=TEXT, cut_after_chunks=after_words("oai-mini", 40))
    body = {"model": "oai-mini", "stream": True, "messages": [{"role": "user", "content": EASY}],
            "thrifty": {"fallback_models": ["claude-small"]}}
    response = raw.post("/v1/chat/completions", json=body)
    assert "error" in json.loads(sse_events(response.text)[-1][1]) and fake.count() == 1


def test_a_tool_call_stream_is_not_continued(fake, svc, raw):
    """Documented limit: a stream that sent a tool call (or anything but text) ends with an error event."""
    fake.configure(UPSTREAM["oai-mini"], tool_call={"name": "get_weather", "arguments": {"city": "Paris, France"}},
                   cut_after_chunks=4)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    body = {"model": "oai-mini", "stream": True, "tools": tools, "messages": [{"role": "user", "content": EASY}],
            "thrifty": {"fallback_models": ["claude-small"]}}
    response = raw.post("/v1/chat/completions", json=body)
    events = sse_events(response.text)
    assert any("tool_calls" in d for _, d in events[:-1]) and "error" in json.loads(events[-1][1])
    assert fake.count() == 1


def test_a_request_for_several_choices_is_not_continued(fake, svc, raw):
    fake.configure(UPSTREAM["oai-mini"], text=TEXT, cut_after_chunks=after_words("oai-mini", 40))
    body = {"model": "oai-mini", "stream": True, "n": 2, "messages": [{"role": "user", "content": EASY}],
            "thrifty": {"fallback_models": ["claude-small"]}}
    response = raw.post("/v1/chat/completions", json=body)
    assert "error" in json.loads(sse_events(response.text)[-1][1]) and fake.count() == 1


# -- the parts that call nothing --------------------------------------------------------------------------------


def test_a_prefill_extends_the_clients_own_and_lowers_the_output_limit():
    from serving.recovery import split_prefill, with_prefill

    assert split_prefill("one two \n") == ("one two", " \n")
    asked = {"messages": [{"role": "user", "content": "q"}], "max_tokens": 100}
    out = with_prefill(asked, "one two", spent_tokens=30)
    assert out["messages"][-1] == {"role": "assistant", "content": "one two"} and out["max_tokens"] == 70
    assert asked == {"messages": [{"role": "user", "content": "q"}], "max_tokens": 100}  # the request is not changed
    own = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "Sure:"}],
           "max_completion_tokens": 10}
    out = with_prefill(own, " one two", spent_tokens=30)
    assert out["messages"][1:] == [{"role": "assistant", "content": "Sure: one two"}] and out["max_completion_tokens"] == 1
    blocks = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": [{"type": "text", "text": "A"}]}]}
    assert with_prefill(blocks, "B")["messages"][-1]["content"] == [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}]


def test_the_prefix_matcher_drops_only_what_the_client_already_has():
    from serving.recovery import ContinuationMismatch, PrefixMatcher

    regenerated = PrefixMatcher("one two ", strict=True, model="m")
    assert [regenerated.feed(t) for t in ["on", "e t", "wo thr", "ee"]] == ["", "", "thr", "ee"]
    regenerated.finish()
    with pytest.raises(ContinuationMismatch):
        PrefixMatcher("one two ", strict=True, model="m").feed("one too")
    with pytest.raises(ContinuationMismatch):
        short = PrefixMatcher("one two ", strict=True, model="m")
        short.feed("one")
        short.finish()  # the regenerated answer ended before the part already sent
    held = PrefixMatcher(" ", strict=False)
    assert held.feed("\nnext") == "\nnext"  # other whitespace than the one held back: forwarded from the difference
    assert PrefixMatcher(" \n", strict=False).feed(" next") == "next"
