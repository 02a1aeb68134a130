"""What an upstream answer cost: usage, finish reason and text, read in the upstream's own format.

Read from the upstream's native response or stream (before any translation),
so the numbers logged and billed are the provider's own. ``input_tokens`` is
all input, cached or not; the parts read from or written to the provider's
prompt cache (OpenAI ``prompt_tokens_details.cached_tokens``; Anthropic
``cache_read_input_tokens`` / ``cache_creation_input_tokens``, split by TTL
when the provider says) are counted apart too, and :func:`usage_cost` prices
each part at its own catalog rate. :class:`StreamWatcher`
also knows whether a stream reached its final event: an OpenAI stream must
give a ``finish_reason``, an Anthropic stream must end with ``message_stop``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from models.catalog import ModelSpec

Body = dict[str, Any]


@dataclass
class Usage:
    input_tokens: int = 0  # every input token, cached or not
    output_tokens: int = 0
    cache_read_tokens: int = 0  # of input_tokens: read from the prompt cache
    cache_write_tokens: int = 0  # of input_tokens: written to the prompt cache (all TTLs)
    cache_write_1h_tokens: int = 0  # of cache_write_tokens: written with a one-hour TTL (Anthropic)


def usage_cost(spec: ModelSpec, usage: Usage) -> float:
    """USD cost of ``usage`` on ``spec``: uncached input, cache reads and writes, output, each at its rate."""
    return spec.cost(
        usage.input_tokens, usage.output_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens - usage.cache_write_1h_tokens,
        cache_write_1h_tokens=usage.cache_write_1h_tokens,
    )


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _anthropic_usage(usage: Body) -> Usage:
    read, write = _count(usage.get("cache_read_input_tokens")), _count(usage.get("cache_creation_input_tokens"))
    split = usage.get("cache_creation")
    write_1h = min(write, _count(split.get("ephemeral_1h_input_tokens"))) if isinstance(split, dict) else 0
    return Usage(_count(usage.get("input_tokens")) + read + write, _count(usage.get("output_tokens")), read, write, write_1h)


def _openai_usage(usage: Body) -> Usage:
    details = usage.get("prompt_tokens_details")
    details = details if isinstance(details, dict) else {}
    total = _count(usage.get("prompt_tokens"))
    read = min(total, _count(details.get("cached_tokens")))
    write = min(total - read, _count(details.get("cache_write_tokens")))  # OpenAI-compatible servers that bill writes
    return Usage(total, _count(usage.get("completion_tokens")), read, write)


def usage_of(wire_format: str, response: Body) -> Usage:
    usage = response.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    return _anthropic_usage(usage) if wire_format == "anthropic" else _openai_usage(usage)


def finish_of(wire_format: str, response: Body) -> str | None:
    if wire_format == "anthropic":
        return response.get("stop_reason")
    choices = response.get("choices") or [{}]
    return choices[0].get("finish_reason")


def text_of_response(wire_format: str, response: Body) -> str:
    if wire_format == "anthropic":
        return "".join(b.get("text", "") for b in response.get("content") or [] if b.get("type") == "text")
    choices = response.get("choices") or [{}]
    return (choices[0].get("message") or {}).get("content") or ""


@dataclass
class StreamWatcher:
    """Watches upstream stream events: usage, finish reason, text, and whether the stream completed."""

    wire_format: str
    keep_text: bool = False
    usage: Usage = field(default_factory=Usage)
    finish_reason: str | None = None
    complete: bool = False
    events: int = 0
    _text: list[str] = field(default_factory=list)
    _anthropic_usage: dict = field(default_factory=dict)  # the usage fields seen so far, latest value each

    @property
    def text(self) -> str:
        return "".join(self._text)

    def observe(self, event: Body) -> None:
        self.events += 1
        if self.wire_format == "anthropic":
            self._observe_anthropic(event)
        else:
            self._observe_openai(event)

    def _observe_openai(self, chunk: Body) -> None:
        if chunk.get("usage"):
            self.usage = usage_of("openai", chunk)
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if self.keep_text and delta.get("content"):
                self._text.append(delta["content"])
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
                self.complete = True

    def _observe_anthropic(self, event: Body) -> None:
        kind = event.get("type")
        if kind == "message_start":
            usage = (event.get("message") or {}).get("usage")
            self._anthropic_usage = dict(usage) if isinstance(usage, dict) else {}
            self.usage = _anthropic_usage(self._anthropic_usage)
        elif kind == "content_block_delta" and self.keep_text:
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta":
                self._text.append(delta.get("text", ""))
        elif kind == "message_delta":
            usage = event.get("usage")
            if isinstance(usage, dict):
                # cumulative counts: those the final event gives replace message_start's, the others stay
                self._anthropic_usage.update({k: v for k, v in usage.items() if v is not None})
                self.usage = _anthropic_usage(self._anthropic_usage)
            self.finish_reason = (event.get("delta") or {}).get("stop_reason") or self.finish_reason
        elif kind == "message_stop":
            self.complete = True
