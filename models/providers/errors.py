"""Upstream errors: what can go wrong when a provider is called, in one small hierarchy.

Each provider maps its SDK's exceptions onto these classes, so callers (the
serving dispatcher, a fail-over loop) reason about *kinds* of failure and never
about a particular SDK::

    UpstreamError                      kind="upstream"   any failure reaching a model
    ├── UpstreamConnectionError        kind="connection" refused, reset, DNS, TLS       (retryable)
    │   └── UpstreamTimeout            kind="timeout"    connect/read deadline passed   (retryable)
    ├── UpstreamStatusError            kind="status"     the upstream answered with an HTTP error
    │   ├── UpstreamBadRequest         kind="bad_request"    400/404/409/422: this request, this model
    │   │   └── ContextLengthExceeded  kind="context_length" prompt too long: a larger model may do
    │   ├── UpstreamAuthError          kind="auth"       401/403: *our* upstream key is wrong
    │   ├── UpstreamRateLimited        kind="rate_limit" 429, with ``retry_after`` when given (retryable)
    │   └── UpstreamUnavailable        kind="server"     5xx (529 "overloaded" included)    (retryable)
    └── UpstreamStreamError            kind="stream"     stream cut, stalled, malformed or without its final event

Every error carries ``kind``, ``status`` (HTTP status or None), ``retry_after``
(seconds or None), ``model`` (catalog id) and a ``message`` that is safe to show
a client: an upstream key never appears in it (auth errors get a fixed text).
"""

from __future__ import annotations

import email.utils
import re
import time
from typing import Mapping


class UpstreamError(Exception):
    kind = "upstream"
    retryable = False

    def __init__(
        self,
        message: str,
        *,
        model: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.model = model
        self.status = status
        self.retry_after = retry_after
        self.code = code

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, status={self.status}, model={self.model!r}, message={self.message!r})"


class UpstreamConnectionError(UpstreamError):
    kind = "connection"
    retryable = True


class UpstreamTimeout(UpstreamConnectionError):
    kind = "timeout"


class UpstreamStatusError(UpstreamError):
    kind = "status"


class UpstreamBadRequest(UpstreamStatusError):
    kind = "bad_request"


class ContextLengthExceeded(UpstreamBadRequest):
    kind = "context_length"


class UpstreamAuthError(UpstreamStatusError):
    kind = "auth"


class UpstreamRateLimited(UpstreamStatusError):
    kind = "rate_limit"
    retryable = True


class UpstreamUnavailable(UpstreamStatusError):
    kind = "server"
    retryable = True


class UpstreamStreamError(UpstreamError):
    kind = "stream"
    retryable = True  # only before the first byte reached the client; the dispatcher decides


# OpenAI: code "context_length_exceeded"; Anthropic: "prompt is too long: N tokens > M maximum",
# "input length and `max_tokens` exceed context limit"; vLLM/Ollama: "maximum context length".
_CONTEXT_LENGTH = re.compile(r"context[_ ]length|prompt is too long|exceed(s|ed)? context limit|maximum context", re.I)


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date)."""
    if not headers:
        return None
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(float(value) / 1000.0, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(parsed.timestamp() - time.time(), 0.0) if parsed else None


def error_message(body: object, fallback: str) -> tuple[str, str | None]:
    """The message and code in an OpenAI- or Anthropic-style error body."""
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        if isinstance(inner, Mapping):
            message = inner.get("message")
            code = inner.get("code") or inner.get("type")
            if isinstance(message, str) and message:
                return message, code if isinstance(code, str) else None
    return fallback, None


def status_error(
    status: int,
    body: object,
    *,
    model: str | None,
    headers: Mapping[str, str] | None = None,
    fallback: str = "",
) -> UpstreamStatusError:
    """The error class for an HTTP error status from an upstream."""
    message, code = error_message(body, fallback or f"upstream returned HTTP {status}")
    retry_after = parse_retry_after(headers)
    kw = dict(model=model, status=status, retry_after=retry_after, code=code)
    if status in (401, 403):
        # An upstream may echo part of the key it rejected: never pass its text on.
        return UpstreamAuthError(f"upstream rejected thrifty's credentials for model {model!r}", **kw)
    if status == 429:
        return UpstreamRateLimited(message, **kw)
    if status >= 500:
        return UpstreamUnavailable(message, **kw)
    if (code and "context_length" in code) or _CONTEXT_LENGTH.search(message):
        return ContextLengthExceeded(message, **kw)
    return UpstreamBadRequest(message, **kw)


def anthropic_stream_error(body: object, model: str | None) -> UpstreamError:
    """The error of an Anthropic ``event: error`` inside a 200 stream (data: ``{"type": "error", "error": {...}}``)."""
    inner = body.get("error") if isinstance(body, Mapping) else None
    message = inner.get("message") if isinstance(inner, Mapping) else None
    error_type = inner.get("type") if isinstance(inner, Mapping) else None
    text = message or "error event in stream"
    if error_type == "overloaded_error":
        return UpstreamUnavailable(text, model=model, status=529, code=error_type)
    return UpstreamStreamError(f"upstream stream of model {model!r} failed: {text}", model=model, code=error_type)
