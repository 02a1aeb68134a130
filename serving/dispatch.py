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
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Sequence

from models.catalog import Catalog, ModelSpec
from models.providers import (
    ContextLengthExceeded,
    MissingUpstreamKey,
    ProviderPool,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from serving import translate
from serving.errors import BadGateway, GatewayTimeout, InvalidRequest, ModelsUnavailable
from serving.metrics import Metrics
from serving.reliability import BREAKER_KINDS, Breakers, Deadline, fails_over
from serving.store import AttemptRecord
from serving.usage import StreamWatcher, Usage, finish_of, text_of_response, usage_of

log = logging.getLogger("thrifty.serving")

Body = dict[str, Any]
MIN_ATTEMPT_S = 0.5  # a Retry-After is waited for only if at least this much time is left after it


@dataclass
class Answer:
    spec: ModelSpec
    body: Body  # in the client's format
    usage: Usage
    finish_reason: str | None
    text: str


@dataclass
class StreamAnswer:
    spec: ModelSpec
    events: AsyncIterator[Body]  # in the client's format
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
            try:
                async with asyncio.timeout(timeout):
                    result = await self.pool.get(spec).send(spec, upstream_body, stream=False)
            except TimeoutError:
                raise UpstreamTimeout(f"model {spec.id!r} gave no answer within {timeout:.3g}s", model=spec.id) from None
            usage = usage_of(spec.wire_format, result)
            self._succeeded(attempt, spec, usage)
            return Answer(
                spec=spec,
                body=self._present(client_format, spec, result),
                usage=usage,
                finish_reason=finish_of(spec.wire_format, result),
                text=text_of_response(spec.wire_format, result),
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
            watcher = StreamWatcher(spec.wire_format, keep_text=keep_text)
            watched: AsyncIterator[Body] | None = None
            head: list[Body] = []
            try:
                async with asyncio.timeout(timeout):
                    events = await self.pool.get(spec).send(spec, upstream_body, stream=True)
                    watched = watcher.watch(_idle_guard(events, spec.id, self.stream_idle_timeout_s), spec.id)
                    while True:
                        try:
                            event = await watched.__anext__()
                        except StopAsyncIteration:
                            break
                        head.append(event)
                        if _carries_content(spec.wire_format, event):
                            break
            except TimeoutError:
                await _aclose(watched)
                error = UpstreamTimeout(f"model {spec.id!r} sent no first token within {timeout:.3g}s", model=spec.id)
                self._usage_so_far(attempt, spec, watcher.usage)
                raise error from None
            except BaseException:
                await _aclose(watched)
                self._usage_so_far(attempt, spec, watcher.usage)
                raise
            return StreamAnswer(
                spec=spec,
                events=self._present_stream(client_format, spec, _replay(head, watched), include_usage),
                watcher=watcher,
            )

        return await self._failover(
            client_format, body, candidates, attempts, deadline, ranking, call, stream=True,
            timeout=self.first_token_timeout_s,
        )

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
        while calls < self.max_attempts and deadline.remaining() > 0:
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
        if deadline.remaining() <= 0:
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
            self.metrics.upstream_latency.labels(spec.id).observe(attempt.latency_s)

    @staticmethod
    def _present(client_format: str, spec: ModelSpec, result: Body) -> Body:
        if spec.wire_format == client_format:
            return {**result, "model": spec.id}
        if client_format == "openai":
            return translate.anthropic_response_to_openai(result, model=spec.id)
        return translate.openai_response_to_anthropic(result, model=spec.id)

    @staticmethod
    def _present_stream(client_format: str, spec: ModelSpec, events: AsyncIterator[Body], include_usage: bool):
        if spec.wire_format != client_format:
            if client_format == "openai":
                return translate.anthropic_stream_to_openai(events, model=spec.id, include_usage=include_usage)
            return translate.openai_stream_to_anthropic(events, model=spec.id)
        if client_format == "openai":
            return _openai_native_stream(events, spec.id, include_usage)
        return _anthropic_native_stream(events, spec.id)


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


async def _idle_guard(events: AsyncIterator[Body], model: str, idle_s: float) -> AsyncIterator[Body]:
    """``events``, ended as stalled (:class:`UpstreamTimeout`) after ``idle_s`` without one."""
    iterator = events.__aiter__()
    try:
        while True:
            try:
                async with asyncio.timeout(idle_s):
                    event = await iterator.__anext__()
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise UpstreamTimeout(f"stream of model {model!r} stalled: no event for {idle_s:g}s", model=model) from None
            yield event
    finally:
        await _aclose(iterator)


async def _replay(head: list[Body], rest: AsyncIterator[Body] | None) -> AsyncIterator[Body]:
    """The events read ahead, then the rest of the stream."""
    try:
        for event in head:
            yield event
        if rest is not None:
            async for event in rest:
                yield event
    finally:
        await _aclose(rest)


async def _aclose(iterator) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:  # closing a broken upstream stream is best effort
            pass


async def _openai_native_stream(chunks: AsyncIterator[Body], model: str, include_usage: bool) -> AsyncIterator[Body]:
    async for chunk in chunks:
        if not include_usage:
            if not chunk.get("choices") and chunk.get("usage"):
                continue  # the usage chunk thrifty asked for, not the client
            chunk.pop("usage", None)
        chunk["model"] = model
        yield chunk


async def _anthropic_native_stream(events: AsyncIterator[Body], model: str) -> AsyncIterator[Body]:
    async for event in events:
        if event.get("type") == "message_start" and isinstance(event.get("message"), dict):
            event["message"]["model"] = model
        yield event
