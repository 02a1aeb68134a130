"""A fake LLM provider *server* speaking the real OpenAI and Anthropic HTTP protocols.

Not a mock of an SDK: it is an ASGI app that tests run on loopback (see
``tests/fakes/server.py``), and the real SDKs talk to it over HTTP, streaming
included. Routes::

    POST /v1/chat/completions   OpenAI Chat Completions (JSON or SSE)
    POST /v1/messages           Anthropic Messages (JSON or SSE)

Per upstream model id, a :class:`Behavior` says what to answer, what usage to
report, how slowly, and which fault to inject::

    fake.configure("gpt-x", text="hi", output_tokens=7, delay_per_chunk=0.01)
    fake.configure("claude-y", status=429, retry_after=2)
    fake.configure("gpt-x", cut_after_chunks=3)        # connection dropped mid-stream
    fake.configure("gpt-x", tool_call={"name": "get_weather", "arguments": {"city": "Paris"}})
    fake.configure("gpt-x", reset_connection=True)       # TCP reset before any response
    fake.configure("gpt-x", stall_after_chunks=2)       # stream goes silent after 2 events
    fake.configure("gpt-x", status=500, fail_rate=0.3)  # a 5xx storm: 30% of calls fail
    fake.configure("gpt-x", omit_done=True)             # the finish, then the connection closes: no [DONE]
    fake.configure("claude-y", prefill="reject")        # a trailing assistant message gets a 400
    fake.configure("gpt-x", status=400, echo_key=True)  # error texts repeat the key the request carried
    fake.configure("claude-y", input_tokens=100_000, cache_read_tokens=900_000)  # usage with prompt-cache reads

A trailing assistant message (a prefill) is, by default, continued on
``/v1/messages`` (the answer is the rest of the planned text after it, as
Anthropic does) and ignored on ``/v1/chat/completions`` (the whole text is
answered anew, as OpenAI does); ``prefill`` sets either behaviour, or a 400.

Every request is recorded (endpoint, model, body, headers) in ``fake.calls``;
``fake.count(model=...)`` counts them. With ``api_keys`` set, a request whose
key (``Authorization: Bearer`` / ``x-api-key``) is not one of them gets the
provider's own 401.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

OPENAI_ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "permission_denied",
                      404: "invalid_request_error", 429: "rate_limit_exceeded", 500: "server_error",
                      503: "server_error"}
ANTHROPIC_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                         404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                         500: "api_error", 503: "api_error", 529: "overloaded_error"}


@dataclass
class Behavior:
    """What the fake does for one model. Defaults: a short text answer, counted usage, no delay, no fault."""

    text: str | None = None  # default: "Answer from <model>."
    tool_call: dict | None = None  # {"name": ..., "arguments": {...}}: answer with this call when tools are offered
    input_tokens: int | None = None  # default: words in the request
    output_tokens: int | None = None  # default: words in the answer
    chunks: int | None = None  # text pieces when streaming (default: one per word)
    # faults
    status: int | None = None  # answer with this HTTP error status
    error_message: str = "injected failure"
    retry_after: float | None = None  # Retry-After header (with status)
    fail_times: int | None = None  # with status: fail only the first N calls, then answer
    fail_rate: float | None = None  # with status: fail this share of calls at random (seeded), answer the rest
    delay_before_headers: float = 0.0
    delay_per_chunk: float = 0.0
    delay_first_chunk: float = 0.0  # headers at once, then this long before the first stream event (slow first token)
    stall_after_chunks: int | None = None  # go silent after N stream events (for stall_s, then drop the connection)
    stall_s: float = 30.0
    reset_connection: bool = False  # reset the TCP connection (RST) once the request is read, before any response
    cut_after_chunks: int | None = None  # drop the connection after N stream events
    malformed_after_chunks: int | None = None  # send a non-JSON data line after N stream events
    error_event_after_chunks: int | None = None  # send the protocol's error event (Anthropic: overloaded) after N events
    omit_final_event: bool = False  # OpenAI: no finish chunk, usage or [DONE]; Anthropic: no message_delta/stop
    omit_done: bool = False  # the finish (and usage), then the end of the body: OpenAI without [DONE], Anthropic without message_stop
    prefill: str = "auto"  # a trailing assistant message: "continue" it, "restart" (answer anew), "reject" (400); auto: by endpoint
    error_code: str | None = None  # with status: the error's code (OpenAI body), e.g. "content_filter"
    context_length_error: bool = False  # the provider's own context-length 400
    content_filter: bool = False  # OpenAI finish_reason "content_filter" / Anthropic stop_reason "refusal"
    stop_reason: str | None = None  # force a stop reason (native value of the protocol)
    echo_key: bool = False  # every error text (HTTP errors, 401s, stream error events) repeats the key received
    # prompt caching: input tokens read from / written to the cache, reported as the protocol does
    # (OpenAI: part of prompt_tokens, in prompt_tokens_details; Anthropic: beside input_tokens)
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0


@dataclass
class Call:
    endpoint: str
    model: str
    body: dict
    headers: dict
    ts: float = field(default_factory=time.time)


class _Cut(Exception):
    """Raised inside a streaming body to make the server drop the connection."""


class FakeProvider:
    def __init__(self, *, api_keys: set[str] | None = None):
        self.behaviors: dict[str, Behavior] = {}
        self.default = Behavior()
        self.calls: list[Call] = []
        self.api_keys = api_keys
        self._lock = threading.Lock()
        self._failures: dict[str, int] = {}
        self._rng = random.Random(0)
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._openai, methods=["POST"]),
                Route("/v1/messages", self._anthropic, methods=["POST"]),
            ]
        )

    # -- control ---------------------------------------------------------------------
    def configure(self, model: str, **changes: Any) -> Behavior:
        with self._lock:
            self.behaviors[model] = replace(self.behaviors.get(model, Behavior()), **changes)
            self._failures.pop(model, None)
            return self.behaviors[model]

    def reset(self) -> None:
        with self._lock:
            self.behaviors.clear()
            self.calls.clear()
            self._failures.clear()
            self._rng = random.Random(0)

    def count(self, model: str | None = None, endpoint: str | None = None) -> int:
        return sum(1 for c in list(self.calls) if (model is None or c.model == model) and (endpoint is None or c.endpoint == endpoint))

    def last(self, model: str | None = None) -> Call:
        return [c for c in self.calls if model is None or c.model == model][-1]

    def behavior(self, model: str) -> Behavior:
        return self.behaviors.get(model, self.default)

    # -- shared ----------------------------------------------------------------------
    async def _begin(self, request: Request, endpoint: str) -> tuple[dict, Behavior, Response | None]:
        body = await request.json()
        model = body.get("model", "")
        self.calls.append(Call(endpoint, model, body, dict(request.headers)))
        behavior = self.behavior(model)
        if behavior.reset_connection:
            _reset(request)
            return body, behavior, Response(status_code=500)  # never reaches the client: the connection is gone
        if behavior.delay_before_headers:
            await asyncio.sleep(behavior.delay_before_headers)
        key = received_key(request)
        if self.api_keys is not None:
            if key not in self.api_keys:
                return body, behavior, self._error(endpoint, 401, "invalid x-api-key / Incorrect API key provided: " + key)
        if behavior.context_length_error:
            if endpoint == "openai":
                return body, behavior, JSONResponse(
                    {"error": {"message": echoed(behavior, "This model's maximum context length is 8192 tokens. However, "
                                                 "your messages resulted in 9000 tokens.", key),
                               "type": "invalid_request_error", "param": "messages",
                               "code": "context_length_exceeded"}}, status_code=400)
            return body, behavior, self._error(endpoint, 400, echoed(behavior, "prompt is too long: 210000 tokens > 200000 maximum", key))
        if self._prefill_mode(behavior, endpoint) == "reject" and _prefill(body) is not None:
            return body, behavior, self._error(
                endpoint, 400, "This model does not support assistant message prefill. The conversation must end "
                "with a user message.")
        if behavior.status is not None:
            with self._lock:
                failed = self._failures.get(model, 0)
                self._failures[model] = failed + 1
            if behavior.fail_rate is not None:
                with self._lock:
                    fail = self._rng.random() < behavior.fail_rate
            else:
                fail = behavior.fail_times is None or failed < behavior.fail_times
            if fail:
                headers = {"retry-after": str(behavior.retry_after)} if behavior.retry_after is not None else {}
                message = echoed(behavior, behavior.error_message, key)
                return body, behavior, self._error(endpoint, behavior.status, message, headers, code=behavior.error_code)
        return body, behavior, None

    @staticmethod
    def _prefill_mode(behavior: Behavior, endpoint: str) -> str:
        if behavior.prefill != "auto":
            return behavior.prefill
        return "continue" if endpoint == "anthropic" else "restart"

    @staticmethod
    def _error(endpoint: str, status: int, message: str, headers: dict | None = None, *, code: str | None = None) -> JSONResponse:
        if endpoint == "openai":
            payload = {"error": {"message": message, "type": OPENAI_ERROR_TYPES.get(status, "server_error"),
                                 "param": None, "code": code}}
        else:
            payload = {"type": "error", "error": {"type": ANTHROPIC_ERROR_TYPES.get(status, "api_error"), "message": message}}
        return JSONResponse(payload, status_code=status, headers={"request-id": f"req_{uuid.uuid4().hex[:12]}", **(headers or {})})

    @staticmethod
    def _words(text: str) -> int:
        return max(1, len(text.split()))

    def _plan(self, body: dict, behavior: Behavior, endpoint: str) -> tuple[str, dict | None, int, int]:
        """Answer text, tool call (or None), input and output tokens."""
        model = body.get("model", "")
        text = behavior.text if behavior.text is not None else f"Answer from {model}."
        prefill = _prefill(body)
        if prefill is not None and self._prefill_mode(behavior, endpoint) == "continue" and text.startswith(prefill):
            text = text[len(prefill):]  # the rest of the answer the prefill began
        call = None
        if behavior.tool_call and body.get("tools") and not _last_turn_is_tool_result(body, endpoint):
            call = behavior.tool_call
        prompt_words = self._words(json.dumps(body.get("messages", [])) + json.dumps(body.get("system", "")))
        input_tokens = behavior.input_tokens if behavior.input_tokens is not None else prompt_words
        answer_words = self._words(text) + (self._words(json.dumps(call)) if call else 0)
        output_tokens = behavior.output_tokens if behavior.output_tokens is not None else answer_words
        return text, call, input_tokens, output_tokens

    @staticmethod
    def _pieces(text: str, behavior: Behavior) -> list[str]:
        words = text.split(" ")
        if behavior.chunks:
            size = max(1, -(-len(words) // behavior.chunks))
            return [" ".join(words[i : i + size]) + (" " if i + size < len(words) else "") for i in range(0, len(words), size)]
        return [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]

    async def _sse(self, events: list[bytes], behavior: Behavior, key: str = "") -> AsyncIterator[bytes]:
        """``events``, with the stream faults of ``behavior``; ``key``: the key the request carried (for ``echo_key``)."""
        for n, event in enumerate(events):
            if behavior.cut_after_chunks is not None and n >= behavior.cut_after_chunks:
                raise _Cut("injected cut")
            if behavior.malformed_after_chunks is not None and n == behavior.malformed_after_chunks:
                anthropic = event.startswith(b"event:")
                yield b"event: content_block_delta\ndata: {not json\n\n" if anthropic else b"data: {not json\n\n"
                return
            if behavior.error_event_after_chunks is not None and n == behavior.error_event_after_chunks:
                if event.startswith(b"event:"):
                    error = {"type": "error", "error": {"type": "overloaded_error", "message": echoed(behavior, "Overloaded", key)}}
                    yield f"event: error\ndata: {json.dumps(error)}\n\n".encode()
                else:
                    message = echoed(behavior, "The server had an error while processing your request.", key)
                    yield f"data: {json.dumps({'error': {'message': message}})}\n\n".encode()
                return
            if behavior.stall_after_chunks is not None and n == behavior.stall_after_chunks:
                await asyncio.sleep(behavior.stall_s)
                raise _Cut("stalled stream given up")
            if n == 0 and behavior.delay_first_chunk:
                await asyncio.sleep(behavior.delay_first_chunk)
            if behavior.delay_per_chunk and n:
                await asyncio.sleep(behavior.delay_per_chunk)
            yield event

    # -- OpenAI ------------------------------------------------------------------------
    async def _openai(self, request: Request) -> Response:
        body, behavior, error = await self._begin(request, "openai")
        if error is not None:
            return error
        text, call, input_tokens, output_tokens = self._plan(body, behavior, "openai")
        model = body["model"]
        finish = behavior.stop_reason or ("content_filter" if behavior.content_filter else "tool_calls" if call else "stop")
        if behavior.content_filter:
            text = ""
        prompt_tokens = input_tokens + behavior.cache_read_tokens + behavior.cache_write_tokens
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": output_tokens, "total_tokens": prompt_tokens + output_tokens}
        if behavior.cache_read_tokens or behavior.cache_write_tokens:
            usage["prompt_tokens_details"] = {"cached_tokens": behavior.cache_read_tokens, "audio_tokens": 0}
            if behavior.cache_write_tokens:
                usage["prompt_tokens_details"]["cache_write_tokens"] = behavior.cache_write_tokens
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:20]}"
        created = int(time.time())
        tool_calls = None
        if call:
            tool_calls = [{"id": f"call_{uuid.uuid4().hex[:16]}", "type": "function",
                           "function": {"name": call["name"], "arguments": json.dumps(call.get("arguments", {}))}}]
        if not body.get("stream"):
            message = {"role": "assistant", "content": None if call else text, "refusal": None, "annotations": []}
            if tool_calls:
                message["tool_calls"] = tool_calls
            return JSONResponse({
                "id": completion_id, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
                "usage": usage, "service_tier": "default", "system_fingerprint": "fp_fake",
            })
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: dict | None, finish_reason=None, **extra) -> bytes:
            payload = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                       "system_fingerprint": "fp_fake",
                       "choices": [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None,
                                                              "finish_reason": finish_reason}]}
            if include_usage:
                payload["usage"] = None
            payload.update(extra)
            return f"data: {json.dumps(payload)}\n\n".encode()

        events = [chunk({"role": "assistant", "content": "", "refusal": None})]
        if tool_calls:
            first = tool_calls[0]
            events.append(chunk({"tool_calls": [{"index": 0, "id": first["id"], "type": "function",
                                                 "function": {"name": first["function"]["name"], "arguments": ""}}]}))
            arguments = first["function"]["arguments"]
            for i in range(0, len(arguments), 8):
                events.append(chunk({"tool_calls": [{"index": 0, "function": {"arguments": arguments[i : i + 8]}}]}))
        elif text:
            events += [chunk({"content": piece}) for piece in self._pieces(text, behavior)]
        if not behavior.omit_final_event:
            events.append(chunk({}, finish))
            if include_usage:
                events.append(chunk(None, usage=usage))
            if not behavior.omit_done:
                events.append(b"data: [DONE]\n\n")
        return StreamingResponse(self._sse(events, behavior, received_key(request)), media_type="text/event-stream")

    # -- Anthropic ------------------------------------------------------------------------
    async def _anthropic(self, request: Request) -> Response:
        body, behavior, error = await self._begin(request, "anthropic")
        if error is not None:
            return error
        if not isinstance(body.get("max_tokens"), int):
            return self._error("anthropic", 400, "max_tokens: Field required")
        text, call, input_tokens, output_tokens = self._plan(body, behavior, "anthropic")
        model = body["model"]
        stop = behavior.stop_reason or ("refusal" if behavior.content_filter else "tool_use" if call else "end_turn")
        if behavior.content_filter:
            text = ""
        message_id = f"msg_{uuid.uuid4().hex[:20]}"
        content: list[dict] = []
        if text and not call:
            content.append({"type": "text", "text": text})
        if call:
            content.append({"type": "text", "text": "Let me check."})
            content.append({"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:16]}", "name": call["name"],
                            "input": call.get("arguments", {})})
        if not body.get("stream"):
            return JSONResponse({
                "id": message_id, "type": "message", "role": "assistant", "model": model, "content": content,
                "stop_reason": stop, "stop_sequence": None,
                "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens,
                          "cache_creation_input_tokens": behavior.cache_write_tokens,
                          "cache_read_input_tokens": behavior.cache_read_tokens},
            })

        def event(payload: dict) -> bytes:
            return f"event: {payload['type']}\ndata: {json.dumps(payload)}\n\n".encode()

        events = [event({"type": "message_start", "message": {
            "id": message_id, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": 1,
                      "cache_creation_input_tokens": behavior.cache_write_tokens,
                      "cache_read_input_tokens": behavior.cache_read_tokens}}})]
        events.append(event({"type": "ping"}))
        for index, block in enumerate(content):
            if block["type"] == "text":
                events.append(event({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}))
                for piece in self._pieces(block["text"], behavior):
                    events.append(event({"type": "content_block_delta", "index": index,
                                         "delta": {"type": "text_delta", "text": piece}}))
            else:
                events.append(event({"type": "content_block_start", "index": index, "content_block": {
                    "type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}}))
                arguments = json.dumps(block["input"])
                for i in range(0, len(arguments), 8):
                    events.append(event({"type": "content_block_delta", "index": index,
                                         "delta": {"type": "input_json_delta", "partial_json": arguments[i : i + 8]}}))
            events.append(event({"type": "content_block_stop", "index": index}))
        if not behavior.omit_final_event:
            events.append(event({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                                 "usage": {"output_tokens": output_tokens}}))
            if not behavior.omit_done:
                events.append(event({"type": "message_stop"}))
        return StreamingResponse(self._sse(events, behavior, received_key(request)), media_type="text/event-stream")


def received_key(request: Request) -> str:
    """The key a request carried (``x-api-key``, or ``Authorization: Bearer``)."""
    return request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ")


def echoed(behavior: Behavior, message: str, key: str) -> str:
    """``message``, with the key received repeated in it when the behavior says so (as some servers do)."""
    return f"{message} (request authenticated with key {key})" if behavior.echo_key else message


def _reset(request: Request) -> None:
    """Abort the request's TCP connection with a RST (SO_LINGER 0), as a crashed or hostile peer does.

    The ASGI interface hides the socket; uvicorn's ``receive`` is a bound method of
    the request cycle that holds the transport.
    """
    transport = getattr(getattr(request.receive, "__self__", None), "transport", None)
    if transport is None:
        raise RuntimeError("reset_connection needs the fake to run under uvicorn")
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _prefill(body: dict) -> str | None:
    """The text of a trailing assistant message (a prefill), or None."""
    messages = body.get("messages") or []
    last = messages[-1] if messages else None
    if not isinstance(last, dict) or last.get("role") != "assistant":
        return None
    content = last.get("content")
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return content if isinstance(content, str) else ""


def _last_turn_is_tool_result(body: dict, endpoint: str) -> bool:
    messages = body.get("messages") or []
    if not messages:
        return False
    last = messages[-1]
    if endpoint == "openai":
        return last.get("role") == "tool"
    content = last.get("content")
    return isinstance(content, list) and any(isinstance(b, dict) and b.get("type") == "tool_result" for b in content)
