"""Raw passthrough: an upstream's answer as its own bytes, parsed once, without the SDKs' typed layers.

The SDKs' typed ``create`` methods walk every request through their
TypedDict transforms and build a pydantic model of every response and
stream chunk; in a gateway that forwards bodies already in the provider's
wire format, that costs more CPU than the rest of a request together.
``send_raw`` (on :class:`~models.providers.sdk.SDKProvider`, the base of
both SDK providers) still calls through the official SDK client, with its low-level ``post`` and
``cast_to=httpx2.Response`` (the SDKs' documented way to call an endpoint
without their typed layer): base URL, auth headers, timeouts, retries and
the mapping of HTTP errors to the SDK's exceptions are the SDK's. What comes
back is the upstream's body:

* a JSON answer: :class:`RawAnswer` (the parsed dict and the exact bytes);
* a stream: :class:`RawStream`, whose ``batch()`` returns the events of each
  network read as :class:`SSEEvent` (name, parsed data, the event's bytes),
  so a gateway can forward several events in one write, and unchanged
  events byte for byte.

Stream semantics follow the SDKs' own stream classes: OpenAI ends at
``data: [DONE]`` (the rest of the body is drained, so the connection is
reused) and raises on a ``{"error": ...}`` event; Anthropic skips unnamed
events and ``ping`` and raises on ``event: error``; a cut connection, a
malformed event or a read timeout raise :mod:`models.providers.errors`
classes, after the events read before the failure were returned.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from typing import Any, Callable, NamedTuple

import anyio
import httpx2
from pydantic_core import from_json

from models.providers.base import is_connection_failure
from models.providers.errors import UpstreamError, UpstreamStreamError, UpstreamTimeout, anthropic_stream_error

Body = dict[str, Any]

DRAIN_S = 0.1  # after [DONE]: time allowed to read the end of the body (as the openai SDK does), so the connection is reused
_CUT = (httpx2.HTTPError, ssl.SSLError, anyio.EndOfStream)


def absolute_url(client: Any, path: str) -> str:
    """``path`` joined to the SDK client's base URL, as the SDK joins it (an absolute URL skips one parse per call).

    A base URL with a query or fragment keeps the relative path: the SDK joins those its own way.
    """
    base = client.base_url
    if base.query or base.fragment:
        return path
    return str(base).rstrip("/") + "/" + path.lstrip("/")


def loads(data: bytes | str) -> Any:
    """JSON, parsed fast; exactly what ``json.loads`` accepts (a fast-path failure is retried with ``json.loads``)."""
    try:
        return from_json(data)
    except ValueError:
        return json.loads(data)


class RawAnswer(NamedTuple):
    body: Body  # the parsed JSON object
    content: bytes  # the bytes the upstream sent


class SSEEvent(NamedTuple):
    name: str | None  # the SSE ``event:`` field
    data: Body  # the parsed ``data:`` field
    raw: bytes  # the event as received (line endings normalised to \n), ending with a blank line


class SSEParser:
    """Incremental server-sent-event parser: ``feed(bytes)`` returns ``(name, data, raw)`` of each complete event.

    Comment-only blocks (keep-alives) are skipped; ``id``/``retry`` fields are ignored.
    An event left incomplete when the body ends is dropped, as the SDKs' decoders do.
    """

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[tuple[str | None, bytes, bytes]]:
        buffer = self._buffer + chunk if self._buffer else chunk
        if b"\r" in buffer:  # CRLF or CR line endings: normalised to LF
            held = buffer.endswith(b"\r")  # a CRLF may be split across reads: keep the CR for the next one
            buffer = (buffer[:-1] if held else buffer).replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if held:
                buffer += b"\r"
        buffer, self._buffer = _split_complete(buffer)
        if not buffer:
            return []
        events = []
        for block in buffer.split(b"\n\n"):
            if not block:
                continue
            if block.startswith(b"data: ") and b"\n" not in block:  # the common case: one data line
                events.append((None, block[6:], block + b"\n\n"))
                continue
            name, data, seen = None, [], False
            for line in block.split(b"\n"):
                if not line or line.startswith(b":"):
                    continue
                field, _, value = line.partition(b":")
                if value.startswith(b" "):
                    value = value[1:]
                if field == b"data":
                    data.append(value)
                    seen = True
                elif field == b"event":
                    name = value.decode("utf-8", "replace") or None
                    seen = True
            if seen:
                events.append((name, b"\n".join(data), block + b"\n\n"))
        return events

    def finish(self) -> list[tuple[str | None, bytes, bytes]]:
        """The events completed by the end of the body (a CR held back as a possible CRLF ends its line)."""
        if self._buffer.endswith(b"\r"):
            self._buffer = self._buffer[:-1] + b"\n"
            return self.feed(b"")
        return []


def _split_complete(buffer: bytes) -> tuple[bytes, bytes]:
    """The complete events of ``buffer`` (up to its last blank line) and the incomplete rest."""
    end = buffer.rfind(b"\n\n")
    if end < 0:
        return b"", buffer
    return buffer[:end], buffer[end + 2 :]


# -- the two dialects: from a parsed SSE block to an event, the end, or an error --------------------
# Each returns an SSEEvent to pass on, None to skip the block, or DONE; or raises an UpstreamError.
DONE = object()


def openai_event(name: str | None, data: bytes, raw: bytes, model: str) -> SSEEvent | object | None:
    if data.startswith(b"[DONE]"):
        return DONE
    parsed = _parse(data, model)
    if isinstance(parsed, dict) and parsed.get("error"):
        error = parsed["error"]
        message = error.get("message") if isinstance(error, dict) else None
        if not message or not isinstance(message, str):
            message = "An error occurred during streaming"
        raise UpstreamStreamError(f"upstream stream of model {model!r} failed: {message}", model=model)
    if not isinstance(parsed, dict):
        raise UpstreamStreamError(f"malformed stream event from model {model!r}", model=model)
    return SSEEvent(name, parsed, raw)


def anthropic_event(name: str | None, data: bytes, raw: bytes, model: str) -> SSEEvent | None:
    if name is None or name == "ping":
        return None
    if name == "error":
        try:
            body: Any = loads(data)
        except ValueError:
            body = data.decode("utf-8", "replace")
        raise anthropic_stream_error(body, model)
    if not data:
        return None
    parsed = _parse(data, model)
    if not isinstance(parsed, dict):
        raise UpstreamStreamError(f"malformed stream event from model {model!r}", model=model)
    return SSEEvent(name, parsed, raw)


def _parse(data: bytes, model: str) -> Any:
    try:
        return loads(data)
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        raise UpstreamStreamError(f"malformed stream event from model {model!r}", model=model) from None


def parse_answer(content: bytes, model: str) -> RawAnswer:
    """A non-streaming answer's body; a body that is not a JSON object is a malformed response."""
    try:
        body = loads(content)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise UpstreamStreamError(f"malformed response from the upstream of model {model!r}", model=model)
    return RawAnswer(body, content)


class RawStream:
    """An upstream SSE response, read one network read at a time.

    ``await batch()`` returns the events of the next read(s) — never an empty
    list until the stream has ended, then always one. A failure (cut,
    timeout, malformed or error event) is raised by the call after the one
    that returned the events before it, so no event that arrived is lost.
    """

    def __init__(self, response: httpx2.Response, model: str, dialect: Callable[..., SSEEvent | object | None]):
        self.response = response
        self.model = model
        self._dialect = dialect
        self._chunks = response.aiter_bytes()
        self._parser = SSEParser()
        self._ended = False
        self._error: BaseException | None = None
        self.done = False  # the upstream sent its end marker (OpenAI's [DONE])

    async def batch(self) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        while not events:
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            if self._ended:
                return events
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                self._ended = True
                await self.aclose()
                blocks = self._parser.finish()
                if not blocks:
                    return events
                chunk = None
            except httpx2.TimeoutException as exc:
                if is_connection_failure(exc):
                    raise UpstreamStreamError(f"stream of model {self.model!r} was cut", model=self.model) from exc
                raise UpstreamTimeout(f"stream of model {self.model!r} stalled", model=self.model) from exc
            except _CUT as exc:
                raise UpstreamStreamError(f"stream of model {self.model!r} was cut", model=self.model) from exc
            try:
                for name, data, raw in (self._parser.feed(chunk) if chunk is not None else blocks):
                    event = self._dialect(name, data, raw, self.model)
                    if event is None:
                        continue
                    if event is DONE:
                        self.done = self._ended = True
                        await self._drain()
                        break
                    events.append(event)
            except UpstreamError as exc:
                self._ended = True
                if not events:
                    raise
                self._error = exc
        return events

    async def _drain(self) -> None:
        """Read the rest of the body after the end marker (briefly), then close: the connection goes back to the pool."""
        try:
            async with asyncio.timeout(DRAIN_S):
                async for _ in self._chunks:
                    pass
        except (TimeoutError, *_CUT):
            pass
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        try:
            await self.response.aclose()
        except Exception:  # closing a broken upstream stream is best effort
            pass
