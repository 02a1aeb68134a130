"""Decisions made in batches: the same decisions as one at a time, each error in its own place."""

from __future__ import annotations

import asyncio
import math

import pytest

from models.catalog import Catalog, _spec_from_entry
from router.persist import load_router
from router.profiles import Profile
from serving.batching import DecisionBatcher
from serving.errors import InvalidRequest, LimitUnmet, UnknownModel
from serving.routing import Constraints, LoadedRouter, RouterHolder, Routing
from tests.serving_fixtures import EASY, HARD, MODELS, catalog_entries, fit_test_router


@pytest.fixture(scope="module")
def routing(tmp_path_factory):
    path = fit_test_router(tmp_path_factory.mktemp("batching") / "router.joblib")
    catalog = Catalog(_spec_from_entry(e, "test catalog") for e in catalog_entries("http://127.0.0.1:9"))
    loaded = LoadedRouter(load_router(str(path)), str(path), "v-test")
    profiles = {
        "cheap-only": Profile(name="cheap-only", policy="threshold", knob=0.5, allowed=["oai-mini", "claude-small"]),
        "best": Profile(name="best", policy="tradeoff", knob=0.0),
        "strict": Profile(name="strict", policy="threshold", knob=0.99, fallback="oai-large"),
    }
    return Routing(RouterHolder({loaded.uri: loaded}, loaded.uri), catalog, profiles)


def _requests():
    prompts = [EASY, HARD, "hello there, a fun fact please", "prove that e is irrational, rigorously", "", "x" * 3000]
    constraints = [
        Constraints(),
        Constraints(min_quality=0.8),
        Constraints(max_cost=1e-6),
        Constraints(allowed_models=("claude-large", "oai-mini")),  # an order of the caller's own
        Constraints(min_quality=0.9, max_cost=1e-7),  # nothing qualifies: refused (400, in its place)
        Constraints(min_quality=0.9, max_cost=1e-7, on_unmet_limit="degrade"),  # nothing qualifies: the cheapest
    ]
    requests = []
    for i, text in enumerate(prompts * 2):
        for model in ("thrifty", "cheap-only", "best", "strict"):
            requests.append((model, text, constraints[(i + len(requests)) % len(constraints)]))
    requests.append(("oai-large", EASY, Constraints()))  # passthrough
    requests.append(("no-such-model", EASY, Constraints()))  # 404, in its place
    requests.append(("thrifty", HARD, Constraints(allowed_models=("nope",))))  # 400, in its place
    requests.append(("oai-mini", HARD, Constraints(allowed_models=("claude-large",))))  # passthrough refused
    requests.append(("cheap-only", HARD, Constraints(allowed_models=("claude-large",))))  # empty intersection
    return requests


def _same(a, b):
    assert (a.model, a.policy, a.fallback, a.router_version, a.extra) == (b.model, b.policy, b.fallback, b.router_version, b.extra)
    assert a.knob == b.knob or (math.isnan(a.knob) and math.isnan(b.knob))
    assert [c.model for c in a.candidates] == [c.model for c in b.candidates]
    for x, y in zip(a.candidates, b.candidates):
        assert x.acceptable == y.acceptable
        assert x.expected_input_tokens == y.expected_input_tokens
        for field in ("p_success", "expected_output_tokens", "expected_cost"):
            u, v = getattr(x, field), getattr(y, field)
            assert u == pytest.approx(v, rel=1e-12, abs=1e-300) or (math.isnan(u) and math.isnan(v))


def test_a_batch_decides_each_request_as_decide_would(routing):
    requests = _requests()
    batched = routing.decide_many(requests)
    assert len(batched) == len(requests)
    kinds = set()
    for (model, text, constraints), got in zip(requests, batched):
        try:
            expected = routing.decide(model, text, constraints)
        except Exception as exc:  # noqa: BLE001
            assert type(got) is type(exc) and str(got) == str(exc), (model, constraints)
            kinds.add(type(exc))
            continue
        _same(got, expected)
    assert kinds == {UnknownModel, InvalidRequest, LimitUnmet}
    chosen = {d.model for d in batched if not isinstance(d, Exception)}
    assert len(chosen) >= 3  # the batch really mixes decisions
    assert any(d.fallback for d in batched if not isinstance(d, Exception))
    assert any(d.extra.get("limit_unmet") == "max_cost" for d in batched if not isinstance(d, Exception))


def test_allowed_models_keep_the_callers_order_in_a_batch(routing):
    constraints = Constraints(allowed_models=("claude-large", "oai-mini"))
    [single] = [routing.decide("best", HARD, constraints)]
    [batched, _] = routing.decide_many([("best", HARD, constraints), ("thrifty", EASY, Constraints())])
    assert {c.model for c in batched.candidates} == {"claude-large", "oai-mini"}
    _same(batched, single)


def test_batcher_decides_what_arrives_in_one_turn_together():
    sizes, calls = [], []

    def decide_many(requests):
        calls.append([text for _, text, _ in requests])
        return [ValueError(text) if text == "bad" else f"decision for {text}" for _, text, _ in requests]

    batcher = DecisionBatcher(decide_many, max_batch=3, observe_batch=sizes.append)

    async def main():
        first = await asyncio.gather(*(batcher.decide("thrifty", t, Constraints()) for t in "abcde"), return_exceptions=True)
        lone = await batcher.decide("thrifty", "f", Constraints())
        failed = await asyncio.gather(batcher.decide("thrifty", "bad", Constraints()), batcher.decide("thrifty", "g", Constraints()),
                                      return_exceptions=True)
        return first, lone, failed

    first, lone, failed = asyncio.run(main())
    assert first == [f"decision for {t}" for t in "abcde"]
    assert lone == "decision for f"
    assert isinstance(failed[0], ValueError) and str(failed[0]) == "bad" and failed[1] == "decision for g"
    assert calls == [["a", "b", "c"], ["d", "e"], ["f"], ["bad", "g"]]  # arrival order, at most max_batch at a time
    assert sizes == [3, 2, 1, 2]


def test_batcher_skips_cancelled_requests_and_survives_a_failing_batch():
    def decide_many(requests):
        if any(text == "boom" for _, text, _ in requests):
            raise RuntimeError("the whole batch failed")
        return [text for _, text, _ in requests]

    batcher = DecisionBatcher(decide_many)

    async def main():
        cancelled = asyncio.ensure_future(batcher.decide("thrifty", "gone", Constraints()))
        kept = asyncio.ensure_future(batcher.decide("thrifty", "kept", Constraints()))
        await asyncio.sleep(0)  # both joined the batch
        cancelled.cancel()
        boom = await asyncio.gather(batcher.decide("thrifty", "boom", Constraints()), batcher.decide("thrifty", "x", Constraints()),
                                    return_exceptions=True)
        after = await batcher.decide("thrifty", "after", Constraints())
        return cancelled, await kept, boom, after

    cancelled, kept, boom, after = asyncio.run(main())
    assert cancelled.cancelled() and kept == "kept"
    assert all(isinstance(e, RuntimeError) for e in boom)
    assert after == "after"  # the batcher still works after a failed batch


def test_batches_are_kept_apart_per_event_loop(routing):
    batcher = DecisionBatcher(routing.decide_many)

    async def one(text):
        return await batcher.decide("thrifty", text, Constraints())

    assert asyncio.run(one(EASY)).model == routing.decide("thrifty", EASY).model
    assert asyncio.run(one(HARD)).model == routing.decide("thrifty", HARD).model
    assert not batcher._pending  # nothing left behind for a loop that is gone
    assert set(MODELS) >= {asyncio.run(one(t)).model for t in (EASY, HARD)}
