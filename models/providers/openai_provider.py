"""OpenAI Chat Completions through the official ``openai`` SDK (providers ``openai`` and ``openai-compatible``)."""

from __future__ import annotations

import openai

from models.providers.errors import UpstreamError, UpstreamStreamError, status_error
from models.providers.raw import openai_event
from models.providers.sdk import SDKProvider, map_transport_error

PATH = "/chat/completions"


def map_openai_error(exc: Exception, model: str) -> UpstreamError:
    transport = map_transport_error(exc, model, openai)
    if transport is not None:
        return transport
    if isinstance(exc, openai.APIStatusError):
        return status_error(exc.status_code, exc.body, model=model, headers=exc.response.headers, fallback=exc.message)
    return UpstreamStreamError(f"malformed response from the upstream of model {model!r}", model=model)


class OpenAIProvider(SDKProvider):
    """Sends Chat Completions requests with one pooled ``AsyncOpenAI`` client."""

    wire_format = "openai"
    path = PATH
    base_error = openai.OpenAIError
    map_error = staticmethod(map_openai_error)
    event_parser = staticmethod(openai_event)
