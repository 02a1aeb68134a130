"""Provider clients (the real SDKs over aiohttp) against the fake provider server, faults included."""

from __future__ import annotations

import asyncio
import json

import pytest

from models.catalog import ModelSpec
from models.providers import (
    ContextLengthExceeded,
    MissingUpstreamKey,
    Provider,
    ProviderPool,
    UpstreamAuthError,
    UpstreamBadRequest,
    UpstreamRateLimited,
    UpstreamSettings,
    UpstreamStreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from models.providers.errors import parse_retry_after, status_error
from tests.serving_fixtures import ANTHROPIC_UPSTREAM_KEY, OPENAI_UPSTREAM_KEY, fake, fake_server  # noqa: F401


def specs(url: str) -> dict[str, ModelSpec]:
    return {
        "openai": ModelSpec("oai", "openai", "gpt-up", 1.0, 2.0, base_url=f"{url}/v1"),
        "anthropic": ModelSpec("cla", "anthropic", "claude-up", 1.0, 2.0, base_url=url),
    }


def pool(**kw) -> ProviderPool:
    upstreams = {"openai": UpstreamSettings(api_key=OPENAI_UPSTREAM_KEY), "anthropic": UpstreamSettings(api_key=ANTHROPIC_UPSTREAM_KEY)}
    return ProviderPool(upstreams, env={}, **kw)


def body(fmt: str, model: str, **extra) -> dict:
    b = {"model": model, "messages": [{"role": "user", "content": "hello there"}]}
    if fmt == "anthropic":
        b["max_tokens"] = 50
    return {**b, **extra}


def run(coro_fn, **pool_kw):
    async def main():
        p = pool(**pool_kw)
        try:
            return await coro_fn(p)
        finally:
            await p.aclose()

    return asyncio.run(main())


async def drain(stream):
    """The event dicts of a :class:`models.providers.raw.RawStream`, read to its end."""
    events = []
    while batch := await stream.batch():
        events += [e.data for e in batch]
    return events


@pytest.mark.parametrize("fmt", ["openai", "anthropic"])
def test_send_and_stream_through_the_sdks(fake, fake_server, fmt):
    spec = specs(fake_server[1])[fmt]
    fake.configure(spec.upstream, text="one two three", input_tokens=11, output_tokens=3)

    async def go(p):
        provider = p.get(spec)
        assert p.get(spec) is provider  # one pooled client per (provider, base_url, key)
        assert isinstance(provider, Provider)  # the contract: send_raw and aclose
        answer = await provider.send_raw(spec, body(fmt, spec.upstream, temperature=0.5), stream=False)
        assert json.loads(answer.content) == answer.body  # the upstream's bytes, parsed once
        events = await drain(await provider.send_raw(spec, body(fmt, spec.upstream), stream=True))
        return answer.body, events

    answer, events = run(go)
    if fmt == "openai":
        assert answer["choices"][0]["message"]["content"] == "one two three"
        assert answer["usage"]["prompt_tokens"] == 11
        assert events[-1]["choices"][0]["finish_reason"] == "stop"
    else:
        assert answer["content"][0]["text"] == "one two three"
        assert answer["usage"]["output_tokens"] == 3
        assert [e["type"] for e in events][-2:] == ["message_delta", "message_stop"]
    # the upstream key went to the upstream, and the body's fields went as they were
    call = fake.calls[0]
    assert call.body["temperature"] == 0.5
    key = OPENAI_UPSTREAM_KEY if fmt == "openai" else ANTHROPIC_UPSTREAM_KEY
    assert key in (call.headers.get("authorization", "") + call.headers.get("x-api-key", ""))


@pytest.mark.parametrize("fmt", ["openai", "anthropic"])
@pytest.mark.parametrize(
    "behavior, error, check",
    [
        ({"status": 429, "retry_after": 7}, UpstreamRateLimited, lambda e: e.retry_after == 7 and e.retryable),
        ({"status": 503}, UpstreamUnavailable, lambda e: e.status == 503 and e.retryable),
        ({"status": 400, "error_message": "bad field"}, UpstreamBadRequest, lambda e: "bad field" in e.message),
        ({"context_length_error": True}, ContextLengthExceeded, lambda e: e.kind == "context_length"),
    ],
)
def test_status_errors_map_to_the_hierarchy(fake, fake_server, fmt, behavior, error, check):
    spec = specs(fake_server[1])[fmt]
    fake.configure(spec.upstream, **behavior)

    async def go(p):
        with pytest.raises(error) as info:
            await p.get(spec).send_raw(spec, body(fmt, spec.upstream), stream=False)
        return info.value

    exc = run(go)
    assert check(exc) and exc.model == spec.id


@pytest.mark.parametrize("fmt", ["openai", "anthropic"])
def test_wrong_upstream_key_is_an_auth_error_that_never_echoes_the_key(fake, fake_server, fmt):
    spec = specs(fake_server[1])[fmt]
    wrong = "sk-wrong-upstream-key-999999"  # the fake echoes a rejected key in its error message

    async def main():
        p = ProviderPool({fmt: UpstreamSettings(api_key=wrong)}, env={})
        try:
            with pytest.raises(UpstreamAuthError) as info:
                await p.get(spec).send_raw(spec, body(fmt, spec.upstream), stream=False)
            return info.value
        finally:
            await p.aclose()

    error = asyncio.run(main())
    assert error.status == 401 and wrong not in error.message and wrong not in repr(error)


@pytest.mark.parametrize("fmt", ["openai", "anthropic"])
@pytest.mark.parametrize("fault", [{"cut_after_chunks": 3}, {"malformed_after_chunks": 2}])
def test_broken_streams_raise_stream_errors(fake, fake_server, fmt, fault):
    spec = specs(fake_server[1])[fmt]
    fake.configure(spec.upstream, text="a b c d e f g h", **fault)

    async def go(p):
        stream = await p.get(spec).send_raw(spec, body(fmt, spec.upstream), stream=True)
        with pytest.raises(UpstreamStreamError):
            await drain(stream)

    run(go)


def test_slow_headers_time_out(fake, fake_server):
    spec = specs(fake_server[1])["openai"]
    fake.configure(spec.upstream, delay_before_headers=1.0)

    async def go(p):
        with pytest.raises(UpstreamTimeout):
            await p.get(spec).send_raw(spec, body("openai", spec.upstream), stream=False)

    run(go, timeout=0.3)


def test_upstream_keys_resolution_order():
    spec = ModelSpec("m", "openai", "m", 1, 1, api_key_env="MY_KEY")
    assert ProviderPool(env={"MY_KEY": "from-spec-env"}).api_key(spec) == "from-spec-env"
    plain = ModelSpec("p", "openai", "p", 1, 1)
    configured = ProviderPool({"openai": UpstreamSettings(api_key="from-config")}, env={"OPENAI_API_KEY": "from-env"})
    assert configured.api_key(plain) == "from-config"
    assert ProviderPool(env={"OPENAI_API_KEY": "from-env"}).api_key(plain) == "from-env"
    with pytest.raises(MissingUpstreamKey, match="ANTHROPIC_API_KEY"):
        ProviderPool(env={}).api_key(ModelSpec("c", "anthropic", "c", 1, 1))
    local = ModelSpec("l", "openai-compatible", "l", 0, 0, base_url="http://127.0.0.1:1/v1")
    assert ProviderPool(env={}).api_key(local) == "no-key"  # a local server without auth


def test_retry_after_parsing_and_classification():
    assert parse_retry_after({"retry-after-ms": "1500"}) == 1.5
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({}) is None
    assert isinstance(status_error(529, {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}, model="m"),
                      UpstreamUnavailable)
    assert isinstance(status_error(400, {"error": {"message": "x", "code": "context_length_exceeded"}}, model="m"),
                      ContextLengthExceeded)
