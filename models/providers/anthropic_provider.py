"""Anthropic Messages through the official ``anthropic`` SDK."""

from __future__ import annotations

import anthropic

from models.providers.errors import UpstreamError, UpstreamStreamError, status_error
from models.providers.raw import anthropic_event
from models.providers.sdk import SDKProvider, map_transport_error

PATH = "/v1/messages"


def map_anthropic_error(exc: Exception, model: str) -> UpstreamError:
    transport = map_transport_error(exc, model, anthropic)
    if transport is not None:
        return transport
    if isinstance(exc, anthropic.APIStatusError):
        return status_error(exc.status_code, exc.body, model=model, headers=exc.response.headers, fallback=exc.message)
    return UpstreamStreamError(f"malformed response from the upstream of model {model!r}", model=model)


class AnthropicProvider(SDKProvider):
    """Sends Messages requests with one pooled ``AsyncAnthropic`` client."""

    wire_format = "anthropic"
    path = PATH
    base_error = anthropic.AnthropicError
    map_error = staticmethod(map_anthropic_error)
    event_parser = staticmethod(anthropic_event)
    assistant_prefill = True  # a trailing assistant message is continued (Anthropic's documented prefill)
    # An explicit timeout also skips the SDK's "use streaming for long requests" guard,
    # which would refuse a large max_tokens before any call is made.
    default_timeout = 600.0
