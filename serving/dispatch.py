"""Sends a request to the ranked candidates of a decision, translating formats where needed.

Fail-over: the dispatcher calls the candidates in order (:func:`serving.reliability.failover_order`:
the chosen model, then the other acceptable ones, then the request's fallback
models) and makes at most ``max_attempts`` upstream calls, all within the
request's :class:`Deadline`:

* 500, 502, 503, 504 or a reset connection: the same model once more
  (``same_model_retries``), if its breaker is still closed; then the next candidate;
* connection refused, no answer within the per-attempt timeout, any other
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
that, a silence longer than ``stream_idle_timeout_s`` ends it as stalled.
A text stream that fails after its first token is *continued* by the next
candidate (``mid_stream_recovery``, :mod:`serving.recovery`), under the same
rules, with a fresh deadline; a stream that cannot be continued ends with an
error event (:mod:`serving.completion`). A stream that ends after its finish
(OpenAI ``finish_reason``, Anthropic ``message_delta``) but without its
terminator (``[DONE]``, ``message_stop``) is complete: the terminator is sent.

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
from typing import Any, AsyncIterator, Callable, Sequence

from models.catalog import Catalog, ModelSpec
from models.providers import (
    ContextLengthExceeded,
    MissingUpstreamKey,
    ProviderPool,
    UpstreamBadRequest,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamStreamError,
    UpstreamTimeout,
)
from models.providers.base import Provider, supports_prefill
from models.providers.raw import RawStream, SSEEvent
from models.store import AttemptRecord
from models.tokens import count_tokens
from serving import sse, translate
from serving.errors import BadGateway, GatewayTimeout, InvalidRequest, ModelsUnavailable, ServingError
from serving.metrics import Metrics
from serving.recovery import (
    PrefixMatcher,
    Splicer,
    Transcript,
    client_finish,
    continuation_text,
    estimated,
    recoverable_request,
    split_prefill,
    with_prefill,
)
from serving.reliability import BREAKER_KINDS, CLOSED, Breakers, Deadline, fails_over, retries_same_model
from serving.tracing import NO_TRACE, NoTrace, RequestTrace
from serving.usage import StreamWatcher, Usage, finish_of, text_of_response, usage_cost, usage_of

log = logging.getLogger("thrifty.serving")

Body = dict[str, Any]
MIN_ATTEMPT_S = 0.5  # a retry (after a Retry-After, or of a transient failure) needs at least this much time left
# No call starts with less time left than this: no model answers that fast, and an attempt's
# timer may fire a millisecond before the deadline (the loop rounds timers), which would
# otherwise leave a sliver of time for one more call that can only time out.
MIN_CALL_S = 0.05
_MESSAGE_STOP = sse.encode("anthropic", {"type": "message_stop"})


@dataclass
class Answer:
    spec: ModelSpec
    body: Body  # in the client's format
    usage: Usage
    finish_reason: str | None
    text: str
    raw: bytes | None = None  # ``body`` as the upstream's own bytes, when they can be forwarded unchanged


@dataclass
class Segment:
    """One upstream stream's part of a streamed answer: the first stream, or a continuation."""

    spec: ModelSpec
    attempt: AttemptRecord
    watcher: StreamWatcher  # on the upstream's events: usage, finish, completeness, the text it produced
    items: AsyncIterator[Body | tuple[bytes, bool]] | None = None
    closed: bool = False


class StreamAnswer:
    """An opened stream. ``events`` yields, in the client's format, either event dicts (translated streams)
    or ``(bytes, final)`` pairs: SSE bytes ready to send (passthrough and continuations), ``final``
    marking the part that ends the answer (it carries Anthropic's ``message_stop``; for OpenAI,
    ``[DONE]`` is to follow it). A stream that fails mid-way goes on with a continuation
    (:meth:`Dispatcher._answer_events`); ``segments`` are the upstream streams it was made of.

    The caller ends it with :meth:`finish` once the stream is over (before sending the final part).
    """

    def __init__(self, dispatcher: "Dispatcher", client_format: str, body: Body, run: "_Run", include_usage: bool):
        self.dispatcher = dispatcher
        self.client_format = client_format
        self.body = body
        self.run = run
        self.include_usage = include_usage
        self.recover = dispatcher.mid_stream_recovery and recoverable_request(body)
        self.transcript = Transcript(client_format)
        self.segments: list[Segment] = []
        self.events: AsyncIterator[Body | tuple[bytes, bool]] = dispatcher._answer_events(self)

    @property
    def spec(self) -> ModelSpec:
        """The model the stream started with (named in the response headers and the stream)."""
        return self.segments[0].spec

    @property
    def answered(self) -> ModelSpec:
        """The model that wrote the end of the answer."""
        return self.segments[-1].spec

    @property
    def finish_reason(self) -> str | None:
        return self.segments[-1].watcher.finish_reason

    @property
    def text(self) -> str:
        """The answer's text as the client received it."""
        return self.transcript.text

    def parts(self) -> list[tuple[ModelSpec, Usage]]:
        """Model and usage of each stream the answer was made of."""
        return [(s.spec, s.watcher.usage) for s in self.segments]

    def usage(self) -> Usage:
        return Usage(sum(s.watcher.usage.input_tokens for s in self.segments),
                     sum(s.watcher.usage.output_tokens for s in self.segments))

    def recoverable(self, exc: UpstreamError) -> bool:
        return self.recover and self.transcript.plain and fails_over(exc)

    def finish(self, error: UpstreamError | None, *, verdict: bool = True) -> None:
        """Close the stream's last attempt (``verdict=False``: the client left, no health verdict on the model)."""
        self.dispatcher._close(self, self.segments[-1], error, verdict=verdict)


class _Run:
    """The fail-over state of one request: what is left to try, what was tried, the time left."""

    def __init__(self, candidates: Sequence[str], ranking: Sequence[str], attempts: list[AttemptRecord], deadline: Deadline,
                 trace: RequestTrace | NoTrace = NO_TRACE):
        self.trace = trace  # the request's spans (one per attempt)
        self.pending = list(dict.fromkeys(candidates))
        self.spare = [m for m in dict.fromkeys(ranking) if m not in self.pending]  # for context-length escalation only
        self.attempts = attempts
        self.deadline = deadline
        self.done: set[str] = set()  # models not to call again
        self.waited: set[str] = set()  # models already retried after their Retry-After
        self.retried: dict[str, int] = {}  # same-model retries after a transient failure, by model
        self.prefilled: set[str] = set()  # models whose current call carries an assistant prefill
        self.no_prefill: set[str] = set()  # models that refused one
        self.context: tuple[str, int] | None = None  # (model, context window) of a context-length failure
        self.skipped: list[str] = []
        self.last: UpstreamError | None = None
        self.calls = 0


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
        first_token_timeout_s: float = 15.0,
        stream_idle_timeout_s: float = 30.0,
        retry_after_max_s: float = 5.0,
        same_model_retries: int = 1,
        mid_stream_recovery: bool = True,
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
        self.same_model_retries = same_model_retries
        self.mid_stream_recovery = mid_stream_recovery

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
        trace: RequestTrace | NoTrace = NO_TRACE,
    ) -> Answer:
        async def call(provider: Provider, spec: ModelSpec, upstream_body: Body, attempt: AttemptRecord,
                       timeout: float) -> Answer:
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

        run = _Run(candidates, ranking, attempts, deadline or Deadline(self.deadline_s), trace)

        def build(spec: ModelSpec, provider: Provider) -> Body:
            return self.upstream_body(client_format, body, spec, stream=False)

        return await self._failover(run, build, call, stream=False, timeout=self.attempt_timeout_s)

    async def open_stream(
        self,
        client_format: str,
        body: Body,
        candidates: Sequence[str],
        attempts: list[AttemptRecord],
        *,
        include_usage: bool = False,
        deadline: Deadline | None = None,
        ranking: Sequence[str] = (),
        trace: RequestTrace | NoTrace = NO_TRACE,
    ) -> StreamAnswer:
        """Open the upstream stream and read it up to its first token; the rest is read later, by the response."""
        run = _Run(candidates, ranking, attempts, deadline or Deadline(self.deadline_s), trace)
        answer = StreamAnswer(self, client_format, body, run, include_usage)

        async def call(provider: Provider, spec: ModelSpec, upstream_body: Body, attempt: AttemptRecord,
                       timeout: float) -> Segment:
            transcript = Transcript(client_format)  # of this attempt only: a failed one leaves no trace
            track = transcript.observer(spec.wire_format)
            raw, head, watcher, idle = await self._open(provider, spec, upstream_body, attempt, timeout, track)
            answer.transcript = transcript
            wire = spec.wire_format
            if wire != client_format:  # translated: event dicts through the translator
                events = _raw_dicts(head, raw, watcher, idle, track)
                if client_format == "openai":
                    items = translate.anthropic_stream_to_openai(events, model=spec.id, include_usage=include_usage)
                else:
                    items = translate.openai_stream_to_anthropic(events, model=spec.id)
            elif wire == "openai":
                items = _openai_passthrough(head, raw, watcher, idle, track, spec.id, include_usage)
            else:
                items = _anthropic_passthrough(head, raw, watcher, idle, track, spec.id)
            return Segment(spec, attempt, watcher, items)

        def build(spec: ModelSpec, provider: Provider) -> Body:
            return self.upstream_body(client_format, body, spec, stream=True)

        answer.segments.append(await self._failover(run, build, call, stream=True, timeout=self.first_token_timeout_s))
        return answer

    async def _open(self, provider: Provider, spec: ModelSpec, upstream_body: Body, attempt: AttemptRecord,
                    timeout: float, track: Callable[[Body], None] | None = None):
        """Send a streaming request and read it up to its first token: (stream, events read, watcher, idle timer)."""
        watcher = StreamWatcher(spec.wire_format, keep_text=True)
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
                        if track is not None:
                            track(event.data)
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
        return raw, head, watcher, idle

    # -- mid-stream recovery ------------------------------------------------------------------
    async def _answer_events(self, answer: StreamAnswer) -> AsyncIterator[Body | tuple[bytes, bool]]:
        """The client's stream: the current upstream stream; when it fails mid-way, a continuation from the next candidate.

        When no continuation can be had, the first failure is raised (the one the client's answer broke on).
        """
        first: UpstreamError | None = None
        while True:
            segment = answer.segments[-1]
            try:
                async with aclosing(segment.items) as items:
                    async for item in items:
                        yield item
                return
            except UpstreamError as exc:
                if not answer.recoverable(exc):
                    if first is None:
                        raise
                    self._close(answer, segment, exc)  # a continuation that broke: recorded, the first failure reported
                    raise first from None
                failure = exc
            first = first or failure
            self._close(answer, segment, failure)
            try:
                await self._continue(answer, failure)
            except (UpstreamError, ServingError) as exc:
                log.warning("stream of model %s could not be continued: %s", first.model, exc)
                raise first from None

    async def _continue(self, answer: StreamAnswer, failure: UpstreamError) -> None:
        """Open a continuation of ``answer`` after ``failure`` (fail-over rules, a fresh deadline) and make it current."""
        run = answer.run
        run.trace.continuing()
        run.deadline = Deadline(self.deadline_s)
        run.done.add(answer.segments[-1].spec.id)  # a stream that broke is not asked to finish its own answer
        run.last = failure
        delivered = answer.transcript.text
        prefill, held = split_prefill(delivered)
        spent = count_tokens(delivered) if prefill else 0
        splicer = Splicer(answer.transcript, answer.spec.id, include_usage=answer.include_usage, created=int(time.time()))

        def build(spec: ModelSpec, provider: Provider) -> Body:
            body = self.upstream_body(answer.client_format, answer.body, spec, stream=True)
            if prefill and spec.id not in run.no_prefill and supports_prefill(spec, provider):
                run.prefilled.add(spec.id)
                return with_prefill(body, prefill, spent_tokens=spent)
            run.prefilled.discard(spec.id)
            return body

        async def call(provider: Provider, spec: ModelSpec, upstream_body: Body, attempt: AttemptRecord,
                       timeout: float) -> Segment:
            if spec.id in run.prefilled:  # it continues the prefill: only the whitespace held back may repeat
                matcher = PrefixMatcher(held, strict=False, model=spec.id)
            else:  # it answers anew: its answer must start with all that was delivered
                matcher = PrefixMatcher(delivered, strict=True, model=spec.id)
            raw, head, watcher, idle = await self._open(provider, spec, upstream_body, attempt, timeout)
            items = _continuation(head, raw, watcher, idle, spec.id, matcher, splicer, answer)
            return Segment(spec, attempt, watcher, items)

        log.warning("stream of model %s failed after %d characters (%s); continuing it", failure.model,
                    len(delivered), failure.kind)
        answer.segments.append(await self._failover(run, build, call, stream=True, timeout=self.first_token_timeout_s))

    def _close(self, answer: StreamAnswer, segment: Segment, error: UpstreamError | None, *, verdict: bool = True) -> None:
        """Record a stream's attempt once it is over: its usage (estimated if the upstream never sent it), health."""
        if segment.closed:
            return
        segment.closed = True
        segment.watcher.usage = estimated(segment.watcher.usage, segment.watcher.text, answer.body,
                                          partial=error is not None or not verdict)
        self.finish_attempt(segment.attempt, segment.spec, segment.watcher.usage, error, verdict=verdict)
        answer.run.trace.end_attempt(segment.attempt)

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
    async def _failover(self, run: _Run, build: Callable[[ModelSpec, Provider], Body], call, *, stream: bool,
                        timeout: float):
        """Call the candidates of ``run`` (``build`` the body, ``call`` the model) until one answers."""
        deadline = run.deadline
        while run.calls < self.max_attempts and deadline.remaining() > MIN_CALL_S:
            model = self._next_model(run)
            if model is None:
                break
            spec = self.catalog.get(model)
            ticket = self.breakers.acquire(model)
            if ticket is None:  # circuit open: not called, but logged
                run.done.add(model)
                run.skipped.append(model)
                run.attempts.append(AttemptRecord(model=model, ts=time.time(), latency_s=0.0, status="skipped",
                                                  error_kind="circuit_open"))
                run.trace.skipped(model, "circuit_open")
                continue
            try:
                provider = self.pool.get(spec)
                upstream_body = build(spec, provider)
            except MissingUpstreamKey as exc:
                self.breakers.release(model)
                run.done.add(model)
                run.attempts.append(AttemptRecord(model=model, ts=time.time(), latency_s=0.0, status="error",
                                                  error_kind="config"))
                log.error("%s; model %s skipped", exc, model)  # the message names the variable to set
                run.trace.skipped(model, "config")
                continue
            except BaseException:
                self.breakers.release(model)
                raise
            if run.last is not None:
                self._note_failover(run.last, model)
            attempt = AttemptRecord(model=model, ts=time.time())
            run.attempts.append(attempt)
            run.calls += 1
            budget = deadline.bound(timeout)
            try:
                with run.trace.attempt(attempt, spec):  # the upstream call's own spans nest under the attempt's
                    result = await call(provider, spec, upstream_body, attempt, budget)
            except UpstreamError as exc:
                self._failed(attempt, exc)
                run.trace.end_attempt(attempt)
                if isinstance(exc, UpstreamTimeout) and budget < timeout:
                    self.breakers.release(model)  # cut short by the request's deadline: no verdict on the model
                else:
                    self._health(model, exc)
                run.last = exc
                if isinstance(exc, ContextLengthExceeded):
                    run.done.add(model)
                    run.context = (model, max(spec.context_window or 0, run.context[1] if run.context else 0))
                    continue
                if isinstance(exc, UpstreamBadRequest) and model in run.prefilled:
                    run.no_prefill.add(model)  # it refused the assistant prefill: ask it once more without
                    continue
                if not fails_over(exc):
                    raise
                if isinstance(exc, UpstreamRateLimited) and self._may_wait(exc, run, model):
                    run.waited.add(model)
                    await asyncio.sleep(exc.retry_after)
                    continue
                if self._may_retry(exc, run, model):
                    run.retried[model] = run.retried.get(model, 0) + 1
                    continue
                run.done.add(model)
                continue
            except BaseException as exc:  # cancelled (client gone, shutdown) or a fault in thrifty: no verdict on the model
                self.breakers.release(model)
                attempt.status = "error"
                attempt.error_kind = "cancelled" if isinstance(exc, asyncio.CancelledError) else "internal"
                attempt.latency_s = time.time() - attempt.ts
                run.trace.end_attempt(attempt)
                raise
            if not stream:
                self.breakers.success(model)  # a stream's verdict comes when it ends (finish_attempt)
                run.trace.end_attempt(attempt)
            return result
        raise self._exhausted(run)

    def _next_model(self, run: _Run) -> str | None:
        def fits(model: str) -> bool:
            if model in run.done or model not in self.catalog:
                return False
            return run.context is None or (self.catalog.get(model).context_window or 0) > run.context[1]

        for model in run.pending:
            if fits(model):
                return model
        if run.context is not None:
            for model in run.spare:
                if fits(model):
                    return model
        return None

    def _may_wait(self, exc: UpstreamRateLimited, run: _Run, model: str) -> bool:
        wait = exc.retry_after
        return (
            wait is not None
            and model not in run.waited
            and run.calls < self.max_attempts
            and wait <= self.retry_after_max_s
            and wait + MIN_ATTEMPT_S < run.deadline.remaining()
        )

    def _may_retry(self, exc: UpstreamError, run: _Run, model: str) -> bool:
        """One more call of the same model after a transient failure, while its breaker stays closed and time allows."""
        return (
            retries_same_model(exc)
            and run.retried.get(model, 0) < self.same_model_retries
            and run.calls < self.max_attempts
            and run.deadline.remaining() > MIN_ATTEMPT_S
            and self.breakers.state(model) == CLOSED
        )

    def _exhausted(self, run: _Run) -> Exception:
        last, context, skipped, deadline = run.last, run.context, run.skipped, run.deadline
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
        attempt.cost_usd = usage_cost(spec, usage)

    def _succeeded(self, attempt: AttemptRecord, spec: ModelSpec, usage: Usage) -> None:
        attempt.latency_s = time.time() - attempt.ts
        attempt.status = "ok"
        attempt.input_tokens, attempt.output_tokens = usage.input_tokens, usage.output_tokens
        attempt.cost_usd = usage_cost(spec, usage)
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


def _ended(watcher: StreamWatcher) -> bool:
    """Whether a stream gave its answer whole: its final event, or its finish (OpenAI ``finish_reason``,
    Anthropic ``message_delta``) without the terminator after it."""
    return watcher.complete or watcher.finish_reason is not None


def _check_complete(watcher: StreamWatcher, model: str) -> None:
    if not _ended(watcher):
        raise UpstreamStreamError(f"stream of model {model!r} ended without its final event", model=model)


async def _raw_dicts(head: list[SSEEvent], raw: RawStream, watcher: StreamWatcher, idle: IdleTimer,
                     track: Callable[[Body], None] | None = None) -> AsyncIterator[Body]:
    """The event dicts of a raw stream (for translation), watched; the events read ahead first."""
    async with aclosing(_batches(head, raw, watcher, idle, track)) as batches:
        async for events in batches:
            for event in events:
                yield event.data
    if not watcher.complete:
        _check_complete(watcher, raw.model)
        if watcher.wire_format == "anthropic":
            yield {"type": "message_stop"}  # the finish came, the terminator did not


async def _batches(head: list[SSEEvent], raw: RawStream, watcher: StreamWatcher, idle: IdleTimer,
                   track: Callable[[Body], None] | None = None) -> AsyncIterator[list[SSEEvent]]:
    """The events read ahead, then the events of each network read (watched), until the upstream ends.

    Closing it (``contextlib.aclosing`` in the callers: their consumer may stop early)
    stops the idle timer and closes the upstream response. The events of one read
    are all watched (and tracked) before the first of them is handed on, as every
    stream path does. A failure after the stream's finish ends it: the answer is whole.
    """
    try:
        events = head
        while True:
            yield events
            try:
                events = await idle.wait(raw.batch())
            except UpstreamError:
                if _ended(watcher):
                    return
                raise
            if not events:
                return
            for event in events:
                watcher.observe(event.data)
                if track is not None:
                    track(event.data)
    finally:
        idle.stop()
        await raw.aclose()


async def _openai_passthrough(head: list[SSEEvent], raw: RawStream, watcher: StreamWatcher, idle: IdleTimer,
                              track: Callable[[Body], None] | None, model: str,
                              include_usage: bool) -> AsyncIterator[tuple[bytes, bool]]:
    """An OpenAI stream to an OpenAI client, on bytes.

    A chunk goes out as the upstream sent it unless it must change (its ``model``
    is not the catalog id, or it carries the usage the client did not ask for);
    the events of one network read go out in one write. The last part is
    marked final once the upstream ended complete (``[DONE]`` follows it).
    """
    async with aclosing(_batches(head, raw, watcher, idle, track)) as batches:
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
                                 track: Callable[[Body], None] | None, model: str) -> AsyncIterator[tuple[bytes, bool]]:
    """An Anthropic stream to an Anthropic client, on bytes.

    An event goes out as the upstream sent it unless its ``message_start`` names
    another model (or its SSE name is not its type); the part holding
    ``message_stop`` is marked final.
    """
    async with aclosing(_batches(head, raw, watcher, idle, track)) as batches:
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
    if not watcher.complete:
        _check_complete(watcher, model)
        yield _MESSAGE_STOP, True  # the finish came, the terminator did not


async def _continuation(head: list[SSEEvent], raw: RawStream, watcher: StreamWatcher, idle: IdleTimer, model: str,
                        matcher: PrefixMatcher, splicer: Splicer, answer: StreamAnswer) -> AsyncIterator[tuple[bytes, bool]]:
    """A continuation's text, minus what the client already has, written into the client's stream; then its end."""
    wire = watcher.wire_format
    async with aclosing(_batches(head, raw, watcher, idle)) as batches:
        async for events in batches:
            parts = []
            for event in events:
                text = continuation_text(wire, event.data, model)
                if text:
                    text = matcher.feed(text)
                    if text:
                        parts.append(splicer.text(text))
            if parts:
                yield b"".join(parts), False
    _check_complete(watcher, model)
    matcher.finish()
    yield splicer.end(client_finish(wire, answer.client_format, watcher.finish_reason), answer.usage()), True
