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
