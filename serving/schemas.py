"""Request bodies: read with a size limit, parsed as JSON, checked against the fields thrifty relies on.

Validation is strict about what routing and translation read (model, messages,
roles, content shapes, stream, max_tokens, tools, the ``thrifty`` options) and
lets every other field through untouched: the upstream is the judge of fields
thrifty does not use. The validated dict, not a re-serialised model, is what
is forwarded, so unknown fields keep their exact values.

Hostile JSON is refused before anything recursive touches it: a body nested
deeper than :data:`MAX_JSON_DEPTH` levels is a 400 (the depth is counted
without recursion), and so is a string holding a lone UTF-16 surrogate
escape (``"\\ud800"``: not Unicode text, no upstream or tokenizer accepts
it), with the field named (``messages.0.content``). Client-supplied labels
that are stored (task, feedback source, ids) are capped at
:data:`MAX_LABEL_CHARS` characters, wherever they come from.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any, Literal, Union

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import from_json

from serving.errors import InvalidRequest, PayloadTooLarge

Body = dict[str, Any]

# The fast parser's own limit (pydantic-core's jiter): deeper documents are refused by both paths alike.
MAX_JSON_DEPTH = 200
MAX_LABEL_CHARS = 200  # task labels, feedback sources, decision and model ids: what the store keeps per request

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_DEPTH_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


async def read_json_body(request: Request, max_bytes: int) -> Body:
    """The request's JSON object; 413 past ``max_bytes`` (checked while reading), 400 if not a JSON object."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > max_bytes:
                raise PayloadTooLarge(f"request body exceeds {max_bytes} bytes")
        except ValueError:
            raise InvalidRequest("invalid Content-Length header") from None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"request body exceeds {max_bytes} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise InvalidRequest("request body is empty; expected a JSON object")
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    return body


def parse_json(raw: bytes) -> Any:
    """A request body's JSON: valid Unicode text, at most :data:`MAX_JSON_DEPTH` levels deep; else a 400.

    The fast parser refuses lone surrogates and deeper nesting itself; what it
    refuses goes to ``json.loads`` (which gives the error message) only after
    the depth was counted without recursion, and its strings are checked.
    """
    try:
        return from_json(raw)
    except ValueError:
        pass
    depth = json_depth(raw)
    if depth > MAX_JSON_DEPTH:
        raise InvalidRequest(f"request body nests {depth} levels deep; at most {MAX_JSON_DEPTH} are accepted")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    except RecursionError:  # not reachable within MAX_JSON_DEPTH; kept so no parse can end in a 500
        raise InvalidRequest(f"request body nests too deeply; at most {MAX_JSON_DEPTH} levels are accepted") from None
    where = lone_surrogate(body)
    if where is not None:
        name = where or "request body"
        raise InvalidRequest(
            f"{name} holds a lone surrogate escape (\\ud800-\\udfff without its pair), which is not valid Unicode text",
            param=where or None,
        )
    return body


def json_depth(raw: bytes) -> int:
    """The deepest nesting of brackets in a JSON text, strings skipped (no recursion, C-speed scans)."""
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKET)
    if not brackets:
        return 0
    return max(accumulate(_DEPTH_STEP[b] for b in brackets))


def lone_surrogate(value: Any) -> str | None:
    """The dotted path of the first string (or key) holding a lone surrogate, ``""`` for the top level; None if none."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if not _is_text(item):
                return path
        elif isinstance(item, dict):
            for key, child in item.items():
                child_path = f"{path}.{key}" if path else str(key)
                if not _is_text(key):
                    return path or ""
                stack.append((child, child_path))
        elif isinstance(item, list):
            stack.extend((child, f"{path}.{i}" if path else str(i)) for i, child in enumerate(item))
    return None


def _is_text(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


class ThriftyOptions(BaseModel):
    """The ``thrifty`` body field: constraints on the decision, fallback models, and the task label for the logs.

    ``on_unmet_limit``: what to do when no allowed model meets ``min_quality`` /
    ``max_cost``: ``refuse`` (a 400 naming the best available value) or
    ``degrade`` (the closest model answers; ``x-thrifty-limit-unmet`` says so).
    """

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

    min_quality: float | None = Field(default=None, ge=0.0, le=1.0)
    max_cost: float | None = Field(default=None, ge=0.0)
    allowed_models: list[str] | None = Field(default=None, min_length=1)
    on_unmet_limit: Literal["refuse", "degrade"] | None = None
    task: str | None = Field(default=None, max_length=MAX_LABEL_CHARS)
    fallback_models: list[str] | None = Field(
        default=None, max_length=16,
        description="catalog ids to fail over to, in order, after the decision's own candidates; for a model "
        "requested by id it replaces the server's configured fallbacks ([]: none)",
    )


class _Part(_Strict):
    type: str


# -- OpenAI Chat Completions ------------------------------------------------------


class _ToolFunction(_Strict):
    name: str = Field(min_length=1)


class _OpenAITool(_Strict):
    type: str = "function"
    function: _ToolFunction | None = None


class OpenAIMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Union[str, list[_Part], None] = None


class OpenAIChatRequest(_Strict):
    model: str = Field(min_length=1, max_length=MAX_LABEL_CHARS)
    messages: list[OpenAIMessage] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    tools: list[_OpenAITool] | None = None
    stream_options: dict | None = None
    metadata: dict | None = None
    thrifty: ThriftyOptions | None = None


# -- Anthropic Messages -------------------------------------------------------------


class _AnthropicTool(_Strict):
    name: str = Field(min_length=1)


class AnthropicMessage(_Strict):
    role: Literal["user", "assistant"]
    content: Union[str, list[_Part]]


class AnthropicMessagesRequest(_Strict):
    model: str = Field(min_length=1, max_length=MAX_LABEL_CHARS)
    messages: list[AnthropicMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    system: Union[str, list[_Part], None] = None
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    tools: list[_AnthropicTool] | None = None
    stop_sequences: list[str] | None = None
    thrifty: ThriftyOptions | None = None


# -- thrifty's own endpoints ----------------------------------------------------------


class RouteRequest(_Strict):
    """``/v1/route``: a chat request of either format, or just ``{"prompt": ...}``."""

    model: str = Field(default="thrifty", min_length=1, max_length=MAX_LABEL_CHARS)
    prompt: str | None = None
    messages: list[dict] | None = None
    system: Union[str, list[_Part], None] = None
    thrifty: ThriftyOptions | None = None


class FeedbackRequest(BaseModel):
    """``/v1/feedback``: an outcome for a past decision: ``success`` (a boolean, or a number in [0, 1]) or ``score``.

    ``score`` is the same outcome under another name (a graded judgement);
    exactly one of the two is given. ``score_raw`` keeps an unnormalised
    score beside it.
    """

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

    decision_id: str = Field(min_length=1, max_length=MAX_LABEL_CHARS)
    success: bool | float | None = Field(default=None, ge=0.0, le=1.0)
    score: float | None = Field(default=None, ge=0.0, le=1.0)
    score_raw: float | None = None
    source: str = Field(default="user", min_length=1, max_length=MAX_LABEL_CHARS)

    @property
    def value(self) -> float | None:
        """The outcome as a number in [0, 1] (``True`` is 1.0)."""
        value = self.success if self.success is not None else self.score
        return None if value is None else float(value)


def validate(model: type[BaseModel], body: Body) -> BaseModel:
    """``body`` checked against ``model``; a 400 naming the first bad field otherwise."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False)
        param = _body_path(body, errors[0].get("loc", ()))
        # a field of several accepted types fails once per type: say each, once
        messages = dict.fromkeys(str(e.get("msg")) for e in errors if _body_path(body, e.get("loc", ())) == param)
        message = " or ".join(messages) if len(messages) > 1 else next(iter(messages), "invalid")
        raise InvalidRequest(f"{param}: {message}" if param else message, param=param or None) from None


def _body_path(body: Any, loc: tuple) -> str:
    """The part of a validation error's location that exists in the body (pydantic appends the names of union members)."""
    parts, current = [], body
    for part in loc:
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current):
            current = current[part]
        elif isinstance(current, dict) and isinstance(part, str):
            parts.append(part)  # a missing field: named all the same
            break
        else:
            break
        parts.append(str(part))
    return ".".join(parts)
