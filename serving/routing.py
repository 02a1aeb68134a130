"""From a request's ``model`` name and constraints to a :class:`router.Decision`.

* a router profile (``thrifty``, or a tuned profile by name) is routed by the
  router that profile names, under its policy;
* a catalog model id is passed through unrouted: a one-candidate decision,
  still scored by the router when it knows the model, so it is logged alike;
* anything else is an unknown model (404).

Routers live in a :class:`RouterHolder`, whose ``swap`` replaces one
atomically: a request takes a snapshot once and decides with it, so a
champion hot-swapped mid-request never mixes two routers.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Collection, Mapping, Sequence

from models.catalog import Catalog
from models.tokens import count_tokens
from router.decision import Candidate, Decision
from router.explore import explore
from router.profiles import Profile
from router.router import Router, RoutingError, Scores
from serving.errors import InvalidRequest, UnknownModel, UpstreamOverloaded

log = logging.getLogger("thrifty.serving")

PASSTHROUGH = "passthrough"


@dataclass(frozen=True)
class Constraints:
    """What a request allows: a minimum predicted success, a maximum expected cost (USD), a model list."""

    min_quality: float | None = None
    max_cost: float | None = None
    allowed_models: tuple[str, ...] | None = None
    task: str | None = None

    def narrowed(self, other: "Constraints") -> "Constraints":
        """Both sets of constraints at once: the stricter bound, the intersection of model lists."""

        def pick(a, b, stricter):
            return b if a is None else a if b is None else stricter(a, b)

        allowed = self.allowed_models
        if other.allowed_models is not None:
            allowed = other.allowed_models if allowed is None else tuple(m for m in allowed if m in other.allowed_models)
        return Constraints(
            min_quality=pick(self.min_quality, other.min_quality, max),
            max_cost=pick(self.max_cost, other.max_cost, min),
            allowed_models=allowed,
            task=other.task or self.task,
        )


@dataclass(frozen=True)
class LoadedRouter:
    router: Router | None  # None: no router is loaded (``passthrough_only``)
    uri: str
    version: str


# What a server with ``passthrough_only: true`` holds instead of a router.
NO_ROUTER = LoadedRouter(None, "", "none (passthrough_only)")


def router_version(uri: str) -> str:
    """A stable name for the router behind ``uri``: registry name/version, or file name and content hash."""
    if uri.startswith("models:/"):
        try:
            from mlflow import MlflowClient

            name, _, ref = uri[len("models:/"):].partition("@")
            if ref:
                return f"{name}/{MlflowClient().get_model_version_by_alias(name, ref).version}"
        except Exception:  # the version is informative only
            pass
        return uri
    path = Path(uri)
    if path.is_file():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        return f"{path.name}@{digest}"
    return uri


def load_router_uri(uri: str) -> LoadedRouter:
    """Load a router from a registry URI or a ``.joblib`` file.

    Registry URIs resolve against thrifty's MLflow store (the embedded SQLite
    store under ``THRIFTY_HOME``, or ``MLFLOW_TRACKING_URI``), as training writes it.
    """
    from router.persist import load_router

    return LoadedRouter(load_router(uri), uri, router_version(uri))


class RouterHolder:
    """The routers in force by URI; ``swap`` replaces one atomically."""

    def __init__(self, routers: Mapping[str, LoadedRouter], default_uri: str):
        if default_uri not in routers:
            raise ValueError(f"default router {default_uri!r} is not loaded")
        self._routers = dict(routers)
        self.default_uri = default_uri
        self._lock = threading.Lock()

    def get(self, uri: str | None = None) -> LoadedRouter:
        routers = self._routers  # one read of the reference: a consistent snapshot
        return routers[uri or self.default_uri]

    def swap(self, loaded: LoadedRouter) -> None:
        with self._lock:
            self._routers = {**self._routers, loaded.uri: loaded}

    @property
    def uris(self) -> list[str]:
        """The URIs of the loaded routers (none in passthrough-only mode)."""
        return [uri for uri, loaded in self._routers.items() if loaded.router is not None]


class Routing:
    """Decides a request: profile -> routed decision, catalog id -> passthrough."""

    def __init__(
        self,
        holder: RouterHolder,
        catalog: Catalog,
        profiles: Mapping[str, Profile],
        *,
        default_profile: str = "thrifty",
        tokens: Callable[[str], int] = count_tokens,
        explore_epsilon: float = 0.0,
        rng: random.Random | None = None,
        unreachable: Collection[str] = (),
    ):
        """``unreachable``: catalog models without a usable upstream (``serving.startup``), never chosen by routing."""
        self.holder = holder
        self.unreachable = frozenset(unreachable)
        self.explore_epsilon = explore_epsilon
        self.rng = rng or random.Random()
        self.catalog = catalog
        self.prices = catalog.prices()
        self.profiles = dict(profiles)
        self.default_profile = default_profile
        self.tokens = tokens
        # Without a profile file of its name, the default profile decides with the router's own policy.
        self._router_policy = set()
        if holder.get().router is None:  # passthrough only: nothing is routed
            self.profiles = {}
        elif default_profile not in self.profiles:
            self.profiles[default_profile] = Profile(name=default_profile)
            self._router_policy.add(default_profile)
        for name in self.profiles:
            if name in catalog:
                log.warning("profile %r shadows the catalog model of the same id; the profile wins", name)

    def is_profile(self, name: str) -> bool:
        return name in self.profiles

    def decide(self, model: str, text: str, constraints: Constraints = Constraints()) -> Decision:
        if model in self.profiles:
            return self._route(self.profiles[model], text, constraints)
        if model in self.catalog:
            return self._passthrough(model, text, constraints)
        if not self.profiles and model == self.default_profile:
            raise UnknownModel(
                f"The model '{model}' is not served: routing is off (passthrough_only: true); "
                "request a catalog model id (GET /v1/models)",
                param="model",
            )
        raise UnknownModel(
            f"The model '{model}' does not exist: use a router profile ({', '.join(sorted(self.profiles))}) "
            "or a catalog model id (GET /v1/models)",
            param="model",
        )

    def decide_many(self, requests: Sequence[tuple[str, str, Constraints]]) -> list[Decision | Exception]:
        """``decide`` for requests that arrived together, each result or error in its place.

        The prompts routed by the same router are scored in one call: per prompt,
        a batch costs a fraction of single decisions (the predictors' per-call
        overhead is paid once, and the featurizer, tokenizer and trees stay in the
        CPU caches from one prompt to the next). One router snapshot serves the
        whole batch. Each decision is then made exactly as ``decide`` makes it.
        """
        results: list[Decision | Exception | None] = [None] * len(requests)
        batches: dict[str, tuple[LoadedRouter, list[int]]] = {}
        for k, (model, text, constraints) in enumerate(requests):
            if model in self.profiles:
                loaded = self._loaded(self.profiles[model])
                batches.setdefault(loaded.uri, (loaded, []))[1].append(k)
                continue
            try:
                results[k] = self.decide(model, text, constraints)
            except Exception as exc:  # noqa: BLE001 - returned to its own request, raised there
                results[k] = exc
        for loaded, ks in batches.values():
            try:
                scores = loaded.router.score([requests[k][1] for k in ks], self.prices)
            except Exception:  # noqa: BLE001 - each request is decided alone and gets its own error
                scores = None
            for row, k in enumerate(ks):
                model, text, constraints = requests[k]
                try:
                    results[k] = self._route(self.profiles[model], text, constraints, loaded, scores, row)
                except Exception as exc:  # noqa: BLE001
                    results[k] = exc
        return results  # type: ignore[return-value]

    def _loaded(self, profile: Profile) -> LoadedRouter:
        return self.holder.get(profile.router_uri if profile.router_uri in self.holder.uris else None)

    def _route(self, profile: Profile, text: str, constraints: Constraints, loaded: LoadedRouter | None = None,
               scores: Scores | None = None, row: int = 0) -> Decision:
        """``scores``: the prompt's row ``row`` of a batch scored by ``loaded``'s router (else it is scored here)."""
        loaded = loaded or self._loaded(profile)
        router = loaded.router
        allowed = self._allowed(router, profile, constraints)
        policy = None if profile.name in self._router_policy else profile.make_policy()
        bounds = {"min_quality": constraints.min_quality, "max_cost": constraints.max_cost, "version": loaded.version}
        try:
            if scores is None:
                decision = router.route(text, self.prices, policy, allowed=allowed, **bounds)
            else:
                decision = router.decide(scores, row, policy, allowed=allowed, **bounds)
        except RoutingError as exc:
            raise InvalidRequest(str(exc), param="allowed_models") from None
        # Exploration spends a share of routed traffic on other acceptable models,
        # recording each choice's probability so the logs can train and evaluate routers.
        decision = explore(decision, self.explore_epsilon, self.rng)
        return replace(decision, extra={"profile": profile.name})

    def _allowed(self, router: Router, profile: Profile, constraints: Constraints) -> list[str] | None:
        known = [m for m in router.models_ if m in self.catalog and m not in self.unreachable]
        if not known:  # the server's configuration, not the request: say so, and not as a client error
            raise UpstreamOverloaded(
                f"none of the router's models can be reached: the catalog has no usable entry for any of "
                f"{', '.join(router.models_)} (see the start-up log; `thrifty models init` writes the entries)",
                code="no_routable_model",
            )
        allowed = known
        for narrowing, where in ((profile.allowed, f"profile {profile.name!r}"), (constraints.allowed_models, "allowed_models")):
            if narrowing is None:
                continue
            unknown = [m for m in narrowing if m not in self.catalog]
            if unknown and where == "allowed_models":
                raise InvalidRequest(f"allowed_models names unknown model(s): {', '.join(unknown)}", param="allowed_models")
            allowed = [m for m in allowed if m in narrowing]
        if not allowed:
            raise InvalidRequest(
                f"no allowed model is known to the router (it routes among {', '.join(known)})", param="allowed_models"
            )
        return allowed if len(allowed) < len(router.models_) else None

    def _passthrough(self, model: str, text: str, constraints: Constraints) -> Decision:
        if constraints.allowed_models is not None and model not in constraints.allowed_models:
            raise InvalidRequest(f"model {model!r} is not in allowed_models", param="allowed_models")
        loaded = self.holder.get()
        input_tokens = float(self.tokens(text))
        p, out_tokens = math.nan, 0.0
        if loaded.router is not None and model in loaded.router.models_:
            # Score the model anyway, so passthrough traffic is logged like routed traffic.
            scores = loaded.router.score([text], self.prices, [model])
            p, out_tokens = float(scores.p[0, 0]), float(scores.output_tokens[0, 0])
        candidate = Candidate(
            model=model,
            p_success=p,
            expected_input_tokens=input_tokens,
            expected_output_tokens=out_tokens,
            expected_cost=self.catalog.get(model).cost(input_tokens, out_tokens),
            acceptable=True,
        )
        return Decision(
            model=model,
            candidates=(candidate,),
            policy=PASSTHROUGH,
            knob=math.nan,
            fallback=False,
            router_version=loaded.version,
            extra={"profile": PASSTHROUGH},
        )
