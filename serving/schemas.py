"""Request bodies: read with a size limit, parsed as JSON, checked against the fields thrifty relies on.

Validation is strict about what routing and translation read (model, messages,
roles, content shapes, stream, max_tokens, tools, the ``thrifty`` options) and
lets every other field through untouched: the upstream is the judge of fields
thrifty does not use. The validated dict, not a re-serialised model, is what
is forwarded, so unknown fields keep their exact values.
"""

from __future__ import annotations

import json
from typing import Any, Literal, Union

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serving.errors import InvalidRequest, PayloadTooLarge
from serving.fastjson import loads

Body = dict[str, Any]


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
    try:
        body = loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    return body


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


class ThriftyOptions(BaseModel):
    """The ``thrifty`` body field: constraints on the decision, fallback models, and the task label for the logs."""

    model_config = ConfigDict(strict=True, extra="forbid")

    min_quality: float | None = Field(default=None, ge=0.0, le=1.0)
    max_cost: float | None = Field(default=None, ge=0.0)
    allowed_models: list[str] | None = Field(default=None, min_length=1)
    task: str | None = Field(default=None, max_length=200)
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
    model: str = Field(min_length=1)
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
    model: str = Field(min_length=1)
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

    model: str = Field(default="thrifty", min_length=1)
    prompt: str | None = None
    messages: list[dict] | None = None
    system: Union[str, list[_Part], None] = None
    thrifty: ThriftyOptions | None = None


class FeedbackRequest(BaseModel):
    """``/v1/feedback``: an outcome for a past decision: ``success`` (0/1) or ``score`` in [0, 1]."""

    model_config = ConfigDict(strict=True, extra="forbid")

    decision_id: str = Field(min_length=1, max_length=200)
    success: float | None = Field(default=None, ge=0.0, le=1.0)
    score: float | None = Field(default=None, ge=0.0, le=1.0)
    score_raw: float | None = None
    source: str = Field(default="user", min_length=1, max_length=100)


def validate(model: type[BaseModel], body: Body) -> BaseModel:
    """``body`` checked against ``model``; a 400 naming the first bad field otherwise."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first.get("loc", ()))
        raise InvalidRequest(f"{param}: {first.get('msg')}" if param else first.get("msg", "invalid"), param=param or None) from None
