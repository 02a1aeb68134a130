"""Sends a request to the ranked candidates of a decision, translating formats where needed.

Fail-over: the dispatcher calls the candidates in order (:func:`serving.reliability.failover_order`:
the chosen model, then the other acceptable ones) and makes at most
``max_attempts`` upstream calls, all within the request's :class:`Deadline`:

* connection refused or reset, no answer within the per-attempt timeout,
  5xx, an upstream auth failure, a stream that fails *before its first
  token* (cut, stalled, malformed, empty): the next candidate;
* 429: with a ``Retry-After`` of at most ``retry_after_max_s`` that fits in
  the time left, the same model once more after waiting; otherwise the next candidate;
* a context-length error: the next candidate whose catalog
  ``context_window`` is larger than the failing model's (other ranked models
  too); none left: a 400 naming the limit. The same model is never retried;
* any other 4xx: the client's to fix, returned at once; a content-filter
  refusal is an answer (a 200), passed through as is;
* a model whose circuit breaker is open is skipped (a ``skipped`` attempt).

Each call is bounded by ``min(attempt timeout, time left)``: the whole answer
(``attempt_timeout_s``) or, for a stream, its headers and first token
(``first_token_timeout_s``). A stream is read up to its first token before
the response starts, so every failure until then still fails over; after
that, a silence longer than ``stream_idle_timeout_s`` ends it as stalled and
the client gets an error event (:mod:`serving.completion`).

Every call is appended to the caller's ``attempts`` list, so the store records each one.

Request bodies pass through natively when the model speaks the client's
format; only cross-format requests are translated (:mod:`serving.translate`).
Responses always name the catalog id of the model that answered.

Providers hand back the upstream's own bytes, parsed once (``send_raw``,
:mod:`models.providers.base`): a same-format answer or stream event is
forwarded byte for byte unless something in it must change (the model name, a
usage the client did not ask for), and a stream is read and forwarded one
network read at a time, the stall timer re-armed lazily (:class:`IdleTimer`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, AsyncIterator, Sequence

from models.catalog import Catalog, ModelSpec
from models.providers import (
    ContextLengthExceeded,
    MissingUpstreamKey,
    ProviderPool,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamStreamError,
    UpstreamTimeout,
)
from models.providers.raw import RawStream, SSEEvent
from serving import sse, translate
from serving.errors import BadGateway, GatewayTimeout, InvalidRequest, ModelsUnavailable
from serving.metrics import Metrics
from serving.reliability import BREAKER_KINDS, Breakers, Deadline, fails_over
from serving.store import AttemptRecord
from serving.usage import StreamWatcher, Usage, finish_of, text_of_response, usage_of

log = logging.getLogger("thrifty.serving")

Body = dict[str, Any]
MIN_ATTEMPT_S = 0.5  # a Retry-After is waited for only if at least this much time is left after it
# No call starts with less time left than this: no model answers that fast, and an attempt's
# timer may fire a millisecond before the deadline (the loop rounds timers), which would
# otherwise leave a sliver of time for one more call that can only time out.
MIN_CALL_S = 0.05


@dataclass
class Answer:
    spec: ModelSpec
    body: Body  # in the client's format
    usage: Usage
    finish_reason: str | None
    text: str
    raw: bytes | None = None  # ``body`` as the upstream's own bytes, when they can be forwarded unchanged


@dataclass
class StreamAnswer:
    """An opened stream. ``events`` yields, in the client's format, either event dicts (translated streams)
    or ``(bytes, final)`` pairs: SSE bytes ready to send (passthrough), ``final`` marking the part that
    ends the answer (it carries Anthropic's ``message_stop``; for OpenAI, ``[DONE]`` is to follow it)."""

    spec: ModelSpec
    events: AsyncIterator[Body | tuple[bytes, bool]]
    watcher: StreamWatcher  # on the upstream's events: usage, finish, completeness


class _Exhausted(Exception):
    """No call left to make (internal)."""


class Dispatcher:
    def __init__(
        self,
        catalog: Catalog,
        pool: ProviderPool,
        *,
        metrics: Metrics | None = None,
        default_max_tokens: int = translate.DEFAULT_MAX_TOKENS,
        max_attempts: int = 3,
        breakers: Breakers | None = None,
        deadline_s: float = 60.0,
        attempt_timeout_s: float = 30.0,
        first_token_timeout_s: float = 20.0,
        stream_idle_timeout_s: float = 30.0,
        retry_after_max_s: float = 5.0,
    ):
        self.catalog = catalog
        self.pool = pool
        self.metrics = metrics
        self.default_max_tokens = default_max_tokens
        self.max_attempts = max_attempts
        self.breakers = breakers if breakers is not None else Breakers()
        self.deadline_s = deadline_s
        self.attempt_timeout_s = attempt_timeout_s
        self.first_token_timeout_s = first_token_timeout_s
        self.stream_idle_timeout_s = stream_idle_timeout_s
        self.retry_after_max_s = retry_after_max_s

    # -- request bodies ------------------------------------------------------------
    def upstream_body(self, client_format: str, body: Body, spec: ModelSpec, *, stream: bool) -> Body:
        """``body`` in ``spec``'s wire format, addressed to its upstream id."""
        max_tokens = min(self.default_max_tokens, spec.max_output_tokens or self.default_max_tokens)
        try:
            if spec.wire_format == client_format:
                out = dict(body)
                out["model"] = spec.upstream
                if client_format == "anthropic":
                    out.setdefault("max_tokens", max_tokens)
            elif spec.wire_format == "anthropic":
                out = translate.openai_request_to_anthropic(body, model=spec.upstream, default_max_tokens=max_tokens)
            else:
                field = "max_completion_tokens" if spec.provider == "openai" else "max_tokens"
                out = translate.anthropic_request_to_openai(body, model=spec.upstream, max_tokens_field=field)
        except translate.TranslationError as exc:
            raise InvalidRequest(f"{exc} (model {spec.id!r})") from None
        out.pop("stream", None)
        if spec.wire_format == "openai" and stream:
            # Usage arrives only when asked for; the client's own choice is honoured on the way back.
            out["stream_options"] = {**(out.get("stream_options") or {}), "include_usage": True}
        elif spec.wire_format == "openai":
            out.pop("stream_options", None)
        return out

    # -- calls ---------------------------------------------------------------------------
    async def complete(
        self,
        client_format: str,
        body: Body,
        candidates: Sequence[str],
        attempts: list[AttemptRecord],
        *,
        deadline: Deadline | None = None,
        ranking: Sequence[str] = (),
    ) -> Answer:
        async def call(spec: ModelSpec, upstream_body: Body, attempt: AttemptRecord, timeout: float) -> Answer:
            provider = self.pool.get(spec)
            try:
                async with asyncio.timeout(timeout):
                    result, content = await provider.send_raw(spec, upstream_body, stream=False)
            except TimeoutError:
                raise UpstreamTimeout(f"model {spec.id!r} gave no answer within {timeout:.3g}s", model=spec.id) from None
            usage = usage_of(spec.wire_format, result)
            self._succeeded(attempt, spec, usage)
            # the upstream's bytes go to the client unchanged when they already name the catalog id
            forward = spec.wire_format == client_format and result.get("model") == spec.id
            return Answer(
                spec=spec,
                body=result if forward else self._present(client_format, spec, result),
                usage=usage,
                finish_reason=finish_of(spec.wire_format, result),
                text=text_of_response(spec.wire_format, result),
                raw=content if forward else None,
            )

        return await self._failover(
            client_format, body, candidates, attempts, deadline, ranking, call, stream=False, timeout=self.attempt_timeout_s
        )

    async def open_stream(
        self,
        client_format: str,
        body: Body,
        candidates: Sequence[str],
        attempts: list[AttemptRecord],
        *,
        include_usage: bool = False,
        keep_text: bool = False,
        deadline: Deadline | None = None,
        ranking: Sequence[str] = (),
    ) -> StreamAnswer:
        """Open the upstream stream and read it up to its first token; the rest is read later, by the response."""

        async def call(spec: ModelSpec, upstream_body: Body, attempt: AttemptRecord, timeout: float) -> StreamAnswer:
            return await self._open_raw(self.pool.get(spec), client_format, spec, upstream_body, attempt, timeout,
                                        include_usage=include_usage, keep_text=keep_text)

        return await self._failover(
            client_format, body, candidates, attempts, deadline, ranking, call, stream=True,
            timeout=self.first_token_timeout_s,
        )

    async def _open_raw(self, provider, client_format: str, spec: ModelSpec, upstream_body: Body, attempt: AttemptRecord,
                        timeout: float, *, include_usage: bool, keep_text: bool) -> StreamAnswer:
        """``open_stream``'s call: events read a network read at a time, bytes forwarded."""
        watcher = StreamWatcher(spec.wire_format, keep_text=keep_text)
        idle = IdleTimer(self.stream_idle_timeout_s, spec.id)
        wire = spec.wire_format
        raw: RawStream | None = None
        head: list[SSEEvent] = []
        try:
            async with asyncio.timeout(timeout):
                raw = await provider.send_raw(spec, upstream_body, stream=True)
                while True:
                    events = await idle.wait(raw.batch())
                    if not events:
                        _check_complete(watcher, spec.id)
                        break
                    head += events
                    content = False
                    for event in events:
                        watcher.observe(event.data)
                        content = content or _carries_content(wire, event.data)
                    if content:
                        break
        except TimeoutError:
            idle.stop()
            if raw is not None:
                await raw.aclose()
            self._usage_so_far(attempt, spec, watcher.usage)
            raise UpstreamTimeout(f"model {spec.id!r} sent no first token within {timeout:.3g}s", model=spec.id) from None
        except BaseException:
            idle.stop()
            if raw is not None:
                await raw.aclose()
            self._usage_so_far(attempt, spec, watcher.usage)
            raise
        if wire != client_format:  # translated: event dicts through the translator
            events = _raw_dicts(head, raw, watcher, idle)
            if client_format == "openai":
                stream = translate.anthropic_stream_to_openai(events, model=spec.id, include_usage=include_usage)
            else:
                stream = translate.openai_stream_to_anthropic(events, model=spec.id)
        elif wire == "openai":
            stream = _openai_passthrough(head, raw, watcher, idle, spec.id, include_usage)
        else:
            stream = _anthropic_passthrough(head, raw, watcher, idle, spec.id)
        return StreamAnswer(spec=spec, events=stream, watcher=watcher)

    def finish_attempt(
        self, attempt: AttemptRecord, spec: ModelSpec, usage: Usage, error: UpstreamError | None, *, verdict: bool = True
    ) -> None:
        """Close a streamed attempt once its stream has ended (``verdict=False``: the client left, no health verdict)."""
        if error is None:
            self._succeeded(attempt, spec, usage)
            if verdict:
                self.breakers.success(spec.id)
            else:
                self.breakers.release(spec.id)
        else:
            self._failed(attempt, error)
            self._health(spec.id, error)
            self._usage_so_far(attempt, spec, usage)
            if self.metrics:
                self.metrics.stream_errors.labels(spec.id, error.kind).inc()

    # -- the fail-over loop ----------------------------------------------------------------
    async def _failover(self, client_format, body, candidates, attempts, deadline, ranking, call, *, stream, timeout):
        deadline = deadline or Deadline(self.deadline_s)
        pending = list(dict.fromkeys(candidates))
        spare = [m for m in dict.fromkeys(ranking) if m not in pending]  # for context-length escalation only
        done: set[str] = set()  # models not to call again
        waited: set[str] = set()  # models already retried after their Retry-After
        context: tuple[str, int] | None = None  # (model, context window) of a context-length failure
        skipped: list[str] = []
        last: UpstreamError | None = None
        calls = 0
        while calls < self.max_attempts and deadline.remaining() > MIN_CALL_S:
            model = self._next_model(pending, spare, done, context)
            if model is None:
                break
            spec = self.catalog.get(model)
            ticket = self.breakers.acquire(model)
            if ticket is None:  # circuit open: not called, but logged
                done.add(model)
                skipped.append(model)
                attempts.append(AttemptRecord(model=model, ts=time.time(), latency_s=0.0, status="skipped",
                                              error_kind="circuit_open"))
                continue
            try:
                upstream_body = self.upstream_body(client_format, body, spec, stream=stream)
                self.pool.get(spec)
            except MissingUpstreamKey:
                self.breakers.release(model)
                done.add(model)
                attempts.append(AttemptRecord(model=model, ts=time.time(), latency_s=0.0, status="error", error_kind="config"))
                log.error("no upstream key for model %s: skipped", model)
                continue
            except BaseException:
                self.breakers.release(model)
                raise
            if last is not None:
                self._note_failover(last, model)
            attempt = AttemptRecord(model=model, ts=time.time())
            attempts.append(attempt)
            calls += 1
            budget = deadline.bound(timeout)
            try:
                result = await call(spec, upstream_body, attempt, budget)
            except UpstreamError as exc:
                self._failed(attempt, exc)
                if isinstance(exc, UpstreamTimeout) and budget < timeout:
                    self.breakers.release(model)  # cut short by the request's deadline: no verdict on the model
                else:
                    self._health(model, exc)
                last = exc
                if isinstance(exc, ContextLengthExceeded):
                    done.add(model)
                    context = (model, max(spec.context_window or 0, context[1] if context else 0))
                    continue
                if not fails_over(exc):
                    raise
                if isinstance(exc, UpstreamRateLimited) and self._may_wait(exc, deadline, model, waited, calls):
                    waited.add(model)
                    await asyncio.sleep(exc.retry_after)
                    continue
                done.add(model)
                continue
            except BaseException as exc:  # cancelled (client gone, shutdown) or a fault in thrifty: no verdict on the model
                self.breakers.release(model)
                attempt.status = "error"
                attempt.error_kind = "cancelled" if isinstance(exc, asyncio.CancelledError) else "internal"
                attempt.latency_s = time.time() - attempt.ts
                raise
            if not stream:
                self.breakers.success(model)  # a stream's verdict comes when it ends (finish_attempt)
            return result
        raise self._exhausted(last, context, skipped, deadline, calls)

    def _next_model(self, pending, spare, done, context) -> str | None:
        def fits(model: str) -> bool:
            if model in done or model not in self.catalog:
                return False
            return context is None or (self.catalog.get(model).context_window or 0) > context[1]

        for model in pending:
            if fits(model):
                return model
        if context is not None:
            for model in spare:
                if fits(model):
                    return model
        return None

    def _may_wait(self, exc: UpstreamRateLimited, deadline: Deadline, model: str, waited: set[str], calls: int) -> bool:
        wait = exc.retry_after
        return (
            wait is not None
            and model not in waited
            and calls < self.max_attempts
            and wait <= self.retry_after_max_s
            and wait + MIN_ATTEMPT_S < deadline.remaining()
        )

    def _exhausted(self, last, context, skipped, deadline: Deadline, calls: int) -> Exception:
        if context is not None and (last is None or isinstance(last, ContextLengthExceeded)):
            model, window = context
            base = last.message if isinstance(last, ContextLengthExceeded) else "the request is too long"
            return ContextLengthExceeded(
                f"{base} (model {model!r} has a context window of {window} tokens, and no model with a larger one "
                "is allowed for this request)",
                model=model, status=400, code="context_length_exceeded",
            )
        if last is not None:
            return last
        if skipped:
            wait = min(self.breakers.retry_in(m) for m in skipped)
            error = ModelsUnavailable(
                f"model(s) {', '.join(skipped)} temporarily taken out after repeated failures; retry in {wait:.0f}s"
            )
            error.headers = {"retry-after": str(max(1, round(wait)))}
            return error
        if deadline.remaining() <= MIN_CALL_S:
            return GatewayTimeout(f"no answer within the request deadline of {deadline.seconds:g}s")
        return BadGateway("no upstream could be called for this request (check the upstream keys)")

    # -- bookkeeping ---------------------------------------------------------------------
    def _note_failover(self, exc: UpstreamError, to: str) -> None:
        status = f" {exc.status}" if exc.status else ""
        log.warning("model %s failed (%s%s); trying %s", exc.model, exc.kind, status, to)
        if self.metrics:
            self.metrics.failovers.labels(exc.model or "unknown", exc.kind).inc()

    def _health(self, model: str, exc: UpstreamError) -> None:
        if exc.kind in BREAKER_KINDS:
            self.breakers.failure(model)
        elif exc.kind == "rate_limit":
            self.breakers.release(model)  # back-pressure: no verdict
        else:
            self.breakers.success(model)  # a 4xx answer: the model is up

    def _failed(self, attempt: AttemptRecord, exc: UpstreamError) -> None:
        attempt.latency_s = time.time() - attempt.ts
        attempt.status, attempt.error_kind, attempt.http_status = "error", exc.kind, exc.status
        if self.metrics:
            self.metrics.upstream_errors.labels(attempt.model, exc.kind).inc()
            self.metrics.upstream_latency.labels(attempt.model).observe(attempt.latency_s)

    @staticmethod
    def _usage_so_far(attempt: AttemptRecord, spec: ModelSpec, usage: Usage) -> None:
        attempt.input_tokens, attempt.output_tokens = usage.input_tokens, usage.output_tokens
        attempt.cost_usd = spec.cost(usage.input_tokens, usage.output_tokens)

    def _succeeded(self, attempt: AttemptRecord, spec: ModelSpec, usage: Usage) -> None:
        attempt.latency_s = time.time() - attempt.ts
        attempt.status = "ok"
        attempt.input_tokens, attempt.output_tokens = usage.input_tokens, usage.output_tokens
        attempt.cost_usd = spec.cost(usage.input_tokens, usage.output_tokens)
        if self.metrics:
            self.metrics.child(self.metrics.upstream_latency, spec.id).observe(attempt.latency_s)

    @staticmethod
    def _present(client_format: str, spec: ModelSpec, result: Body) -> Body:
        if spec.wire_format == client_format:
            return {**result, "model": spec.id}
        if client_format == "openai":
            return translate.anthropic_response_to_openai(result, model=spec.id)
        return translate.openai_response_to_anthropic(result, model=spec.id)


# -- stream helpers --------------------------------------------------------------------------


def _carries_content(wire_format: str, event: Body) -> bool:
    """Whether an upstream event is past the preamble: a token, a tool call, a finish or the usage."""
    if wire_format == "anthropic":
        return event.get("type") in ("content_block_delta", "message_delta", "message_stop")
    choices = event.get("choices") or []
    if not choices:
        return bool(event.get("usage"))
    for choice in choices:
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("tool_calls") or delta.get("refusal") or choice.get("finish_reason"):
            return True
    return False


class IdleTimer:
    """Stall detection: a wait for a stream's next event that lasts ``idle_s`` ends with :class:`UpstreamTimeout`.

    What ``asyncio.timeout(idle_s)`` around every wait does, for a fraction of its
    cost: one timer per stream, re-armed lazily when it fires early, instead of
    a timer scheduled and cancelled per event. On expiry it cancels the waiting
    task and turns that cancellation (only that one) into the timeout, as
    ``asyncio.timeout`` does. ``stop()`` when the stream is over.
    """

    __slots__ = ("idle_s", "model", "_loop", "_handle", "_task", "_started", "_waiting", "_expired", "_cancelling")

    def __init__(self, idle_s: float, model: str):
        self.idle_s = idle_s
        self.model = model
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task | None = None
        self._started = 0.0
        self._waiting = False
        self._expired = False
        self._cancelling = 0

    async def wait(self, awaitable):
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        task = self._task = asyncio.current_task()
        self._cancelling = task.cancelling()
        self._started = loop.time()
        self._waiting = True
        if self._handle is None:
            self._handle = loop.call_at(self._started + self.idle_s, self._fire)
        try:
            return await awaitable
        except asyncio.CancelledError:
            if self._expired:
                self._expired = False
                if task.uncancel() <= self._cancelling:
                    raise UpstreamTimeout(
                        f"stream of model {self.model!r} stalled: no event for {self.idle_s:g}s", model=self.model
                    ) from None
            raise
        finally:
            self._waiting = False
            if self._expired:  # expired, but the wait ended otherwise: take the cancellation back
                self._expired = False
                task.uncancel()

    def _fire(self) -> None:
        self._handle = None
        if not self._waiting:
            return  # the next wait arms a new timer
        due = self._started + self.idle_s
        if self._loop.time() >= due:
            self._expired = True
            self._task.cancel()
        else:
            self._handle = self._loop.call_at(due, self._fire)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def _check_complete(watcher: StreamWatcher, model: str) -> None:
    if not watcher.complete:
        raise UpstreamStreamError(f"stream of model {model!r} ended without its final event", model=model)


async def _raw_dicts(head: list[SSEEvent], raw: RawStream, watcher: StreamWatcher, idle: IdleTimer) -> AsyncIterator[Body]:
    """The event dicts of a raw stream (for translation), watched; the events read ahead first."""
    async with aclosing(_batches(head, raw, watcher, idle)) as batches:
        async for events in batches:
            for event in events:
                yield event.data
    _check_complete(watcher, raw.model)


async def _batches(head: list[SSEEvent], raw: RawStream, watcher: StreamWatcher, idle: IdleTimer) -> AsyncIterator[list[SSEEvent]]:
    """The events read ahead, then the events of each network read (watched), until the upstream ends.

    Closing it (``contextlib.aclosing`` in the callers: their consumer may stop early)
    stops the idle timer and closes the upstream response. The events of one read
    are all watched before the first of them is handed on, as every stream path does.
    """
    try:
        events = head
        while True:
            yield events
            events = await idle.wait(raw.batch())
            if not events:
                return
            for event in events:
                watcher.observe(event.data)
    finally:
        idle.stop()
        await raw.aclose()


async def _openai_passthrough(head: list[SSEEvent], raw: RawStream, watcher: StreamWatcher, idle: IdleTimer,
                              model: str, include_usage: bool) -> AsyncIterator[tuple[bytes, bool]]:
    """An OpenAI stream to an OpenAI client: what ``_openai_native_stream`` does to each chunk, on bytes.

    A chunk goes out as the upstream sent it unless it must change (its ``model``
    is not the catalog id, or it carries the usage the client did not ask for);
    the events of one network read go out in one write. The last part is
    marked final once the upstream ended complete (``[DONE]`` follows it).
    """
    async with aclosing(_batches(head, raw, watcher, idle)) as batches:
        async for events in batches:
            parts = []
            for event in events:
                chunk = event.data
                if not include_usage and "usage" in chunk:
                    if not chunk.get("choices") and chunk["usage"]:
                        continue  # the usage chunk thrifty asked for, not the client
                    del chunk["usage"]
                elif chunk.get("model") == model:
                    parts.append(event.raw)
                    continue
                chunk["model"] = model
                parts.append(sse.encode("openai", chunk))
            payload = b"".join(parts)
            if raw.done:  # [DONE] read: nothing follows
                if watcher.complete:
                    yield payload, True
                    return
                if payload:
                    yield payload, False
                _check_complete(watcher, model)
            if payload:
                yield payload, False
        _check_complete(watcher, model)
        yield b"", True


async def _anthropic_passthrough(head: list[SSEEvent], raw: RawStream, watcher: StreamWatcher, idle: IdleTimer,
                                 model: str) -> AsyncIterator[tuple[bytes, bool]]:
    """An Anthropic stream to an Anthropic client: what ``_anthropic_native_stream`` does, on bytes.

    An event goes out as the upstream sent it unless its ``message_start`` names
    another model (or its SSE name is not its type); the part holding
    ``message_stop`` is marked final.
    """
    async with aclosing(_batches(head, raw, watcher, idle)) as batches:
        async for events in batches:
            parts = []
            final = False
            for event in events:
                data = event.data
                kind = data.get("type")
                message = data.get("message") if kind == "message_start" else None
                if isinstance(message, dict) and message.get("model") != model:
                    message["model"] = model
                    parts.append(sse.encode("anthropic", data))
                elif event.name != (kind if kind is not None else "message"):
                    parts.append(sse.encode("anthropic", data))
                else:
                    parts.append(event.raw)
                if kind == "message_stop":
                    final = True
            if parts:
                yield b"".join(parts), final
        _check_complete(watcher, model)
