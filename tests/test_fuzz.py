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
"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
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
    config = make_config(tmp, fake_server[1], router_path, max_body_bytes=200_000, deadline_s=10.0)
    with serve_in_thread(create_app(config)) as server:
        schema = schemathesis.openapi.from_dict(httpx.get(f"{server.url}/openapi.json").json())
        yield server.url, schema
    total = sum(v for k, v in COUNTS.items() if not k.endswith(")"))
    print(f"\nFUZZ cases run: {total} ({', '.join(f'{k}={v}' for k, v in sorted(COUNTS.items()))})")


def test_the_schema_describes_every_request_body(fuzzed):
    _, schema = fuzzed
    raw = schema.raw_schema
    for path, method in OPERATIONS:
        operation = raw["paths"][path][method.lower()]
        if method == "POST":
            assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].startswith("#/components/")
        assert operation["security"]


@pytest.mark.parametrize("mode", [GenerationMode.NEGATIVE, GenerationMode.POSITIVE], ids=["invalid", "valid"])
@pytest.mark.parametrize("path, method", OPERATIONS, ids=[f"{m} {p}" for p, m in OPERATIONS])
def test_fuzzed_requests_never_get_a_5xx(path, method, mode, fuzzed, fake):
    url, schema = fuzzed
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
