"""One chat request, either format: constraints, decision, dispatch, response, record.

Shared by ``POST /v1/chat/completions`` (``fmt="openai"``) and
``POST /v1/messages`` (``fmt="anthropic"``). The record of an answered
request is committed before the response completes: before the JSON body is
returned, or before the final event of a stream (``[DONE]`` /
``message_stop``) is sent. Every request that reaches dispatch is recorded,
whatever its end: answered, refused (budget), failed upstream, failed inside
thrifty, or abandoned by its client.

The request's deadline starts when it arrives; fail-over is the dispatcher's
(:mod:`serving.dispatch`), along the decision's candidates and then the
request's fallback models (:func:`fallback_models`). A stream that fails
after its first bytes reached the client is continued by the next candidate
when it can be (:mod:`serving.recovery`); otherwise it ends with an error
event in the client's dialect (OpenAI: ``data: {"error": {...}}``, Anthropic:
``event: error``), never with ``[DONE]`` or ``message_stop``: the SDKs raise
instead of returning a truncated answer as complete, and the record says ``error``.
"""

from __future__ import annotations

import logging
import math
import os
import time
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any, AsyncIterator, Mapping

import anyio
from fastapi import Request
from fastapi.responses import Response

from models.catalog import ModelSpec
from models.providers import UpstreamError, UpstreamStreamError
from models.store import DecisionRecord
from router.decision import Decision
from router.prompt import routing_text
from serving import cascade as cascades
from serving import sse
from serving.errors import InvalidRequest, ServingError, error_body, from_upstream
from serving.fastjson import dumps
from serving.reliability import Deadline, failover_order
from serving.routing import CASCADE, PASSTHROUGH, Constraints, unservable
from serving.schemas import MAX_LABEL_CHARS, ThriftyOptions
from serving.services import Services
from serving.tracing import NO_TRACE, NoTrace, RequestTrace
from serving.usage import Usage, usage_cost

Body = dict[str, Any]
log = logging.getLogger("thrifty.serving")

HEADER_MIN_QUALITY = "x-thrifty-min-quality"
HEADER_MAX_COST = "x-thrifty-max-cost"
HEADER_ALLOWED = "x-thrifty-allowed-models"
HEADER_TASK = "x-thrifty-task"
HEADER_ON_UNMET = "x-thrifty-on-unmet-limit"
HEADER_LIMIT_UNMET = "x-thrifty-limit-unmet"  # response: the limit the answering model does not meet (degraded)
ON_UNMET_VALUES = ("refuse", "degrade")


def new_decision_id() -> str:
    # time-ordered prefix: ids sort by creation, which keeps the store's index local
    return f"dec_{time.time_ns():x}{os.urandom(6).hex()}"  # 48 random bits, as uuid4().hex[:12] gave


def _header_float(headers: Mapping[str, str], name: str, low: float, high: float) -> float | None:
    value = headers.get(name)
    if value is None or value.strip() == "":
        return None
    try:
        number = float(value)
    except ValueError:
        raise InvalidRequest(f"header {name} must be a number, got {value!r}", param=name) from None
    if not (math.isfinite(number) and low <= number <= high):
        raise InvalidRequest(f"header {name} must be between {low} and {high}, got {value!r}", param=name)
    return number


HEADER_PARAMS = {"min_quality": HEADER_MIN_QUALITY, "max_cost": HEADER_MAX_COST, "allowed_models": HEADER_ALLOWED}
BODY_PARAMS = {name: f"thrifty.{name}" for name in ("min_quality", "max_cost", "allowed_models")}


def constraints_from(headers: Mapping[str, str], options: ThriftyOptions | None, body: Body | None = None) -> Constraints:
    """Constraints from headers and the ``thrifty`` body field (when both are given, both apply), and the
    request's needs from its body (``max_tokens`` / ``max_completion_tokens``, ``n``)."""
    allowed_header = headers.get(HEADER_ALLOWED)
    allowed = tuple(m.strip() for m in allowed_header.split(",") if m.strip()) if allowed_header else None
    if allowed_header is not None and not allowed:
        raise InvalidRequest(f"header {HEADER_ALLOWED} names no model", param=HEADER_ALLOWED)
    on_unmet = headers.get(HEADER_ON_UNMET)
    if on_unmet is not None and on_unmet.strip().lower() not in ON_UNMET_VALUES:
        raise InvalidRequest(f"header {HEADER_ON_UNMET} must be one of {', '.join(ON_UNMET_VALUES)}, got {on_unmet!r}",
                             param=HEADER_ON_UNMET)
    constraints = Constraints(
        min_quality=_header_float(headers, HEADER_MIN_QUALITY, 0.0, 1.0),
        max_cost=_header_float(headers, HEADER_MAX_COST, 0.0, math.inf),
        allowed_models=allowed,
        task=_label(headers.get(HEADER_TASK), f"header {HEADER_TASK}", HEADER_TASK) or _metadata_task(body),
        on_unmet_limit=on_unmet.strip().lower() if on_unmet is not None else None,
        params=HEADER_PARAMS,
    )
    if options is not None:
        constraints = constraints.narrowed(Constraints(
            min_quality=options.min_quality,
            max_cost=options.max_cost,
            allowed_models=tuple(options.allowed_models) if options.allowed_models is not None else None,
            task=options.task,
            on_unmet_limit=options.on_unmet_limit,
            params=BODY_PARAMS,
        ))
    return _with_needs(constraints, body or {})


def _with_needs(constraints: Constraints, body: Body) -> Constraints:
    """``constraints`` with the output limit and the number of choices the request asks for."""
    params = dict(constraints.params)
    max_output = None
    for name in ("max_completion_tokens", "max_tokens"):  # OpenAI: the first supersedes the second
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            max_output, params["max_output_tokens"] = value, name
            break
    choices = body.get("n")
    choices = choices if isinstance(choices, int) and not isinstance(choices, bool) and choices > 1 else 1
    params["choices"] = "n"
    return replace(constraints, max_output_tokens=max_output, choices=choices, params=params)


def _label(value: str | None, what: str, param: str) -> str | None:
    """A client-supplied label the store keeps: at most MAX_LABEL_CHARS characters, else a 400 naming it."""
    if value is None or value == "":
        return None
    if len(value) > MAX_LABEL_CHARS:
        raise InvalidRequest(f"{what} is {len(value)} characters long; at most {MAX_LABEL_CHARS} are accepted", param=param)
    return value


def _metadata_task(body: Body | None) -> str | None:
    metadata = (body or {}).get("metadata")
    task = metadata.get("task") if isinstance(metadata, dict) else None
    return _label(task, "metadata.task", "metadata.task") if isinstance(task, str) else None


def decision_headers(decision_id: str, decision: Decision, answered: ModelSpec | None = None) -> dict[str, str]:
    model = answered.id if answered is not None else decision.model
    candidate = next((c for c in decision.candidates if c.model == model), None)
    if candidate is None:  # a fallback model the router did not score: the chosen model's token estimates, its price
        chosen = decision.chosen
        expected_cost, p_success = answered.cost(chosen.expected_input_tokens, chosen.expected_output_tokens), math.nan
    else:
        expected_cost, p_success = candidate.expected_cost, candidate.p_success
    headers = {
        "x-thrifty-decision-id": decision_id,
        "x-thrifty-model": model,
        "x-thrifty-expected-cost": f"{expected_cost:.8f}",
        "x-thrifty-policy": decision.policy,
    }
    if math.isfinite(p_success):
        headers["x-thrifty-p-success"] = f"{p_success:.4f}"
    if decision.router_version:
        headers["x-thrifty-router-version"] = decision.router_version
    unmet = decision.extra.get("limit_unmet")
    if unmet:
        headers[HEADER_LIMIT_UNMET] = unmet
    return headers


def candidates_json(decision: Decision) -> list[dict]:
    return [
        {
            "model": c.model,
            "p_success": c.p_success if math.isfinite(c.p_success) else None,
            "expected_cost": c.expected_cost,
            "expected_input_tokens": c.expected_input_tokens,
            "expected_output_tokens": c.expected_output_tokens,
            "acceptable": c.acceptable,
        }
        for c in decision.candidates
    ]


def new_record(
    services: Services, *, decision_id: str, endpoint: str, client: str, requested: str, text: str,
    decision: Decision, constraints: Constraints, stream: bool, status: str,
) -> DecisionRecord:
    config = services.config
    return DecisionRecord(
        decision_id=decision_id,
        ts=time.time(),
        endpoint=endpoint,
        client=client,
        requested_model=requested,
        task=constraints.task,
        prompt=None if config.redact_prompts else text,
        prompt_chars=len(text),
        router_version=decision.router_version,
        policy=decision.policy,
        knob=decision.knob if math.isfinite(decision.knob) else None,
        fallback=decision.fallback,
        explored=decision.explored,
        candidates=candidates_json(decision),
        chosen_model=decision.model,
        propensity=decision.propensity,
        status=status,
        stream=stream,
        novelty=decision.novelty if decision.novelty is not None and math.isfinite(decision.novelty) else None,
        decision_latency_s=decision.extra.get("decision_latency_s"),
    )


def fallback_models(services: Services, decision: Decision, options: ThriftyOptions | None,
                    constraints: Constraints) -> list[str]:
    """The models a request may fail over to after its decision's candidates.

    The request's ``thrifty.fallback_models`` if given (``[]``: none); else, for a
    model requested by id, the config's ``fallbacks`` of that model. Models outside
    the request's ``allowed_models``, and models that cannot serve it (``n > 1`` on
    Anthropic, ``max_tokens`` above their output limit), are left out.
    """
    if options is not None and options.fallback_models is not None:
        unknown = [m for m in options.fallback_models if m not in services.catalog]
        if unknown:
            raise InvalidRequest(f"thrifty.fallback_models names unknown model(s): {', '.join(unknown)}",
                                 param="thrifty.fallback_models")
        models = list(options.fallback_models)
    elif decision.policy == PASSTHROUGH:
        models = list(services.config.fallbacks.get(decision.model, ()))
    else:
        models = []
    if constraints.allowed_models is not None:
        models = [m for m in models if m in constraints.allowed_models]
    return [m for m in models if unservable(services.catalog.get(m), constraints) is None]


async def decide(services: Services, requested: str, text: str, constraints: Constraints,
                 trace: RequestTrace | NoTrace = NO_TRACE) -> Decision:
    started = time.perf_counter()
    wall = time.time() if trace.enabled else 0.0
    decision = await services.decisions.decide(requested, text, constraints)
    elapsed = time.perf_counter() - started
    metrics = services.metrics
    metrics.routing_latency.observe(elapsed)
    metrics.child(metrics.decisions, decision.extra.get("profile", requested), decision.model).inc()
    if trace.enabled:
        trace.decision(decision, requested, wall, wall + elapsed)
    if decision.novelty is not None:
        metrics.decision_novelty.observe(decision.novelty)
    return replace(decision, extra={**decision.extra, "decision_latency_s": elapsed})


async def commit(services: Services, record: DecisionRecord, trace: RequestTrace | NoTrace = NO_TRACE) -> None:
    """Write ``record`` (its span: the store commit), then end the request's span with its outcome."""
    with trace.commit(record):
        await services.store.write(record)
    trace.finish(record)


@asynccontextmanager
async def recorded_failures(services: Services, record: DecisionRecord, decision_id: str, decision: Decision, started: float,
                            trace: RequestTrace | NoTrace = NO_TRACE, headers: Mapping[str, str] | None = None):
    """Around a request's upstream work: whatever fails, the record is committed with the failure before it propagates.

    An upstream or serving error becomes the client's error (upstream text scrubbed) with the decision and
    attempt headers, plus ``headers`` as they stand when it fails; any other exception is a fault inside
    thrifty (the generic 500 follows); a cancellation (the graceful-shutdown timeout ran out) is recorded
    under a shield.
    """
    try:
        yield
    except (UpstreamError, ServingError) as exc:
        error = from_upstream(exc, services.scrubber) if isinstance(exc, UpstreamError) else exc
        record.status, record.http_status = "error", error.status
        record.error_kind = exc.kind if isinstance(exc, UpstreamError) else (exc.kind or type(exc).__name__)
        record.latency_s = time.perf_counter() - started
        _spent(record)
        await commit(services, record, trace)
        error.headers = {**error.headers, **decision_headers(decision_id, decision), **_attempt_headers(record), **(headers or {})}
        raise error from None
    except Exception:
        record.status, record.http_status, record.error_kind = "error", 500, "internal"
        record.latency_s = time.perf_counter() - started
        await commit(services, record, trace)
        raise
    except BaseException:
        record.status, record.error_kind = "error", "cancelled"
        record.latency_s = time.perf_counter() - started
        with anyio.CancelScope(shield=True):
            await commit(services, record, trace)
        raise


async def handle_completion(
    services: Services, request: Request, client: str, fmt: str, body: Body, options: ThriftyOptions | None
) -> Any:
    deadline = Deadline(services.config.deadline_s)
    endpoint = request.scope["path"]  # the route matched this exact path (request.url would parse it again)
    constraints = constraints_from(request.headers, options, body)
    body = {k: v for k, v in body.items() if k != "thrifty"}
    requested, stream = body["model"], bool(body.get("stream"))
    text = routing_text(body)
    trace = services.tracing.request(requested, endpoint, stream)
    try:
        decision = await decide(services, requested, text, constraints, trace)
    except BaseException as exc:
        trace.fail(exc)
        raise
    decision_id = new_decision_id()
    record = new_record(
        services, decision_id=decision_id, endpoint=endpoint, client=client, requested=requested, text=text,
        decision=decision, constraints=constraints, stream=stream, status="ok",
    )
    if decision.policy == CASCADE:
        return await handle_cascade(services, fmt, body, decision, decision_id, record, deadline, trace)
    started = time.perf_counter()
    async with recorded_failures(services, record, decision_id, decision, started, trace):
        candidates = failover_order(decision, include_unacceptable=services.config.failover_to_unacceptable,
                                    fallbacks=fallback_models(services, decision, options, constraints))
        if services.budgets is not None and services.budgets.enabled:
            reachable = [*decision.ranking, *candidates]
            record.reservation = await services.budgets.admit(client, decision_id, body, reachable)
        if stream:
            include_usage = bool((body.get("stream_options") or {}).get("include_usage")) if fmt == "openai" else False
            opened = await services.dispatcher.open_stream(
                fmt, body, candidates, record.attempts,
                include_usage=include_usage, deadline=deadline, ranking=decision.ranking, trace=trace,
            )
        else:
            answer = await services.dispatcher.complete(
                fmt, body, candidates, record.attempts, deadline=deadline, ranking=decision.ranking, trace=trace,
            )

    headers = {**decision_headers(decision_id, decision, answered=(opened if stream else answer).spec),
               **_attempt_headers(record)}
    if not stream:
        _finish_record(services, record, [(answer.spec, answer.usage)], started, answer.finish_reason, answer.text)
        await commit(services, record, trace)
        return Response(answer.raw if answer.raw is not None else dumps(answer.body), headers=headers,
                        media_type="application/json")
    return sse.EventStreamResponse(
        _stream_events(services, fmt, opened, record, started, trace), headers={**headers, **sse.HEADERS}
    )


async def handle_cascade(services: Services, fmt: str, body: Body, decision: Decision, decision_id: str,
                         record: DecisionRecord, deadline: Deadline, trace: RequestTrace | NoTrace = NO_TRACE) -> Any:
    """A cascade profile's request (:mod:`serving.cascade`): book the worst case, run the stages, answer with the
    accepted call (a stream of it for a streaming client), record every call and the stages run."""
    cascade, p, profile = decision.extra["cascade"], decision.extra["p"], decision.extra["profile"]
    fallbacks = {m: [f for f in services.config.fallbacks.get(m, ()) if f in services.catalog] for m in cascade.models}
    stream = bool(body.get("stream"))
    started = time.perf_counter()
    failure_headers: dict[str, str] = {}
    async with recorded_failures(services, record, decision_id, decision, started, trace, failure_headers):
        cascades.check_request(body, profile)
        if services.budgets is not None and services.budgets.enabled:
            record.reservation = await services.budgets.admit_calls(
                record.client, decision_id, body, cascades.worst_case_calls(cascade, p, fallbacks))
        try:
            run = await cascades.run_cascade(services.dispatcher, fmt, {k: v for k, v in body.items() if k != "stream"},
                                             cascade, p, fallbacks, record.attempts, deadline=deadline, trace=trace)
        except cascades.CascadeFailed as failed:
            record.cascade = cascades.failed_record(profile, cascade, failed.stages)
            failure_headers[cascades.HEADER] = cascades.stage_trace(failed.stages)
            raise failed.error from None

    answer = run.answer
    record.chosen_model = answer.spec.id
    record.cascade = run.record(profile, cascade)
    parts = [(c.answer.spec, c.answer.usage) for c in run.calls if c.answer is not None and c.answer is not answer]
    _finish_record(services, record, [*parts, (answer.spec, answer.usage)], started, answer.finish_reason, answer.text)
    headers = {**decision_headers(decision_id, decision, answered=answer.spec), **_attempt_headers(record),
               cascades.HEADER: cascades.stage_trace(run.stages)}
    await commit(services, record, trace)
    if not stream:
        return Response(answer.raw if answer.raw is not None else dumps(answer.body), headers=headers,
                        media_type="application/json")
    include_usage = bool((body.get("stream_options") or {}).get("include_usage")) if fmt == "openai" else False
    events = cascades.answer_events(fmt, answer, include_usage=include_usage)

    async def replay() -> AsyncIterator[bytes]:
        for event in events:
            yield event

    return sse.EventStreamResponse(replay(), headers={**headers, **sse.HEADERS})


def _spent(record: DecisionRecord) -> None:
    """A failed request's record: the usage and spend of the calls that did answer (a cascade's earlier stages)."""
    answered = [a for a in record.attempts if a.status == "ok"]
    if answered:
        record.input_tokens = sum(a.input_tokens or 0 for a in answered)
        record.output_tokens = sum(a.output_tokens or 0 for a in answered)
        record.cost_usd = sum(a.cost_usd or 0.0 for a in answered)


def _attempt_headers(record: DecisionRecord) -> dict[str, str]:
    calls = sum(1 for a in record.attempts if a.status != "skipped")
    return {"x-thrifty-attempts": str(calls)}


def _finish_record(services: Services, record: DecisionRecord, parts: list[tuple[ModelSpec, Usage]], started: float,
                   finish_reason: str | None, text: str | None) -> None:
    """The answer in the record: ``parts``, the model and usage of each upstream answer it was made of
    (one, or a stream and its continuations); the last one answered. Cached input is priced at its own rates."""
    metrics = services.metrics
    record.answered_model = parts[-1][0].id
    record.input_tokens = record.output_tokens = 0
    record.cost_usd = 0.0
    for spec, usage in parts:
        cost = usage_cost(spec, usage)
        record.input_tokens += usage.input_tokens
        record.output_tokens += usage.output_tokens
        record.cost_usd += cost
        metrics.child(metrics.spend, spec.id).inc(cost)
        metrics.child(metrics.tokens, spec.id, "input").inc(usage.input_tokens)
        metrics.child(metrics.tokens, spec.id, "output").inc(usage.output_tokens)
        if usage.cache_read_tokens:  # part of "input": how much of it was read from the provider's cache
            metrics.child(metrics.tokens, spec.id, "cache_read").inc(usage.cache_read_tokens)
        if usage.cache_write_tokens:
            metrics.child(metrics.tokens, spec.id, "cache_write").inc(usage.cache_write_tokens)
    record.latency_s = time.perf_counter() - started
    record.finish_reason = finish_reason
    if services.config.store_responses:
        record.response = text


async def _stream_events(services: Services, fmt: str, opened, record: DecisionRecord, started: float,
                         trace: RequestTrace | NoTrace = NO_TRACE) -> AsyncIterator[bytes]:
    """The SSE body: client-format events, the record committed before the final event.

    A failure after the first bytes that the dispatcher could not recover from ends the stream with
    an error event, never with the final event.
    """
    written = False

    async def finish(error: UpstreamError | None, status: str = "ok") -> None:
        nonlocal written
        if written:
            return
        written = True
        opened.finish(error, verdict=status != "client_closed")
        _finish_record(services, record, opened.parts(), started, opened.finish_reason, opened.text)
        if error is not None:
            record.status, record.error_kind = "error", error.kind
        elif status != "ok":
            record.status = status
        await commit(services, record, trace)

    done = False  # OpenAI's [DONE] sent
    try:
        async for event in opened.events:
            if type(event) is tuple:  # passthrough: SSE bytes in the client's dialect, and whether they end the answer
                payload, final = event
                if final:
                    await finish(None)
                    if fmt == "openai":
                        payload += sse.OPENAI_DONE
                        done = True
                if payload:
                    yield payload
                continue
            if fmt == "anthropic" and event.get("type") == "message_stop":
                await finish(None)
            yield sse.encode(fmt, event)
        if fmt == "openai":
            await finish(None)
            if not done:
                yield sse.OPENAI_DONE
        else:
            await finish(None)
    except UpstreamError as exc:
        await finish(exc)
        error = from_upstream(exc, services.scrubber)
        yield sse.encode_error(fmt, error_body(fmt, error))
    except Exception:
        log.exception("stream of model %s failed inside thrifty", opened.answered.id)
        failure = UpstreamStreamError("internal error in thrifty while streaming", model=opened.answered.id)
        failure.kind = "internal"
        await finish(failure)
        yield sse.encode_error(fmt, error_body(fmt, ServingError("internal error in thrifty while streaming")))
    finally:
        if not written:  # the client went away mid-stream: close the upstream, keep the record
            with anyio.CancelScope(shield=True):
                await opened.events.aclose()
                await finish(None, status="client_closed")
