"""The provider contract: one coroutine that sends a wire-format request to one model.

A provider knows one HTTP protocol (OpenAI Chat Completions or Anthropic
Messages). ``send`` takes the request body *already in that protocol* with
``model`` set to the spec's upstream id, and returns the response body as a
plain dict, or — when ``stream`` is true — an async iterator of the streamed
event dicts in the order the upstream sent them. The HTTP status is checked
before ``send`` returns, so a refused request raises from ``send`` itself and
never from the iterator; failures after that (a cut or malformed stream) raise
from the iterator. All failures are :mod:`models.providers.errors` classes.
"""

from __future__ import annotations

import inspect
from typing import Any, AsyncIterator, Callable, Mapping, Protocol, runtime_checkable

from models.catalog import ModelSpec

Body = dict[str, Any]
EventStream = AsyncIterator[Body]


@runtime_checkable
class Provider(Protocol):
    async def send(self, spec: ModelSpec, body: Body, *, stream: bool) -> Body | EventStream: ...

    async def aclose(self) -> None: ...


def sdk_parameters(method: Callable) -> frozenset[str]:
    """The request fields an SDK method takes as keyword arguments."""
    skip = {"self", "extra_headers", "extra_query", "extra_body", "timeout", "stream"}
    return frozenset(p for p in inspect.signature(method).parameters if p not in skip)


def split_body(body: Mapping[str, Any], known: frozenset[str]) -> tuple[dict, dict]:
    """Fields the SDK method names, and the rest, which go through ``extra_body``.

    SDK methods take typed keyword arguments; a field newer than the installed
    SDK (or one it dropped, like Anthropic's ``temperature`` in SDK 2.x) still
    reaches the upstream unchanged through ``extra_body``.
    """
    kwargs, extra = {}, {}
    for key, value in body.items():
        if key == "stream":
            continue
        (kwargs if key in known else extra)[key] = value
    return kwargs, extra


def is_connection_failure(exc: BaseException) -> bool:
    """Whether an SDK "timeout" was really a refused, reset or dropped connection.

    The SDKs' aiohttp transport reports every aiohttp connection error as a
    connect *timeout*; the cause chain tells the two apart, so logs and
    metrics say "connection" for a reset and "timeout" only for a deadline.
    """
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 10:
        if isinstance(current, ConnectionError) or type(current).__name__ == "ServerDisconnectedError":
            return True
        current = current.__cause__ or current.__context__
        seen += 1
    return False
