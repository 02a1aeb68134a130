"""The LiteLLM plug-in, run inside LiteLLM's own Router against the loopback fake provider.

Real library, real HTTP: LiteLLM's Router calls the fake provider's OpenAI
and Anthropic endpoints; thrifty's plug-in narrows its deployments, the
callback writes outcome rows that thrifty's log reader takes.
"""

from __future__ import annotations

import asyncio
import os
import random
import time

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before litellm is imported: no network fetch

import litellm  # noqa: E402
import pytest  # noqa: E402
from litellm import Router  # noqa: E402

from router.explore import explore  # noqa: E402
from router.policy import Tradeoff  # noqa: E402
from router.persist import load_router_file  # noqa: E402
from router.prompt import routing_text  # noqa: E402
from tests.registry_fixtures import registered_champion  # noqa: E402
from tests.serving_fixtures import (  # noqa: E402,F401
    ANTHROPIC_UPSTREAM_KEY,
    EASY,
    HARD,
    MODELS,
    OPENAI_UPSTREAM_KEY,
    UPSTREAM,
    fake,
    fake_server,
    router_path,
)
from thrifty.integrations.litellm import (  # noqa: E402
    LiteLLMPluginError,
    ThriftyOutcomeLogger,
    ThriftyRoutingPlugin,
    decision_headers,
)

GROUP = "auto"


def model_list(fake_url: str, *, model_info: bool = True) -> list[dict]:
    """One LiteLLM model group with the four test models as deployments (provider-prefixed upstream names)."""
    deployments = []
    for model in MODELS:
        anthropic = model.startswith("claude")
        params = {
            "model": f"{'anthropic' if anthropic else 'openai'}/{UPSTREAM[model]}",
            "api_base": fake_url if anthropic else f"{fake_url}/v1",
            "api_key": ANTHROPIC_UPSTREAM_KEY if anthropic else OPENAI_UPSTREAM_KEY,
        }
        deployment = {"model_name": GROUP, "litellm_params": params}
        if model_info:
            deployment["model_info"] = {"thrifty_model": model}
        deployments.append(deployment)
    return deployments


@pytest.fixture(scope="module")
def champion(router_path, tmp_path_factory):
    """The test router as models:/thrifty@champion, version 1 (the tests leave the alias there)."""
    with registered_champion(load_router_file(router_path), tmp_path_factory) as router:
        yield router


@pytest.fixture
def callbacks():
    """litellm.callbacks, emptied: LiteLLM copies callbacks into process-global lists (one
    instance per logger class), so each test starts and ends with none registered."""
    litellm.logging_callback_manager._reset_all_callbacks()
    litellm.callbacks = []
    yield litellm.callbacks
    litellm.logging_callback_manager._reset_all_callbacks()
    litellm.callbacks = []


@pytest.fixture
def loop():
    """One event loop per test: LiteLLM keeps async clients and background logging tasks on it."""
    from litellm.litellm_core_utils.logging_worker import GLOBAL_LOGGING_WORKER

    loop = asyncio.new_event_loop()
    yield loop
    loop.run_until_complete(GLOBAL_LOGGING_WORKER.flush())  # LiteLLM's logging worker lives on this loop
    pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in pending:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


class Client:
    """A LiteLLM Router over the fake provider, driven from synchronous test code on one loop."""

    def __init__(self, loop, fake_server, plugin):
        self.loop = loop
        self.router = Router(model_list=model_list(fake_server[1]), plugins=[plugin], num_retries=0)
        plugin.bind(self.router)

    def ask(self, text: str, **kw):
        messages = [{"role": "user", "content": text}]
        return self.loop.run_until_complete(self.router.acompletion(model=GROUP, messages=messages, max_tokens=20, **kw))

    def decision(self, text: str, **kw) -> dict:
        return self.ask(text, **kw)._hidden_params["thrifty"]

    def run(self, coroutine):
        return self.loop.run_until_complete(coroutine)

    def wait_for_lines(self, path, n: int, timeout: float = 20.0) -> None:
        """LiteLLM runs success callbacks as tasks on the loop: run it until ``n`` lines are written (bounded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.exists() and len(path.read_text().splitlines()) >= n:
                return
            self.run(asyncio.sleep(0.05))
        raise AssertionError(f"{path}: fewer than {n} lines after {timeout} s")


def test_routes_each_prompt_to_thriftys_choice_and_publishes_the_decision(fake, fake_server, champion, callbacks, loop):
    callbacks[:] = [ThriftyOutcomeLogger(os.devnull)]
    client = Client(loop, fake_server, ThriftyRoutingPlugin(reload_interval_s=0))
    for text in (EASY, HARD):
        decision = client.decision(text)
        expected = champion.route(text, champion.prices_, allowed=MODELS)
        assert decision["model"] == expected.model
        assert fake.calls[-1].model == UPSTREAM[expected.model]  # LiteLLM called the chosen deployment
        assert decision["p_success"] == pytest.approx(expected.chosen.p_success)
        assert decision["expected_cost"] == pytest.approx(expected.chosen.expected_cost)
        assert decision["propensity"] == 1.0 and decision["router_version"] == "thrifty/1"
        assert [c["model"] for c in decision["candidates"]] == expected.ranking
        headers = decision_headers(decision)
        assert headers["x-thrifty-model"] == expected.model and headers["x-thrifty-router-version"] == "thrifty/1"
    # the cheap model for the easy prompt, a large one for the hard prompt (as the router was trained)
    assert [c.model for c in fake.calls] == [UPSTREAM["oai-mini"], UPSTREAM["claude-large"]]


def test_deployments_map_by_name_or_by_the_mapping_option(champion):
    upstream_names = {f"{'anthropic' if m.startswith('claude') else 'openai'}/{UPSTREAM[m]}": m for m in MODELS}
    # upstream names are not thrifty ids: with no mapping nothing maps, and LiteLLM routes as usual
    context = asyncio.run(_plugin_context(ThriftyRoutingPlugin(reload_interval_s=0), list(upstream_names), HARD))
    assert context.signals["thrifty"] == {"skipped": "no candidate deployment maps to a model the thrifty router knows"}
    assert context.candidate_models == list(upstream_names)
    # the documented mapping option names each deployment's thrifty model
    plugin = ThriftyRoutingPlugin(models=upstream_names, reload_interval_s=0)
    context = asyncio.run(_plugin_context(plugin, list(upstream_names), HARD))
    assert context.signals["thrifty"]["model"] == "claude-large"
    assert context.candidate_models == ["anthropic/claude-fake-large"]
    # a deployment named by its thrifty id (with or without provider prefix) maps by name
    context = asyncio.run(_plugin_context(ThriftyRoutingPlugin(reload_interval_s=0), ["openai/oai-mini", "claude-large"], EASY))
    assert context.signals["thrifty"]["model"] == "oai-mini" and context.candidate_models == ["openai/oai-mini"]


async def _plugin_context(plugin, candidates, text, metadata=None):
    from litellm.types.router import RoutingContext

    messages = [{"role": "user", "content": text}]
    context = RoutingContext(raw_messages=messages, structured_messages=messages, candidate_models=list(candidates),
                             metadata=metadata or {})
    return await plugin.run(context)


def test_exploration_records_the_propensity_of_each_choice(fake, fake_server, champion, callbacks, loop):
    epsilon, seed = 0.5, 7
    callbacks[:] = [ThriftyOutcomeLogger(os.devnull)]
    client = Client(loop, fake_server, ThriftyRoutingPlugin(explore_epsilon=epsilon, seed=seed, reload_interval_s=0))
    replay_rng = random.Random(seed)
    texts = [EASY if i % 2 else HARD for i in range(16)]
    explored = 0
    for text in texts:
        decision = client.decision(text)
        greedy = champion.route(text, champion.prices_, allowed=MODELS)
        # the same seeded draw, replayed outside LiteLLM, gives the same choice and propensity
        expected = explore(greedy, epsilon, replay_rng)
        assert (decision["model"], decision["explored"]) == (expected.model, expected.explored)
        assert decision["propensity"] == pytest.approx(expected.propensity)
        pool = [c for c in greedy.candidates if c.acceptable]
        k = len(pool) if len(pool) >= 2 else len(greedy.candidates)
        assert decision["propensity"] == pytest.approx((1 - epsilon) * (decision["model"] == greedy.model) + epsilon / k)
        assert fake.calls[-1].model == UPSTREAM[decision["model"]]
        explored += decision["explored"]
    assert 0 < explored < len(texts)


def test_hot_swaps_the_champion_when_the_alias_moves(fake, fake_server, champion, callbacks, loop):
    from mlflow import MlflowClient

    from training.tracking import register_router, start_run

    callbacks[:] = [ThriftyOutcomeLogger(os.devnull)]
    plugin = ThriftyRoutingPlugin(reload_interval_s=0)
    client = Client(loop, fake_server, plugin)
    assert client.decision(EASY)["router_version"] == "thrifty/1"
    with start_run("litellm-tests"):
        register_router(champion, "thrifty", alias="challenger")
    assert client.run(plugin.check_for_new_champion()) is False  # the champion alias has not moved
    MlflowClient().set_registered_model_alias("thrifty", "champion", "2")
    assert client.run(plugin.check_for_new_champion()) is True
    assert plugin.load().version == "thrifty/2"
    assert client.decision(EASY)["router_version"] == "thrifty/2"

    # with a polling interval, a promotion is picked up in the background between requests
    client = Client(loop, fake_server, ThriftyRoutingPlugin(reload_interval_s=0.05))
    assert client.decision(EASY)["router_version"] == "thrifty/2"
    MlflowClient().set_registered_model_alias("thrifty", "champion", "1")  # (also what the other tests expect)
    deadline = time.monotonic() + 60
    seen = []
    while time.monotonic() < deadline:
        seen.append(client.decision(EASY)["router_version"])
        if seen[-1] == "thrifty/1":
            break
        client.run(asyncio.sleep(0.1))
    assert seen[-1] == "thrifty/1", f"no swap within 60 s: {seen[-5:]}"
    assert seen.count("thrifty/2") >= 1  # the first answers after the move still came from the old router


def test_outcome_rows_are_read_by_thriftys_log_reader(fake, fake_server, champion, callbacks, loop, tmp_path):
    from training.logs import read_logs

    path = tmp_path / "litellm-outcomes.jsonl"
    judge = lambda kwargs, response: response.choices[0].message.content.startswith("Answer from")  # noqa: E731
    callbacks[:] = [ThriftyOutcomeLogger(path, judge=judge)]
    client = Client(loop, fake_server, ThriftyRoutingPlugin(explore_epsilon=0.3, seed=1, reload_interval_s=0))
    texts = [EASY, HARD, "hello, tell me a fun fact please", "prove the pigeonhole principle bound"]
    decisions = [client.decision(text, metadata={"thrifty": {"task": "qa"}}) for text in texts]
    streamed = "prove that sqrt 2 is irrational, step by step"
    client.run(_consume(client.router, streamed))  # a streamed answer is logged once, when complete
    client.wait_for_lines(path, len(texts) + 1)
    rows = read_logs([path])
    by_id = {d["decision_id"]: (d, t) for d, t in zip(decisions, texts)}
    assert set(by_id) < set(rows["decision_id"]) and len(rows) == len(texts) + 1
    stream_row = rows[~rows["decision_id"].isin(list(by_id))].iloc[0]
    assert stream_row["prompt"] == streamed and stream_row["output_tokens"] > 0
    assert fake.calls[-1].body.get("stream") is True and fake.calls[-1].model == UPSTREAM[stream_row["model"]]
    rows = rows[rows["decision_id"].isin(list(by_id))]
    for row in rows.itertuples():
        decision, text = by_id[row.decision_id]
        assert row.model == decision["model"] and row.prompt_id == decision["decision_id"]
        assert row.prompt == routing_text({"messages": [{"role": "user", "content": text}]})
        assert row.success == 1.0 and row.feedback_source == "judge" and row.task == "qa"
        assert row.propensity == pytest.approx(decision["propensity"]) and row.router_version == "thrifty/1"
        assert row.input_tokens > 0 and row.output_tokens > 0
        price = champion.prices_[row.model]  # LiteLLM has no price for the fake models: priced by thrifty's
        assert row.cost_usd == pytest.approx(price.cost(row.input_tokens, row.output_tokens))
        assert row.latency_s >= 0


async def _consume(router, text: str) -> str:
    stream = await router.acompletion(model=GROUP, messages=[{"role": "user", "content": text}], max_tokens=20,
                                      stream=True, stream_options={"include_usage": True},
                                      metadata={"thrifty": {"task": "qa"}})
    return "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])


def test_unlabeled_answers_wait_for_feedback(fake, fake_server, champion, callbacks, loop, tmp_path):
    from training.logs import read_logs

    path, unlabeled = tmp_path / "outcomes.jsonl", tmp_path / "unlabeled.jsonl"
    logger = ThriftyOutcomeLogger(path, unlabeled_path=unlabeled)
    callbacks[:] = [logger]
    client = Client(loop, fake_server, ThriftyRoutingPlugin(reload_interval_s=0))
    first, second = (client.decision(text)["decision_id"] for text in (EASY, HARD))
    client.wait_for_lines(unlabeled, 2)
    assert not path.exists()  # nothing is labeled yet
    assert logger.feedback(first, 0.0, source="user") is True
    assert logger.feedback("no-such-decision", 1.0) is False
    # a logger started later (another worker, a restart) finds the answer in the unlabeled file
    assert ThriftyOutcomeLogger(path, unlabeled_path=unlabeled).feedback(second, True) is True
    rows = read_logs([path]).set_index("decision_id")
    assert rows.loc[first, "success"] == 0.0 and rows.loc[second, "success"] == 1.0
    assert set(rows["feedback_source"]) == {"user"}


def test_request_bounds_and_bad_metadata(fake, fake_server, champion, callbacks, loop):
    callbacks[:] = [ThriftyOutcomeLogger(os.devnull)]
    client = Client(loop, fake_server, ThriftyRoutingPlugin(reload_interval_s=0))
    # a hard prompt with a cost cap only the small models meet: the cap wins over quality
    capped = client.decision(HARD, metadata={"thrifty": {"max_cost": 1e-4}})
    expected = champion.route(HARD, champion.prices_, allowed=MODELS, max_cost=1e-4)
    assert capped["model"] == expected.model and capped["expected_cost"] <= 1e-4
    assert capped["model"] in ("oai-mini", "claude-small")
    with pytest.raises(Exception, match=r"metadata\.thrifty\.min_quality must be in \[0, 1\]"):
        client.ask(HARD, metadata={"thrifty": {"min_quality": 2}})
    with pytest.raises(LiteLLMPluginError, match="explore_epsilon"):
        ThriftyRoutingPlugin(explore_epsilon=1.5)
    with pytest.raises(ValueError, match="unknown policy"):
        ThriftyRoutingPlugin(policy="cheapest", knob=0.5)
    with pytest.raises(LiteLLMPluginError, match="policy and knob together"):
        ThriftyRoutingPlugin(policy="tradeoff")
    # a policy given to the plug-in replaces the router's own
    tradeoff = Client(loop, fake_server, ThriftyRoutingPlugin(policy="tradeoff", knob=0.0, reload_interval_s=0))
    best = champion.route(EASY, champion.prices_, Tradeoff(0.0), allowed=MODELS)
    decision = tradeoff.decision(EASY)
    assert (decision["model"], decision["policy"], decision["knob"]) == (best.model, "tradeoff", 0.0)


def _readme_block(marker: str) -> str:
    """The fenced block that follows ``<!-- marker -->`` in the README."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    after = text.split(f"<!-- {marker} -->", 1)[1]
    return after.split("```", 2)[1].split("\n", 1)[1]


def test_the_readme_config_works_in_litellm(fake, fake_server, callbacks, loop, tmp_path, tmp_path_factory, monkeypatch):
    """The README's plug-in file and LiteLLM config, loaded the way the proxy loads them."""
    import yaml
    from litellm.proxy.types_utils.utils import get_instance_fn

    from models.catalog import default_catalog
    from tests.serving_fixtures import fit_test_router
    from training.logs import read_logs

    config = yaml.safe_load(_readme_block("litellm-config"))
    ids = [d["model_info"]["thrifty_model"] for d in config["model_list"]]
    # a router that knows the README's model ids: the two mini/haiku models cheap, the others dear
    names = sorted(ids, key=lambda m: default_catalog().get(m).input_usd_per_mtok)
    prices = {m: (default_catalog().get(m).input_usd_per_mtok, default_catalog().get(m).output_usd_per_mtok) for m in names}
    router = load_router_file(fit_test_router(tmp_path / "readme-router.joblib", names, prices))
    (tmp_path / "thrifty_litellm.py").write_text(_readme_block("litellm-plugin-file"))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)  # the plug-in file's relative log paths
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_UPSTREAM_KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_UPSTREAM_KEY)
    monkeypatch.setenv("OPENAI_API_BASE", f"{fake_server[1]}/v1")  # LiteLLM's own env overrides of the base URLs
    monkeypatch.setenv("ANTHROPIC_API_BASE", fake_server[1])
    with registered_champion(router, tmp_path_factory):
        config_path = str(tmp_path / "config.yaml")
        plugins = [get_instance_fn(p, config_path) for p in config["router_settings"]["plugins"]]
        callbacks[:] = [get_instance_fn(c, config_path) for c in config["litellm_settings"]["callbacks"]]
        llm = Router(model_list=config["model_list"], plugins=plugins, num_retries=0)
        plugins[0].bind(llm)
        group = config["model_list"][0]["model_name"]
        messages = {text: [{"role": "user", "content": text}] for text in (EASY, HARD)}
        decisions = {}
        for text, turn in messages.items():
            response = loop.run_until_complete(llm.acompletion(model=group, messages=turn, max_tokens=20))
            decisions[text] = response._hidden_params["thrifty"]
            assert decisions[text]["router_version"] == "thrifty/1"
            upstream = next(d["litellm_params"]["model"] for d in config["model_list"]
                            if d["model_info"]["thrifty_model"] == decisions[text]["model"])
            assert fake.calls[-1].model == upstream.split("/", 1)[1]
        # the choices the router makes on its own (the README explores 5% of traffic at random)
        expected = {t: router.route(t, router.prices_, allowed=ids) for t in messages}
        assert {t: d["model"] for t, d in decisions.items() if not d["explored"]} == {
            t: expected[t].model for t, d in decisions.items() if not d["explored"]}
        outcomes = callbacks[0]
        for decision in decisions.values():
            assert outcomes.feedback(decision["decision_id"], 1.0) or _labelled_later(loop, outcomes, decision)
        rows = read_logs([tmp_path / "litellm-outcomes.jsonl"])
        assert sorted(rows["decision_id"]) == sorted(d["decision_id"] for d in decisions.values())
        assert set(rows["cost_source"]) <= {"litellm", "priced"} and (rows["cost_usd"] > 0).all()


def _labelled_later(loop, outcomes, decision) -> bool:
    """The answer may still be on its way to the logger (LiteLLM logs in the background): wait, bounded."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        loop.run_until_complete(asyncio.sleep(0.05))
        if outcomes.feedback(decision["decision_id"], 1.0):
            return True
    return False
