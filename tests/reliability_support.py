"""Helpers for the reliability, durability and secrets tests: requests through the SDKs and what the store
recorded of them; ``thrifty serve`` as a real process, and a load generator.

:func:`ask` sends one request through an official SDK and returns what the
client got; :func:`record_of` and :func:`attempts_of` read the store.

``serve_process`` starts ``python -m thrifty.cli serve --config ...`` on a free
loopback port with its output captured to a file; :func:`run_load` sends a
bounded mix of OpenAI/Anthropic, JSON/SSE requests from a few concurrent
workers and reports, per request, whether a *complete* answer arrived (a 200
JSON body, or a stream that reached ``[DONE]`` / ``message_stop`` without an
error event) and under which decision id.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx
import yaml

from tests.serving_fixtures import EASY, HARD, make_config, sse_events

OPENAI_KEY_ENV = "THRIFTY_TEST_OPENAI_KEY"
ANTHROPIC_KEY_ENV = "THRIFTY_TEST_ANTHROPIC_KEY"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_serve_config(tmp: Path, fake_url: str, router_path: Path, *, client_key: str,
                       clients: dict[str, str] | None = None, budgets: dict | None = None, **overrides) -> Path:
    """A YAML config for ``thrifty serve``: upstream keys from the environment, client ``load`` (+ ``clients``)."""
    config = make_config(tmp, fake_url, router_path, **overrides)
    data = yaml.safe_load(config.model_dump_json())
    data["api_keys"] = {"load": client_key, **(clients or {})}  # pydantic masks secrets on dump
    data["upstreams"] = {"openai": {"api_key_env": OPENAI_KEY_ENV}, "anthropic": {"api_key_env": ANTHROPIC_KEY_ENV}}
    if budgets:
        data["budgets"] = budgets
    path = tmp / "thrifty.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@dataclass
class ServeProcess:
    proc: subprocess.Popen
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def serve_process(config_path: Path, *, upstream_keys: tuple[str, str], home: Path, log_level: str = "info",
                  startup_s: float = 60.0, extra_args: tuple[str, ...] = (),
                  env: dict[str, str] | None = None) -> Iterator[ServeProcess]:
    port = free_port()
    log_path = config_path.parent / f"serve-{port}.log"
    full_env = {**os.environ, OPENAI_KEY_ENV: upstream_keys[0], ANTHROPIC_KEY_ENV: upstream_keys[1], "THRIFTY_HOME": str(home)}
    full_env.pop("MLFLOW_TRACKING_URI", None)
    full_env.update(env or {})
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "thrifty.cli", "serve", "--config", str(config_path), "--port", str(port),
             "--log-level", log_level, *extra_args],
            env=full_env, stdout=log, stderr=subprocess.STDOUT,
        )
    server = ServeProcess(proc, f"http://127.0.0.1:{port}", log_path)
    try:
        deadline = time.monotonic() + startup_s
        while True:
            try:
                if httpx.get(f"{server.url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"thrifty serve exited during startup:\n{server.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"thrifty serve did not start:\n{server.log()}")
            time.sleep(0.1)
        yield server
    finally:
        import psutil

        try:  # worker processes of --workers N too: none may outlive the test
            children = psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            children = []
        if proc.poll() is None:  # still running (the test failed): a graceful stop first, so it cleans up
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        for child in children:
            try:
                child.kill()
            except psutil.Error:
                pass


@dataclass
class Result:
    decision_id: str | None  # None: no response at all (refused, reset, killed before the headers)
    status: int | None
    complete: bool  # a whole answer: 200 and a full body / a stream with its final event and no error event
    stream: bool
    error: str | None = None


PROMPTS = [EASY, HARD, "hello, name three colours", "prove that 2 + 2 = 4"]


def request_for(i: int) -> tuple[str, dict, bool]:
    """(path, body, stream) of the i-th request of the load: both formats, JSON and SSE, easy and hard."""
    stream = i % 2 == 1
    prompt = f"{PROMPTS[i % len(PROMPTS)]} (#{i})"
    if (i // 2) % 2 == 0:
        return "/v1/chat/completions", {"model": "thrifty", "stream": stream,
                                        "messages": [{"role": "user", "content": prompt}]}, stream
    return "/v1/messages", {"model": "thrifty", "stream": stream, "max_tokens": 64,
                            "messages": [{"role": "user", "content": prompt}]}, stream


async def _one(client: httpx.AsyncClient, path: str, body: dict, stream: bool) -> Result:
    decision_id, status = None, None
    try:
        async with client.stream("POST", path, json=body) as response:
            decision_id, status = response.headers.get("x-thrifty-decision-id"), response.status_code
            text = (await response.aread()).decode()
    except httpx.HTTPError as exc:
        # no response at all (decision_id None), or one cut before its end: not an answer
        return Result(decision_id, status, False, stream, type(exc).__name__)
    if response.status_code != 200:
        return Result(decision_id, response.status_code, False, stream)
    if not stream:
        try:
            json.loads(text)
        except ValueError:
            return Result(decision_id, 200, False, stream, "bad json")
        return Result(decision_id, 200, True, stream)
    events = sse_events(text)
    if not events:
        return Result(decision_id, 200, False, stream, "empty stream")
    if path_is_openai(text):
        errored = any(d != "[DONE]" and "error" in json.loads(d) for _, d in events)
        done = events[-1][1] == "[DONE]"
    else:
        errored = any(name == "error" for name, _ in events)
        done = events[-1][0] == "message_stop"
    return Result(decision_id, 200, done and not errored, stream)


def path_is_openai(text: str) -> bool:
    return not text.lstrip().startswith("event:")


async def _load(url: str, client_key: str, *, requests: int, concurrency: int, stop_after_error: bool,
                results: list[Result]) -> list[Result]:
    counter = iter(range(requests))
    limits = httpx.Limits(max_keepalive_connections=0)  # a connection per request: no request is lost in a pooled socket

    async def worker() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits,
                                     headers={"authorization": f"Bearer {client_key}"}) as client:
            for i in counter:
                path, body, stream = request_for(i)
                result = await _one(client, path, body, stream)
                results.append(result)
                if stop_after_error and result.error is not None:
                    return  # the server is gone

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


def run_load(url: str, client_key: str, *, requests: int, concurrency: int = 8, stop_after_error: bool = False,
             results: list[Result] | None = None) -> list[Result]:
    """Send ``requests`` requests from ``concurrency`` workers; ``results`` (if given) fills up as they end."""
    results = [] if results is None else results
    return asyncio.run(_load(url, client_key, requests=requests, concurrency=concurrency,
                             stop_after_error=stop_after_error, results=results))


def stored_decisions(store_url: str | Path) -> dict[str, dict]:
    """Every decision row of a store, read by a new reader (a SQLite file is integrity-checked first)."""
    from models.store import open_store, url_scheme

    if url_scheme(str(store_url)) == "sqlite":
        conn = sqlite3.connect(store_url)  # opened fresh: the WAL is replayed as SQLite opens it
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        finally:
            conn.close()
    with open_store(store_url, create=False) as store:
        rows = store.joined(include_unlabeled=True, statuses=None)
    by_id = {r["decision_id"]: r for r in rows}
    assert len(by_id) == len(rows)  # one row per decision: nothing stored twice
    return by_id


# -- one request through an SDK, and its record ------------------------------------------------------


def ask(sdk, oc, ac, prompt=EASY, *, stream=False, model="thrifty", max_tokens=50, **extra):
    """One request through an SDK: (headers, answering model, text). ``extra``: ``extra_body``, ``extra_headers``."""
    messages = [{"role": "user", "content": prompt}]
    if sdk == "openai":
        if not stream:
            response = oc.chat.completions.with_raw_response.create(model=model, messages=messages, **extra)
            completion = response.parse()
            return response.headers, completion.model, completion.choices[0].message.content
        response = oc.chat.completions.with_raw_response.create(model=model, messages=messages, stream=True, **extra)
        text, answered, finish = "", None, None
        for chunk in response.parse():
            answered = chunk.model
            text += "".join(c.delta.content or "" for c in chunk.choices)
            finish = next((c.finish_reason for c in chunk.choices if c.finish_reason), finish)
        assert finish is not None, "the stream ended without a finish_reason"
        return response.headers, answered, text
    if not stream:
        response = ac.messages.with_raw_response.create(model=model, max_tokens=max_tokens, messages=messages, **extra)
        message = response.parse()
        return response.headers, message.model, message.content[0].text
    with ac.messages.stream(model=model, max_tokens=max_tokens, messages=messages, **extra) as events:
        message = events.get_final_message()
        assert message.stop_reason is not None, "the stream ended without a stop_reason"
        return events.response.headers, message.model, "".join(b.text for b in message.content if b.type == "text")


def record_of(svc, headers) -> dict:
    return svc.store.decision(headers["x-thrifty-decision-id"])


def attempts_of(record) -> list[tuple[str, str, str | None]]:
    return [(a["model"], a["status"], a["error_kind"]) for a in record["attempts"]]
