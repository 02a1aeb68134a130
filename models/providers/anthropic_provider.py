"""Anthropic Messages through the official ``anthropic`` SDK."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx2

from models.catalog import ModelSpec
from models.providers.base import Body, EventStream, is_connection_failure, sdk_parameters, split_body
from models.providers.errors import (
    UpstreamConnectionError,
    UpstreamError,
    UpstreamStreamError,
    UpstreamTimeout,
    anthropic_stream_error,
    status_error,
)
from models.providers.raw import RawAnswer, RawStream, absolute_url, anthropic_event, parse_answer

PATH = "/v1/messages"


def map_anthropic_error(exc: Exception, model: str) -> UpstreamError:
    if isinstance(exc, anthropic.APITimeoutError) and not is_connection_failure(exc):
        return UpstreamTimeout(f"timed out calling model {model!r}", model=model)
    if isinstance(exc, anthropic.APIConnectionError):
        return UpstreamConnectionError(f"cannot connect to the upstream of model {model!r}", model=model)
    if isinstance(exc, anthropic.APIStatusError):
        status = exc.status_code
        body = exc.body
        # An ``event: error`` inside a 200 stream becomes an APIStatusError with status 200.
        if status < 400:
            return anthropic_stream_error(body, model)
        return status_error(status, body, model=model, headers=exc.response.headers, fallback=exc.message)
    return UpstreamStreamError(f"malformed response from the upstream of model {model!r}", model=model)


class AnthropicProvider:
    """Sends Messages requests with one pooled ``AsyncAnthropic`` client."""

    wire_format = "anthropic"

    def __init__(self, client: anthropic.AsyncAnthropic, *, timeout: float | None = None):
        self.client = client
        self.timeout = timeout
        self._known = sdk_parameters(client.messages.create)
        self._url = absolute_url(client, PATH)

    async def send(self, spec: ModelSpec, body: Body, *, stream: bool) -> Body | EventStream:
        kwargs, extra = split_body(body, self._known)
        options: dict[str, Any] = {"extra_body": extra} if extra else {}
        # An explicit timeout also skips the SDK's "use streaming for long requests" guard,
        # which would refuse a large max_tokens before any call is made.
        options["timeout"] = self.timeout if self.timeout is not None else 600.0
        try:
            result = await self.client.messages.create(**kwargs, stream=stream, **options)
        except anthropic.AnthropicError as exc:
            raise map_anthropic_error(exc, spec.id) from exc
        if not stream:
            return result.to_dict(mode="json")
        return self._events(result, spec.id)

    async def send_raw(self, spec: ModelSpec, body: Body, *, stream: bool) -> RawAnswer | RawStream:
        """``send`` without the SDK's typed layer: the body goes as it is, the answer comes back as the upstream's bytes.

        Through the same pooled SDK client (its low-level ``post``): same URL, auth,
        timeout, retries and error mapping as ``send``. See :mod:`models.providers.raw`.
        """
        options: dict[str, Any] = {"timeout": self.timeout if self.timeout is not None else 600.0}
        try:
            response = await self.client.post(
                self._url, cast_to=httpx2.Response, body={**body, "stream": stream}, options=options, stream=stream
            )
        except anthropic.AnthropicError as exc:
            raise map_anthropic_error(exc, spec.id) from exc
        if not stream:
            return parse_answer(response.content, spec.id)
        return RawStream(response, spec.id, anthropic_event)

    async def _events(self, stream: anthropic.AsyncStream, model: str) -> EventStream:
        try:
            async for event in stream:
                yield event.to_dict(mode="json")
        except anthropic.APITimeoutError as exc:
            if is_connection_failure(exc):
                raise UpstreamStreamError(f"stream of model {model!r} was cut", model=model) from exc
            raise UpstreamTimeout(f"stream of model {model!r} stalled", model=model) from exc
        except (anthropic.APIConnectionError, httpx2.HTTPError) as exc:
            raise UpstreamStreamError(f"stream of model {model!r} was cut", model=model) from exc
        except anthropic.AnthropicError as exc:
            raise map_anthropic_error(exc, model) from exc
        except ValueError as exc:  # JSONDecodeError: a malformed event
            raise UpstreamStreamError(f"malformed stream event from model {model!r}", model=model) from exc
        finally:
            await stream.close()

    async def aclose(self) -> None:
        await self.client.close()
