"""How to reach a model vendor's API: one registry, used to write catalog stubs.

A prices CSV names the vendor whose price it quotes (``openai``,
``anthropic``, ``google``, ``together``, …). :func:`get_vendor` turns that
name into what a catalog entry needs: the provider (wire protocol), the
vendor's OpenAI-compatible endpoint where it has one, and the environment
variable its key is conventionally kept in. Adding a vendor is one entry in
:data:`VENDORS`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Vendor:
    name: str
    provider: str  # openai | anthropic | openai-compatible
    base_url: str | None  # None: the SDK's default (openai, anthropic) or unknown
    api_key_env: str | None


class UnknownVendorError(KeyError):
    def __init__(self, name: str):
        super().__init__(f"unknown vendor {name!r}; known: {', '.join(sorted(VENDORS))}")

    def __str__(self) -> str:
        return self.args[0]


VENDORS: dict[str, Vendor] = {
    v.name: v
    for v in (
        Vendor("openai", "openai", None, "OPENAI_API_KEY"),
        Vendor("anthropic", "anthropic", None, "ANTHROPIC_API_KEY"),
        Vendor("google", "openai-compatible", "https://generativelanguage.googleapis.com/v1beta/openai/", "GEMINI_API_KEY"),
        Vendor("mistral", "openai-compatible", "https://api.mistral.ai/v1", "MISTRAL_API_KEY"),
        Vendor("together", "openai-compatible", "https://api.together.xyz/v1", "TOGETHER_API_KEY"),
        Vendor("deepseek", "openai-compatible", "https://api.deepseek.com/v1", "DEEPSEEK_API_KEY"),
        Vendor("cohere", "openai-compatible", "https://api.cohere.ai/compatibility/v1", "COHERE_API_KEY"),
    )
}

# Model names that say whose they are, for routers trained without a prices CSV.
_NAME_HINTS = (
    (re.compile(r"^(gpt-|chatgpt-|o\d)", re.I), "openai"),
    (re.compile(r"^claude", re.I), "anthropic"),
    (re.compile(r"^gemini-", re.I), "google"),
)


def get_vendor(name: str) -> Vendor:
    try:
        return VENDORS[name]
    except KeyError:
        raise UnknownVendorError(name) from None


def guess_vendor(model: str) -> str | None:
    """The vendor a model's name points to (``gpt-…`` → openai, ``claude…`` → anthropic, …), or None."""
    for pattern, vendor in _NAME_HINTS:
        if pattern.search(model):
            return vendor
    return None
