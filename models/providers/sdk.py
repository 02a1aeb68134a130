"""What the two SDK providers share: the calls through a pooled SDK client and the mapping of their failures.

:class:`SDKProvider` sends a request through the SDK's typed method
(``send``) or its low-level ``post`` (``send_raw``), and turns the SDK's
exceptions into :mod:`models.providers.errors` classes. A subclass names its
SDK's exception classes, its typed method and its endpoint path, and maps a
non-stream SDK error to an :class:`UpstreamError` (:meth:`map_error`): the
two SDKs name the same failures alike, but each reports some of them its own
way (an Anthropic ``event: error`` arrives as a status error with status 200).
"""

from __future__ import annotations

from typing import Any, ClassVar

import httpx2

from models.catalog import ModelSpec
from models.providers.base import Body, EventStream, is_connection_failure, sdk_parameters, split_body
from models.providers.errors import UpstreamConnectionError, UpstreamError, UpstreamStreamError, UpstreamTimeout
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
    sdk: ClassVar[Any]  # the SDK module: its APITimeoutError and APIConnectionError
    base_error: ClassVar[type[Exception]]  # every exception the SDK raises derives from it
    default_timeout: ClassVar[float | None] = None  # None: the SDK's own

    def __init__(self, client, *, timeout: float | None = None):
        self.client = client
        self.timeout = timeout
        self._known = sdk_parameters(self.typed_method())
        self._url = absolute_url(client, self.path)

    # -- what a subclass says ---------------------------------------------------------
    def typed_method(self):
        """The SDK's typed method for this endpoint (``client.chat.completions.create``, ...)."""
        raise NotImplementedError

    @staticmethod
    def map_error(exc: Exception, model: str) -> UpstreamError:
        raise NotImplementedError

    @staticmethod
    def event_parser(data: bytes):
        raise NotImplementedError

    # -- the calls ----------------------------------------------------------------------
    def _options(self) -> dict[str, Any]:
        timeout = self.timeout if self.timeout is not None else self.default_timeout
        return {"timeout": timeout} if timeout is not None else {}

    async def send(self, spec: ModelSpec, body: Body, *, stream: bool) -> Body | EventStream:
        kwargs, extra = split_body(body, self._known)
        options = self._options()
        if extra:
            options["extra_body"] = extra
        try:
            result = await self.typed_method()(**kwargs, stream=stream, **options)
        except self.base_error as exc:
            raise self.map_error(exc, spec.id) from exc
        if not stream:
            return result.to_dict(mode="json")
        return self._events(result, spec.id)

    async def send_raw(self, spec: ModelSpec, body: Body, *, stream: bool) -> RawAnswer | RawStream:
        """``send`` without the SDK's typed layer: the body goes as it is, the answer comes back as the upstream's bytes.

        Through the same pooled SDK client (its low-level ``post``): same URL, auth,
        timeout, retries and error mapping as ``send``. See :mod:`models.providers.raw`.
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

    async def _events(self, stream, model: str) -> EventStream:
        try:
            async for event in stream:
                yield event.to_dict(mode="json")
        except self.sdk.APITimeoutError as exc:
            if is_connection_failure(exc):
                raise UpstreamStreamError(f"stream of model {model!r} was cut", model=model) from exc
            raise UpstreamTimeout(f"stream of model {model!r} stalled", model=model) from exc
        except (self.sdk.APIConnectionError, httpx2.HTTPError) as exc:
            raise UpstreamStreamError(f"stream of model {model!r} was cut", model=model) from exc
        except self.base_error as exc:
            raise self.map_error(exc, model) from exc
        except ValueError as exc:  # JSONDecodeError: a malformed event
            raise UpstreamStreamError(f"malformed stream event from model {model!r}", model=model) from exc
        finally:
            await stream.close()

    async def aclose(self) -> None:
        await self.client.close()
