"""Everything a request handler needs, built once when the app starts.

:func:`build_services` loads the catalog, the profiles and their routers, opens
the outcome store and prepares the provider pool; parts given to
``create_app`` (a fitted router, providers, a store) are used as they are.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

from models.catalog import Catalog, load_catalog
from models.providers import MissingUpstreamKey, ProviderPool, UpstreamSettings
from models.store import OutcomeStore, open_store
from router.profiles import Profile, load_profiles
from router.router import Router, RoutingError
from serving.batching import DecisionBatcher
from serving.config import ConfigError, ServingConfig
from serving.budgets import Budgets
from serving.dispatch import Dispatcher
from serving.metrics import Metrics
from serving.reliability import Breakers
from serving.reload import RegistryWatcher
from serving.routing import NO_ROUTER, LoadedRouter, RouterHolder, Routing, load_router_uri, router_version
from serving.secrets import Scrubber, get_scrubber, pool_credentials
from serving.startup import check_router, unreachable_models
from serving.tracing import Tracing

log = logging.getLogger("thrifty.serving")


@dataclass
class Services:
    config: ServingConfig
    catalog: Catalog
    routers: RouterHolder
    routing: Routing
    decisions: DecisionBatcher
    pool: ProviderPool
    dispatcher: Dispatcher
    store: OutcomeStore
    metrics: Metrics
    watcher: RegistryWatcher | None = None
    budgets: Budgets | None = None
    client_keys: dict[str, str] = field(repr=False, default_factory=dict)  # key -> client name
    tracing: Tracing = field(default_factory=Tracing)  # OpenTelemetry spans (no-op unless a tracer provider is in force)
    scrubber: Scrubber = field(repr=False, default_factory=get_scrubber)  # every credential, scrubbed from messages

    def register_secrets(self) -> int:
        """Register every credential the pool can send, and the client keys, with the scrubber (start-up, reloads)."""
        return self.scrubber.register([
            *pool_credentials(self.pool, self.catalog), *self.config.upstream_secrets(), *self.client_keys,
        ])

    def warm_up(self) -> None:
        """Load now what the first request would otherwise wait for.

        The o200k tokenizer (about a second), each router's first decision (lazy
        allocations in the predictors) and the SDK client of every model the
        routers can choose (the SDK imports). Best effort: a failure here is
        logged and left to the first request to report.
        """
        from models.tokens import count_tokens

        try:
            count_tokens("warm up")
            for uri in self.routers.uris:
                loaded = self.routers.get(uri)
                try:
                    loaded.router.route("warm up the router", self.routing.decision_prices(loaded))
                except RoutingError:  # a profile's router over models the catalog does not price: its requests say so
                    log.warning("router %s (%s) knows no model the catalog prices: profiles using it cannot route", loaded.version, uri)
                    continue
                for model in loaded.router.models_:
                    if model in self.catalog:
                        try:
                            self.pool.get(self.catalog.get(model))
                        except MissingUpstreamKey:
                            pass  # reported when the model is called
        except Exception:  # noqa: BLE001 - warming up must never keep the server from starting
            log.warning("warm-up failed; the first requests will load what is missing", exc_info=True)

    def report_frame(self, since: float, until: float):
        """The store's answered requests with ``since <= ts < until``, as :mod:`serving.report` reads them."""
        from models.store.outcomes import outcome_frame

        return outcome_frame(self.store, include_unlabeled=True, since=since, until=until)

    async def aclose(self) -> None:
        if self.watcher is not None:
            await self.watcher.stop()
        await self.pool.aclose()
        self.store.close()
        self.tracing.shutdown()


def _pool(config: ServingConfig) -> ProviderPool:
    upstreams = {
        name: UpstreamSettings(api_key=u.resolved_key(), base_url=u.base_url) for name, u in config.upstreams.items()
    }
    return ProviderPool(
        upstreams,
        timeout=config.upstream_timeout_s,
        connect_timeout=config.connect_timeout_s,
        max_retries=config.upstream_max_retries,
    )


def _check_fallbacks(config: ServingConfig, catalog: Catalog) -> None:
    unknown = sorted({m for model, rest in config.fallbacks.items() for m in (model, *rest) if m not in catalog})
    if unknown:
        raise ConfigError(f"fallbacks name model(s) not in the catalog: {', '.join(unknown)}")


def preflight(config: ServingConfig) -> tuple[Catalog, LoadedRouter]:
    """What ``thrifty serve`` checks before it serves: the catalog and the router load, and the router can route.

    Returns both, for ``create_app`` to use as they are. Raises
    :class:`~serving.startup.StartupError` (no model of the router can be reached),
    :class:`~models.registry.RouterNotFoundError` (no router at the URI) or
    :class:`~models.catalog.CatalogError`; their messages are one line each.
    """
    catalog = load_catalog(config.resolved_catalog, include_default=config.include_default_catalog)
    _check_fallbacks(config, catalog)
    if config.passthrough_only:
        return catalog, NO_ROUTER
    loaded = load_router_uri(config.resolved_router_uri)
    check_router(loaded.uri, loaded.router.models_, catalog, unreachable_models(catalog, _pool(config)))
    return catalog, loaded


def build_services(
    config: ServingConfig,
    *,
    router: Router | LoadedRouter | None = None,
    providers: ProviderPool | None = None,
    store: OutcomeStore | None = None,
    catalog: Catalog | None = None,
    profiles: dict[str, Profile] | None = None,
    tracer_provider=None,
) -> Services:
    catalog = catalog or load_catalog(config.resolved_catalog, include_default=config.include_default_catalog)
    profiles = profiles if profiles is not None else load_profiles(config.resolved_profiles_dir)

    default_uri = config.resolved_router_uri
    if router is None and config.passthrough_only:
        loaded = NO_ROUTER
    elif router is None:
        loaded = load_router_uri(default_uri)
    elif isinstance(router, Router):
        loaded = LoadedRouter(router, default_uri, router_version(default_uri) if default_uri.endswith(".joblib") else "injected")
    else:
        loaded = router
    routers = {loaded.uri: loaded}
    for profile in profiles.values():  # each profile's own router, loaded once, now
        if loaded.router is not None and profile.router_uri and profile.router_uri not in routers:
            routers[profile.router_uri] = load_router_uri(profile.router_uri)
    holder = RouterHolder(routers, loaded.uri)

    _check_fallbacks(config, catalog)

    metrics = Metrics()
    pool = providers or _pool(config)
    unreachable = unreachable_models(catalog, pool)
    if loaded.router is not None:
        warning = check_router(loaded.uri, loaded.router.models_, catalog, unreachable)  # raises when none can be reached
        if warning:
            log.warning(warning)
    store = (store or open_store(config.resolved_store_url, synchronous=config.store_synchronous)).open()

    def breaker_changed(model: str, state: str) -> None:
        metrics.breaker_transitions.labels(model, state).inc()
        metrics.breaker_open.labels(model).set(0 if state == "closed" else 1)
        (log.info if state == "closed" else log.warning)("circuit breaker of model %s: %s", model, state)

    routing = Routing(
        holder,
        catalog,
        profiles,
        default_profile=config.default_profile,
        explore_epsilon=config.explore_epsilon,
        rng=random.Random(config.explore_seed),
        unreachable=unreachable,
        on_unmet_limit=config.on_unmet_limit,
    )
    services = Services(
        config=config,
        catalog=catalog,
        routers=holder,
        routing=routing,
        decisions=DecisionBatcher(routing.decide_many, observe_batch=metrics.decision_batch.observe),
        watcher=RegistryWatcher(holder, config.reload_interval_s) if loaded.router is not None else None,
        pool=pool,
        dispatcher=Dispatcher(
            catalog, pool, metrics=metrics, default_max_tokens=config.default_max_tokens, max_attempts=config.max_attempts,
            breakers=Breakers(config.breaker_failures, config.breaker_cooldown_s, on_change=breaker_changed,
                              max_cooldown_s=config.breaker_max_cooldown_s, backoff=config.breaker_backoff),
            deadline_s=config.deadline_s,
            attempt_timeout_s=config.attempt_timeout_s,
            first_token_timeout_s=config.first_token_timeout_s,
            stream_idle_timeout_s=config.stream_idle_timeout_s,
            retry_after_max_s=config.retry_after_max_s,
            same_model_retries=config.same_model_retries,
            mid_stream_recovery=config.mid_stream_recovery,
        ),
        budgets=Budgets(config, store, catalog, metrics),
        store=store,
        metrics=metrics,
        client_keys=config.client_keys(),
        tracing=Tracing.from_config(config.otel_endpoint, provider=tracer_provider),
    )
    services.register_secrets()
    return services
