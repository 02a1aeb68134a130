"""Secrets: after a whole fault suite, canary keys appear nowhere.

A real ``thrifty serve`` process (debug logging) holds a canary upstream key
per provider (from the environment) and a canary client key. The fault suite
runs through it: normal traffic in both formats, JSON and SSE, every injected
fault (rate limits, 5xx, resets, hangs, broken streams, context length,
content filter), upstream errors that *echo the key* (a 401 that prints the
key it refused, a 500 and a 400 whose message carries it), budget refusals,
bad client keys and bad input. Then feedback is posted and a router is
retrained from the store into a fresh THRIFTY_HOME (MLflow tracking and
registry, artifacts included).

Grepped for all three canaries: every response body and header (errors and
stream error events included), ``/metrics``, ``/healthz``, ``/v1/models``,
``/openapi.json``, the server's log, the store (database, WAL and shared
memory files), the exported outcome file, and every file under the
THRIFTY_HOME that MLflow wrote.
"""

from __future__ import annotations

import json

import httpx
import pytest
from click.testing import CliRunner

from tests.fakes.provider import FakeProvider
from tests.fakes.server import ThreadedServer
from tests.reliability_support import serve_process, write_serve_config
from tests.serving_fixtures import EASY, HARD, UPSTREAM, router_path  # noqa: F401  (fixtures)

CANARY_OPENAI = "sk-CANARY-upstream-openai-7f3e9a1b2c4d"
CANARY_ANTHROPIC = "sk-ant-CANARY-upstream-5e6f7a8b9c0d"
CANARY_CLIENT = "thr-CANARY-client-key-1a2b3c4d5e6f"
TIGHT_CLIENT = "thr-tight-budget-client-0001"
CANARIES = [CANARY_OPENAI, CANARY_ANTHROPIC, CANARY_CLIENT]
LARGE = {"claude-large", "oai-large"}


@pytest.fixture
def canary_fake():
    provider = FakeProvider(api_keys={CANARY_OPENAI, CANARY_ANTHROPIC})
    server = ThreadedServer(provider.app).start()
    yield provider, server.url
    server.stop()


def test_canary_keys_appear_nowhere_after_the_fault_suite(canary_fake, router_path, thrifty_home, tmp_path):
    fake, fake_url = canary_fake
    config = write_serve_config(
        tmp_path, fake_url, router_path, client_key=CANARY_CLIENT, clients={"tight": TIGHT_CLIENT},
        budgets={"tight": {"amount_usd": 0.000001, "period": "day"}},
        explore_epsilon=0.5, explore_seed=0, store_responses=True,
        deadline_s=6.0, attempt_timeout_s=1.0, first_token_timeout_s=1.0, stream_idle_timeout_s=0.5,
        retry_after_max_s=0.5, breaker_failures=50,
        access_log=True,  # off by default; on here, so the log holds every request line too
    )
    surfaces: dict[str, str] = {}  # where -> text that must not hold a canary

    def keep(where: str, response: httpx.Response) -> httpx.Response:
        surfaces[f"{where} #{len(surfaces)}"] = f"{response.status_code}\n{dict(response.headers)}\n{response.text}"
        return response

    with serve_process(config, upstream_keys=(CANARY_OPENAI, CANARY_ANTHROPIC), home=thrifty_home, log_level="debug") as server, \
            httpx.Client(base_url=server.url, timeout=30, headers={"authorization": f"Bearer {CANARY_CLIENT}"}) as http:

        def chat(fmt: str, prompt: str, *, stream: bool = False, model: str = "thrifty", **headers) -> httpx.Response:
            path = "/v1/chat/completions" if fmt == "openai" else "/v1/messages"
            body = {"model": model, "stream": stream, "max_tokens": 64, "messages": [{"role": "user", "content": prompt}]}
            if fmt == "anthropic":  # the Anthropic SDKs' header
                headers = {"authorization": "", "x-api-key": CANARY_CLIENT, **headers}
            return keep(f"{fmt} {model} stream={stream}", http.post(path, json=body, headers=headers))

        # 1. ordinary traffic, with feedback for training later
        answered = []
        for i in range(64):
            hard = i % 2 == 1
            response = chat("openai" if i % 4 < 2 else "anthropic", f"{HARD if hard else EASY} (#{i})", stream=i % 3 == 0)
            assert response.status_code == 200, response.text
            answered.append((response.headers["x-thrifty-decision-id"], response.headers["x-thrifty-model"], hard))

        # 2. every fault, in both formats, JSON and SSE
        faults = [
            dict(status=429), dict(status=429, retry_after=0.2, fail_times=1), dict(status=500), dict(status=503),
            dict(reset_connection=True), dict(delay_before_headers=5), dict(delay_first_chunk=5),
            dict(cut_after_chunks=1), dict(cut_after_chunks=4), dict(stall_after_chunks=4, stall_s=5),
            dict(malformed_after_chunks=0), dict(malformed_after_chunks=4), dict(omit_final_event=True),
            dict(context_length_error=True), dict(content_filter=True),
            dict(status=500, error_message=f"internal error near key {CANARY_OPENAI} / {CANARY_ANTHROPIC}"),
            dict(status=400, error_message=f"bad request for key {CANARY_OPENAI} / {CANARY_ANTHROPIC}"),
            dict(status=429, echo_key=True), dict(error_event_after_chunks=0, echo_key=True),
            dict(error_event_after_chunks=4, echo_key=True),  # the key the request carried, echoed
        ]
        for fault in faults:
            for model in ("oai-mini", "claude-small"):
                fake.reset()
                fake.configure(UPSTREAM[model], text="one two three four five six seven", **fault)
                slow = any(k in fault for k in ("delay_before_headers", "delay_first_chunk", "stall_after_chunks"))
                for fmt in ("openai", "anthropic"):
                    for stream in (False, True):
                        assert chat(fmt, EASY, stream=stream).status_code < 600
                        if not slow:  # a hang costs a timeout each time: routed requests are enough
                            assert chat(fmt, EASY, stream=stream, model=model).status_code < 600
        fake.reset()

        # 3. upstream rejects thrifty's key and echoes it back
        fake.api_keys = {"not-the-canary"}
        for fmt in ("openai", "anthropic"):
            for model in ("oai-mini", "claude-small"):
                response = chat(fmt, EASY, model=model)
                assert response.status_code == 502
        fake.api_keys = {CANARY_OPENAI, CANARY_ANTHROPIC}
        assert any(CANARY_OPENAI in json.dumps(c.headers) for c in fake.calls)  # the key did go upstream, as it must

        # 4. budgets, bad client keys, bad input
        response = keep("budget", http.post("/v1/chat/completions", headers={"authorization": f"Bearer {TIGHT_CLIENT}"},
                                            json={"model": "thrifty", "messages": [{"role": "user", "content": EASY}]}))
        assert response.status_code == 429 and response.json()["error"]["code"] == "budget_exceeded"
        for headers in ({"authorization": f"Bearer {CANARY_CLIENT}x"}, {"authorization": f"Bearer {CANARY_CLIENT[:-1]}"},
                        {"x-api-key": CANARY_CLIENT.upper()}):
            keep("wrong key", httpx.post(f"{server.url}/v1/chat/completions", headers=headers, json={"model": "thrifty"}))
        for content in (b"{not json", b"[1]", json.dumps({"model": "thrifty", "messages": "x"}).encode()):
            keep("bad input", http.post("/v1/chat/completions", content=content, headers={"content-type": "application/json"}))

        # 5. feedback, and everything the server shows
        for decision_id, model, hard in answered:
            success = float(model in LARGE or not hard)
            assert http.post("/v1/feedback", json={"decision_id": decision_id, "success": success}).status_code == 200
        for path in ("/metrics", "/healthz", "/v1/models", "/openapi.json"):
            keep(path, http.get(path))
        assert "thrifty_failovers_total" in surfaces[next(k for k in surfaces if k.startswith("/metrics"))]
    assert "POST /v1/chat/completions" in server.log()  # the log captured the traffic (uvicorn access log, debug level)

    # 6. retrain from the store into THRIFTY_HOME: MLflow runs, artifacts, registry
    from thrifty.cli import main

    export = tmp_path / "served.jsonl"
    store = tmp_path / "outcomes.db"
    result = CliRunner().invoke(main, ["logs", "export", "--store", str(store), "--out", str(export), "--include-unlabeled"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["retrain", "--store", str(store), "--name", "canary", "--predictor", "logistic",
                                       "--catalog", str(tmp_path / "catalog.yaml")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    mlflow_files = [p for p in thrifty_home.rglob("*") if p.is_file()]
    assert any(p.name == "mlflow.db" for p in mlflow_files) and any("artifacts" in p.parts for p in mlflow_files)

    # 7. grep
    files = {p: p.read_bytes() for p in [*tmp_path.glob("outcomes.db*"), export, server.log_path, *mlflow_files]}
    assert len(files) > 5 and sum(map(len, files.values())) > 100_000
    leaks = []
    for canary in CANARIES:
        leaks += [where for where, text in surfaces.items() if canary in text]
        leaks += [str(p) for p, data in files.items() if canary.encode() in data]
        leaks += ["retrain output"] if canary in result.output else []
    assert leaks == [], leaks
    print(f"\nSECRETS: {len(surfaces)} responses and {len(files)} files ({sum(map(len, files.values()))} bytes) "
          f"grepped for {len(CANARIES)} canaries: no leak")


# -- keys echoed by the upstream, from each place a key can come from ------------------------------------------

# The faults of every error path, each echoing the key it received: 4xx, auth, 429, 5xx, context length,
# stream error events before the first token (fail over) and after tokens reached the client (error event).
ECHO_FAULTS = [
    dict(status=400), dict(status=404), dict(status=422), dict(status=401), dict(status=403), dict(status=429),
    dict(status=500), dict(status=503), dict(status=529), dict(context_length_error=True),
    dict(error_event_after_chunks=0), dict(error_event_after_chunks=4),
]
SOURCES = ["upstreams", "api_key_env", "environment"]


def canaries_for(source: str) -> tuple[str, str]:
    return f"sk-CANARY-{source}-openai-9f8e7d6c5b4a", f"sk-ant-CANARY-{source}-anthropic-1a2b3c4d"


def key_source_setup(source: str, tmp_path, fake_url: str, monkeypatch) -> dict:
    """Config overrides (and environment) that give thrifty its upstream keys from ``source`` only.

    ``upstreams``: the config's ``upstreams:``; ``api_key_env``: each catalog model's own variable;
    ``environment``: OPENAI_API_KEY / ANTHROPIC_API_KEY, the config having no ``upstreams:`` section.
    """
    import yaml

    from tests.serving_fixtures import catalog_entries

    openai_key, anthropic_key = canaries_for(source)
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "SECRETS_TEST_OAI", "SECRETS_TEST_CLAUDE"):
        monkeypatch.delenv(name, raising=False)
    entries = catalog_entries(fake_url)
    overrides: dict = {"upstreams": {}}
    if source == "upstreams":
        overrides["upstreams"] = {"openai": {"api_key": openai_key}, "anthropic": {"api_key": anthropic_key}}
    elif source == "api_key_env":
        monkeypatch.setenv("SECRETS_TEST_OAI", openai_key)
        monkeypatch.setenv("SECRETS_TEST_CLAUDE", anthropic_key)
        for entry in entries:
            entry["api_key_env"] = "SECRETS_TEST_CLAUDE" if entry["provider"] == "anthropic" else "SECRETS_TEST_OAI"
    else:
        monkeypatch.setenv("OPENAI_API_KEY", openai_key)
        monkeypatch.setenv("ANTHROPIC_API_KEY", anthropic_key)
    catalog = tmp_path / f"catalog-{source}.yaml"
    catalog.write_text(yaml.safe_dump({"models": entries}))
    overrides["catalog"] = [catalog]
    return overrides


def run_echo_faults(fake: FakeProvider, http: httpx.Client, client_key: str, keep) -> tuple[dict[str, int], set[str]]:
    """Every echo fault on every upstream model, through both client formats, JSON and SSE, routed and by id.

    Returns the response statuses counted, and the keys the fake received.
    """
    statuses: dict[str, int] = {}
    received: set[str] = set()
    for fault in ECHO_FAULTS:
        fake.reset()
        for upstream in UPSTREAM.values():  # every model fails alike: fail-over cannot hide the error
            fake.configure(upstream, text="one two three four five six seven", echo_key=True, **fault)
        for model in ("thrifty", "oai-mini", "claude-small"):
            for fmt in ("openai", "anthropic"):
                for stream in (False, True):
                    path = "/v1/chat/completions" if fmt == "openai" else "/v1/messages"
                    body = {"model": model, "stream": stream, "max_tokens": 64,
                            "messages": [{"role": "user", "content": EASY}]}
                    headers = {"x-api-key": client_key} if fmt == "anthropic" else {"authorization": f"Bearer {client_key}"}
                    response = keep(f"{fault} {model} {fmt} stream={stream}", http.post(path, json=body, headers=headers))
                    statuses[str(response.status_code)] = statuses.get(str(response.status_code), 0) + 1
        received |= {c.headers.get("x-api-key") or c.headers.get("authorization", "").removeprefix("Bearer ")
                     for c in fake.calls}
    fake.reset()
    return statuses, received


@pytest.fixture(scope="module")
def echo_fake():
    provider = FakeProvider()  # accepts any key: the keys under test come from thrifty's config or environment
    server = ThreadedServer(provider.app).start()
    yield provider, server.url
    server.stop()


@pytest.mark.parametrize("source", SOURCES)
def test_keys_echoed_upstream_are_nowhere_in_process(source, echo_fake, router_path, tmp_path, monkeypatch,
                                                     caplog, capfd):
    """In process: responses, headers, caplog (every logger at DEBUG), stderr, store, /metrics, export."""
    import logging

    from serving.app import create_app
    from tests.fakes.server import serve_in_thread
    from tests.serving_fixtures import CLIENT_KEY, make_config

    fake, fake_url = echo_fake
    canaries = canaries_for(source)
    config = make_config(tmp_path, fake_url, router_path, max_attempts=2, breaker_failures=10_000,
                         **key_source_setup(source, tmp_path, fake_url, monkeypatch))
    caplog.set_level(logging.DEBUG)
    surfaces: dict[str, str] = {}

    def keep(where, response):
        surfaces[f"{where} #{len(surfaces)}"] = f"{response.status_code}\n{dict(response.headers)}\n{response.text}"
        return response

    with serve_in_thread(create_app(config), log_level="debug") as server, httpx.Client(base_url=server.url, timeout=30) as http:
        statuses, received = run_echo_faults(fake, http, CLIENT_KEY, keep)
        ok = keep("answer", http.post("/v1/chat/completions", headers={"authorization": f"Bearer {CLIENT_KEY}"},
                                      json={"model": "thrifty", "messages": [{"role": "user", "content": EASY}]}))
        assert ok.status_code == 200
        keep("/metrics", http.get("/metrics"))
    assert received == set(canaries)  # the keys went upstream, from this source only, and came back in its errors
    assert {"400", "429", "502", "503"} <= set(statuses) and "200" in statuses  # error paths, and mid-stream error events
    export = tmp_path / "export.jsonl"
    from thrifty.cli import main

    result = CliRunner().invoke(main, ["logs", "export", "--store", str(config.resolved_store_url), "--out", str(export),
                                       "--include-unlabeled"])
    assert result.exit_code == 0, result.output
    stderr = capfd.readouterr().err
    files = {p: p.read_bytes() for p in [*tmp_path.glob("outcomes.db*"), export]}
    assert sum(len(r) for r in files.values()) > 10_000 and len(caplog.records) > 100
    leaks = []
    for canary in canaries:
        leaks += [where for where, text in surfaces.items() if canary in text]
        leaks += [str(p) for p, data in files.items() if canary.encode() in data]
        leaks += ["caplog"] if canary in caplog.text else []
        leaks += ["stderr"] if canary in stderr else []
        leaks += ["export output"] if canary in result.output else []
    assert leaks == [], leaks[:10]
    print(f"\nSECRETS ({source}): {len(surfaces)} responses {statuses}, {len(caplog.records)} log records, "
          f"{len(files)} files: no leak")


def test_keys_from_the_environment_only_are_nowhere_in_a_served_process(echo_fake, router_path, thrifty_home, tmp_path,
                                                                       monkeypatch):
    """``thrifty serve`` as a process with no ``upstreams:``: the keys come from OPENAI_API_KEY/ANTHROPIC_API_KEY.

    Every echo fault; then the server's own output (stderr, debug level, access log on), responses,
    the store, ``/metrics`` and the export are grepped.
    """
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    from tests.reliability_support import free_port
    from tests.serving_fixtures import make_config

    fake, fake_url = echo_fake
    canaries = canaries_for("environment")
    overrides = key_source_setup("environment", tmp_path, fake_url, monkeypatch)
    config = make_config(tmp_path, fake_url, router_path, max_attempts=2, breaker_failures=10_000, access_log=True,
                         **overrides)
    data = yaml.safe_load(config.model_dump_json())
    data["api_keys"] = {"load": CANARY_CLIENT}
    data.pop("upstreams")
    path = tmp_path / "thrifty.yaml"
    path.write_text(yaml.safe_dump(data))
    port = free_port()
    log_path = tmp_path / "serve.log"
    env = {**os.environ, "THRIFTY_HOME": str(thrifty_home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    surfaces: dict[str, str] = {}

    def keep(where, response):
        surfaces[f"{where} #{len(surfaces)}"] = f"{response.status_code}\n{dict(response.headers)}\n{response.text}"
        return response

    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "thrifty.cli", "serve", "--config", str(path), "--port", str(port),
                                 "--log-level", "debug"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        with httpx.Client(base_url=url, timeout=30) as http:
            statuses, received = run_echo_faults(fake, http, CANARY_CLIENT, keep)
            keep("/metrics", http.get("/metrics"))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert {"400", "429", "502", "503"} <= set(statuses) and received == set(canaries)
    log_text = log_path.read_text(errors="replace")
    assert "thrifty serving router" in log_text and "POST /v1/messages" in log_text  # the start-up line, the access log
    from thrifty.cli import main

    export = tmp_path / "export.jsonl"
    result = CliRunner().invoke(main, ["logs", "export", "--store", str(tmp_path / "outcomes.db"), "--out", str(export),
                                       "--include-unlabeled"])
    assert result.exit_code == 0, result.output
    files = {p: p.read_bytes() for p in [*tmp_path.glob("outcomes.db*"), export, log_path]}
    leaks = []
    for canary in (*canaries, CANARY_CLIENT):
        leaks += [where for where, text in surfaces.items() if canary in text]
        leaks += [str(p) for p, data in files.items() if canary.encode() in data]
    assert leaks == [], leaks[:10]


# -- the scrubber, its log filter, and what it is given --------------------------------------------------------

LOG_KEY = "sk-LOGFILTER-canary-0f1e2d3c4b5a"


def test_the_log_filter_scrubs_messages_arguments_and_tracebacks(caplog):
    import logging

    from uvicorn.logging import AccessFormatter

    from serving.secrets import ScrubFilter, get_scrubber, install_log_filter

    get_scrubber().register([LOG_KEY])
    install_log_filter()
    caplog.set_level(logging.DEBUG)
    log = logging.getLogger("thrifty.serving")
    try:
        raise RuntimeError(f"upstream answered 401 for key {LOG_KEY}")
    except RuntimeError as exc:
        log.exception("call failed: %s", exc)  # in the arguments (an exception object) and in the traceback
    log.warning(f"the message itself holds {LOG_KEY}")
    log.warning("a dict argument: %(key)s", {"key": LOG_KEY})
    logging.getLogger("thrifty.serving.child").error("a child logger: %s", LOG_KEY)  # caught by the handler's filter
    assert LOG_KEY not in caplog.text and caplog.text.count("[redacted]") >= 5
    assert "call failed: upstream answered 401 for key [redacted]" in caplog.text

    # uvicorn's access formatter unpacks the arguments: they keep their shape, scrubbed
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5000", "GET", f"/v1/models?key={LOG_KEY}", "1.1", 200), None)
    assert ScrubFilter().filter(record)
    line = AccessFormatter(fmt="%(client_addr)s %(request_line)s %(status_code)s", use_colors=False).format(record)
    assert line == '127.0.0.1:5000 GET /v1/models?key=[redacted] HTTP/1.1 200 OK'


def test_every_credential_the_pool_can_send_is_registered():
    from models.catalog import Catalog, ModelSpec
    from models.providers import ProviderPool, UpstreamSettings
    from serving.secrets import Scrubber, pool_credentials

    env = {
        "TOGETHER_API_KEY": "together-key-0123456789",
        "OPENAI_API_KEY": "sk-env-openai-0123456789",
        "ANTHROPIC_API_KEY": "sk-ant-env-0123456789",
        "ANTHROPIC_AUTH_TOKEN": "auth-token-0123456789",
        "ANTHROPIC_CUSTOM_HEADERS": "X-Gateway-Key: gateway-secret-0123456789\nX-Short: abc",
        "UNRELATED": "not-a-credential-0123456789",
    }
    pool = ProviderPool({"openai": UpstreamSettings(api_key="sk-config-openai-0123456789")}, env=env)
    catalog = Catalog([
        ModelSpec("llama", "openai-compatible", "llama", 0.1, 0.1, base_url="http://127.0.0.1:1/v1", api_key_env="TOGETHER_API_KEY"),
        ModelSpec("claude", "anthropic", "claude", 1, 1),
        ModelSpec("gpt", "openai", "gpt", 1, 1),
    ])
    found = set(pool_credentials(pool, catalog))
    assert {"together-key-0123456789", "sk-env-openai-0123456789", "sk-ant-env-0123456789", "auth-token-0123456789",
            "gateway-secret-0123456789", "sk-config-openai-0123456789"} <= found
    assert "not-a-credential-0123456789" not in found
    scrubber = Scrubber()
    scrubber.register([*found, "abc", None, ""])  # short values would garble ordinary text: ignored
    assert "abc" not in scrubber._secrets
    text = "keys sk-config-openai-0123456789 and gateway-secret-0123456789, abc"
    assert scrubber.scrub(text) == "keys [redacted] and [redacted], abc"
