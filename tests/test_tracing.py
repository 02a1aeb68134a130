"""OpenTelemetry: thrifty's spans, read by the SDK's in-memory exporter and by a loopback OTLP collector.

The real SDKs -> thrifty -> the fake provider on loopback, as in the other
serving tests. In process, the app gets an SDK tracer provider with an
in-memory exporter; as a process, ``thrifty serve`` exports over OTLP/HTTP
to a collector the test runs (from ``OTEL_EXPORTER_OTLP_ENDPOINT``, and under
``opentelemetry-instrument``, whose FastAPI server span becomes the parent).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tests.fakes.server import ThreadedServer
from tests.reliability_support import ANTHROPIC_KEY_ENV, OPENAI_KEY_ENV, free_port, write_serve_config
from tests.serving_fixtures import (  # noqa: F401  (fixtures)
    ANTHROPIC_UPSTREAM_KEY,
    CLIENT_KEY,
    EASY,
    HARD,
    OPENAI_UPSTREAM_KEY,
    UPSTREAM,
    fake,
    fake_server,
    make_config,
    openai_sdk,
    router_path,
)

WORDS = [f"w{i:02d}" for i in range(60)]
TEXT = " ".join(WORDS) + "."
SECRETS = (CLIENT_KEY, OPENAI_UPSTREAM_KEY, ANTHROPIC_UPSTREAM_KEY)


@pytest.fixture(scope="module")
def exporter():
    return InMemorySpanExporter()


@pytest.fixture(scope="module")
def traced(fake_server, router_path, tmp_path_factory, exporter):
    from serving.app import create_app

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    config = make_config(tmp_path_factory.mktemp("tracing"), fake_server[1], router_path, deadline_s=6.0,
                         attempt_timeout_s=1.5, first_token_timeout_s=1.5, stream_idle_timeout_s=1.0)
    app = create_app(config, tracer_provider=provider)
    server = ThreadedServer(app).start()
    yield server.url, app.state.services
    server.stop()


@pytest.fixture
def spans(traced, exporter, fake):
    traced[1].dispatcher.breakers.reset()
    exporter.clear()
    yield exporter
    exporter.clear()


def trace_of(exporter, decision_id: str, *, timeout: float = 5.0):
    """The spans of the request whose root carries ``decision_id`` (the stream's root ends after the response)."""
    deadline = time.monotonic() + timeout
    while True:
        finished = exporter.get_finished_spans()
        roots = [s for s in finished if s.attributes.get("thrifty.decision_id") == decision_id and "thrifty.attempts" in s.attributes]
        if roots:
            root = roots[0]
            tid = root.context.trace_id
            return root, [s for s in finished if s.context.trace_id == tid and s is not root]
        assert time.monotonic() < deadline, f"no root span for {decision_id}: {[s.name for s in finished]}"
        time.sleep(0.02)


def children(root, spans):
    return [s for s in spans if s.parent is not None and s.parent.span_id == root.context.span_id]


def test_a_routed_request_with_a_retry_and_a_failover_gives_one_span_per_attempt(traced, spans, fake):
    url, services = traced
    fake.configure(UPSTREAM["oai-mini"], status=503)  # the easy prompt's choice: 503, again 503, then the next model
    with openai_sdk(url) as client:
        raw = client.chat.completions.with_raw_response.create(model="thrifty", messages=[{"role": "user", "content": EASY}])
    decision_id = raw.headers["x-thrifty-decision-id"]
    record = services.store.decision(decision_id)
    attempts = record["attempts"]
    assert [a["model"] for a in attempts][:2] == ["oai-mini", "oai-mini"] and len(attempts) == 3
    root, rest = trace_of(spans, decision_id)

    # the request's span: what was asked, what answered, the totals of the record
    assert root.name == "chat thrifty" and root.parent is None and root.kind == SpanKind.SERVER
    assert root.attributes["gen_ai.operation.name"] == "chat"
    assert root.attributes["gen_ai.request.model"] == "thrifty"
    assert root.attributes["gen_ai.response.model"] == record["answered_model"] == attempts[2]["model"]
    assert root.attributes["gen_ai.usage.input_tokens"] == record["input_tokens"]
    assert root.attributes["gen_ai.usage.output_tokens"] == record["output_tokens"]
    assert root.attributes["thrifty.cost_usd"] == pytest.approx(record["cost_usd"])
    assert root.attributes["thrifty.attempts"] == 3 and root.attributes["thrifty.status"] == "ok"
    assert root.status.status_code != StatusCode.ERROR

    # every other span of the trace is a child of the request's: the decision, three attempts, the commit
    kids = children(root, rest)
    assert len(kids) == len(rest) == 5
    assert [s.name for s in sorted(kids, key=lambda s: s.start_time)] == [
        "route thrifty", "chat gpt-fake-mini", "chat gpt-fake-mini", f"chat {UPSTREAM[attempts[2]['model']]}",
        "thrifty.store.commit"]

    route = next(s for s in kids if s.name == "route thrifty")
    candidates = record["candidates"]
    assert list(route.attributes["thrifty.candidates"]) == [c["model"] for c in candidates]
    assert list(route.attributes["thrifty.candidates.p_success"]) == pytest.approx([c["p_success"] for c in candidates])
    assert route.attributes["thrifty.chosen_model"] == record["chosen_model"] == "oai-mini"
    assert route.attributes["thrifty.policy"] == record["policy"]
    assert route.attributes["thrifty.knob"] == pytest.approx(record["knob"])
    assert route.attributes["thrifty.p_success"] == pytest.approx(candidates[0]["p_success"])
    assert route.attributes["thrifty.expected_cost_usd"] == pytest.approx(candidates[0]["expected_cost"])
    assert route.attributes["thrifty.router_version"] == record["router_version"]

    calls = sorted((s for s in kids if s.kind == SpanKind.CLIENT), key=lambda s: s.attributes["thrifty.attempt.number"])
    assert [s.attributes["thrifty.attempt.kind"] for s in calls] == ["first", "retry", "failover"]
    assert [s.attributes["thrifty.model"] for s in calls] == [a["model"] for a in attempts]
    assert [s.attributes["gen_ai.provider.name"] for s in calls] == [
        "anthropic" if a["model"].startswith("claude") else "openai" for a in attempts]
    for span, attempt in zip(calls[:2], attempts[:2]):
        assert span.status.status_code == StatusCode.ERROR
        assert span.attributes["error.type"] == attempt["error_kind"] == "server"
        assert span.attributes["http.response.status_code"] == 503
    assert calls[1].attributes["thrifty.attempt.after_error"] == "server"
    ok = calls[2]
    assert ok.attributes["thrifty.status"] == "ok" and "error.type" not in ok.attributes
    assert ok.attributes["gen_ai.response.model"] == attempts[2]["model"]
    assert ok.attributes["gen_ai.usage.input_tokens"] == attempts[2]["input_tokens"]
    assert ok.attributes["gen_ai.usage.output_tokens"] == attempts[2]["output_tokens"]
    assert ok.attributes["thrifty.cost_usd"] == pytest.approx(attempts[2]["cost_usd"])
    commit = next(s for s in kids if s.name == "thrifty.store.commit")
    assert commit.attributes["thrifty.decision_id"] == decision_id
    assert commit.end_time <= root.end_time


def test_a_stream_continued_after_a_cut_traces_the_continuation_and_ends_after_the_commit(traced, spans, fake):
    url, services = traced
    fake.configure(UPSTREAM["oai-mini"], text=TEXT, cut_after_chunks=41)  # a role chunk, then 40 words
    fake.configure(UPSTREAM["claude-small"], text=TEXT)
    body = {"model": "oai-mini", "stream": True, "messages": [{"role": "user", "content": EASY}],
            "thrifty": {"fallback_models": ["claude-small"]}}
    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {CLIENT_KEY}"}, timeout=20) as http:
        response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200 and response.text.rstrip().endswith("data: [DONE]")
    decision_id = response.headers["x-thrifty-decision-id"]
    record = services.store.decision(decision_id)
    root, rest = trace_of(spans, decision_id)
    assert root.attributes["thrifty.stream"] is True and root.attributes["gen_ai.request.model"] == "oai-mini"
    assert root.attributes["gen_ai.response.model"] == record["answered_model"] == "claude-small"
    assert root.attributes["gen_ai.usage.output_tokens"] == record["output_tokens"] > 0
    calls = sorted((s for s in rest if s.kind == SpanKind.CLIENT), key=lambda s: s.start_time)
    assert [(s.attributes["thrifty.model"], s.attributes["thrifty.attempt.kind"]) for s in calls] == [
        ("oai-mini", "first"), ("claude-small", "continuation")]
    assert calls[0].attributes["error.type"] == "stream" and calls[1].attributes["thrifty.attempt.after_error"] == "stream"
    assert [s.attributes["gen_ai.usage.output_tokens"] for s in calls] == [a["output_tokens"] for a in record["attempts"]]
    route = next(s for s in rest if s.name == "route oai-mini")
    assert route.attributes["thrifty.policy"] == "passthrough" and route.attributes["thrifty.candidates"] == ("oai-mini",)
    commit = next(s for s in rest if s.name == "thrifty.store.commit")
    assert all(s.end_time <= commit.start_time for s in calls)  # attempts closed before the record is written
    assert commit.end_time <= root.end_time


def test_a_decision_only_request_and_a_refused_one_are_traced(traced, spans):
    url, _ = traced
    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {CLIENT_KEY}"}, timeout=20) as http:
        routed = http.post("/v1/route", json={"model": "thrifty", "prompt": HARD}).json()
        unknown = http.post("/v1/chat/completions", json={"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]})
    root, rest = trace_of(spans, routed["decision_id"])
    route = next(s for s in rest if s.name == "route thrifty")
    assert route.attributes["thrifty.chosen_model"] == routed["model"] and root.attributes["thrifty.status"] == "routed"
    assert unknown.status_code == 404
    refused = [s for s in spans.get_finished_spans() if s.name == "chat no-such-model"]
    assert len(refused) == 1 and refused[0].status.status_code == StatusCode.ERROR
    assert refused[0].attributes["http.response.status_code"] == 404


def test_no_secret_or_prompt_in_any_span(traced, spans, fake):
    """An upstream error whose message carries its key, and answered requests: no key, no prompt text in spans."""
    url, _ = traced
    fake.configure(UPSTREAM["oai-mini"], status=401, error_message=f"bad key {OPENAI_UPSTREAM_KEY}")
    secret_prompt = "hello, my password is hunter2-SECRET"
    with openai_sdk(url) as client:
        client.chat.completions.create(model="thrifty", messages=[{"role": "user", "content": secret_prompt}])
        for stream in client.chat.completions.create(model="thrifty", stream=True, messages=[{"role": "user", "content": HARD}]):
            pass
    finished = spans.get_finished_spans()
    assert {s.name for s in finished} >= {"chat thrifty", "route thrifty", "chat gpt-fake-mini", "thrifty.store.commit"}
    assert any(s.attributes.get("error.type") == "auth" for s in finished)  # the failing call is traced
    text = repr([(s.name, dict(s.attributes), [(e.name, dict(e.attributes)) for e in s.events], s.status.description)
                 for s in finished])
    for secret in (*SECRETS, "hunter2", "infinitely many primes"):
        assert secret not in text


def test_tracing_is_off_without_a_tracer_provider(fake_server, router_path, tmp_path):
    from serving.tracing import NO_TRACE, Tracing

    tracing = Tracing()  # the API's default provider: nothing configured
    assert not tracing.enabled and tracing.request("thrifty", "/v1/chat/completions", False) is NO_TRACE


def test_the_registry_poller_makes_no_spans(thrifty_home, tmp_path, monkeypatch):
    """MLflow's registry lookups (SQLite) are traced by the sqlite3 instrumentation, except from the poller."""
    import asyncio

    from mlflow import MlflowClient
    from opentelemetry.instrumentation.sqlite3 import SQLite3Instrumentor

    from models.settings import get_settings
    from serving.reload import RegistryWatcher, alias_version
    from serving.routing import LoadedRouter, RouterHolder
    from training import tracking

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = SQLite3Instrumentor()
    instrumentor.instrument(tracer_provider=provider)  # before MLflow opens its first connection to the registry
    try:
        tracking.configure(get_settings())
        client = MlflowClient()
        client.create_registered_model("polled")
        (tmp_path / "model").mkdir()
        version = client.create_model_version("polled", str(tmp_path / "model"))
        client.set_registered_model_alias("polled", "champion", version.version)
        uri = "models:/polled@champion"
        holder = RouterHolder({uri: LoadedRouter(object(), uri, f"polled/{version.version}")}, uri)
        exporter.clear()
        assert alias_version(uri) == str(version.version)  # a lookup outside the poller ...
        assert exporter.get_finished_spans(), "the sqlite3 instrumentation made no span: the check below proves nothing"
        exporter.clear()

        polls = []

        def counted(uri):
            polls.append(alias_version(uri))
            return polls[-1]

        monkeypatch.setattr("serving.reload.alias_version", counted)

        async def poll():
            watcher = RegistryWatcher(holder, 0.01)
            watcher.start()
            while len(polls) < 3:
                await asyncio.sleep(0.01)
            await watcher.stop()

        asyncio.run(asyncio.wait_for(poll(), 60))
        assert polls[:3] == [str(version.version)] * 3
        assert exporter.get_finished_spans() == ()  # ... and none from the poller
    finally:
        instrumentor.uninstrument()


# -- as a process: OTLP export ---------------------------------------------------------------------------


class Collector:
    """An OTLP/HTTP traces receiver on loopback: the spans of every export, decoded."""

    def __init__(self):
        from starlette.applications import Starlette
        from starlette.responses import Response
        from starlette.routing import Route

        self.spans: list[tuple[str, object]] = []  # (instrumentation scope, span)

        async def traces(request):
            from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
                ExportTraceServiceRequest,
                ExportTraceServiceResponse,
            )

            message = ExportTraceServiceRequest()
            message.ParseFromString(await request.body())
            for resource in message.resource_spans:
                for scope in resource.scope_spans:
                    self.spans += [(scope.scope.name, span) for span in scope.spans]
            return Response(ExportTraceServiceResponse().SerializeToString(), media_type="application/x-protobuf")

        self.server = ThreadedServer(Starlette(routes=[Route("/v1/traces", traces, methods=["POST"])])).start()
        self.url = self.server.url


def attributes(span) -> dict:
    out = {}
    for kv in span.attributes:
        value = kv.value
        out[kv.key] = getattr(value, value.WhichOneof("value"))
    return out


def _serve(argv: list[str], env: dict, log: Path, url: str) -> subprocess.Popen:
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        assert proc.poll() is None, f"thrifty serve exited:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"thrifty serve did not start:\n{log.read_text()}"
        time.sleep(0.1)


def _served_trace(fake_server, router_path, tmp_path, *, argv_prefix, env_for, config_flag):
    """Start thrifty serve (behind ``argv_prefix``; ``env_for(collector_url)`` its OTel variables), send one
    routed request, stop it (SIGTERM: the spans still queued are flushed), and return what the collector got."""
    collector = Collector()
    try:
        config = write_serve_config(tmp_path, fake_server[1], router_path, client_key=CLIENT_KEY)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_") and k != "MLFLOW_TRACKING_URI"}
        env.update({OPENAI_KEY_ENV: OPENAI_UPSTREAM_KEY, ANTHROPIC_KEY_ENV: ANTHROPIC_UPSTREAM_KEY,
                    "THRIFTY_HOME": str(tmp_path / "home"), **env_for(collector.url)})
        argv = [*argv_prefix, sys.executable, "-m", "thrifty.cli", "serve", config_flag, str(config), "--port", str(port)]
        log = tmp_path / "serve.log"
        proc = _serve(argv, env, log, url)
        try:
            with openai_sdk(url) as client:
                raw = client.chat.completions.with_raw_response.create(
                    model="thrifty", messages=[{"role": "user", "content": EASY}])
            decision_id = raw.headers["x-thrifty-decision-id"]
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        deadline = time.monotonic() + 10
        while not any(attributes(s).get("thrifty.decision_id") == decision_id for _, s in collector.spans):
            assert time.monotonic() < deadline, f"no span of the request was exported:\n{log.read_text()}"
            time.sleep(0.05)
        return decision_id, list(collector.spans), log.read_text()
    finally:
        collector.server.stop()


def _request_tree(spans, decision_id):
    ours = [s for scope, s in spans if scope == "thrifty.serving"]
    root = next(s for s in ours if attributes(s).get("thrifty.decision_id") == decision_id and "thrifty.attempts" in attributes(s))
    return root, [s for s in ours if s.trace_id == root.trace_id and s is not root]


def _server_span(spans, root):
    """The HTTP server span ``root`` nests in: FastAPI's own (it traces when a provider is in force) or an instrumentation's."""
    server = next(s for _, s in spans if s.span_id == root.parent_span_id)
    assert server.trace_id == root.trace_id and server.kind == server.SPAN_KIND_SERVER
    assert server.name == "POST /v1/chat/completions"
    return server


def test_thrifty_serve_exports_its_spans_over_otlp_when_the_endpoint_is_set(fake_server, router_path, tmp_path, fake):
    decision_id, spans, log = _served_trace(
        fake_server, router_path, tmp_path, argv_prefix=[], config_flag="--config",
        env_for=lambda collector: {"OTEL_EXPORTER_OTLP_ENDPOINT": collector, "OTEL_SERVICE_NAME": "thrifty-test"},
    )
    root, rest = _request_tree(spans, decision_id)
    assert root.name == "chat thrifty" and root.kind == root.SPAN_KIND_INTERNAL
    _server_span(spans, root)
    assert sorted(s.name for s in rest) == ["chat gpt-fake-mini", "route thrifty", "thrifty.store.commit"]
    assert all(s.parent_span_id == root.span_id for s in rest)
    assert {scope for scope, _ in spans} <= {"thrifty.serving", "fastapi"}  # nothing from the poller or MLflow


def test_thrifty_serve_under_opentelemetry_instrument_nests_its_spans_in_the_http_span(fake_server, router_path, tmp_path, fake):
    """``--config-file`` passes the config through the wrapper (it would take ``--config`` for its ``--configurator``)."""
    instrument = str(Path(sys.executable).parent / "opentelemetry-instrument")
    decision_id, spans, log = _served_trace(
        fake_server, router_path, tmp_path, argv_prefix=[instrument], config_flag="--config-file",
        env_for=lambda collector: {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{collector}/v1/traces",
                                   "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_TRACES_EXPORTER": "otlp",
                                   "OTEL_METRICS_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none",
                                   "OTEL_SERVICE_NAME": "thrifty-test"},
    )
    root, rest = _request_tree(spans, decision_id)
    assert root.name == "chat thrifty"
    _server_span(spans, root)
    assert sorted(s.name for s in rest) == ["chat gpt-fake-mini", "route thrifty", "thrifty.store.commit"]
    assert "tracing: spans exported" not in log  # the wrapper's provider is used, not a second one


def test_a_cascade_stage_span_parents_the_attempts_made_inside_it():
    """The helper the serving cascades use: ``with trace.stage(k, model) as stage: ...; stage.set(accepted=...)``."""
    from models.catalog import ModelSpec
    from models.store import AttemptRecord, DecisionRecord
    from serving.tracing import Tracing

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace = Tracing(provider).request("thrifty", "/v1/chat/completions", False)
    spec = ModelSpec(id="small", provider="openai", upstream="gpt-small", input_usd_per_mtok=0.1, output_usd_per_mtok=0.4)
    record = DecisionRecord("dec_1", time.time(), "/v1/chat/completions", "thrifty", [], "small", 1.0, "ok")
    for k, accepted in enumerate((False, True)):
        with trace.stage(k, spec.id, test="agree") as stage:
            attempt = AttemptRecord(spec.id, time.time(), 0.01, "ok", input_tokens=3, output_tokens=2, cost_usd=1e-6)
            record.attempts.append(attempt)
            with trace.attempt(attempt, spec):
                pass
            trace.end_attempt(attempt)
            stage.set(accepted=accepted)
    trace.finish(record)
    spans = {s.name: s for s in exporter.get_finished_spans() if s.name != "thrifty.cascade.stage"}
    stages = sorted((s for s in exporter.get_finished_spans() if s.name == "thrifty.cascade.stage"),
                    key=lambda s: s.attributes["thrifty.cascade.stage"])
    calls = sorted((s for s in exporter.get_finished_spans() if s.kind == SpanKind.CLIENT), key=lambda s: s.start_time)
    root = spans["chat thrifty"]
    assert [s.attributes["thrifty.cascade.accepted"] for s in stages] == [False, True]
    assert all(s.parent.span_id == root.context.span_id and s.attributes["thrifty.cascade.test"] == "agree" for s in stages)
    assert [c.parent.span_id for c in calls] == [s.context.span_id for s in stages]
    assert root.attributes["thrifty.attempts"] == 2
