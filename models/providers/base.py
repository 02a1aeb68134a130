"""The provider contract: one coroutine that sends a wire-format request to one model and hands back its bytes.

A provider knows one HTTP protocol (OpenAI Chat Completions or Anthropic
Messages). ``send_raw`` takes the request body *already in that protocol*
with ``model`` set to the spec's upstream id, sends it as it is, and returns
the upstream's answer parsed once (:mod:`models.providers.raw`): a
:class:`~models.providers.raw.RawAnswer` (the JSON object and its bytes) or —
when ``stream`` is true — a :class:`~models.providers.raw.RawStream` whose
``batch()`` returns the events of each network read. The HTTP status is
checked before ``send_raw`` returns, so a refused request raises from
``send_raw`` itself and never from the stream; failures after that (a cut,
stalled or malformed stream, an error event) raise from ``batch()``. All
failures are :mod:`models.providers.errors` classes.

``assistant_prefill`` says whether the provider's upstreams continue a
trailing assistant message (a catalog entry's own ``assistant_prefill``
overrides it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from models.catalog import ModelSpec

if TYPE_CHECKING:
    from models.providers.raw import RawAnswer, RawStream

Body = dict[str, Any]


@runtime_checkable
class Provider(Protocol):
    assistant_prefill: ClassVar[bool]

    async def send_raw(self, spec: ModelSpec, body: Body, *, stream: bool) -> "RawAnswer | RawStream": ...

    async def aclose(self) -> None: ...


def supports_prefill(spec: ModelSpec, provider: Provider) -> bool:
    """Whether ``spec``'s upstream continues a trailing assistant message: the catalog's word, else the provider's."""
    if spec.assistant_prefill is not None:
        return spec.assistant_prefill
    return bool(getattr(provider, "assistant_prefill", False))


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
