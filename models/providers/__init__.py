"""Provider clients: send a request in a provider's own wire format to one model.

``ProviderPool.get(spec)`` returns the :class:`Provider` for a catalog model
(OpenAI Chat Completions for ``openai``/``openai-compatible``, Anthropic
Messages for ``anthropic``); ``await provider.send_raw(spec, body, stream=...)``
calls it through the official SDK and returns the upstream's answer or stream
(:mod:`models.providers.raw`). Failures are :mod:`models.providers.errors`.
SDKs are imported only when a client is first built.
"""

from models.providers.base import Provider
from models.providers.errors import (
    ContextLengthExceeded,
    UpstreamAuthError,
    UpstreamBadRequest,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamStatusError,
    UpstreamStreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from models.providers.pool import MissingUpstreamKey, ProviderPool, UpstreamSettings

__all__ = [
    "ContextLengthExceeded",
    "MissingUpstreamKey",
    "Provider",
    "ProviderPool",
    "UpstreamAuthError",
    "UpstreamBadRequest",
    "UpstreamConnectionError",
    "UpstreamError",
    "UpstreamRateLimited",
    "UpstreamSettings",
    "UpstreamStatusError",
    "UpstreamStreamError",
    "UpstreamTimeout",
    "UpstreamUnavailable",
]
