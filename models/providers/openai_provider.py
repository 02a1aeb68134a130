"""OpenAI Chat Completions through the official ``openai`` SDK (providers ``openai`` and ``openai-compatible``)."""

from __future__ import annotations

from typing import Any

import openai
import httpx2

from models.catalog import ModelSpec
from models.providers.base import Body, EventStream, is_connection_failure, sdk_parameters, split_body
from models.providers.errors import (
    UpstreamConnectionError,
    UpstreamError,
    UpstreamStreamError,
    UpstreamTimeout,
    status_error,
)
from models.providers.raw import RawAnswer, RawStream, absolute_url, openai_event, parse_answer

PATH = "/chat/completions"


def map_openai_error(exc: Exception, model: str) -> UpstreamError:
    if isinstance(exc, openai.APITimeoutError) and not is_connection_failure(exc):
        return UpstreamTimeout(f"timed out calling model {model!r}", model=model)
    if isinstance(exc, openai.APIConnectionError):
        return UpstreamConnectionError(f"cannot connect to the upstream of model {model!r}", model=model)
    if isinstance(exc, openai.APIStatusError):
        return status_error(exc.status_code, exc.body, model=model, headers=exc.response.headers, fallback=exc.message)
    if isinstance(exc, openai.APIError):  # an error event inside a stream
        return UpstreamStreamError(f"upstream stream of model {model!r} failed: {exc.message}", model=model)
    return UpstreamStreamError(f"malformed response from the upstream of model {model!r}", model=model)


class OpenAIProvider:
    """Sends Chat Completions requests with one pooled ``AsyncOpenAI`` client."""

    wire_format = "openai"

    def __init__(self, client: openai.AsyncOpenAI, *, timeout: float | None = None):
        self.client = client
        self.timeout = timeout
        self._known = sdk_parameters(client.chat.completions.create)
        self._url = absolute_url(client, PATH)

    async def send(self, spec: ModelSpec, body: Body, *, stream: bool) -> Body | EventStream:
        kwargs, extra = split_body(body, self._known)
        options: dict[str, Any] = {"extra_body": extra} if extra else {}
        if self.timeout is not None:
            options["timeout"] = self.timeout
        try:
            result = await self.client.chat.completions.create(**kwargs, stream=stream, **options)
        except openai.OpenAIError as exc:
            raise map_openai_error(exc, spec.id) from exc
        if not stream:
            return result.to_dict(mode="json")
        return self._events(result, spec.id)

    async def send_raw(self, spec: ModelSpec, body: Body, *, stream: bool) -> RawAnswer | RawStream:
        """``send`` without the SDK's typed layer: the body goes as it is, the answer comes back as the upstream's bytes.

        Through the same pooled SDK client (its low-level ``post``): same URL, auth,
        timeout, retries and error mapping as ``send``. See :mod:`models.providers.raw`.
        """
        options: dict[str, Any] = {"timeout": self.timeout} if self.timeout is not None else {}
        try:
            response = await self.client.post(
                self._url, cast_to=httpx2.Response, body={**body, "stream": stream}, options=options, stream=stream
            )
        except openai.OpenAIError as exc:
            raise map_openai_error(exc, spec.id) from exc
        if not stream:
            return parse_answer(response.content, spec.id)
        return RawStream(response, spec.id, openai_event)

    async def _events(self, stream: openai.AsyncStream, model: str) -> EventStream:
        try:
            async for chunk in stream:
                yield chunk.to_dict(mode="json")
        except openai.APITimeoutError as exc:
            if is_connection_failure(exc):
                raise UpstreamStreamError(f"stream of model {model!r} was cut", model=model) from exc
            raise UpstreamTimeout(f"stream of model {model!r} stalled", model=model) from exc
        except (openai.APIConnectionError, httpx2.HTTPError) as exc:
            raise UpstreamStreamError(f"stream of model {model!r} was cut", model=model) from exc
        except openai.OpenAIError as exc:
            raise map_openai_error(exc, model) from exc
        except ValueError as exc:  # JSONDecodeError: a malformed chunk
            raise UpstreamStreamError(f"malformed stream event from model {model!r}", model=model) from exc
        finally:
            await stream.close()

    async def aclose(self) -> None:
        await self.client.close()
