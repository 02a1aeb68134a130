"""Sends a request to the ranked candidates of a decision, translating formats where needed.

The dispatcher takes the decision's candidates in order and tries up to
``max_attempts`` of them: a retryable upstream failure (connection, timeout,
429, 5xx) before any byte reached the client moves on to the next candidate;
anything else is raised. Every try is appended to the caller's ``attempts``
list, so the store records each one. (With the default ``max_attempts=1``
only the chosen model is called.)

Request bodies pass through natively when the model speaks the client's
format; only cross-format requests are translated (:mod:`serving.translate`).
Responses always name the catalog id of the model that answered.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Sequence

from models.catalog import Catalog, ModelSpec
from models.providers import MissingUpstreamKey, ProviderPool, UpstreamError
from serving import translate
from serving.errors import BadGateway, InvalidRequest
from serving.metrics import Metrics
from serving.store import AttemptRecord
from serving.usage import StreamWatcher, Usage, finish_of, text_of_response, usage_of

Body = dict[str, Any]


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


class Dispatcher:
    def __init__(
        self,
        catalog: Catalog,
        pool: ProviderPool,
        *,
        metrics: Metrics | None = None,
        default_max_tokens: int = translate.DEFAULT_MAX_TOKENS,
        max_attempts: int = 1,
    ):
        self.catalog = catalog
        self.pool = pool
        self.metrics = metrics
        self.default_max_tokens = default_max_tokens
        self.max_attempts = max_attempts

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
    async def complete(self, client_format: str, body: Body, candidates: Sequence[str], attempts: list[AttemptRecord]) -> Answer:
        for spec, upstream_body, attempt in self._tries(client_format, body, candidates, attempts, stream=False):
            try:
                result = await self.pool.get(spec).send(spec, upstream_body, stream=False)
            except UpstreamError as exc:
                if self._failed(attempt, exc, last=len(attempts) >= self._limit(candidates)):
                    raise
                continue
            usage = usage_of(spec.wire_format, result)
            self._succeeded(attempt, spec, usage)
            return Answer(
                spec=spec,
                body=self._present(client_format, spec, result),
                usage=usage,
                finish_reason=finish_of(spec.wire_format, result),
                text=text_of_response(spec.wire_format, result),
            )
        raise AssertionError("unreachable: the last failure is raised")

    async def open_stream(
        self,
        client_format: str,
        body: Body,
        candidates: Sequence[str],
        attempts: list[AttemptRecord],
        *,
        include_usage: bool = False,
        keep_text: bool = False,
    ) -> StreamAnswer:
        """Open the upstream stream (status checked); the events are read later, by the response."""
        for spec, upstream_body, attempt in self._tries(client_format, body, candidates, attempts, stream=True):
            try:
                events = await self.pool.get(spec).send(spec, upstream_body, stream=True)
            except UpstreamError as exc:
                if self._failed(attempt, exc, last=len(attempts) >= self._limit(candidates)):
                    raise
                continue
            watcher = StreamWatcher(spec.wire_format, keep_text=keep_text)
            watched = watcher.watch(events, spec.id)
            return StreamAnswer(
                spec=spec,
                events=self._present_stream(client_format, spec, watched, include_usage),
                watcher=watcher,
            )
        raise AssertionError("unreachable: the last failure is raised")

    def finish_attempt(self, attempt: AttemptRecord, spec: ModelSpec, usage: Usage, error: UpstreamError | None) -> None:
        """Close a streamed attempt once its stream has ended."""
        if error is None:
            self._succeeded(attempt, spec, usage)
        else:
            self._failed(attempt, error, last=True)
            attempt.input_tokens, attempt.output_tokens = usage.input_tokens, usage.output_tokens
            attempt.cost_usd = spec.cost(usage.input_tokens, usage.output_tokens)

    # -- internals ---------------------------------------------------------------------
    def _limit(self, candidates: Sequence[str]) -> int:
        return min(self.max_attempts, len(candidates))

    def _tries(self, client_format, body, candidates, attempts, *, stream):
        for model in list(candidates)[: self._limit(candidates)]:
            spec = self.catalog.get(model)
            upstream_body = self.upstream_body(client_format, body, spec, stream=stream)
            attempt = AttemptRecord(model=model, ts=time.time())
            attempts.append(attempt)
            try:
                self.pool.get(spec)
            except MissingUpstreamKey as exc:
                attempt.status, attempt.error_kind, attempt.latency_s = "error", "config", 0.0
                raise BadGateway(f"thrifty has no upstream key for model {model!r}") from exc
            yield spec, upstream_body, attempt

    def _failed(self, attempt: AttemptRecord, exc: UpstreamError, *, last: bool) -> bool:
        """Record a failed try; True when the error must be raised (not retryable, or no candidate left)."""
        attempt.latency_s = time.time() - attempt.ts
        attempt.status, attempt.error_kind, attempt.http_status = "error", exc.kind, exc.status
        if self.metrics:
            self.metrics.upstream_errors.labels(attempt.model, exc.kind).inc()
            self.metrics.upstream_latency.labels(attempt.model).observe(attempt.latency_s)
        return last or not exc.retryable

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
