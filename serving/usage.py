"""What an upstream answer cost: usage, finish reason and text, read in the upstream's own format.

Read from the upstream's native response or stream (before any translation),
so the numbers logged and billed are the provider's own. :class:`StreamWatcher`
also knows whether a stream reached its final event: an OpenAI stream must
give a ``finish_reason``, an Anthropic stream must end with ``message_stop``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Body = dict[str, Any]


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0


def usage_of(wire_format: str, response: Body) -> Usage:
    usage = response.get("usage") or {}
    if wire_format == "anthropic":
        return Usage(
            (usage.get("input_tokens") or 0)
            + (usage.get("cache_read_input_tokens") or 0)
            + (usage.get("cache_creation_input_tokens") or 0),
            usage.get("output_tokens") or 0,
        )
    return Usage(usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0)


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
            self.usage = usage_of("anthropic", event.get("message") or {})
        elif kind == "content_block_delta" and self.keep_text:
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta":
                self._text.append(delta.get("text", ""))
        elif kind == "message_delta":
            usage = event.get("usage") or {}
            if usage.get("output_tokens") is not None:
                self.usage.output_tokens = usage["output_tokens"]
            if usage.get("input_tokens") is not None:
                self.usage.input_tokens = usage_of("anthropic", {"usage": {**usage}}).input_tokens
            self.finish_reason = (event.get("delta") or {}).get("stop_reason") or self.finish_reason
        elif kind == "message_stop":
            self.complete = True
