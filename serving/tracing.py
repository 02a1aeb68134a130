"""OpenTelemetry spans of thrifty's own work: the request, its routing decision, each upstream attempt, the store commit.

One request gives this tree (under the HTTP server span when an
instrumentation such as ``opentelemetry-instrument`` adds one)::

    chat thrifty                      the request (gen_ai.request.model: what the client asked for)
    ├── route thrifty                 the decision: candidates, policy, knob, chosen model, p_success, expected cost
    ├── chat gpt-4o-mini              attempt 1 (CLIENT): gen_ai.* usage, cost, status, error kind
    ├── chat claude-3-5-haiku         attempt 2: thrifty.attempt.kind = failover | retry | continuation
    └── thrifty.store.commit          the record written before the answer completes

Attribute names follow the OpenTelemetry GenAI semantic conventions
(``gen_ai.operation.name``, ``gen_ai.provider.name``, ``gen_ai.request.model``,
``gen_ai.response.model``, ``gen_ai.usage.input_tokens`` / ``output_tokens``,
``gen_ai.response.finish_reasons``, ``error.type``); thrifty's own are ``thrifty.*``.
Nothing a client or upstream could use as a credential is recorded: no prompt,
no answer, no error message (only its kind and HTTP status), no key.

Tracing is on when a real tracer provider is in force: set up by
``opentelemetry-instrument`` (``opentelemetry-distro``), or by :func:`configure`
from the standard ``OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT`` variables or the
config's ``otel_endpoint`` (OTLP over HTTP; ``pip install 'thrifty[otel]'``).
Otherwise every hook is a constant no-op object (:data:`NO_TRACE`): a request
pays a few attribute lookups, not a span.

Upstream calls run with their attempt span as the current span, so the spans
an HTTP-client instrumentation makes for them nest under it. Background work
(the registry poller) runs in :func:`detached` contexts: no parent span, and
instrumentations suppressed, so its SQLite and HTTP calls make no spans at all.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NoOpTracerProvider, ProxyTracerProvider, SpanKind, Status, StatusCode

log = logging.getLogger("thrifty.serving")

SCOPE = "thrifty.serving"
OPERATION = "chat"
FLUSH_TIMEOUT_MS = 5000
ENDPOINT_ENVS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
# instrumentation libraries check this context key and make no span while it is set
_SUPPRESS_KEY = getattr(otel_context, "_SUPPRESS_INSTRUMENTATION_KEY", None) or otel_context.create_key("suppress_instrumentation")


class TracingUnavailable(RuntimeError):
    """Export is configured but the OpenTelemetry SDK or OTLP exporter is not installed."""


# -- set-up --------------------------------------------------------------------------------------------


def is_recording_provider(provider: Any) -> bool:
    """Whether ``provider`` makes real spans (not the API's default proxy or no-op provider)."""
    return not isinstance(provider, (ProxyTracerProvider, NoOpTracerProvider))


def otlp_endpoint(config_endpoint: str | None = None) -> str | None:
    """The OTLP/HTTP traces URL to export to, or None (tracing off): the config's, else the standard variables."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return None
    if config_endpoint:
        return _traces_url(config_endpoint)
    if os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return os.environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]  # a full URL, used as given
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return _traces_url(os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"])
    return None


def _traces_url(base: str) -> str:
    base = base.rstrip("/")
    return base if base.endswith("/v1/traces") else f"{base}/v1/traces"


def check(config_endpoint: str | None = None) -> str | None:
    """The OTLP endpoint export is configured to, or None; :class:`TracingUnavailable` if the SDK cannot load."""
    endpoint = otlp_endpoint(config_endpoint)
    if endpoint is None:
        return None
    try:
        import opentelemetry.exporter.otlp.proto.http.trace_exporter  # noqa: F401
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError as exc:
        raise TracingUnavailable(
            f"trace export to {endpoint} is configured, but the OpenTelemetry SDK cannot load ({exc.name or exc}): "
            "pip install 'thrifty[otel]', or unset OTEL_EXPORTER_OTLP_ENDPOINT / otel_endpoint"
        ) from None
    return endpoint


def configure(config_endpoint: str | None = None) -> Any | None:
    """Install an SDK tracer provider exporting over OTLP/HTTP, if export is configured and none is in force.

    Returns the provider it installed (to shut down, which flushes the spans
    still queued), or None: export not configured, or a provider already in
    force (``opentelemetry-instrument`` installs its own, from the same variables).
    The SDK reads the other standard variables itself: ``OTEL_SERVICE_NAME``
    (default here: ``thrifty``), ``OTEL_RESOURCE_ATTRIBUTES``,
    ``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_TRACES_SAMPLER``, ...
    """
    endpoint = check(config_endpoint)
    if endpoint is None or is_recording_provider(trace.get_tracer_provider()):
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    defaults = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: "thrifty"}
    provider = TracerProvider(resource=Resource.create(defaults))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)
    log.info("tracing: spans exported over OTLP/HTTP to %s", endpoint)
    return provider


class detached:
    """A context for background work: no parent span, instrumentations suppressed (no spans from its calls).

    ``with detached(): loop.create_task(...)`` -- the task (and ``asyncio.to_thread``
    calls from it, which copy the context) inherit it.
    """

    __slots__ = ("_token",)

    def __enter__(self) -> "detached":
        self._token = otel_context.attach(otel_context.set_value(_SUPPRESS_KEY, True, otel_context.Context()))
        return self

    def __exit__(self, *exc) -> None:
        otel_context.detach(self._token)


# -- per request -----------------------------------------------------------------------------------------


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def provider_name(spec: Any) -> str:
    """``gen_ai.provider.name`` of a catalog model: openai, anthropic, or the vendor of an OpenAI-compatible server."""
    if spec.provider in ("openai", "anthropic"):
        return spec.provider
    return (spec.vendor or spec.provider).lower()


class _Null:
    """A context manager and span handle that does nothing (shared by every untraced request)."""

    __slots__ = ()

    def __enter__(self) -> "_Null":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def set(self, **attributes: Any) -> None:
        return None


_NULL = _Null()


class NoTrace:
    """The hooks of :class:`RequestTrace`, doing nothing: what every request gets when tracing is off."""

    __slots__ = ()
    enabled = False

    def decision(self, decision: Any, requested: str, started: float, ended: float) -> None:
        return None

    def attempt(self, attempt: Any, spec: Any) -> _Null:
        return _NULL

    def end_attempt(self, attempt: Any) -> None:
        return None

    def skipped(self, model: str, reason: str) -> None:
        return None

    def continuing(self) -> None:
        return None

    def stage(self, index: int, model: str | None = None, **attributes: Any) -> _Null:
        return _NULL

    def commit(self, record: Any) -> _Null:
        return _NULL

    def finish(self, record: Any) -> None:
        return None

    def fail(self, exc: BaseException) -> None:
        return None


NO_TRACE = NoTrace()


class _Current:
    """While the block runs, ``span`` is the current span (for spans other code makes, e.g. an HTTP client's)."""

    __slots__ = ("_ctx", "_token")

    def __init__(self, ctx):
        self._ctx = ctx

    def __enter__(self) -> "_Current":
        self._token = otel_context.attach(self._ctx)
        return self

    def __exit__(self, *exc) -> None:
        otel_context.detach(self._token)


class _Stage:
    """A cascade stage's span; attempts made inside it are its children. ``set(accepted=True, ...)`` adds attributes."""

    __slots__ = ("_trace", "_span", "_outer", "_token")

    def __init__(self, request_trace: "RequestTrace", span):
        self._trace = request_trace
        self._span = span

    def set(self, **attributes: Any) -> None:
        self._span.set_attributes({f"thrifty.cascade.{k}": v for k, v in attributes.items() if v is not None})

    def __enter__(self) -> "_Stage":
        self._outer = self._trace.ctx
        self._trace.ctx = trace.set_span_in_context(self._span, self._outer)
        self._token = otel_context.attach(self._trace.ctx)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        otel_context.detach(self._token)
        self._trace.ctx = self._outer
        if exc_type is not None:
            self._span.set_status(Status(StatusCode.ERROR, exc_type.__name__))
            self._span.set_attribute("error.type", exc_type.__name__)
        self._span.end()


class _Commit:
    __slots__ = ("_trace", "_record", "_span")

    def __init__(self, request_trace: "RequestTrace", record: Any):
        self._trace = request_trace
        self._record = record

    def __enter__(self) -> "_Commit":
        self._span = self._trace.tracer.start_span(
            "thrifty.store.commit", context=self._trace.ctx, kind=SpanKind.INTERNAL,
            attributes={"thrifty.decision_id": self._record.decision_id, "thrifty.status": self._record.status},
        )
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._span.set_status(Status(StatusCode.ERROR, exc_type.__name__))
            self._span.set_attribute("error.type", exc_type.__name__)
        self._span.end()


class RequestTrace:
    """The spans of one request. Made by :meth:`Tracing.request`; hooks called by completion and dispatch."""

    enabled = True

    def __init__(self, tracer, requested: str, endpoint: str, stream: bool):
        self.tracer = tracer
        parent = trace.get_current_span()  # the HTTP server span of an instrumentation, if there is one
        kind = SpanKind.INTERNAL if parent.get_span_context().is_valid else SpanKind.SERVER
        self.span = tracer.start_span(
            f"{OPERATION} {requested}", kind=kind,
            attributes={"gen_ai.operation.name": OPERATION, "gen_ai.request.model": requested,
                        "thrifty.endpoint": endpoint, "thrifty.stream": stream},
        )
        self.ctx = trace.set_span_in_context(self.span)
        self._open: dict[int, tuple[Any, Any]] = {}  # id(attempt record) -> (record, span)
        self._calls = 0
        self._last_model: str | None = None
        self._last_error: str | None = None
        self._continuing = False
        self._ended = False

    # -- the decision ------------------------------------------------------------------------------
    def decision(self, decision: Any, requested: str, started: float, ended: float) -> None:
        """The decision's span, from ``started`` to ``ended`` (epoch seconds), with what it chose and why."""
        chosen = next((c for c in decision.candidates if c.model == decision.model), None)
        attributes: dict[str, Any] = {
            "gen_ai.request.model": requested,
            "thrifty.chosen_model": decision.model,
            "thrifty.policy": decision.policy,
            "thrifty.candidates": [c.model for c in decision.candidates],
            "thrifty.candidates.expected_cost_usd": [float(c.expected_cost) for c in decision.candidates],
            "thrifty.fallback": bool(decision.fallback),
            "thrifty.explored": bool(decision.explored),
            "thrifty.propensity": float(decision.propensity),
        }
        if all(_finite(c.p_success) for c in decision.candidates):
            attributes["thrifty.candidates.p_success"] = [float(c.p_success) for c in decision.candidates]
        if _finite(decision.knob):
            attributes["thrifty.knob"] = float(decision.knob)
        if chosen is not None:
            if _finite(chosen.p_success):
                attributes["thrifty.p_success"] = float(chosen.p_success)
            attributes["thrifty.expected_cost_usd"] = float(chosen.expected_cost)
            attributes["thrifty.expected_output_tokens"] = float(chosen.expected_output_tokens)
        novelty = getattr(decision, "novelty", None)  # routers with shift awareness score it
        if _finite(novelty):
            attributes["thrifty.novelty"] = float(novelty)
        if decision.router_version:
            attributes["thrifty.router_version"] = decision.router_version
        profile = decision.extra.get("profile") if isinstance(decision.extra, dict) else None
        if profile:
            attributes["thrifty.profile"] = profile
        span = self.tracer.start_span(f"route {requested}", context=self.ctx, kind=SpanKind.INTERNAL,
                                      attributes=attributes, start_time=_ns(started))
        span.end(end_time=_ns(ended))
        self.span.set_attribute("thrifty.chosen_model", decision.model)

    # -- upstream attempts ----------------------------------------------------------------------------
    def continuing(self) -> None:
        """The attempts from now on continue a stream that broke after reaching the client."""
        self._continuing = True

    def attempt(self, attempt: Any, spec: Any) -> _Current:
        """Open the span of an upstream call (kept open until :meth:`end_attempt`); current while the block runs."""
        self._calls += 1
        if self._continuing:
            kind = "continuation"
        elif self._last_model is None:
            kind = "first"
        else:
            kind = "retry" if self._last_model == spec.id else "failover"
        attributes = {
            "gen_ai.operation.name": OPERATION,
            "gen_ai.provider.name": provider_name(spec),
            "gen_ai.request.model": spec.upstream,
            "thrifty.model": spec.id,
            "thrifty.attempt.number": self._calls,
            "thrifty.attempt.kind": kind,
        }
        if kind != "first" and self._last_error:
            attributes["thrifty.attempt.after_error"] = self._last_error
        span = self.tracer.start_span(f"{OPERATION} {spec.upstream}", context=self.ctx, kind=SpanKind.CLIENT,
                                      attributes=attributes, start_time=_ns(attempt.ts))
        self._open[id(attempt)] = (attempt, span)
        self._last_model = spec.id
        return _Current(trace.set_span_in_context(span, self.ctx))

    def end_attempt(self, attempt: Any) -> None:
        """Close an attempt's span with what its record says: status, error kind, tokens, cost."""
        opened = self._open.pop(id(attempt), None)
        if opened is None:
            return
        _, span = opened
        attributes: dict[str, Any] = {"thrifty.status": attempt.status}
        if attempt.status == "ok":
            attributes["gen_ai.response.model"] = attempt.model
        if attempt.input_tokens is not None:
            attributes["gen_ai.usage.input_tokens"] = int(attempt.input_tokens)
        if attempt.output_tokens is not None:
            attributes["gen_ai.usage.output_tokens"] = int(attempt.output_tokens)
        if attempt.cost_usd is not None:
            attributes["thrifty.cost_usd"] = float(attempt.cost_usd)
        if attempt.http_status is not None:
            attributes["http.response.status_code"] = int(attempt.http_status)
        if attempt.status != "ok":
            kind = attempt.error_kind or "error"
            attributes["error.type"] = kind
            span.set_status(Status(StatusCode.ERROR, kind))
            self._last_error = kind
        else:
            self._last_error = None
        span.set_attributes(attributes)
        end = attempt.ts + attempt.latency_s if attempt.latency_s is not None else None
        span.end(end_time=_ns(end) if end is not None else None)

    def skipped(self, model: str, reason: str) -> None:
        """A candidate not called (its circuit breaker is open, or its upstream has no key)."""
        self.span.add_event("thrifty.model_skipped", {"thrifty.model": model, "thrifty.reason": reason})

    # -- cascades ------------------------------------------------------------------------------------
    def stage(self, index: int, model: str | None = None, **attributes: Any) -> _Stage:
        """A cascade stage's span: ``with trace.stage(0, "small-model") as stage: ...; stage.set(accepted=True)``.

        Attempts made inside the block are its children. ``attributes`` become
        ``thrifty.cascade.<name>`` (e.g. ``test="agree"``, ``accepted=False``).
        """
        values = {"thrifty.cascade.stage": int(index)}
        if model is not None:
            values["thrifty.cascade.model"] = model
        values.update({f"thrifty.cascade.{k}": v for k, v in attributes.items() if v is not None})
        span = self.tracer.start_span("thrifty.cascade.stage", context=self.ctx, kind=SpanKind.INTERNAL, attributes=values)
        return _Stage(self, span)

    # -- the end ---------------------------------------------------------------------------------------
    def commit(self, record: Any) -> _Commit:
        """The span of the record's write: ``with trace.commit(record): await store.write(record)``."""
        return _Commit(self, record)

    def finish(self, record: Any) -> None:
        """End the request's span with the record's outcome (and any attempt span still open)."""
        if self._ended:
            return
        self._ended = True
        for attempt, _ in list(self._open.values()):
            self.end_attempt(attempt)
        attributes: dict[str, Any] = {
            "thrifty.decision_id": record.decision_id,
            "thrifty.status": record.status,
            "thrifty.attempts": sum(1 for a in record.attempts if a.status != "skipped"),
        }
        if record.client:
            attributes["thrifty.client"] = record.client
        if record.answered_model:
            attributes["gen_ai.response.model"] = record.answered_model
        if record.input_tokens is not None:
            attributes["gen_ai.usage.input_tokens"] = int(record.input_tokens)
        if record.output_tokens is not None:
            attributes["gen_ai.usage.output_tokens"] = int(record.output_tokens)
        cost = sum(a.cost_usd or 0.0 for a in record.attempts)
        attributes["thrifty.cost_usd"] = float(cost)
        if record.finish_reason:
            attributes["gen_ai.response.finish_reasons"] = [record.finish_reason]
        if record.http_status is not None:
            attributes["http.response.status_code"] = int(record.http_status)
        if record.status == "error":
            kind = record.error_kind or "error"
            attributes["error.type"] = kind
            self.span.set_status(Status(StatusCode.ERROR, kind))
        self.span.set_attributes(attributes)
        self.span.end()

    def fail(self, exc: BaseException) -> None:
        """End the request's span on an error before any record exists (an unknown model, a refused constraint)."""
        if self._ended:
            return
        self._ended = True
        kind = getattr(exc, "kind", None) or type(exc).__name__
        self.span.set_attribute("error.type", str(kind))
        status = getattr(exc, "status", None)
        if isinstance(status, int):
            self.span.set_attribute("http.response.status_code", status)
        self.span.set_status(Status(StatusCode.ERROR, str(kind)))
        self.span.end()


class Tracing:
    """The app's tracing: :meth:`request` gives each request its :class:`RequestTrace`, or :data:`NO_TRACE` when off.

    ``provider``: a tracer provider to use (tests pass the SDK's with an
    in-memory exporter); default: the global one in force when the app starts.
    """

    def __init__(self, provider: Any | None = None, *, owned: bool = False):
        provider = provider if provider is not None else trace.get_tracer_provider()
        self.provider = provider
        self.enabled = is_recording_provider(provider)
        self.tracer = provider.get_tracer(SCOPE) if self.enabled else None
        self._owned = owned  # installed by thrifty: flushed and shut down with the app

    @classmethod
    def from_config(cls, otel_endpoint: str | None = None, provider: Any | None = None) -> "Tracing":
        if provider is not None:
            return cls(provider)
        installed = configure(otel_endpoint)
        return cls(installed, owned=installed is not None)

    def request(self, requested: str, endpoint: str, stream: bool) -> RequestTrace | NoTrace:
        if not self.enabled:
            return NO_TRACE
        return RequestTrace(self.tracer, requested, endpoint, stream)

    def shutdown(self) -> None:
        """At the app's shutdown: send the spans still queued.

        Also for a provider thrifty did not install (``opentelemetry-instrument``'s):
        uvicorn ends the process by re-raising SIGTERM after its graceful
        shutdown, so the SDK's own flush at interpreter exit never runs.
        """
        if not self.enabled:
            return
        try:
            if self._owned:
                self.provider.shutdown()
            elif hasattr(self.provider, "force_flush"):
                self.provider.force_flush(FLUSH_TIMEOUT_MS)
        except Exception:  # noqa: BLE001 - an unreachable collector must not fail the shutdown
            log.warning("tracing: flushing spans at shutdown failed", exc_info=True)
