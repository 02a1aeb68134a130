"""Fixtures for the serving tests: a fake provider server, a fitted router, and thrifty on loopback.

Import the fixtures you use into a test module (pytest finds fixtures by name
in the module)::

    from tests.serving_fixtures import fake, thrifty, openai_client, anthropic_client

The test catalog has four models on the fake server, two per provider:

    oai-mini      openai     cheap   succeeds on easy prompts only
    claude-small  anthropic  cheap   succeeds on easy prompts only
    claude-large  anthropic  dear    succeeds on everything
    oai-large     openai     dearer  succeeds on everything

so the router sends an easy prompt ("hello ...") to ``oai-mini`` and a hard
one ("prove ...") to ``claude-large``: each SDK reaches a model of the other
provider by routing alone.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.fakes.provider import FakeProvider
from tests.fakes.server import ThreadedServer

CLIENT_KEY = "thr-test-client-key-0001"
OTHER_CLIENT_KEY = "thr-test-client-key-0002"
OPENAI_UPSTREAM_KEY = "sk-upstream-openai-SECRET-1234"
ANTHROPIC_UPSTREAM_KEY = "sk-ant-upstream-SECRET-5678"

MODELS = ["oai-mini", "claude-small", "claude-large", "oai-large"]
UPSTREAM = {
    "oai-mini": "gpt-fake-mini",
    "claude-small": "claude-fake-small",
    "claude-large": "claude-fake-large",
    "oai-large": "gpt-fake-large",
}
PRICES = {"oai-mini": (0.1, 0.4), "claude-small": (0.25, 1.25), "claude-large": (3.0, 15.0), "oai-large": (5.0, 15.0)}
EASY = "hello, what is the capital of France?"
HARD = "prove that there are infinitely many primes, rigorously"

_EASY_TOPICS = ["the weather", "a recipe", "the capital of France", "a greeting", "a short poem", "the time",
                "a synonym for happy", "translate hello", "a fun fact", "the color of the sky"]
_HARD_TOPICS = ["that sqrt 2 is irrational", "the fundamental theorem of algebra", "that there are infinitely many primes",
                "the central limit theorem", "Fermat's little theorem", "that every bounded sequence has a limit point",
                "the pigeonhole principle bound", "the Cauchy-Schwarz inequality", "Euler's formula for planar graphs",
                "that e is irrational"]


def catalog_entries(fake_url: str) -> list[dict]:
    entries = []
    for model in MODELS:
        anthropic = model.startswith("claude")
        entries.append({
            "id": model,
            "provider": "anthropic" if anthropic else "openai",
            "upstream": UPSTREAM[model],
            "base_url": fake_url if anthropic else f"{fake_url}/v1",
            "input_usd_per_mtok": PRICES[model][0],
            "output_usd_per_mtok": PRICES[model][1],
            "context_window": 200000 if anthropic else 128000,
            "max_output_tokens": 8192,
        })
    return entries


def fit_test_router(path: Path, names: list[str] = MODELS, prices: dict | None = None) -> Path:
    """A small router: hard prompts ("prove ...") succeed only on the large models.

    ``names`` renames the four models (cheap, cheap, dear, dearer), ``prices`` prices them by name."""
    from models.prices import Price, PriceTable
    from router import LogisticSuccess, Router, TextFeaturizer
    from router.persist import save_router

    rng = random.Random(0)
    texts, S, T = [], [], []
    for i in range(160):
        hard = i % 2 == 1
        topic = rng.choice(_HARD_TOPICS if hard else _EASY_TOPICS)
        question = f"prove {topic}, step by step with a rigorous proof" if hard else f"hello, tell me {topic} please"
        # Vary length and framing alike for both kinds, so only the words tell them apart.
        framing = rng.choice(["{q}", "Be brief.\n\n{q}\n\n{q}", "{q} (case {i})", "You are helpful.\n\n{q}\n\nThanks.\n\n{q}"])
        texts.append(framing.format(q=question, i=i))
        S.append([0.0, 0.0, 1.0, 1.0] if hard else [1.0, 1.0, 1.0, 1.0])
        T.append([40.0, 40.0, 300.0, 300.0] if hard else [20.0, 20.0, 25.0, 25.0])
    prices = PriceTable({m: Price(*(prices or PRICES)[m]) for m in names})
    router = Router(featurizer=TextFeaturizer(n_components=8), success=LogisticSuccess())
    router.fit(texts, np.array(S), np.array(T), names, prices)
    return save_router(router, path)


@dataclass
class Thrifty:
    """A running thrifty server and what the tests need to know about it."""

    url: str
    store_path: Path
    config: object
    app: object

    @property
    def services(self):
        return self.app.state.services


def make_config(tmp: Path, fake_url: str, router_path: Path, **overrides):
    from router.profiles import Profile, save_profile
    from serving.config import ServingConfig

    catalog_path = tmp / "catalog.yaml"
    catalog_path.write_text(yaml.safe_dump({"models": catalog_entries(fake_url)}))
    profiles_dir = tmp / "profiles"
    save_profile(Profile(name="cheap-only", policy="threshold", knob=0.5, allowed=["oai-mini", "claude-small"]), profiles_dir)
    save_profile(Profile(name="best", policy="tradeoff", knob=0.0), profiles_dir)
    settings = dict(
        router_uri=str(router_path),
        catalog=[catalog_path],
        include_default_catalog=False,
        profiles_dir=profiles_dir,
        store_url=str(tmp / "outcomes.db"),
        api_keys={"tests": CLIENT_KEY, "other": OTHER_CLIENT_KEY},
        upstreams={"openai": {"api_key": OPENAI_UPSTREAM_KEY}, "anthropic": {"api_key": ANTHROPIC_UPSTREAM_KEY}},
        store_responses=True,
    )
    settings.update(overrides)
    return ServingConfig(**settings)


@pytest.fixture(scope="session")
def fake_server():
    provider = FakeProvider(api_keys={OPENAI_UPSTREAM_KEY, ANTHROPIC_UPSTREAM_KEY})
    server = ThreadedServer(provider.app).start()
    yield provider, server.url
    server.stop()


@pytest.fixture
def fake(fake_server) -> FakeProvider:
    """The fake provider, reset: default behaviors and no recorded calls."""
    provider, _ = fake_server
    provider.reset()
    yield provider
    provider.reset()


@pytest.fixture(scope="session")
def router_path(tmp_path_factory) -> Path:
    return fit_test_router(tmp_path_factory.mktemp("router") / "router.joblib")


@pytest.fixture(scope="session")
def thrifty(fake_server, router_path, tmp_path_factory) -> Thrifty:
    from serving.app import create_app

    _, fake_url = fake_server
    tmp = tmp_path_factory.mktemp("thrifty")
    config = make_config(tmp, fake_url, router_path, max_body_bytes=200_000)
    app = create_app(config)
    server = ThreadedServer(app).start()
    yield Thrifty(server.url, Path(config.resolved_store_url), config, app)
    server.stop()


def openai_sdk(url: str):
    """The OpenAI SDK pointed at a thrifty server at ``url`` (no SDK retries: the tests count calls)."""
    import openai

    return openai.OpenAI(base_url=f"{url}/v1", api_key=CLIENT_KEY, max_retries=0, timeout=20)


def anthropic_sdk(url: str):
    """The Anthropic SDK pointed at a thrifty server at ``url`` (no SDK retries)."""
    import anthropic

    return anthropic.Anthropic(base_url=url, api_key=CLIENT_KEY, max_retries=0, timeout=20)


@pytest.fixture
def openai_client(thrifty):
    with openai_sdk(thrifty.url) as client:
        yield client


@pytest.fixture
def anthropic_client(thrifty):
    with anthropic_sdk(thrifty.url) as client:
        yield client


@pytest.fixture
def http(thrifty):
    """A plain HTTP client for what SDKs cannot send (bad input, raw SSE), authenticated by default."""
    import httpx

    with httpx.Client(base_url=thrifty.url, headers={"authorization": f"Bearer {CLIENT_KEY}"}, timeout=20) as client:
        yield client


def stored(thrifty: Thrifty, decision_id: str) -> dict | None:
    return thrifty.services.store.decision(decision_id)


def sse_events(text: str) -> list[tuple[str | None, str]]:
    """(event name, data) pairs of a raw SSE body."""
    events, name, data = [], None, []
    for line in text.splitlines():
        if not line:
            if data or name:
                events.append((name, "\n".join(data)))
            name, data = None, []
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
    if data or name:
        events.append((name, "\n".join(data)))
    return events


def parse_json(data: str):
    return json.loads(data)
