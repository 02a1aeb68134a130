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
    UpstreamUnavailable,
    status_error,
)


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
            message = (body.get("error") or {}).get("message") if isinstance(body, dict) else None
            error_type = (body.get("error") or {}).get("type") if isinstance(body, dict) else None
            text = message or "error event in stream"
            if error_type == "overloaded_error":
                return UpstreamUnavailable(text, model=model, status=529, code=error_type)
            return UpstreamStreamError(f"upstream stream of model {model!r} failed: {text}", model=model, code=error_type)
        return status_error(status, body, model=model, headers=exc.response.headers, fallback=exc.message)
    return UpstreamStreamError(f"malformed response from the upstream of model {model!r}", model=model)


class AnthropicProvider:
    """Sends Messages requests with one pooled ``AsyncAnthropic`` client."""

    wire_format = "anthropic"

    def __init__(self, client: anthropic.AsyncAnthropic, *, timeout: float | None = None):
        self.client = client
        self.timeout = timeout
        self._known = sdk_parameters(client.messages.create)

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
