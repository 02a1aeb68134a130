"""From a request's ``model`` name and constraints to a :class:`router.Decision`.

* a router profile (``thrifty``, or a tuned profile by name) is routed by the
  router that profile names, under its policy;
* a catalog model id is passed through unrouted: a one-candidate decision,
  still scored by the router when it knows the model, so it is logged alike;
* anything else is an unknown model (404).

Routers live in a :class:`RouterHolder`, whose ``swap`` replaces one
atomically: a request takes a snapshot once and decides with it, so a
champion hot-swapped mid-request never mixes two routers.

What a request asks for is checked before the router scores anything:

* models that cannot serve it are left out of the candidates — ``n > 1`` on
  an Anthropic model (one choice per request), a ``max_tokens`` /
  ``max_completion_tokens`` above a model's output limit (its catalog
  ``max_output_tokens``, else its context window); when none is left, or the
  model requested by id is one of them, a 400 names the parameter and the limit;
* a ``min_quality`` / ``max_cost`` limit that no allowed model meets is
  refused with a 400 naming the limit and the best available value, or — with
  ``on_unmet_limit: degrade`` (request or config) — answered by the closest
  model (the cheapest for a cost limit, the most likely for a quality limit;
  fail-over goes on in that order), the decision carrying ``limit_unmet``.

An error names only parameters the client sent (the header or body field it
came from).
"""

from __future__ import annotations

import logging
import math
import random
import threading
from dataclasses import dataclass, field, replace
from typing import Callable, Collection, Literal, Mapping, Sequence

from models.catalog import Catalog, ModelSpec
from models.store.records import CASCADE_POLICY
from models.tokens import count_tokens
from router.certificate import price_drift
from router.decision import Candidate, Decision
from router.explore import explore
from router.profiles import Profile
from router.registry import NO_ROUTER, LoadedRouter, load_router_uri, router_version  # noqa: F401  (serving imports them from here)
from router.router import Router, RoutingError, Scores
from serving.errors import InvalidRequest, LimitUnmet, NoRoutableModel, UnknownModel

log = logging.getLogger("thrifty.serving")

PASSTHROUGH = "passthrough"
CASCADE = CASCADE_POLICY  # the policy of a decision made by a cascade profile (``decision.extra["cascade"]`` holds it)
OnUnmetLimit = Literal["refuse", "degrade"]
DEGRADE_HINT = "x-thrifty-on-unmet-limit: degrade (or thrifty.on_unmet_limit)"


@dataclass(frozen=True)
class Constraints:
    """What a request allows and needs.

    Allows: a minimum predicted success, a maximum expected cost (USD), a
    model list, and what to do when no allowed model meets the two limits.
    Needs: an output limit (``max_tokens``) and a number of choices (``n``)
    the model must support. ``params`` names, per constraint, the header or
    body field it came from (errors name what the client sent).
    """

    min_quality: float | None = None
    max_cost: float | None = None
    allowed_models: tuple[str, ...] | None = None
    task: str | None = None
    on_unmet_limit: OnUnmetLimit | None = None  # None: the server's default
    max_output_tokens: int | None = None
    choices: int = 1
    params: Mapping[str, str] = field(default_factory=dict, compare=False)

    def param(self, name: str) -> str:
        return self.params.get(name, name)

    def narrowed(self, other: "Constraints") -> "Constraints":
        """Both sets of constraints at once: the stricter bound, the intersection of model lists."""
        params = dict(self.params)

        def pick(name, stricter):
            a, b = getattr(self, name), getattr(other, name)
            if b is None or (a is not None and stricter(a, b) == a):
                return a
            if name in other.params:
                params[name] = other.params[name]
            return b

        allowed = self.allowed_models
        if other.allowed_models is not None:
            allowed = other.allowed_models if allowed is None else tuple(m for m in allowed if m in other.allowed_models)
            if "allowed_models" in other.params:
                params["allowed_models"] = (f"{self.params['allowed_models']} and {other.params['allowed_models']}"
                                            if self.allowed_models is not None and "allowed_models" in self.params
                                            else other.params["allowed_models"])
        return Constraints(
            min_quality=pick("min_quality", max),
            max_cost=pick("max_cost", min),
            allowed_models=allowed,
            task=other.task or self.task,
            on_unmet_limit=other.on_unmet_limit or self.on_unmet_limit,
            max_output_tokens=other.max_output_tokens or self.max_output_tokens,
            choices=max(self.choices, other.choices),
            params=params,
        )


def output_limit(spec: ModelSpec) -> int:
    """The most output tokens ``spec`` can give in one answer: its ``max_output_tokens``, else its context window."""
    return spec.max_output_tokens or spec.context_window


def unservable(spec: ModelSpec, constraints: Constraints) -> tuple[str, str] | None:
    """``(constraint, why)`` when ``spec`` cannot serve a request with these needs; None when it can."""
    if constraints.choices > 1 and spec.wire_format == "anthropic":
        return "choices", f"{spec.id} answers one choice per request"
    needed = constraints.max_output_tokens
    if needed is not None and needed > output_limit(spec):
        return "max_output_tokens", f"{spec.id} gives at most {output_limit(spec)} output tokens"
    return None


def meets(candidate: Candidate, constraints: Constraints) -> bool:
    """Whether a candidate meets the request's limits (an unknown success probability is not judged)."""
    if constraints.max_cost is not None and not candidate.expected_cost <= constraints.max_cost:
        return False
    if constraints.min_quality is not None and math.isfinite(candidate.p_success):
        return candidate.p_success >= constraints.min_quality
    return True


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
        on_unmet_limit: OnUnmetLimit = "refuse",
    ):
        """``unreachable``: catalog models without a usable upstream (``serving.startup``), never chosen by routing."""
        self.holder = holder
        self.unreachable = frozenset(unreachable)
        self.on_unmet_limit = on_unmet_limit
        self.explore_epsilon = explore_epsilon
        self.rng = rng or random.Random()
        self.catalog = catalog
        self.prices = catalog.prices()
        self._price_checked: set[str] = set()
        self.profiles = dict(profiles)
        self._cascades = {name: c for name, c in ((n, p.make_cascade()) for n, p in self.profiles.items()) if c is not None}
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
                scores = loaded.router.score([requests[k][1] for k in ks], self.decision_prices(loaded))
            except Exception:  # noqa: BLE001 - each request is decided alone and gets its own error
                scores = None
            for row, k in enumerate(ks):
                model, text, constraints = requests[k]
                try:
                    results[k] = self._route(self.profiles[model], text, constraints, loaded, scores, row)
                except Exception as exc:  # noqa: BLE001
                    results[k] = exc
        return results  # type: ignore[return-value]

    def decision_prices(self, loaded: LoadedRouter):
        """The prices a router decides under: those its default was certified under, else the catalog's.

        A certified router keeps deciding exactly as it was certified to (its
        quality floor holds whatever the catalog says); a catalog that prices
        its models differently is reported once per router version, because the
        router's stated saving was computed under its own prices.
        """
        cert = getattr(loaded.router, "certificate_", None)
        if cert is None or not cert.prices:
            return self.prices
        if loaded.version not in self._price_checked:
            self._price_checked.add(loaded.version)
            drift = price_drift(cert.prices, self.prices.to_dict())
            if drift:
                shown = ", ".join(f"{m}: ${a[0]:g}/${a[1]:g} certified, ${b[0]:g}/${b[1]:g} in the catalog" for m, (a, b) in list(drift.items())[:5])
                log.warning(
                    "router %s decides under the prices it was certified under; the catalog prices %d of its models differently (%s, per 1M "
                    "input/output tokens): retrain with the catalog's prices (thrifty train --prices ...) to re-certify it under them",
                    loaded.version, len(drift), shown,
                )
        return loaded.router.prices_

    def certificate(self, name: str) -> dict | None:
        """What the profile ``name`` promises, for /v1/route and /v1/models: its router's certificate, when the profile serves the router's default."""
        if name not in self._router_policy:
            return None  # a catalog model, or a tuned profile with its own policy
        loaded = self._loaded(self.profiles[name])
        cert = getattr(loaded.router, "certificate_", None)
        if cert is None or not cert.best_model:
            return None
        drift = price_drift(cert.prices, self.prices.to_dict())
        summary = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in cert.summary().items()}
        return {**summary, "catalog_prices_differ": sorted(drift)}

    def _loaded(self, profile: Profile) -> LoadedRouter:
        return self.holder.get(profile.router_uri if profile.router_uri in self.holder.uris else None)

    def _route(self, profile: Profile, text: str, constraints: Constraints, loaded: LoadedRouter | None = None,
               scores: Scores | None = None, row: int = 0) -> Decision:
        """``scores``: the prompt's row ``row`` of a batch scored by ``loaded``'s router (else it is scored here)."""
        loaded = loaded or self._loaded(profile)
        if profile.name in self._cascades:
            return self._cascade(profile, text, constraints, loaded, scores, row)
        router = loaded.router
        allowed = self._allowed(router, profile, constraints)
        policy = None if profile.name in self._router_policy else profile.make_policy()
        bounds = {"min_quality": constraints.min_quality, "max_cost": constraints.max_cost, "version": loaded.version}
        try:
            if scores is None:
                decision = router.route(text, self.decision_prices(loaded), policy, allowed=allowed, **bounds)
            else:
                decision = router.decide(scores, row, policy, allowed=allowed, **bounds)
        except RoutingError as exc:
            raise NoRoutableModel(f"profile {profile.name!r} cannot route this request: {exc}", param="model") from None
        decision = self._limits(decision, constraints)
        if "limit_unmet" not in decision.extra:
            # Exploration spends a share of routed traffic on other acceptable models,
            # recording each choice's probability so the logs can train and evaluate routers.
            decision = explore(decision, self.explore_epsilon, self.rng)
        return replace(decision, extra={**decision.extra, "profile": profile.name})

    def _cascade(self, profile: Profile, text: str, constraints: Constraints, loaded: LoadedRouter,
                 scores: Scores | None, row: int) -> Decision:
        """A cascade profile's decision: every model the cascade may call as a candidate (the first one called first),
        with the router's predictions where it knows the model; ``extra`` carries the cascade and those predictions.

        The request's limits apply to the cascade as a whole: every model it may call must be allowed and able to
        serve the request, and its worst case (every stage it may reach) must fit ``max_cost``.
        """
        cascade = self._cascades[profile.name]
        missing = [m for m in cascade.models if m not in self.catalog]
        if missing:
            raise NoRoutableModel(f"profile {profile.name!r} is a cascade over model(s) the catalog lacks: {', '.join(missing)}",
                                  param="model")
        if constraints.allowed_models is not None:
            outside = [m for m in cascade.models if m not in constraints.allowed_models]
            if outside:
                param = constraints.param("allowed_models")
                raise InvalidRequest(f"profile {profile.name!r} is a cascade that may call {', '.join(outside)}, "
                                     f"which {param} leaves out", param=param)
        specs = [self.catalog.get(m) for m in cascade.models]
        unable = [s for s in specs if unservable(s, constraints) is not None]
        if unable:
            raise self._cannot_serve(unable, constraints)
        prices = self.decision_prices(loaded)
        known = [m for m in cascade.models if m in loaded.router.models_ and m in prices]
        p: dict[str, float] = {}
        out_tokens: dict[str, float] = {}
        if scores is None or not known:
            input_tokens = float(self.tokens(text))
            if known:
                scores, row = loaded.router.score([text], prices, known), 0
        else:
            input_tokens = float(scores.input_tokens[row])
        if known and scores is not None:
            for m in known:
                j = scores.models.index(m)
                p[m], out_tokens[m] = float(scores.p[row, j]), float(scores.output_tokens[row, j])
        candidates = tuple(
            Candidate(model=s.id, p_success=p.get(s.id, math.nan), expected_input_tokens=input_tokens,
                      expected_output_tokens=out_tokens.get(s.id, 0.0),
                      expected_cost=s.cost(input_tokens, out_tokens.get(s.id, 0.0)), acceptable=True)
            for s in specs
        )
        plan = cascade.plan(p)
        if constraints.max_cost is not None:
            worst = cascade.worst_case_cost({c.model: c.expected_cost for c in candidates}, p)
            if worst > constraints.max_cost:
                param = constraints.param("max_cost")
                raise LimitUnmet(f"profile {profile.name!r} is a cascade expected to cost up to ${worst:.6g} per request "
                                 f"(every stage it may reach), above ${constraints.max_cost:.6g} ({param})", param=param)
        return Decision(
            model=cascade.stages[plan[0]].models[0],
            candidates=candidates,
            policy=CASCADE,
            knob=math.nan,
            fallback=False,
            router_version=loaded.version,
            extra={"profile": profile.name, "cascade": cascade, "p": p},
        )

    def _allowed(self, router: Router, profile: Profile, constraints: Constraints) -> list[str] | None:
        known = [m for m in router.models_ if m in self.catalog and m not in self.unreachable]
        if not known:  # the server's configuration, not the request: say so, and not as a client error
            raise NoRoutableModel(
                f"profile {profile.name!r} cannot route: none of its router's models can be reached — the catalog has "
                f"no usable entry for any of {', '.join(router.models_[:5])}{', ...' if len(router.models_) > 5 else ''} "
                "(see the start-up log; `thrifty models init` writes the entries)",
                param="model",
            )
        allowed = known
        if profile.allowed is not None:
            allowed = [m for m in allowed if m in profile.allowed]
            if not allowed:
                raise NoRoutableModel(f"profile {profile.name!r} allows no model its router knows", param="model")
        if constraints.allowed_models is not None:
            param = constraints.param("allowed_models")
            unknown = [m for m in constraints.allowed_models if m not in self.catalog]
            if unknown:
                raise InvalidRequest(f"{param} names unknown model(s): {', '.join(unknown)}", param=param)
            routable = allowed
            allowed = [m for m in routable if m in constraints.allowed_models]
            if not allowed:
                raise InvalidRequest(
                    f"no model in {param} can be routed by profile {profile.name!r} (it routes among {', '.join(routable)})",
                    param=param,
                )
        able = [m for m in allowed if unservable(self.catalog.get(m), constraints) is None]
        if not able:
            raise self._cannot_serve([self.catalog.get(m) for m in allowed], constraints)
        return able if len(able) < len(router.models_) else None

    @staticmethod
    def _cannot_serve(specs: Sequence[ModelSpec], constraints: Constraints) -> InvalidRequest:
        """The 400 for a request no model of ``specs`` can serve, naming the parameter and the best limit."""
        reasons = {m.id: unservable(m, constraints) for m in specs}
        if any(r is not None and r[0] == "max_output_tokens" for r in reasons.values()):
            param = constraints.param("max_output_tokens")
            best = max(specs, key=output_limit)
            if output_limit(best) < (constraints.max_output_tokens or 0):
                what = "the allowed model" if len(specs) == 1 else f"every allowed model (the largest: {best.id}, {output_limit(best)})"
                return InvalidRequest(
                    f"{param} is {constraints.max_output_tokens}, above the output limit of {what}"
                    + (f" ({output_limit(best)})" if len(specs) == 1 else "")
                    + f"; ask for at most {output_limit(best)}",
                    param=param, code="max_tokens_exceeded",
                )
        param = constraints.param("choices")
        return InvalidRequest(
            f"{param} is {constraints.choices}, but no allowed model can serve it: "
            + "; ".join(r[1] for r in reasons.values() if r is not None),
            param=param,
        )

    def _limits(self, decision: Decision, constraints: Constraints) -> Decision:
        """The decision when some candidate meets the request's limits; else refused, or degraded to the closest."""
        if constraints.min_quality is None and constraints.max_cost is None:
            return decision
        candidates = decision.candidates
        if any(meets(c, constraints) for c in candidates):
            return decision
        within_cost = [c for c in candidates if constraints.max_cost is None or c.expected_cost <= constraints.max_cost]
        if not within_cost:
            unmet = "max_cost"
            order = sorted(candidates, key=lambda c: (c.expected_cost, -_p(c)))
        else:
            unmet = "min_quality"
            order = sorted(candidates, key=lambda c: (c not in within_cost, -_p(c), c.expected_cost))
        mode = constraints.on_unmet_limit or self.on_unmet_limit
        if mode != "degrade":
            raise self._limit_error(unmet, order[0], constraints, bool(within_cost) and constraints.max_cost is not None)
        return replace(decision, model=order[0].model, candidates=tuple(order), fallback=True,
                       extra={**decision.extra, "limit_unmet": unmet})

    @staticmethod
    def _limit_error(unmet: str, best: Candidate, constraints: Constraints, cost_met: bool) -> LimitUnmet:
        param = constraints.param(unmet)
        if unmet == "max_cost":
            message = (f"no allowed model is expected to cost at most ${constraints.max_cost:.6g} per request ({param}); "
                       f"the cheapest, {best.model}, is expected to cost ${best.expected_cost:.6g}")
        else:
            scope = (f"within the cost limit of ${constraints.max_cost:.6g} ({constraints.param('max_cost')}) "
                     if cost_met else "")
            message = (f"no allowed model {scope}is expected to succeed with probability at least "
                       f"{constraints.min_quality:g} ({param}); the most likely, {best.model}, is at {best.p_success:.4f}")
        return LimitUnmet(f"{message}. Relax the limit, or send {DEGRADE_HINT} to be answered by the closest model.",
                          param=param)

    def _passthrough(self, model: str, text: str, constraints: Constraints) -> Decision:
        if constraints.allowed_models is not None and model not in constraints.allowed_models:
            param = constraints.param("allowed_models")
            raise InvalidRequest(f"model {model!r} is not in {param}", param=param)
        spec = self.catalog.get(model)
        if unservable(spec, constraints) is not None:
            raise self._cannot_serve([spec], constraints)
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
            expected_cost=spec.cost(input_tokens, out_tokens),
            acceptable=True,
        )
        decision = Decision(
            model=model,
            candidates=(candidate,),
            policy=PASSTHROUGH,
            knob=math.nan,
            fallback=False,
            router_version=loaded.version,
            extra={"profile": PASSTHROUGH},
        )
        return self._limits(decision, constraints)


def _p(candidate: Candidate) -> float:
    return candidate.p_success if math.isfinite(candidate.p_success) else -1.0

