"""Translation between the OpenAI Chat Completions and Anthropic Messages wire formats.

Pure functions over plain dicts, used only when a request in one format is
routed to a model of the other provider; same-format requests pass through
untouched (best fidelity, least overhead).

Requests:  :func:`openai_request_to_anthropic`, :func:`anthropic_request_to_openai`
Responses: :func:`anthropic_response_to_openai`, :func:`openai_response_to_anthropic`
Streams:   :func:`anthropic_stream_to_openai`, :func:`openai_stream_to_anthropic`
           (async generators from upstream event dicts to client event dicts)

Covered: system prompt, multi-turn messages, tool definitions, tool choice,
tool calls and tool results, images (base64/data URLs and URLs), PDF documents,
stop sequences and stop reasons, usage, max_tokens, temperature/top_p and the
user id. Not translated (dropped): sampling options without a counterpart
(``top_k``, ``seed``, penalties, logprobs), ``response_format``, extended
thinking blocks. A request that cannot be expressed in the other format
(``n > 1``, audio input, a content block with no counterpart) raises
:class:`TranslationError`, which the server turns into a 400.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, AsyncIterator

from router.prompt import content_text as _text_of

Body = dict[str, Any]

DEFAULT_MAX_TOKENS = 4096

# OpenAI finish_reason -> Anthropic stop_reason
OPENAI_TO_ANTHROPIC_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
# Anthropic stop_reason -> OpenAI finish_reason
ANTHROPIC_TO_OPENAI_STOP = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


class TranslationError(ValueError):
    """The request cannot be expressed in the target format."""


# -- shared helpers ------------------------------------------------------------


def _parse_data_url(url: str) -> tuple[str, str] | None:
    """``(media_type, base64 data)`` of a ``data:<type>;base64,<data>`` URL, else None."""
    if not url.startswith("data:"):
        return None
    header, sep, data = url[5:].partition(",")
    if not sep or not header.endswith(";base64"):
        return None
    return header[: -len(";base64")] or "application/octet-stream", data


def _json_loads_object(text: str | None) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        # A model can emit malformed arguments; keep them rather than fail the turn.
        return {"_raw_arguments": text}
    return value if isinstance(value, dict) else {"value": value}


def _new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


# -- requests: OpenAI -> Anthropic -------------------------------------------------


def _openai_part_to_anthropic(part: Any) -> dict:
    if isinstance(part, str):
        return {"type": "text", "text": part}
    kind = part.get("type")
    if kind == "text":
        return {"type": "text", "text": part.get("text", "")}
    if kind == "image_url":
        image = part.get("image_url") or {}
        url = image.get("url", "") if isinstance(image, dict) else str(image)
        parsed = _parse_data_url(url)
        if parsed:
            return {"type": "image", "source": {"type": "base64", "media_type": parsed[0], "data": parsed[1]}}
        return {"type": "image", "source": {"type": "url", "url": url}}
    if kind == "file":
        file = part.get("file") or {}
        parsed = _parse_data_url(file.get("file_data", ""))
        if parsed:
            return {"type": "document", "source": {"type": "base64", "media_type": parsed[0], "data": parsed[1]}}
        raise TranslationError("a file part needs inline file_data to be sent to an Anthropic model")
    raise TranslationError(f"content part of type {kind!r} cannot be sent to an Anthropic model")


def _openai_content_to_blocks(content: Any) -> list[dict]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = [_openai_part_to_anthropic(p) for p in content]
    return [b for b in blocks if not (b["type"] == "text" and not b["text"])]


def _openai_tool_to_anthropic(tool: dict) -> dict:
    if tool.get("type", "function") != "function":
        raise TranslationError(f"tool of type {tool.get('type')!r} cannot be sent to an Anthropic model")
    function = tool.get("function") or {}
    out = {
        "name": function.get("name", ""),
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if function.get("description"):
        out["description"] = function["description"]
    return out


def _openai_tool_choice_to_anthropic(choice: Any, parallel: bool | None) -> dict | None:
    if choice is None:
        out = {"type": "auto"} if parallel is False else None
    elif choice == "auto":
        out = {"type": "auto"}
    elif choice == "required":
        out = {"type": "any"}
    elif choice == "none":
        out = {"type": "none"}
    elif isinstance(choice, dict) and choice.get("type") == "function":
        out = {"type": "tool", "name": (choice.get("function") or {}).get("name", "")}
    else:
        raise TranslationError(f"tool_choice {choice!r} cannot be sent to an Anthropic model")
    if out is not None and parallel is False and out["type"] != "none":
        out["disable_parallel_tool_use"] = True
    return out


def _merge_same_role(messages: list[dict]) -> list[dict]:
    """Anthropic wants user and assistant turns to alternate: merge neighbours of one role."""
    merged: list[dict] = []
    for message in messages:
        if merged and merged[-1]["role"] == message["role"]:
            merged[-1]["content"].extend(message["content"])
        else:
            merged.append({"role": message["role"], "content": list(message["content"])})
    return merged


def openai_request_to_anthropic(body: Body, *, model: str, default_max_tokens: int = DEFAULT_MAX_TOKENS) -> Body:
    """An OpenAI Chat Completions request as an Anthropic Messages request for ``model``."""
    if (body.get("n") or 1) > 1:
        raise TranslationError("n > 1 cannot be sent to an Anthropic model")
    if body.get("functions") or body.get("function_call"):
        raise TranslationError("legacy 'functions' cannot be sent to an Anthropic model; use 'tools'")
    system: list[str] = []
    messages: list[dict] = []
    for message in body.get("messages", []):
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            text = _text_of(content)
            if text:
                system.append(text)
        elif role == "user":
            blocks = _openai_content_to_blocks(content)
            if blocks:
                messages.append({"role": "user", "content": blocks})
        elif role == "assistant":
            blocks = _openai_content_to_blocks(content if not isinstance(content, list) else
                                                [p for p in content if p.get("type") == "text"])
            if message.get("refusal") and not blocks:
                blocks.append({"type": "text", "text": message["refusal"]})
            for call in message.get("tool_calls") or []:
                function = call.get("function") or {}
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": call.get("id") or _new_id("toolu_"),
                        "name": function.get("name", ""),
                        "input": _json_loads_object(function.get("arguments")),
                    }
                )
            if blocks:
                messages.append({"role": "assistant", "content": blocks})
        elif role == "tool":
            result: dict = {"type": "tool_result", "tool_use_id": message.get("tool_call_id", "")}
            result["content"] = _text_of(content) if not isinstance(content, str) else content
            messages.append({"role": "user", "content": [result]})
        else:
            raise TranslationError(f"message role {role!r} cannot be sent to an Anthropic model")

    out: Body = {
        "model": model,
        "messages": _merge_same_role(messages),
        "max_tokens": body.get("max_completion_tokens") or body.get("max_tokens") or default_max_tokens,
    }
    if system:
        out["system"] = "\n\n".join(system)
    if body.get("temperature") is not None:
        out["temperature"] = min(float(body["temperature"]), 1.0)  # OpenAI allows up to 2
    if body.get("top_p") is not None:
        out["top_p"] = body["top_p"]
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if body.get("stream"):
        out["stream"] = True
    if body.get("tools"):
        out["tools"] = [_openai_tool_to_anthropic(t) for t in body["tools"]]
    choice = _openai_tool_choice_to_anthropic(body.get("tool_choice"), body.get("parallel_tool_calls"))
    if choice is not None and (out.get("tools") or choice["type"] == "none"):
        out["tool_choice"] = choice
    user = body.get("user") or body.get("safety_identifier")
    if user:
        out["metadata"] = {"user_id": str(user)}
    return out


# -- requests: Anthropic -> OpenAI -------------------------------------------------


def _anthropic_block_to_openai_part(block: dict) -> dict | None:
    kind = block.get("type")
    if kind == "text":
        return {"type": "text", "text": block.get("text", "")}
    if kind == "image":
        source = block.get("source") or {}
        if source.get("type") == "base64":
            url = f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
        elif source.get("type") == "url":
            url = source.get("url", "")
        else:
            raise TranslationError(f"image source {source.get('type')!r} cannot be sent to an OpenAI model")
        return {"type": "image_url", "image_url": {"url": url}}
    if kind == "document":
        source = block.get("source") or {}
        if source.get("type") == "base64":
            data_url = f"data:{source.get('media_type', 'application/pdf')};base64,{source.get('data', '')}"
            return {"type": "file", "file": {"file_data": data_url, "filename": block.get("title") or "document.pdf"}}
        if source.get("type") == "text":
            return {"type": "text", "text": source.get("data", "")}
        raise TranslationError(f"document source {source.get('type')!r} cannot be sent to an OpenAI model")
    if kind in ("thinking", "redacted_thinking"):
        return None  # the other provider cannot read them
    raise TranslationError(f"content block of type {kind!r} cannot be sent to an OpenAI model")


def _tool_result_to_openai(block: dict) -> tuple[dict, list[dict]]:
    """A tool message, and image parts that a tool message cannot carry (they follow as a user turn)."""
    content = block.get("content")
    images: list[dict] = []
    if isinstance(content, list):
        texts = []
        for item in content:
            if item.get("type") == "image":
                images.append(_anthropic_block_to_openai_part(item))
            else:
                texts.append(_text_of([item]))
        text = "\n".join(t for t in texts if t)
    else:
        text = content or ""
    if block.get("is_error"):
        text = f"Error: {text}" if text else "Error"
    return {"role": "tool", "tool_call_id": block.get("tool_use_id", ""), "content": text}, images


def anthropic_request_to_openai(body: Body, *, model: str, max_tokens_field: str = "max_tokens") -> Body:
    """An Anthropic Messages request as an OpenAI Chat Completions request for ``model``.

    ``max_tokens_field``: ``max_completion_tokens`` for OpenAI's own API (newer
    models refuse ``max_tokens``), ``max_tokens`` for OpenAI-compatible servers.
    """
    messages: list[dict] = []
    system = _text_of(body.get("system"))
    if system:
        messages.append({"role": "system", "content": system})
    for message in body.get("messages", []):
        role = message.get("role")
        content = message.get("content")
        if role not in ("user", "assistant"):
            raise TranslationError(f"message role {role!r} is not valid in an Anthropic request")
        if isinstance(content, str):
            messages.append({"role": role, "content": content})
            continue
        if role == "assistant":
            texts, calls = [], []
            for block in content or []:
                if block.get("type") == "tool_use":
                    calls.append(
                        {
                            "id": block.get("id") or _new_id("call_"),
                            "type": "function",
                            "function": {"name": block.get("name", ""), "arguments": json.dumps(block.get("input") or {})},
                        }
                    )
                else:
                    part = _anthropic_block_to_openai_part(block)
                    if part and part.get("type") == "text":
                        texts.append(part["text"])
            out: dict = {"role": "assistant", "content": "".join(texts) or None}
            if calls:
                out["tool_calls"] = calls
            if out["content"] is not None or calls:
                messages.append(out)
            continue
        # user: tool results become tool messages, in order, before the rest of the turn
        parts: list[dict] = []
        for block in content or []:
            if block.get("type") == "tool_result":
                tool_message, images = _tool_result_to_openai(block)
                messages.append(tool_message)
                parts.extend(images)
            else:
                part = _anthropic_block_to_openai_part(block)
                if part is not None:
                    parts.append(part)
        if parts:
            if all(p["type"] == "text" for p in parts):
                messages.append({"role": "user", "content": "\n".join(p["text"] for p in parts)})
            else:
                messages.append({"role": "user", "content": parts})

    out_body: Body = {"model": model, "messages": messages}
    if body.get("max_tokens") is not None:
        out_body[max_tokens_field] = body["max_tokens"]
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            out_body[key] = body[key]
    if body.get("stop_sequences"):
        out_body["stop"] = list(body["stop_sequences"])
    if body.get("stream"):
        out_body["stream"] = True
    if body.get("tools"):
        out_body["tools"] = [_anthropic_tool_to_openai(t) for t in body["tools"]]
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        kind = choice.get("type")
        mapped = {"auto": "auto", "any": "required", "none": "none"}.get(kind)
        if kind == "tool":
            mapped = {"type": "function", "function": {"name": choice.get("name", "")}}
        if mapped is None:
            raise TranslationError(f"tool_choice of type {kind!r} cannot be sent to an OpenAI model")
        out_body["tool_choice"] = mapped
        if choice.get("disable_parallel_tool_use") and out_body.get("tools"):
            out_body["parallel_tool_calls"] = False
    user = (body.get("metadata") or {}).get("user_id")
    if user:
        out_body["user"] = str(user)
    return out_body


def _anthropic_tool_to_openai(tool: dict) -> dict:
    if tool.get("type") not in (None, "custom"):
        raise TranslationError(f"server tool {tool.get('type')!r} cannot be sent to an OpenAI model")
    function = {"name": tool.get("name", ""), "parameters": tool.get("input_schema") or {"type": "object", "properties": {}}}
    if tool.get("description"):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


# -- responses -----------------------------------------------------------------


def anthropic_usage_to_openai(usage: dict | None) -> dict:
    usage = usage or {}
    prompt = (usage.get("input_tokens") or 0) + (usage.get("cache_read_input_tokens") or 0) + (
        usage.get("cache_creation_input_tokens") or 0
    )
    completion = usage.get("output_tokens") or 0
    out = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    if usage.get("cache_read_input_tokens"):
        out["prompt_tokens_details"] = {"cached_tokens": usage["cache_read_input_tokens"]}
    return out


def openai_usage_to_anthropic(usage: dict | None) -> dict:
    usage = usage or {}
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    out = {"input_tokens": (usage.get("prompt_tokens") or 0) - cached, "output_tokens": usage.get("completion_tokens") or 0}
    if cached:
        out["cache_read_input_tokens"] = cached
    return out


def anthropic_response_to_openai(message: Body, *, model: str) -> Body:
    """An Anthropic Messages response as an OpenAI Chat Completion."""
    texts, calls = [], []
    for block in message.get("content") or []:
        if block.get("type") == "text":
            texts.append(block.get("text", ""))
        elif block.get("type") == "tool_use":
            calls.append(
                {
                    "id": block.get("id", ""),
                    "type": "function",
                    "function": {"name": block.get("name", ""), "arguments": json.dumps(block.get("input") or {})},
                }
            )
    stop = message.get("stop_reason")
    reply: dict = {"role": "assistant", "content": "".join(texts) if texts else None, "refusal": None}
    if calls:
        reply["tool_calls"] = calls
    return {
        "id": message.get("id") or _new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": reply, "logprobs": None, "finish_reason": ANTHROPIC_TO_OPENAI_STOP.get(stop, "stop")}
        ],
        "usage": anthropic_usage_to_openai(message.get("usage")),
    }


def openai_response_to_anthropic(completion: Body, *, model: str) -> Body:
    """An OpenAI Chat Completion as an Anthropic Messages response."""
    choices = completion.get("choices") or [{}]
    choice = choices[0]
    message = choice.get("message") or {}
    content: list[dict] = []
    text = _text_of(message.get("content"))
    if text:
        content.append({"type": "text", "text": text})
    elif message.get("refusal"):
        content.append({"type": "text", "text": message["refusal"]})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or _new_id("toolu_"),
                "name": function.get("name", ""),
                "input": _json_loads_object(function.get("arguments")),
            }
        )
    finish = choice.get("finish_reason")
    stop_reason = "refusal" if message.get("refusal") and not text else OPENAI_TO_ANTHROPIC_STOP.get(finish, "end_turn")
    return {
        "id": _anthropic_id(completion.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": openai_usage_to_anthropic(completion.get("usage")),
    }


def _anthropic_id(upstream_id: str | None) -> str:
    return f"msg_{upstream_id}" if upstream_id else _new_id("msg_")


# -- streams: Anthropic events -> OpenAI chunks ---------------------------------------


async def anthropic_stream_to_openai(
    events: AsyncIterator[Body], *, model: str, include_usage: bool = False
) -> AsyncIterator[Body]:
    """Chat Completion chunks from Anthropic stream events.

    ``message_start`` opens with the assistant role; text deltas become
    ``content`` deltas; each ``tool_use`` block becomes a tool call (its id and
    name first, then argument fragments); ``message_delta`` gives the
    ``finish_reason``; with ``include_usage`` a last chunk with empty
    ``choices`` carries the usage, as OpenAI sends it.
    """
    completion_id = _new_id("chatcmpl-")
    created = int(time.time())
    usage: dict = {}
    tool_index: dict[int, int] = {}  # Anthropic block index -> OpenAI tool call index

    def chunk(delta: dict | None = None, finish: str | None = None, **extra) -> Body:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
        return {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": choices, **extra}

    async for event in events:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            completion_id = message.get("id") or completion_id
            usage.update({k: v for k, v in (message.get("usage") or {}).items() if v is not None})
            yield chunk({"role": "assistant", "content": ""})
        elif kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") == "tool_use":
                index = tool_index.setdefault(event.get("index", 0), len(tool_index))
                call = {"index": index, "id": block.get("id", ""), "type": "function",
                        "function": {"name": block.get("name", ""), "arguments": ""}}
                yield chunk({"tool_calls": [call]})
            elif block.get("type") == "text" and block.get("text"):
                yield chunk({"content": block["text"]})
        elif kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta":
                yield chunk({"content": delta.get("text", "")})
            elif delta.get("type") == "input_json_delta" and event.get("index", 0) in tool_index:
                call = {"index": tool_index[event.get("index", 0)], "function": {"arguments": delta.get("partial_json", "")}}
                yield chunk({"tool_calls": [call]})
        elif kind == "message_delta":
            usage.update({k: v for k, v in (event.get("usage") or {}).items() if v is not None})
            stop = (event.get("delta") or {}).get("stop_reason")
            yield chunk({}, ANTHROPIC_TO_OPENAI_STOP.get(stop, "stop"))
        elif kind == "message_stop":
            if include_usage:
                yield chunk(None, usage=anthropic_usage_to_openai(usage))
        # ping, content_block_stop and unknown events carry nothing an OpenAI client reads


# -- streams: OpenAI chunks -> Anthropic events ---------------------------------------


async def openai_stream_to_anthropic(chunks: AsyncIterator[Body], *, model: str) -> AsyncIterator[Body]:
    """Anthropic stream events from Chat Completion chunks.

    The sequence is the one the Anthropic SDK accumulates: ``message_start``,
    then per content block ``content_block_start``, its deltas and
    ``content_block_stop``, then ``message_delta`` (stop reason and usage) and
    ``message_stop``. Input tokens are known only at the end of an OpenAI
    stream, so ``message_start`` reports 0 and ``message_delta`` the totals.
    The final two events are sent when the upstream stream ends.
    """
    started = False
    block_index = -1
    open_block: str | None = None  # "text" or "tool"
    tool_blocks: dict[int, int] = {}  # OpenAI tool call index -> Anthropic block index
    finish: str | None = None
    refusal = False
    usage: dict = {}
    message_id = _new_id("msg_")

    def start_event() -> Body:
        return {
            "type": "message_start",
            "message": {
                "id": message_id, "type": "message", "role": "assistant", "model": model, "content": [],
                "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0},
            },
        }

    async for chunk in chunks:
        if not started:
            message_id = _anthropic_id(chunk.get("id"))
            yield start_event()
            started = True
        if chunk.get("usage"):
            usage = openai_usage_to_anthropic(chunk["usage"])
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            text = delta.get("content") or delta.get("refusal")
            if delta.get("refusal"):
                refusal = True
            if text:
                if open_block != "text":
                    if open_block is not None:
                        yield {"type": "content_block_stop", "index": block_index}
                    block_index += 1
                    open_block = "text"
                    yield {"type": "content_block_start", "index": block_index, "content_block": {"type": "text", "text": ""}}
                yield {"type": "content_block_delta", "index": block_index, "delta": {"type": "text_delta", "text": text}}
            for call in delta.get("tool_calls") or []:
                index = call.get("index", 0)
                function = call.get("function") or {}
                if index not in tool_blocks:
                    if open_block is not None:
                        yield {"type": "content_block_stop", "index": block_index}
                    block_index += 1
                    open_block = "tool"
                    tool_blocks[index] = block_index
                    yield {
                        "type": "content_block_start",
                        "index": block_index,
                        "content_block": {"type": "tool_use", "id": call.get("id") or _new_id("toolu_"),
                                          "name": function.get("name") or "", "input": {}},
                    }
                if function.get("arguments"):
                    yield {"type": "content_block_delta", "index": tool_blocks[index],
                           "delta": {"type": "input_json_delta", "partial_json": function["arguments"]}}
            if choice.get("finish_reason"):
                finish = choice["finish_reason"]
    if not started:
        yield start_event()
    if open_block is not None:
        yield {"type": "content_block_stop", "index": block_index}
    stop_reason = "refusal" if refusal else OPENAI_TO_ANTHROPIC_STOP.get(finish or "stop", "end_turn")
    yield {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": None},
        "usage": {"input_tokens": usage.get("input_tokens", 0), "output_tokens": usage.get("output_tokens", 0)},
    }
    yield {"type": "message_stop"}


def text_of(content: Any) -> str:
    """Public alias of the content-text helper (used for the router's prompt text)."""
    return _text_of(content)
