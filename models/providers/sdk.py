"""What the two SDK providers share: the call through a pooled SDK client and the mapping of its failures.

:class:`SDKProvider` sends a request through the SDK client's low-level
``post`` (``send_raw``) and turns the SDK's exceptions into
:mod:`models.providers.errors` classes. A subclass names its SDK's exception
classes, its endpoint path and its stream dialect, and maps a non-stream SDK
error to an :class:`UpstreamError` (:meth:`map_error`): the two SDKs name the
same failures alike, but each reports some of them its own way (an Anthropic
``event: error`` arrives as a status error with status 200).
"""

from __future__ import annotations

from typing import Any, ClassVar

import httpx2

from models.catalog import ModelSpec
from models.providers.base import Body, is_connection_failure
from models.providers.errors import UpstreamConnectionError, UpstreamError, UpstreamTimeout
from models.providers.raw import RawAnswer, RawStream, absolute_url, parse_answer


def map_transport_error(exc: Exception, model: str, sdk_errors) -> UpstreamError | None:
    """Timeouts and connection failures, the same for both SDKs; None for anything else."""
    if isinstance(exc, sdk_errors.APITimeoutError) and not is_connection_failure(exc):
        return UpstreamTimeout(f"timed out calling model {model!r}", model=model)
    if isinstance(exc, sdk_errors.APIConnectionError):
        return UpstreamConnectionError(f"cannot connect to the upstream of model {model!r}", model=model)
    return None


class SDKProvider:
    """Sends requests of one wire format with one pooled SDK client (``AsyncOpenAI`` or ``AsyncAnthropic``)."""

    wire_format: ClassVar[str]
    path: ClassVar[str]  # the endpoint, relative to the client's base URL
    base_error: ClassVar[type[Exception]]  # every exception the SDK raises derives from it
    default_timeout: ClassVar[float | None] = None  # None: the SDK's own
    assistant_prefill: ClassVar[bool] = False  # the upstream continues a trailing assistant message

    def __init__(self, client, *, timeout: float | None = None):
        self.client = client
        self.timeout = timeout
        self._url = absolute_url(client, self.path)

    # -- what a subclass says ---------------------------------------------------------
    @staticmethod
    def map_error(exc: Exception, model: str) -> UpstreamError:
        raise NotImplementedError

    @staticmethod
    def event_parser(name: str | None, data: bytes, raw: bytes, model: str):
        """The stream dialect: a parsed SSE block to an event, None (skip), DONE, or an UpstreamError."""
        raise NotImplementedError

    # -- the call -----------------------------------------------------------------------
    def _options(self) -> dict[str, Any]:
        timeout = self.timeout if self.timeout is not None else self.default_timeout
        return {"timeout": timeout} if timeout is not None else {}

    async def send_raw(self, spec: ModelSpec, body: Body, *, stream: bool) -> RawAnswer | RawStream:
        """The body as it is, through the SDK's low-level ``post``; the answer as the upstream's bytes.

        Through the pooled SDK client: its URL, auth, timeout, retries and error
        mapping. See :mod:`models.providers.raw`.
        """
        try:
            response = await self.client.post(
                self._url, cast_to=httpx2.Response, body={**body, "stream": stream}, options=self._options(), stream=stream
            )
        except self.base_error as exc:
            raise self.map_error(exc, spec.id) from exc
        if not stream:
            return parse_answer(response.content, spec.id)
        return RawStream(response, spec.id, self.event_parser)

    async def aclose(self) -> None:
        await self.client.close()
