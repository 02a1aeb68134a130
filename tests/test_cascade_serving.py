"""Cascade profiles served online, against the loopback fake provider, with the real SDKs.

The cascade ``agree-then-large``: stage 1 calls ``oai-mini`` and ``claude-small``
in parallel and stops when they agree; stage 2 asks ``claude-large``. The fake
answers on cue: "2+2" gets the same answer from both cheap models, "3*7" gets
two different ones (the large model is right).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from models.store import open_store
from router.cascade import Agreement, Cascade, Stage
from router.profiles import Profile, save_profile
from serving.budgets import max_request_cost
from tests.fakes.server import serve_in_thread
from tests.serving_fixtures import (  # noqa: F401  (fixtures)
    CLIENT_KEY,
    UPSTREAM,
    anthropic_sdk,
    fake,
    fake_server,
    make_config,
    openai_sdk,
    router_path,
)

AGREE = "What is 2+2? Answer with the number."
DISAGREE = "What is 3*7? Answer with the number."
CASCADE = Cascade("agree-then-large", (Stage(("oai-mini", "claude-small"), Agreement(2.0)), Stage(("claude-large",))), "number")
OPENAI_STAGES = Cascade("openai-stages", (Stage(("oai-mini", "oai-large"), Agreement(2.0)), Stage(("claude-large",))), "number")
MAX_TOKENS = 200


def cue(fake):
    answers = {
        "oai-mini": {"2+2": "The answer is 4.", "3*7": "The answer is 21."},
        "claude-small": {"2+2": "4", "3*7": "The answer is 24."},
        "oai-large": {"2+2": "#### 4", "3*7": "The answer is 21."},
        "claude-large": {"2+2": "The answer is 4.", "3*7": "Final answer: 21"},
    }
    for model, by_cue in answers.items():
        fake.configure(UPSTREAM[model], answers=by_cue, output_tokens=5)


def start(tmp_path: Path, fake_url: str, router_path: Path, **overrides):
    from serving.app import create_app

    config = make_config(tmp_path, fake_url, router_path, fallbacks={"oai-mini": ["oai-large"]}, **overrides)
    save_profile(Profile(name="agree-then-large", cascade=CASCADE.to_dict()), config.profiles_dir)
    save_profile(Profile(name="openai-stages", cascade=OPENAI_STAGES.to_dict()), config.profiles_dir)
    app = create_app(config)
    return app, config


@pytest.fixture
def served(fake, fake_server, router_path, tmp_path):
    app, config = start(tmp_path, fake_server[1], router_path)
    cue(fake)
    with serving(app) as url:
        yield url, config


@contextmanager
def serving(app):
    with serve_in_thread(app) as server:
        yield server.url


def ask(model: str, prompt: str, **extra) -> dict:
    return {"model": model, "max_tokens": MAX_TOKENS, "messages": [{"role": "user", "content": prompt}], **extra}


def stored(config, decision_id: str) -> dict:
    with open_store(config.resolved_store_url, create=False) as store:
        return store.decision(decision_id)


def assert_every_call_costed(row: dict, calls: list[str]):
    answered = [a for a in row["attempts"] if a["status"] == "ok"]
    assert sorted(a["model"] for a in answered) == sorted(calls)
    assert all(a["cost_usd"] > 0 for a in answered)
    assert row["cost_usd"] == pytest.approx(sum(a["cost_usd"] for a in answered))


def test_two_cheap_models_agree_and_the_cascade_stops_at_stage_one(served, fake):
    url, config = served
    with openai_sdk(url) as client:
        raw = client.chat.completions.with_raw_response.create(**ask("agree-then-large", AGREE))
    completion = raw.parse()
    assert raw.headers["x-thrifty-cascade"] == "1:oai-mini,claude-small=accept"
    assert raw.headers["x-thrifty-model"] == "claude-small"  # ties go to the later-listed model
    assert completion.choices[0].message.content == "4"
    assert completion.model == "claude-small"
    assert fake.count(UPSTREAM["claude-large"]) == 0
    row = stored(config, raw.headers["x-thrifty-decision-id"])
    assert row["policy"] == "cascade" and row["chosen_model"] == "claude-small" and row["answered_model"] == "claude-small"
    assert row["cascade"]["profile"] == "agree-then-large"
    assert [(s["stage"], s["models"], s["outcome"]) for s in row["cascade"]["stages"]] == [(1, ["oai-mini", "claude-small"], "accept")]
    assert row["cascade"]["stages"][0]["answers"] == {"oai-mini": "4", "claude-small": "4"}
    assert_every_call_costed(row, ["oai-mini", "claude-small"])


def test_disagreement_escalates_to_stage_two(served, fake):
    url, config = served
    with openai_sdk(url) as client:
        raw = client.chat.completions.with_raw_response.create(**ask("agree-then-large", DISAGREE))
    assert raw.headers["x-thrifty-cascade"] == "1:oai-mini,claude-small=disagree;2:claude-large=answer"
    assert raw.parse().choices[0].message.content == "Final answer: 21"  # an Anthropic model, translated for the OpenAI client
    assert raw.headers["x-thrifty-model"] == "claude-large"
    row = stored(config, raw.headers["x-thrifty-decision-id"])
    assert row["chosen_model"] == "claude-large"
    assert [s["outcome"] for s in row["cascade"]["stages"]] == ["disagree", "answer"]
    assert_every_call_costed(row, ["oai-mini", "claude-small", "claude-large"])
    assert raw.headers["x-thrifty-attempts"] == "3"


def test_a_failing_stage_model_fails_over_to_its_fallback(served, fake):
    url, config = served
    fake.configure(UPSTREAM["oai-mini"], status=503)
    with openai_sdk(url) as client:
        raw = client.chat.completions.with_raw_response.create(**ask("agree-then-large", AGREE))
    assert raw.headers["x-thrifty-cascade"] == "1:oai-mini>oai-large,claude-small=accept"
    assert raw.parse().choices[0].message.content == "4"
    row = stored(config, raw.headers["x-thrifty-decision-id"])
    assert row["cascade"]["stages"][0]["answered_by"] == {"oai-mini": "oai-large", "claude-small": "claude-small"}
    failed = [a for a in row["attempts"] if a["status"] == "error"]
    assert failed and {a["model"] for a in failed} == {"oai-mini"} and all(a["http_status"] == 503 for a in failed)
    assert_every_call_costed(row, ["oai-large", "claude-small"])
    assert fake.count(UPSTREAM["claude-large"]) == 0


def test_a_cascade_whose_last_stage_fails_is_an_error_with_its_trace_and_every_call_stored(served, fake):
    url, config = served
    fake.configure(UPSTREAM["claude-large"], status=503)
    with openai_sdk(url) as client, pytest.raises(Exception) as caught:
        client.chat.completions.create(**ask("agree-then-large", DISAGREE))
    response = caught.value.response
    assert response.status_code >= 500
    assert response.headers["x-thrifty-cascade"] == "1:oai-mini,claude-small=disagree;2:claude-large!=answer"
    row = stored(config, response.headers["x-thrifty-decision-id"])
    assert row["status"] == "error" and row["cascade"]["answered_by"] is None
    assert_every_call_costed(row, ["oai-mini", "claude-small"])
    assert {a["model"] for a in row["attempts"] if a["status"] == "error"} == {"claude-large"}


def test_route_only_names_the_cascade(served, fake):
    url, _ = served
    response = httpx.post(f"{url}/v1/route", json=ask("agree-then-large", AGREE), headers={"authorization": f"Bearer {CLIENT_KEY}"}, timeout=20)
    assert response.status_code == 200, response.text
    assert response.json()["policy"] == "cascade" and response.json()["model"] == "oai-mini"
    assert [c["model"] for c in response.json()["candidates"]] == ["oai-mini", "claude-small", "claude-large"]
    assert len(fake.calls) == 0


def test_the_budget_books_the_worst_case_and_refuses_before_any_call(fake, fake_server, router_path, tmp_path):
    from models.catalog import load_catalog

    catalog = load_catalog(make_config(tmp_path, fake_server[1], router_path).resolved_catalog, include_default=False)
    body = ask("agree-then-large", AGREE)
    spec = lambda *ms: [catalog.get(m) for m in ms]  # noqa: E731
    one_call = max_request_cost(body, spec("claude-large"), default_max_tokens=4096, max_attempts=3)
    worst = sum(max_request_cost(body, spec(*ms), default_max_tokens=4096, max_attempts=3)
                for ms in (("oai-mini", "oai-large"), ("claude-small",), ("claude-large",)))
    limit = (one_call + worst) / 2
    assert one_call < limit < worst  # the dearest call alone fits; the cascade's worst case does not
    app, config = start(tmp_path, fake_server[1], router_path, budgets={"tests": {"amount_usd": limit, "period": "day"}})
    cue(fake)
    with serving(app) as url:
        response = httpx.post(f"{url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {CLIENT_KEY}"}, timeout=20)
        assert response.status_code == 429
        assert response.json()["error"]["code"] == "budget_exceeded"
        assert len(fake.calls) == 0  # refused before any upstream call
        row = stored(config, response.headers["x-thrifty-decision-id"])
        assert row["status"] == "error" and row["attempts"] == []
        # a single call to the dearest model fits the same budget
        direct = httpx.post(f"{url}/v1/chat/completions", json={**body, "model": "claude-large"},
                            headers={"authorization": f"Bearer {CLIENT_KEY}"}, timeout=20)
        assert direct.status_code == 200


def test_the_budget_settles_the_real_cost_of_every_call(fake, fake_server, router_path, tmp_path):
    app, config = start(tmp_path, fake_server[1], router_path, budgets={"tests": {"amount_usd": 10.0, "period": "day"}})
    cue(fake)
    with serving(app) as url, openai_sdk(url) as client:
        raw = client.chat.completions.with_raw_response.create(**ask("agree-then-large", DISAGREE))
    row = stored(config, raw.headers["x-thrifty-decision-id"])
    with open_store(config.resolved_store_url, create=False) as store:
        spent = store._query("SELECT spent_usd FROM budget_spend WHERE client = ?", ("tests",))[0]["spent_usd"]
        held = store._query("SELECT COUNT(*) AS n FROM budget_reservations")[0]["n"]
    assert spent == pytest.approx(sum(a["cost_usd"] for a in row["attempts"] if a["cost_usd"])) and held == 0


def test_a_streaming_client_receives_the_accepted_answer(served, fake):
    url, config = served
    with openai_sdk(url) as client:
        chunks = list(client.chat.completions.create(**ask("agree-then-large", DISAGREE), stream=True,
                                                     stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Final answer: 21"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    with anthropic_sdk(url) as client:
        with client.messages.stream(**ask("agree-then-large", AGREE)) as stream:
            assert "".join(stream.text_stream) == "4"
            final = stream.get_final_message()
    assert final.stop_reason == "end_turn" and final.model == "claude-small"
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=ask("agree-then-large", AGREE, stream=True),
                      headers={"authorization": f"Bearer {CLIENT_KEY}"}, timeout=20) as response:
        assert response.headers["x-thrifty-cascade"] == "1:oai-mini,claude-small=accept"
        body = response.read().decode()
    assert body.rstrip().endswith("data: [DONE]")
    row = stored(config, response.headers["x-thrifty-decision-id"])
    assert row["stream"] == 1 and row["status"] == "ok" and row["response"] == "4"


def test_an_anthropic_client_with_openai_stages(served, fake):
    url, config = served
    with anthropic_sdk(url) as client:
        raw = client.messages.with_raw_response.create(**ask("openai-stages", AGREE))
        message = raw.parse()
    assert raw.headers["x-thrifty-cascade"] == "1:oai-mini,oai-large=accept"
    assert message.content[0].text == "#### 4" and message.model == "oai-large"
    assert [c.endpoint for c in fake.calls] == ["openai"] * 2  # both stage calls went out as OpenAI requests
    row = stored(config, raw.headers["x-thrifty-decision-id"])
    assert row["endpoint"] == "/v1/messages" and row["chosen_model"] == "oai-large"
    assert_every_call_costed(row, ["oai-mini", "oai-large"])


def test_cascade_requests_a_cascade_cannot_serve_are_clear_400s(served, fake):
    url, _ = served
    headers = {"authorization": f"Bearer {CLIENT_KEY}"}
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    response = httpx.post(f"{url}/v1/chat/completions", json=ask("agree-then-large", AGREE, tools=tools), headers=headers, timeout=20)
    assert response.status_code == 400 and "tools" in response.json()["error"]["message"]
    response = httpx.post(f"{url}/v1/chat/completions", json=ask("agree-then-large", AGREE), timeout=20,
                          headers={**headers, "x-thrifty-allowed-models": "oai-mini,claude-small"})
    assert response.status_code == 400 and "claude-large" in response.json()["error"]["message"]
    assert len(fake.calls) == 0


# ----------------------------------------------------------------------------- thrifty tune --cascade, then served


@pytest.fixture(scope="module")
def gsm8k_slice(tmp_path_factory, data_dir):
    frame = pd.read_parquet(data_dir / "outcomes" / "zeroeval-gsm8k.parquet")
    keep = sorted(frame.prompt_id.unique())[:150]
    path = tmp_path_factory.mktemp("slice") / "gsm8k-slice.parquet"
    frame[frame.prompt_id.isin(keep)].to_parquet(path, index=False)
    return path


def test_tune_cascade_on_real_logs_saves_a_profile_that_serving_runs(gsm8k_slice, data_dir, thrifty_home, fake, fake_server, tmp_path):
    from models.settings import get_settings
    from router.profiles import load_profile
    from serving.app import create_app
    from serving.config import ServingConfig
    from training.cli import tune

    args = ["--cascade", "--logs", str(gsm8k_slice), "--prices", str(data_dir / "prices.csv"), "--name", "gsm-cascade",
            "--max-cost-per-request", "0.01", "--predictor", "logistic", "--cascade-models", "4", "--no-mlflow"]
    result = CliRunner().invoke(tune, args)
    assert result.exit_code == 0, result.output
    assert "saved cascade profile 'gsm-cascade'" in result.output and "on 45 test prompts" in result.output
    profile = load_profile(get_settings().profiles_dir / "gsm-cascade.json")
    cascade = profile.make_cascade()
    assert cascade is not None and profile.router_uri and Path(profile.router_uri).is_file()
    assert profile.target["validation"]["cost"] <= 0.01 and profile.target["test_prompts"] == 45 and profile.target["family"] in ("fixed", "confidence", "learned")

    # serve it: every model the cascade may call is a fake upstream answering the same number
    prices = pd.read_csv(data_dir / "prices.csv").set_index("model")
    entries = [{"id": m, "provider": "openai", "upstream": f"up-{k}", "base_url": f"{fake_server[1]}/v1",
                "input_usd_per_mtok": float(prices.loc[m, "input_usd_per_mtok"]),
                "output_usd_per_mtok": float(prices.loc[m, "output_usd_per_mtok"]), "context_window": 128000}
               for k, m in enumerate(cascade.models)]
    for k in range(len(entries)):
        fake.configure(f"up-{k}", text='{"reasoning": "2 + 2 = 4", "answer": "4"}', output_tokens=12)
    (tmp_path / "catalog.yaml").write_text(yaml.safe_dump({"models": entries}))
    config = ServingConfig(router_uri=profile.router_uri, catalog=[tmp_path / "catalog.yaml"], include_default_catalog=False,
                           profiles_dir=get_settings().profiles_dir, store_url=str(tmp_path / "outcomes.db"),
                           api_keys={"tests": CLIENT_KEY}, upstreams={"openai": {"api_key": "sk-upstream-openai-SECRET-1234"}})
    prompt = pd.read_parquet(gsm8k_slice).prompt.iloc[0]
    with serving(create_app(config)) as url, openai_sdk(url) as client:
        raw = client.chat.completions.with_raw_response.create(model="gsm-cascade", max_tokens=100,
                                                               messages=[{"role": "user", "content": prompt}])
    trace = raw.headers["x-thrifty-cascade"]
    assert json.loads(raw.parse().choices[0].message.content)["answer"] == "4"
    row = stored(config, raw.headers["x-thrifty-decision-id"])
    called = [m for s in row["cascade"]["stages"] for m in s["models"]]
    assert trace.startswith(f"{row['cascade']['stages'][0]['stage']}:") and set(called) <= set(cascade.models)
    assert_every_call_costed(row, called)


def test_each_stage_is_a_span_that_parents_its_calls(fake, fake_server, router_path, tmp_path):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind

    from serving.app import create_app

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    config = make_config(tmp_path, fake_server[1], router_path, fallbacks={"oai-mini": ["oai-large"]})
    save_profile(Profile(name="agree-then-large", cascade=CASCADE.to_dict()), config.profiles_dir)
    cue(fake)
    with serving(create_app(config, tracer_provider=provider)) as url, openai_sdk(url) as client:
        client.chat.completions.create(**ask("agree-then-large", DISAGREE))
    spans = exporter.get_finished_spans()
    stages = sorted((s for s in spans if s.name == "thrifty.cascade.stage"), key=lambda s: s.attributes["thrifty.cascade.stage"])
    assert [(s.attributes["thrifty.cascade.model"], s.attributes["thrifty.cascade.outcome"], s.attributes["thrifty.cascade.accepted"])
            for s in stages] == [("oai-mini,claude-small", "disagree", False), ("claude-large", "answer", True)]
    calls = [s for s in spans if s.kind == SpanKind.CLIENT]
    by_stage = {st.context.span_id: sorted(c.attributes["gen_ai.request.model"] for c in calls if c.parent.span_id == st.context.span_id)
                for st in stages}
    assert list(by_stage.values()) == [sorted([UPSTREAM["oai-mini"], UPSTREAM["claude-small"]]), [UPSTREAM["claude-large"]]]
    assert any(s.name == "thrifty.store.commit" for s in spans)
