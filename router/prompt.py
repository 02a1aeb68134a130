"""The text the router sees for a request, whoever received it.

One function for the OpenAI and Anthropic wire formats, ``{"prompt": ...}``
bodies, and the messages a LiteLLM routing plug-in is handed, so that a
router scores served traffic, LiteLLM traffic and the logs it learns from
through the same text.

The router was trained on single prompts, so a conversation is flattened:
the system prompt, then each user and assistant turn's text, and the last user
turn once more at the end — it is the part that decides what the model must do
now, and repeating it weights it in the TF-IDF features and length statistics.
Images, tool calls and tool definitions contribute no text.
"""

from __future__ import annotations

from typing import Any, Mapping

_TEXT_PARTS = ("text", "input_text", "output_text", "refusal")


def content_text(content: Any) -> str:
    """The text of an OpenAI or Anthropic ``content`` (a string or a list of parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if isinstance(part, dict) and part.get("type") in _TEXT_PARTS:
            parts.append(part.get("text") or part.get("refusal") or "")
    return "\n".join(p for p in parts if p)


def routing_text(body: Mapping[str, Any]) -> str:
    """The prompt text of an OpenAI chat request, an Anthropic messages request, or ``{"prompt": ...}``."""
    if isinstance(body.get("prompt"), str):
        return body["prompt"]
    parts: list[str] = []
    system = content_text(body.get("system"))
    if system:
        parts.append(system)
    last_user = ""
    for message in body.get("messages") or []:
        if not isinstance(message, Mapping):
            continue
        role = message.get("role")
        text = _message_text(message.get("content"))
        if not text:
            continue
        if role in ("system", "developer", "user", "assistant", "tool"):
            parts.append(text)
        if role == "user":
            last_user = text
    if last_user and len(parts) > 1:
        parts.append(last_user)
    return "\n\n".join(parts)


def _message_text(content: Any) -> str:
    if isinstance(content, list):
        # Anthropic tool results nest their text one level down.
        flat = []
        for block in content:
            if isinstance(block, Mapping) and block.get("type") == "tool_result":
                inner = block.get("content")
                flat.append({"type": "text", "text": inner if isinstance(inner, str) else content_text(inner)})
            else:
                flat.append(block)
        content = flat
    return content_text(content)
