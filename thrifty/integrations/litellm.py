"""thrifty's decision inside LiteLLM: a routing plug-in and an outcome callback.

``pip install 'thrifty[litellm]'``. Two objects, both plain LiteLLM
extension points, so a LiteLLM Router or proxy keeps its own deployments,
keys, retries, budgets and logging:

* :class:`ThriftyRoutingPlugin` — a routing plugin (``Router(plugins=[...])``,
  proxy ``router_settings.plugins``). For each request it scores the prompt
  with a registered thrifty router over the deployments LiteLLM would
  consider, explores with a recorded propensity, and narrows LiteLLM's
  candidates to the deployments of the chosen model. The decision (chosen
  model, p_success, expected cost, propensity, router version, every
  candidate's scores) is published as the routing signal ``thrifty``, which
  LiteLLM keeps in the request's metadata (``routing_plugin_signals``). The
  champion is hot-swapped: the registry alias is polled in the background
  and a promotion takes effect without a restart.
* :class:`ThriftyOutcomeLogger` — a ``CustomLogger`` callback
  (``litellm.callbacks``, proxy ``litellm_settings.callbacks``). It copies the
  decision to the response (``response._hidden_params["thrifty"]``, and
  ``x-thrifty-*`` response headers on the proxy) and appends one row per
  answered request to a JSON Lines file in thrifty's canonical outcome format
  (``models.outcomes``, with ``propensity``, ``decision_id`` and
  ``router_version``), which ``thrifty retrain --logs FILE`` reads. A row needs
  a success label: from ``judge(kwargs, response)`` when the answer is
  known to be right or wrong at once, or later from
  :meth:`ThriftyOutcomeLogger.feedback`; until then it waits unlabeled.

Deployments are mapped to the thrifty model ids the router knows, first
match wins: the ``models`` option (``{litellm model: thrifty id}``); the
deployment's ``model_info.thrifty_model``; its ``litellm_params.model``
itself; that name without its provider prefix (``openai/gpt-4o-mini`` →
``gpt-4o-mini``). Deployments that map to no model the router knows are
left out of thrifty's choice; when none maps, the request is left to
LiteLLM's own strategy (signal ``{"skipped": reason}``).

The prompt never goes into LiteLLM's metadata (which LiteLLM's own loggers
store): the callback flattens the request's messages again with the same
:func:`router.prompt.routing_text` the plug-in routed on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
import threading
import time
import uuid
from collections import OrderedDict
from datetime import datetime
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from litellm.integrations.custom_logger import CustomLogger

from models.outcomes import OUTCOME_COLUMNS
from models.prices import PriceTable
from router.decision import Decision
from router.explore import explore
from router.policy import make_policy
from router.profiles import Profile, load_profiles
from router.prompt import routing_text
from router.registry import ChampionWatch, LoadedRouter
from router.router import RoutingError

log = logging.getLogger("thrifty.litellm")

SIGNAL = "thrifty"  # the routing-signal key, and the response's hidden-params key
MODEL_INFO_KEY = "thrifty_model"  # deployment model_info key naming the thrifty model id
DEFAULT_ROUTER_URI = "models:/thrifty@champion"
DATASET = "litellm"
# Published by an attacker (a credential stealer); see bench/setup_peers.sh.
COMPROMISED_LITELLM = frozenset({"1.82.7", "1.82.8", "1.107.0"})
LOGGED_OPTIONAL = ("propensity", "decision_id", "router_version", "feedback_source")
ROW_COLUMNS = (*OUTCOME_COLUMNS, *LOGGED_OPTIONAL)

Judge = Callable[[dict, Any], "float | bool | None"]


class LiteLLMPluginError(ValueError):
    """The plug-in is misconfigured, or a request's ``metadata.thrifty`` is invalid; the message says which."""


def check_litellm_release() -> str:
    """The installed LiteLLM version; refuses the releases known to be compromised."""
    version = _metadata.version("litellm")
    if version in COMPROMISED_LITELLM:
        raise RuntimeError(
            f"litellm {version} is a known-compromised release (published by an attacker); "
            "uninstall it, check the environment for litellm_init.pth, and install 'thrifty[litellm]'"
        )
    return version


# --------------------------------------------------------------------------- routing plug-in


class ThriftyRoutingPlugin:
    """A LiteLLM routing plugin that narrows each request's deployments to thrifty's choice.

    Parameters
    ----------
    router_uri: the router to use (``models:/NAME@ALIAS`` is polled for promotions).
    profile: a routing profile saved by ``thrifty tune`` (policy, knob, allowed models);
        or ``policy`` and ``knob`` together; default: the router's own policy.
    models: ``{litellm_params.model: thrifty model id}``, for deployments whose names differ.
    prices: prices (USD per 1M tokens) overriding the router's training-time prices.
    min_quality, max_cost: defaults for every request (a request's ``metadata.thrifty`` may set its own).
    explore_epsilon: share of traffic spent on other acceptable models, with recorded propensities.
    seed: seed of the exploration RNG.
    reload_interval_s: how often the registry alias is checked (0: never).
    llm_router: the LiteLLM Router whose deployments' ``model_info`` to read
        (or call :meth:`bind`); on the proxy it is found by itself.
    """

    def __init__(
        self,
        router_uri: str = DEFAULT_ROUTER_URI,
        *,
        profile: str | None = None,
        policy: str | None = None,
        knob: float | None = None,
        models: Mapping[str, str] | None = None,
        prices: PriceTable | None = None,
        min_quality: float | None = None,
        max_cost: float | None = None,
        explore_epsilon: float = 0.0,
        seed: int | None = None,
        reload_interval_s: float = 30.0,
        llm_router: Any = None,
    ):
        check_litellm_release()
        if profile and (policy or knob is not None):
            raise LiteLLMPluginError("give either profile or policy/knob, not both")
        if (policy is None) != (knob is None):
            raise LiteLLMPluginError("give policy and knob together (or neither, for the router's own policy)")
        if policy is not None:
            make_policy(policy, knob)  # an unknown name fails here, not per request
        if not 0 <= explore_epsilon <= 1:
            raise LiteLLMPluginError(f"explore_epsilon must be in [0, 1], got {explore_epsilon}")
        if reload_interval_s < 0:
            raise LiteLLMPluginError(f"reload_interval_s must be >= 0, got {reload_interval_s}")
        self.router_uri = router_uri
        self.profile = profile
        self.policy = policy
        self.knob = knob
        self.models = dict(models or {})
        self.prices = prices
        self.min_quality = _bound(min_quality, "min_quality", high=1.0)
        self.max_cost = _bound(max_cost, "max_cost")
        self.explore_epsilon = float(explore_epsilon)
        self.reload_interval_s = float(reload_interval_s)
        self.llm_router = llm_router
        self._rng = random.Random(seed)
        self._watch = ChampionWatch(router_uri)
        self._profile: Profile | None = None
        self._prices_for: tuple[str, PriceTable] | None = None
        self._last_check = time.monotonic()
        self._check_task: asyncio.Task | None = None
        self._warned: set[tuple[str, str]] = set()

    def bind(self, llm_router) -> "ThriftyRoutingPlugin":
        """Read deployments' ``model_info.thrifty_model`` from this LiteLLM Router."""
        self.llm_router = llm_router
        return self

    # -- the router in force -------------------------------------------------
    def load(self) -> LoadedRouter:
        """The router in force, loading it on first use (blocking: call before serving to warm up)."""
        return self._watch.loaded

    async def check_for_new_champion(self) -> bool:
        """Swap in the alias's new version if it moved; True when a new router is in force."""
        self._last_check = time.monotonic()
        before = self._watch.current.version if self._watch.current is not None else None
        swapped = await asyncio.to_thread(self._watch.check)
        if swapped is not None:
            log.info("thrifty router %s hot-swapped: %s -> %s", self.router_uri, before, swapped.version)
        return swapped is not None

    def _maybe_check(self) -> None:
        if self.reload_interval_s <= 0 or time.monotonic() - self._last_check < self.reload_interval_s:
            return
        if self._check_task is not None and not self._check_task.done():
            return
        self._last_check = time.monotonic()
        self._check_task = asyncio.get_running_loop().create_task(self._background_check())

    async def _background_check(self) -> None:
        try:
            await self.check_for_new_champion()
        except Exception as exc:  # a registry hiccup must not stop routing with the router in hand
            log.warning("thrifty router reload check failed: %s", exc)

    # -- the plugin ----------------------------------------------------------
    async def run(self, context):
        """LiteLLM's plugin hook: narrow ``context.candidate_models`` and publish the decision."""
        loaded = self._watch.current or await asyncio.to_thread(self.load)
        self._maybe_check()
        options = _request_options(context.metadata)
        thrifty_ids = self._thrifty_ids(context.candidate_models, loaded)
        policy, allowed = self._policy()
        if allowed is not None:
            thrifty_ids = {m: t for m, t in thrifty_ids.items() if t in allowed}
        if not thrifty_ids:
            context.signals[SIGNAL] = {"skipped": "no candidate deployment maps to a model the thrifty router knows"}
            return context
        candidates = list(dict.fromkeys(thrifty_ids.values()))
        prices = self._prices(loaded)
        text = routing_text({"messages": context.structured_messages})
        try:
            decision = loaded.router.route(
                text,
                prices,
                policy,
                allowed=candidates,
                min_quality=options.get("min_quality", self.min_quality),
                max_cost=options.get("max_cost", self.max_cost),
                version=loaded.version,
            )
        except RoutingError as exc:
            context.signals[SIGNAL] = {"skipped": str(exc)}
            return context
        decision = explore(decision, self.explore_epsilon, self._rng)
        context.candidate_models = [m for m in context.candidate_models if thrifty_ids.get(m) == decision.model]
        context.signals[SIGNAL] = _signal(decision, thrifty_ids, prices, options.get("task"))
        return context

    # -- helpers -------------------------------------------------------------
    def _policy(self):
        """(policy, allowed thrifty ids or None): the profile's, the configured one, or the router's (None)."""
        if self.profile:
            if self._profile is None:
                from models.settings import get_settings

                directory = get_settings().profiles_dir
                profiles = load_profiles(directory)
                if self.profile not in profiles:
                    raise LiteLLMPluginError(f"no routing profile {self.profile!r} in {directory}")
                self._profile = profiles[self.profile]
            return self._profile.make_policy(), set(self._profile.allowed) if self._profile.allowed else None
        if self.policy is not None:
            return make_policy(self.policy, self.knob), None
        return None, None

    def _prices(self, loaded: LoadedRouter) -> PriceTable:
        cached = self._prices_for
        if cached is not None and cached[0] == loaded.version:
            return cached[1]
        table = loaded.router.prices_ if self.prices is None else loaded.router.prices_.merged(self.prices)
        self._prices_for = (loaded.version, table)
        return table

    def _thrifty_ids(self, litellm_models: Sequence[str], loaded: LoadedRouter) -> dict[str, str]:
        """``{litellm model: thrifty id}`` for the candidates that map to a model the router knows."""
        known = set(loaded.router.models_)
        info = self._model_info_ids() if any(m not in self.models for m in litellm_models) else {}
        mapped = {}
        for name in litellm_models:
            named = self.models.get(name) or info.get(name)
            if named is not None:  # an explicit mapping is taken as given, never guessed past
                if named in known:
                    mapped[name] = named
                elif (name, loaded.version) not in self._warned:
                    self._warned.add((name, loaded.version))
                    log.warning("deployment %s is mapped to %r, which router %s does not know", name, named, loaded.version)
                continue
            for guess in (name, name.split("/", 1)[-1]):
                if guess in known:
                    mapped[name] = guess
                    break
        return mapped

    def _model_info_ids(self) -> dict[str, str]:
        ids: dict[str, str] = {}
        for deployment in _deployments(self.llm_router or _proxy_router()):
            model = (deployment.get("litellm_params") or {}).get("model")
            thrifty_id = (deployment.get("model_info") or {}).get(MODEL_INFO_KEY)
            if isinstance(model, str) and isinstance(thrifty_id, str):
                ids.setdefault(model, thrifty_id)
        return ids


def _proxy_router():
    """The LiteLLM proxy's Router, when running inside the proxy (never imports the proxy)."""
    import sys

    proxy = sys.modules.get("litellm.proxy.proxy_server")
    return getattr(proxy, "llm_router", None) if proxy is not None else None


def _deployments(llm_router) -> list[Mapping]:
    if llm_router is None:
        return []
    registry = getattr(llm_router, "registry", None)
    if callable(registry):  # litellm >= 1.110
        return list(registry().all())
    return list(getattr(llm_router, "model_list", None) or [])


def _bound(value, name: str, *, high: float | None = None, where: str = "") -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise LiteLLMPluginError(f"{where}{name} is not a number: {value!r}") from None
    if not math.isfinite(number) or number < 0 or (high is not None and number > high):
        limit = f"in [0, {high:g}]" if high is not None else "a finite number >= 0"
        raise LiteLLMPluginError(f"{where}{name} must be {limit}, got {value!r}")
    return number


def _request_options(request_metadata: Mapping | None) -> dict:
    """A request's own ``metadata.thrifty``: ``min_quality``, ``max_cost`` (USD), ``task``."""
    options = (request_metadata or {}).get(SIGNAL)
    if options is None:
        return {}
    where = "metadata.thrifty."
    if not isinstance(options, Mapping):
        raise LiteLLMPluginError(f"metadata.thrifty must be an object, got {type(options).__name__}")
    unknown = sorted(set(options) - {"min_quality", "max_cost", "task"})
    if unknown:
        raise LiteLLMPluginError(f"metadata.thrifty: unknown field(s) {unknown}; expected min_quality, max_cost, task")
    parsed: dict = {}
    if options.get("min_quality") is not None:
        parsed["min_quality"] = _bound(options["min_quality"], "min_quality", high=1.0, where=where)
    if options.get("max_cost") is not None:
        parsed["max_cost"] = _bound(options["max_cost"], "max_cost", where=where)
    if options.get("task") is not None:
        parsed["task"] = str(options["task"])
    return parsed


def _signal(decision: Decision, thrifty_ids: Mapping[str, str], prices: PriceTable, task: str | None) -> dict:
    chosen = decision.chosen
    return {
        "decision_id": uuid.uuid4().hex,
        "model": decision.model,
        "p_success": chosen.p_success,
        "expected_cost": chosen.expected_cost,
        "propensity": decision.propensity,
        "explored": decision.explored,
        "fallback": decision.fallback,
        "policy": decision.policy,
        "knob": decision.knob,
        "router_version": decision.router_version,
        "task": task,
        "candidates": [
            {
                "model": c.model,
                "p_success": c.p_success,
                "expected_cost": c.expected_cost,
                "acceptable": c.acceptable,
                "usd_per_mtok": [prices[c.model].input_usd_per_mtok, prices[c.model].output_usd_per_mtok],
            }
            for c in decision.candidates
        ],
        # which deployment is which thrifty model: the callback names the model that answered
        "deployments": dict(thrifty_ids),
    }


# --------------------------------------------------------------------------- outcome callback


def decision_headers(signal: Mapping) -> dict[str, str]:
    """``x-thrifty-*`` headers of a decision (the names thrifty's own server uses)."""
    headers = {
        "x-thrifty-decision-id": str(signal["decision_id"]),
        "x-thrifty-model": str(signal["model"]),
        "x-thrifty-expected-cost": f"{signal['expected_cost']:.8f}",
        "x-thrifty-policy": str(signal["policy"]),
        "x-thrifty-propensity": f"{signal['propensity']:.6f}",
    }
    if math.isfinite(signal["p_success"]):
        headers["x-thrifty-p-success"] = f"{signal['p_success']:.4f}"
    if signal.get("router_version"):
        headers["x-thrifty-router-version"] = str(signal["router_version"])
    return headers


def _metadata_dicts(data: Mapping | None):
    """The request metadata dicts LiteLLM may have stamped the signals on."""
    if not data:
        return
    for holder in (data, data.get("litellm_params") or {}):
        for key in ("metadata", "litellm_metadata"):
            value = holder.get(key)
            if isinstance(value, Mapping):
                yield value


def decision_signal(data: Mapping | None) -> dict | None:
    """The thrifty decision recorded on a request (its kwargs or proxy request data), if any."""
    for meta in _metadata_dicts(data):
        signals = meta.get("routing_plugin_signals")
        if isinstance(signals, Mapping) and isinstance(signals.get(SIGNAL), Mapping) and "decision_id" in signals[SIGNAL]:
            return dict(signals[SIGNAL])
    return None


def _answered_deployment(kwargs: Mapping) -> str | None:
    for meta in _metadata_dicts(kwargs):
        if isinstance(meta.get("deployment"), str):
            return meta["deployment"]
    slo = kwargs.get("standard_logging_object") or {}
    return slo.get("model") if isinstance(slo, Mapping) else None


class ThriftyOutcomeLogger(CustomLogger):
    """A LiteLLM callback: publishes thrifty's decision on responses and logs outcome rows.

    Parameters
    ----------
    path: the JSON Lines outcome log (appended; read by ``thrifty retrain --logs``).
    judge: ``judge(kwargs, response) -> success in [0, 1] | bool | None``; None leaves
        the row unlabeled until :meth:`feedback`.
    unlabeled_path: also append unlabeled rows here, so :meth:`feedback` finds them
        after a restart or in another worker.
    dataset: the ``dataset`` column of the rows.
    store_responses: keep the answer text in the ``response`` column.
    max_pending: unlabeled rows kept in memory for :meth:`feedback` (oldest dropped first).
    """

    def __init__(
        self,
        path: str | Path = "thrifty-litellm-outcomes.jsonl",
        *,
        judge: Judge | None = None,
        unlabeled_path: str | Path | None = None,
        dataset: str = DATASET,
        store_responses: bool = False,
        max_pending: int = 10_000,
    ):
        super().__init__()
        check_litellm_release()
        self.path = Path(path)
        self.judge = judge
        self.unlabeled_path = Path(unlabeled_path) if unlabeled_path else None
        self.dataset = dataset
        self.store_responses = store_responses
        self.max_pending = max_pending
        self._pending: OrderedDict[str, dict] = OrderedDict()
        self._lock = threading.Lock()

    # -- publishing the decision ----------------------------------------------
    async def async_post_call_success_deployment_hook(self, request_data, response, call_type):
        signal = decision_signal(request_data)
        hidden = getattr(response, "_hidden_params", None)
        if signal is not None and isinstance(hidden, dict):
            hidden[SIGNAL] = {k: v for k, v in signal.items() if k != "deployments"}
        return None  # the response is changed in place

    async def async_post_call_response_headers_hook(
        self, data, user_api_key_dict=None, response=None, request_headers=None, litellm_call_info=None
    ):
        signal = decision_signal(data)
        return decision_headers(signal) if signal is not None else None

    # -- outcome rows ----------------------------------------------------------
    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
        self._record(kwargs, response_obj, start_time, end_time)

    def log_success_event(self, kwargs, response_obj, start_time, end_time):
        self._record(kwargs, response_obj, start_time, end_time)

    def _record(self, kwargs, response_obj, start_time, end_time) -> None:
        try:
            row = self._row(kwargs, response_obj, start_time, end_time)
            if row is None:
                return
            success = self._judged(kwargs, response_obj)
            if success is None:
                self._hold(row)
            else:
                self._write(self.path, {**row, "success": success, "feedback_source": "judge"})
        except Exception:  # a logging failure must never fail the request
            log.exception("thrifty: could not record the outcome of a LiteLLM call")

    def _judged(self, kwargs, response_obj) -> float | None:
        if self.judge is None:
            return None
        value = self.judge(kwargs, response_obj)
        if value is None:
            return None
        number = float(value)
        if not 0.0 <= number <= 1.0:
            raise ValueError(f"judge returned {value!r}; success must be in [0, 1]")
        return number

    def _row(self, kwargs, response_obj, start_time, end_time) -> dict | None:
        signal = decision_signal(kwargs)
        if signal is None:
            return None
        deployment = _answered_deployment(kwargs)
        model = (signal.get("deployments") or {}).get(deployment)
        if model is None:  # answered by a deployment outside thrifty's choice (a fallback group)
            return None
        slo = kwargs.get("standard_logging_object") or {}
        input_tokens = int(slo.get("prompt_tokens") or 0)
        output_tokens = int(slo.get("completion_tokens") or 0)
        cost, source = kwargs.get("response_cost"), "litellm"
        if not cost:  # LiteLLM has no price for this deployment: use the one thrifty decided with
            price = next((c["usd_per_mtok"] for c in signal.get("candidates", ()) if c["model"] == model), None)
            cost = (input_tokens * price[0] + output_tokens * price[1]) / 1e6 if price else None
            source = "priced"
        return {
            "dataset": self.dataset,
            "task": signal.get("task") or self.dataset,
            "prompt_id": signal["decision_id"],
            "prompt": routing_text({"messages": kwargs.get("messages") or [], "system": kwargs.get("system")}),
            "model": model,
            "success": None,
            "score_raw": None,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cost_usd": cost,
            "cost_source": source if cost is not None else None,
            "answer": None,
            "response": _response_text(response_obj) if self.store_responses else None,
            "latency_s": _seconds(start_time, end_time),
            "propensity": float(signal["propensity"]),
            "decision_id": signal["decision_id"],
            "router_version": signal.get("router_version"),
            "feedback_source": None,
        }

    def _hold(self, row: dict) -> None:
        with self._lock:
            self._pending[row["decision_id"]] = row
            while len(self._pending) > self.max_pending:
                self._pending.popitem(last=False)
        if self.unlabeled_path is not None:
            self._write(self.unlabeled_path, row)

    def feedback(self, decision_id: str, success: float | bool, *, score_raw: float | None = None,
                 source: str = "user") -> bool:
        """Label an unlabeled answer and append it to the outcome log; False if the decision is unknown."""
        value = float(success)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"success must be in [0, 1], got {success!r}")
        with self._lock:
            row = self._pending.pop(decision_id, None)
        if row is None:
            row = self._find_unlabeled(decision_id)
        if row is None:
            return False
        self._write(self.path, {**row, "success": value, "score_raw": score_raw, "feedback_source": source})
        return True

    def _find_unlabeled(self, decision_id: str) -> dict | None:
        if self.unlabeled_path is None or not self.unlabeled_path.is_file():
            return None
        found = None
        with self.unlabeled_path.open() as handle:
            for line in handle:
                if decision_id in line:
                    row = json.loads(line)
                    if row.get("decision_id") == decision_id:
                        found = row
        return found

    def _write(self, path: Path, row: Mapping) -> None:
        """Append one row as one ``write`` on an O_APPEND descriptor: lines from
        concurrent workers never interleave, and a crash loses at most the line being written."""
        line = json.dumps({c: row.get(c) for c in ROW_COLUMNS}, allow_nan=False) + "\n"
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)


def _seconds(start, end) -> float | None:
    if isinstance(start, datetime) and isinstance(end, datetime):
        return max((end - start).total_seconds(), 0.0)
    if isinstance(start, (int, float)) and isinstance(end, (int, float)):
        return max(float(end - start), 0.0)
    return None


def _response_text(response) -> str | None:
    try:
        return response.choices[0].message.content
    except (AttributeError, IndexError, TypeError):
        return None

