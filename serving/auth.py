"""Client authentication with the router API keys of the config.

A key is accepted from ``Authorization: Bearer <key>`` (OpenAI SDKs) or
``x-api-key: <key>`` (Anthropic SDKs), compared in constant time. A missing or
wrong key is a 401 before anything else happens. With no keys configured the
server is open (``thrifty serve`` warns at startup).
"""

from __future__ import annotations

import hmac

from fastapi import Request

from serving.errors import AuthenticationFailed

ANONYMOUS = "anonymous"


def presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    value = request.headers.get("x-api-key")
    return value.strip() if value and value.strip() else None


def authenticate(request: Request, keys: dict[str, str]) -> str:
    """The client name of the request's key (``keys``: key -> name)."""
    if not keys:
        return ANONYMOUS
    key = presented_key(request)
    if key is None:
        raise AuthenticationFailed("Missing API key: send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'.")
    match = None
    for known, name in keys.items():
        # compare against every key so timing does not reveal how many matched early
        if hmac.compare_digest(known.encode(), key.encode()):
            match = name
    if match is None:
        raise AuthenticationFailed("Incorrect API key provided.")
    return match
