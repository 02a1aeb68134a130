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

import logging
import math
import random
import threading
from dataclasses import dataclass, replace
from typing import Callable, Mapping, Sequence

from models.catalog import Catalog
from models.tokens import count_tokens
from router.decision import Candidate, Decision
from router.explore import explore
from router.profiles import Profile
from router.registry import LoadedRouter, load_router_uri, router_version  # noqa: F401  (serving imports them from here)
from router.router import Router, RoutingError, Scores
from serving.errors import InvalidRequest, UnknownModel

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
        return list(self._routers)


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
    ):
        self.holder = holder
        self.explore_epsilon = explore_epsilon
        self.rng = rng or random.Random()
        self.catalog = catalog
        self.prices = catalog.prices()
        self.profiles = dict(profiles)
        self.default_profile = default_profile
        self.tokens = tokens
        # Without a profile file of its name, the default profile decides with the router's own policy.
        self._router_policy = set()
        if default_profile not in self.profiles:
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
        known = [m for m in router.models_ if m in self.catalog]
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
        if model in loaded.router.models_:
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
