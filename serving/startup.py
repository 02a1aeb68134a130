"""Start-up checks: can this server route?

A model the router may choose needs a catalog entry and a usable upstream: a
key where the provider needs one, and a base URL for an OpenAI-compatible
server. At start-up every catalog model is checked once (no request is sent);
models that cannot be reached are reported in one message, grouped by what is
missing, and never chosen by routing. A router none of whose models can be
reached is refused with a :class:`StartupError`, so the server never starts
only to answer every routed request with an error.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Mapping

from models.catalog import Catalog, ModelSpec
from models.providers import MissingUpstreamKey, ProviderPool
from models.providers.pool import ENV_KEYS, KEYLESS, provider_family

NO_ENTRY = "no catalog entry"


class StartupError(RuntimeError):
    """The server cannot do what its config asks; the message says what to change."""


def upstream_problem(spec: ModelSpec, pool: ProviderPool) -> str | None:
    """What keeps ``spec`` from being called through ``pool`` (None: nothing known to be missing)."""
    family = provider_family(spec)
    if family in pool.fixed:  # a provider given as it is (tests, embedding): it knows how to reach its models
        return None
    if spec.provider == "openai-compatible" and not pool.base_url(spec):
        return "no base URL (base_url in its catalog entry, or upstreams.openai-compatible.base_url)"
    try:
        key = pool.api_key(spec)
    except MissingUpstreamKey:
        return f"{spec.api_key_env or ENV_KEYS[spec.provider]} is not set (nor upstreams.{family}.api_key)"
    if key == KEYLESS and spec.api_key_env:
        return f"{spec.api_key_env} is not set"
    return None


def unreachable_models(catalog: Catalog, pool: ProviderPool) -> dict[str, str]:
    """Catalog model id -> what is missing to reach it, for every model that cannot be called."""
    problems = {}
    for spec in catalog:
        problem = upstream_problem(spec, pool)
        if problem:
            problems[spec.id] = problem
    return problems


def _grouped(problems: Mapping[str, str]) -> str:
    by_reason: dict[str, list[str]] = defaultdict(list)
    for model, reason in problems.items():
        by_reason[reason].append(model)
    return "; ".join(f"{reason}: {', '.join(models)}" for reason, models in by_reason.items())


def check_router(uri: str, router_models: Iterable[str], catalog: Catalog, unreachable: Mapping[str, str]) -> str | None:
    """The one-line warning about the router's models that cannot be reached (None: all can).

    Raises :class:`StartupError` when none of them can.
    """
    router_models = list(router_models)
    problems = {m: (NO_ENTRY if m not in catalog else unreachable[m]) for m in router_models
                if m not in catalog or m in unreachable}
    if not problems:
        return None
    stubs = f"thrifty models init --from-router {uri} > catalog.yaml"
    if len(problems) == len(router_models):
        raise StartupError(
            f"cannot route: none of the {len(router_models)} models of the router {uri} can be reached ({_grouped(problems)}); "
            f"write their catalog entries with `{stubs}`, name that file under `catalog:` in the config and set the keys "
            "it names, or set `passthrough_only: true` to serve catalog models by id only"
        )
    return (
        f"{len(problems)} of the {len(router_models)} models of the router {uri} cannot be reached and are never chosen "
        f"({_grouped(problems)}); catalog entries for them: `{stubs}`"
    )
