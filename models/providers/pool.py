"""Pooled SDK clients, one per (provider, base URL, key), created on first use.

Clients are made lazily inside the running event loop (an aiohttp session
binds to the loop that first uses it) and never at import time. Each uses the
SDK's aiohttp transport (``DefaultAioHttpClient``): the default httpx transport
is a known bottleneck under concurrent streaming. Its connection pool allows
1000 connections (no per-host limit) and keeps idle ones alive for reuse. The
SDKs' platform headers (``X-Stainless-OS`` ...) are left out (see
:data:`PLATFORM_HEADERS`).

Upstream keys, first found wins: the spec's ``api_key_env`` variable, the
``keys`` given to the pool (the serving config's ``upstreams.<provider>.api_key``),
then ``OPENAI_API_KEY`` / ``ANTHROPIC_API_KEY``. An OpenAI-compatible server
without auth (Ollama, a local vLLM) gets a placeholder key.

Tests inject their own clients or a ``factory``; both receive only this
module's knowledge of the spec, never a key in a log line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Mapping

from models.catalog import ModelSpec
from models.providers.base import Provider

ENV_KEYS = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY", "openai-compatible": "OPENAI_API_KEY"}
KEYLESS = "no-key"  # what an OpenAI-compatible server without auth is sent


# The SDKs' platform headers describe thrifty's host (OS, arch, Python and SDK versions) to
# the provider; no upstream needs them, and every header costs CPU three times over (SDK,
# httpx2, aiohttp) on every call. The pool builds its clients without them (each SDK's own
# ``Omit()`` in ``default_headers``).
PLATFORM_HEADERS = (
    "X-Stainless-Lang",
    "X-Stainless-Package-Version",
    "X-Stainless-OS",
    "X-Stainless-Arch",
    "X-Stainless-Runtime",
    "X-Stainless-Runtime-Version",
)


class MissingUpstreamKey(LookupError):
    """No key is configured for a model's upstream; the message names where one is looked for."""


@dataclass(frozen=True)
class UpstreamSettings:
    """How to reach one provider when the spec does not say: key, base URL, limits."""

    api_key: str | None = None
    base_url: str | None = None


@dataclass(frozen=True)
class ClientKey:
    provider: str
    base_url: str | None
    api_key: str = field(repr=False)  # repr never shows a key


def provider_family(spec: ModelSpec) -> str:
    return "anthropic" if spec.provider == "anthropic" else "openai"


def default_factory(key: ClientKey, *, timeout: float, connect_timeout: float, max_retries: int) -> Provider:
    """An SDK client with the aiohttp transport, wrapped in its provider."""
    if key.provider == "anthropic":
        import anthropic

        from models.providers.anthropic_provider import AnthropicProvider

        client = anthropic.AsyncAnthropic(
            api_key=key.api_key,
            base_url=key.base_url,
            max_retries=max_retries,
            http_client=anthropic.DefaultAioHttpClient(timeout=_timeout(timeout, connect_timeout)),
            default_headers={name: anthropic.Omit() for name in PLATFORM_HEADERS},
        )
        return AnthropicProvider(client, timeout=timeout)
    import openai

    from models.providers.openai_provider import OpenAIProvider

    client = openai.AsyncOpenAI(
        api_key=key.api_key,
        base_url=key.base_url,
        max_retries=max_retries,
        http_client=openai.DefaultAioHttpClient(timeout=_timeout(timeout, connect_timeout)),
        default_headers={name: openai.Omit() for name in PLATFORM_HEADERS},
    )
    return OpenAIProvider(client, timeout=timeout)


def _timeout(total: float, connect: float):
    import httpx2

    return httpx2.Timeout(total, connect=connect)


class ProviderPool:
    """Finds (and creates once) the provider that serves a model spec.

    Parameters
    ----------
    upstreams: per provider family (``openai``, ``anthropic``), a fallback key and base URL.
    factory: builds a provider for a :class:`ClientKey` (default: the SDKs over aiohttp).
    providers: ready providers by family, used for every spec of that family (tests).
    timeout, connect_timeout: seconds per upstream call.
    max_retries: SDK-level retries; 0 by default because retry and fail-over
        belong to the dispatcher, which knows the other candidates.
    env: where ``*_API_KEY`` variables are read (default ``os.environ``).
    """

    def __init__(
        self,
        upstreams: Mapping[str, UpstreamSettings] | None = None,
        *,
        factory: Callable[..., Provider] | None = None,
        providers: Mapping[str, Provider] | None = None,
        timeout: float = 600.0,
        connect_timeout: float = 10.0,
        max_retries: int = 0,
        env: Mapping[str, str] | None = None,
    ):
        self.upstreams = dict(upstreams or {})
        self.factory = factory or default_factory
        self.fixed = dict(providers or {})
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_retries = max_retries
        self.env = os.environ if env is None else env
        # Creation is synchronous (no await between lookup and insert), so one
        # event loop never builds two clients for the same key.
        self._clients: dict[ClientKey, Provider] = {}

    def api_key(self, spec: ModelSpec) -> str:
        family = provider_family(spec)
        if spec.api_key_env and self.env.get(spec.api_key_env):
            return self.env[spec.api_key_env]
        configured = self.upstreams.get(spec.provider) or self.upstreams.get(family)
        if configured and configured.api_key:
            return configured.api_key
        if spec.api_key_env is None and self.env.get(ENV_KEYS[spec.provider]):
            return self.env[ENV_KEYS[spec.provider]]
        if spec.provider == "openai-compatible":
            return KEYLESS
        where = spec.api_key_env or ENV_KEYS[spec.provider]
        raise MissingUpstreamKey(f"no upstream key for model {spec.id!r}: set {where} or upstreams.{family}.api_key")

    def base_url(self, spec: ModelSpec) -> str | None:
        if spec.base_url:
            return spec.base_url
        configured = self.upstreams.get(spec.provider) or self.upstreams.get(provider_family(spec))
        return configured.base_url if configured else None

    def get(self, spec: ModelSpec) -> Provider:
        family = provider_family(spec)
        if family in self.fixed:
            return self.fixed[family]
        key = ClientKey(family, self.base_url(spec), self.api_key(spec))
        provider = self._clients.get(key)
        if provider is None:
            provider = self.factory(
                key, timeout=self.timeout, connect_timeout=self.connect_timeout, max_retries=self.max_retries
            )
            self._clients[key] = provider
        return provider

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for provider in clients + list(self.fixed.values()):
            try:
                await provider.aclose()
            except Exception:  # closing is best effort at shutdown
                pass
