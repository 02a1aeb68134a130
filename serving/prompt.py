"""The text the router sees for a request: one function for both wire formats and ``/v1/route``.

The router was trained on single prompts, so a conversation is flattened:
the system prompt, then each user and assistant turn's text, and the last user
turn once more at the end — it is the part that decides what the model must do
now, and repeating it weights it in the TF-IDF features and length statistics.
Images, tool calls and tool definitions contribute no text.
"""

from __future__ import annotations

from typing import Any, Mapping

from serving.translate import text_of


def routing_text(body: Mapping[str, Any]) -> str:
    """The prompt text of an OpenAI chat request, an Anthropic messages request, or ``{"prompt": ...}``."""
    if isinstance(body.get("prompt"), str):
        return body["prompt"]
    parts: list[str] = []
    system = text_of(body.get("system"))
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
                flat.append({"type": "text", "text": inner if isinstance(inner, str) else text_of(inner)})
            else:
                flat.append(block)
        content = flat
    return text_of(content)
