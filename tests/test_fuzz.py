"""The server's OpenAPI schema, fuzzed with schemathesis: no 5xx, and no upstream call on invalid input.

Schemathesis reads ``/openapi.json`` (request bodies from the same pydantic
models the handlers validate with, :mod:`serving.openapi`) and generates,
per operation, schema-violating requests (negative mode) and schema-valid
ones (positive mode), sent over HTTP to thrifty in front of the fake
provider. Every response must be below 500; every rejected (4xx) request
must leave the fake's call count unchanged; every body that breaks the
schema must be rejected without an upstream call. (A negative case may break
the schema elsewhere than in its body, e.g. a header thrifty ignores; those
only have to stay below 500.) The number of cases run is printed
(``pytest -s``).

Hostile input the schema cannot describe is fuzzed too, with hypothesis
(seeded: ``derandomize=True``): unknown fields nested 201 to 100,000 levels
deep, lone UTF-16 surrogate escapes in any field (a 400 naming the field),
output limits far above any model's (10^30, 2^63: a 400 naming the limit,
never forwarded), and stored labels longer than their cap.
"""

from __future__ import annotations

import json

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from serving.openapi import BODIES
from tests.fakes.server import serve_in_thread
from tests.serving_fixtures import CLIENT_KEY, fake, fake_server, make_config, router_path  # noqa: F401  (fixtures)

OPERATIONS = [
    ("/v1/chat/completions", "POST"),
    ("/v1/messages", "POST"),
    ("/v1/route", "POST"),
    ("/v1/feedback", "POST"),
    ("/v1/models", "GET"),
]
EXAMPLES = {GenerationMode.NEGATIVE: 100, GenerationMode.POSITIVE: 40}
AUTH = {"authorization": f"Bearer {CLIENT_KEY}"}
COUNTS: dict[str, int] = {}


def invalid_body(path: str, body) -> bool:
    """Whether ``body`` breaks the request schema of ``path`` (the pydantic model it is generated from)."""
    if path not in BODIES:
        return False
    if not isinstance(body, dict):
        return True
    try:
        BODIES[path][0].model_validate(body)
    except Exception:
        return True
    return False


@pytest.fixture(scope="module")
def fuzzed(fake_server, router_path, tmp_path_factory):
    from serving.app import create_app

    tmp = tmp_path_factory.mktemp("fuzz")
    config = make_config(tmp, fake_server[1], router_path, max_body_bytes=1_000_000, deadline_s=10.0)
    with serve_in_thread(create_app(config)) as server:
        schema = schemathesis.openapi.from_dict(httpx.get(f"{server.url}/openapi.json").json())
        yield server.url, schema, config.resolved_store_url
    total = sum(v for k, v in COUNTS.items() if not k.endswith(")"))
    print(f"\nFUZZ cases run: {total} ({', '.join(f'{k}={v}' for k, v in sorted(COUNTS.items()))})")


def test_the_schema_describes_every_request_body(fuzzed):
    _, schema, _ = fuzzed
    raw = schema.raw_schema
    for path, method in OPERATIONS:
        operation = raw["paths"][path][method.lower()]
        if method == "POST":
            assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].startswith("#/components/")
        assert operation["security"]


@pytest.mark.parametrize("mode", [GenerationMode.NEGATIVE, GenerationMode.POSITIVE], ids=["invalid", "valid"])
@pytest.mark.parametrize("path, method", OPERATIONS, ids=[f"{m} {p}" for p, m in OPERATIONS])
def test_fuzzed_requests_never_get_a_5xx(path, method, mode, fuzzed, fake):
    url, schema, _ = fuzzed
    operation = schema[path][method]
    key = f"{method} {path} {mode.value}"
    problems: list[str] = []

    @settings(max_examples=EXAMPLES[mode], deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case):
        COUNTS[key] = COUNTS.get(key, 0) + 1
        before = fake.count()
        response = case.call(base_url=url, headers=AUTH, timeout=20)
        upstream_calls = fake.count() - before
        if upstream_calls:
            COUNTS[key + " (reached upstream)"] = COUNTS.get(key + " (reached upstream)", 0) + 1
        if response.status_code >= 500:
            problems.append(f"{response.status_code} for {case.body!r}: {response.text[:300]}")
        if 400 <= response.status_code < 500 and upstream_calls:
            problems.append(f"rejected with {response.status_code} after {upstream_calls} upstream call(s): {case.body!r}")
        if mode is GenerationMode.NEGATIVE and invalid_body(path, case.body):
            COUNTS[key + " (invalid body)"] = COUNTS.get(key + " (invalid body)", 0) + 1
            if not 400 <= response.status_code < 500 or upstream_calls:
                problems.append(f"invalid body got {response.status_code} after {upstream_calls} upstream call(s): "
                                f"{case.body!r}")

    run()
    assert not problems, "\n".join(problems[:5])
    assert COUNTS[key] > 0


# -- hostile input beyond the schema --------------------------------------------------------------------------------

HOSTILE = settings(max_examples=30, deadline=None, database=None, derandomize=True,
                   suppress_health_check=list(HealthCheck))
CHAT = {"/v1/chat/completions": {"model": "thrifty", "messages": [{"role": "user", "content": "hello"}]},
        "/v1/messages": {"model": "thrifty", "max_tokens": 64, "messages": [{"role": "user", "content": "hello"}]},
        "/v1/route": {"model": "thrifty", "prompt": "hello"}}


def post_raw(url: str, path: str, raw: str, **headers) -> httpx.Response:
    """``raw`` JSON text as the body: escapes such as a lone ``\\ud800`` reach the server as written."""
    return httpx.post(f"{url}{path}", content=raw.encode(), timeout=30,
                      headers={**AUTH, "content-type": "application/json", **headers})


def refused_without_upstream_call(fake, response: httpx.Response, *, param: str | None = None, says: str = "") -> None:
    assert response.status_code == 400, response.text[:300]
    body = response.json()
    error = body["error"]
    message = error["message"]
    assert says in message, message
    if param is not None and "param" in error:
        assert error["param"] == param, error
    assert fake.count() == 0


@pytest.mark.parametrize("path", list(CHAT))
@HOSTILE
@given(depth=st.one_of(st.sampled_from([201, 1_000, 10_000, 100_000]), st.integers(201, 100_000)),
       opener=st.sampled_from(["[", '{"a":']), lone=st.booleans())
def test_deep_nesting_is_a_400_before_any_recursion(path, depth, opener, lone, fuzzed, fake):
    """An unknown field nested deeper than 200 levels: a 400 naming the depth (it was a RecursionError, a 500).

    ``lone`` adds a lone surrogate, which sends the body down the slow parse path (the one that recursed).
    """
    url, _, _ = fuzzed
    closer = "]" if opener == "[" else "}"
    nested = opener * depth + ('"\\ud800"' if lone else "1") + closer * depth
    raw = json.dumps(CHAT[path])[:-1] + f', "extra": {nested}}}'
    fake.reset()
    refused_without_upstream_call(fake, post_raw(url, path, raw), says="levels")


@pytest.mark.parametrize("path", list(CHAT))
@HOSTILE
@given(where=st.sampled_from(["content", "system", "unknown", "metadata", "task", "tool", "key"]),
       surrogate=st.integers(0xD800, 0xDFFF), prefix=st.text(max_size=5))
def test_a_lone_surrogate_anywhere_is_a_400_naming_the_field(path, where, surrogate, prefix, fuzzed, fake):
    url, _, _ = fuzzed
    escape = f"\\u{surrogate:04x}"
    text = json.dumps(prefix)[1:-1] + escape  # a JSON string body holding the lone escape
    body = json.loads(json.dumps(CHAT[path]))
    placeholder = "@@HOSTILE@@"
    expected = {"content": "messages.0.content", "system": "system", "unknown": "extra.inner.0",
                "metadata": "metadata.task", "task": "thrifty.task", "tool": "tools.0.name", "key": "extra"}[where]
    if path == "/v1/route" and where == "content":
        where, expected = "prompt", "prompt"
        body["prompt"] = placeholder
    elif where == "content":
        body["messages"][0]["content"] = placeholder
    elif where == "system":
        body["system"] = placeholder
    elif where == "unknown":
        body["extra"] = {"inner": [placeholder]}
    elif where == "metadata":
        body["metadata"] = {"task": placeholder}
    elif where == "task":
        body["thrifty"] = {"task": placeholder}
    elif where == "tool":
        body["tools"] = [{"name": placeholder, "type": "function", "function": {"name": placeholder}}]
        expected = None  # one of the tool's name fields, whichever is met first
    else:
        body["extra"] = {"@@KEY@@": 1}
    raw = json.dumps(body).replace(placeholder, text).replace("@@KEY@@", text)
    fake.reset()
    response = post_raw(url, path, raw)
    refused_without_upstream_call(fake, response, param=expected, says="lone surrogate")


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("model", ["thrifty", "oai-mini", "claude-small"])
@HOSTILE
@given(value=st.one_of(st.sampled_from([10**30, 2**63, 2**63 - 1, 2**31, 8193]), st.integers(8193, 10**40)))
def test_an_output_limit_above_every_model_is_a_400_never_forwarded(field, model, value, fuzzed, fake):
    url, _, _ = fuzzed
    fake.reset()
    body = {"model": model, "messages": [{"role": "user", "content": "hello"}], field: value}
    response = post_raw(url, "/v1/chat/completions", json.dumps(body))
    refused_without_upstream_call(fake, response, param=field, says="8192")  # the test catalog's limit, named


@pytest.mark.parametrize("where", ["header", "body", "metadata"])
@HOSTILE
@given(length=st.integers(201, 6_000))
def test_every_stored_label_has_the_same_cap(where, length, fuzzed, fake):
    url, _, _ = fuzzed
    label = "t" * length
    body = dict(CHAT["/v1/chat/completions"])
    headers = {}
    if where == "header":
        headers["x-thrifty-task"] = label
    elif where == "body":
        body["thrifty"] = {"task": label}
    else:
        body["metadata"] = {"task": label}
    fake.reset()
    response = post_raw(url, "/v1/chat/completions", json.dumps(body), **headers)
    param = {"header": "x-thrifty-task", "body": "thrifty.task", "metadata": "metadata.task"}[where]
    refused_without_upstream_call(fake, response, param=param, says="200")


def test_labels_at_the_cap_are_accepted_and_stored_whole(fuzzed, fake):
    import sqlite3

    url, _, store_path = fuzzed
    labels = {}
    for where, label in (("header", "h" * 200), ("body", "b" * 200), ("metadata", "m" * 200)):
        body = dict(CHAT["/v1/chat/completions"])
        headers = {"x-thrifty-task": label} if where == "header" else {}
        if where == "body":
            body["thrifty"] = {"task": label}
        elif where == "metadata":
            body["metadata"] = {"task": label}
        response = post_raw(url, "/v1/chat/completions", json.dumps(body), **headers)
        assert response.status_code == 200, response.text
        labels[response.headers["x-thrifty-decision-id"]] = label
    conn = sqlite3.connect(store_path)
    try:
        stored = dict(conn.execute(f"SELECT decision_id, task FROM decisions WHERE decision_id IN ({','.join('?' * 3)})",
                                   list(labels)).fetchall())
    finally:
        conn.close()
    assert stored == labels
