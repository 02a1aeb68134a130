"""Server-sent events in the two dialects the SDKs parse.

OpenAI: ``data: <chunk>`` per chunk, ``data: [DONE]`` at the end, and an error
as ``data: {"error": {...}}``. Anthropic: ``event: <type>`` + ``data: <event>``
per event (the SDK skips events without a name), ending with
``message_stop``, and an error as ``event: error``.
"""

from __future__ import annotations

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Send

from serving.fastjson import dumps

OPENAI_DONE = b"data: [DONE]\n\n"
HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def encode(fmt: str, event: dict) -> bytes:
    if fmt == "anthropic":
        return b"event: " + str(event.get("type", "message")).encode() + b"\ndata: " + dumps(event) + b"\n\n"
    return b"data: " + dumps(event) + b"\n\n"


def encode_error(fmt: str, body: dict) -> bytes:
    """``body``: an error body of :func:`serving.errors.error_body` in the same style."""
    if fmt == "anthropic":
        return b"event: error\ndata: " + dumps(body) + b"\n\n"
    return b"data: " + dumps(body) + b"\n\n"


class EventStreamResponse(StreamingResponse):
    """A streaming response that always closes its body iterator, even when the client went away.

    Starlette leaves an abandoned iterator to the garbage collector; closing it
    here runs the generator's cleanup (closing the upstream stream, logging the
    request) deterministically.
    """

    media_type = "text/event-stream"

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()
