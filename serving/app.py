"""The HTTP app: OpenAI- and Anthropic-compatible endpoints in front of the router.

``create_app(config)`` builds a FastAPI app; the router, catalog, profiles,
store and provider pool are loaded once by its lifespan (parts passed in are
used as given). Nothing is created at import time.

Endpoints::

    POST /v1/chat/completions   OpenAI Chat Completions (streaming or not)
    POST /v1/messages           Anthropic Messages (streaming or not)
    GET  /v1/models             router profiles and catalog models
    POST /v1/route              the decision only, no upstream call
    POST /v1/feedback           attach an outcome to a past decision
    GET  /dashboard             the savings report, for a browser (serving.dashboard)
    GET  /healthz               liveness and what is loaded
    GET  /metrics               Prometheus metrics (no auth)

At start-up every credential the provider pool can use is registered with the
process's scrubber and the scrub filter is put on the loggers
(:mod:`serving.secrets`); a hot-swapped router registers them again. One log
line says what is served (router version, routable models, store, address);
each model without an upstream key gets a line naming the variable to set.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from models.catalog import Catalog
from models.providers import ProviderPool
from models.store import OutcomeStore
from router.profiles import Profile
from router.prompt import routing_text
from router.router import Router
from serving import completion, dashboard
from serving.auth import authenticate
from serving.config import ServingConfig, get_config
from serving.errors import Conflict, InvalidRequest, NotFound, install_error_handlers
from serving.openapi import document
from serving.routing import LoadedRouter
from serving.schemas import (
    AnthropicMessagesRequest,
    FeedbackRequest,
    OpenAIChatRequest,
    RouteRequest,
    read_json_body,
    validate,
)
from serving.secrets import install_log_filter
from serving.services import Services, build_services

log = logging.getLogger("thrifty.serving")

ENDPOINTS = frozenset({"/v1/chat/completions", "/v1/messages", "/v1/models", "/v1/route", "/v1/feedback"})
UNMETERED = frozenset({"/metrics", "/healthz"})


# -- dependencies -----------------------------------------------------------------------


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


def require_client(request: Request, services: ServicesDep) -> str:
    return authenticate(request, services.client_keys)


ClientDep = Annotated[str, Depends(require_client)]


async def json_body(request: Request, services: ServicesDep, client: ClientDep) -> dict:
    # depends on the client: a request without a valid key is refused before its body is read
    return await read_json_body(request, services.config.max_body_bytes)


BodyDep = Annotated[dict, Depends(json_body)]


# -- metrics middleware ---------------------------------------------------------------------


class RequestMetrics:
    """Counts every response by endpoint and status, and times it to its last byte (pure ASGI: streams stay streams)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path")
        app = scope.get("app")
        services: Services | None = getattr(app.state, "services", None) if app is not None else None
        if scope["type"] != "http" or services is None or path in UNMETERED:
            await self.app(scope, receive, send)
            return
        metrics = services.metrics
        endpoint = path if path in ENDPOINTS else "other"  # bounded label values
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            metrics.in_flight.dec()
            metrics.child(metrics.requests, endpoint, str(status)).inc()
            metrics.child(metrics.request_latency, endpoint).observe(time.perf_counter() - started)


# -- the app ---------------------------------------------------------------------------------


class RequestOnlyRoute(APIRoute):
    """A route whose endpoint takes the :class:`Request` alone and returns a :class:`Response` itself.

    FastAPI's route handler (dependency resolution, response validation and
    serialisation) is skipped: the endpoint is the handler. The OpenAPI entry
    is the route's as usual (:mod:`serving.openapi` adds the request body).
    """

    def get_route_handler(self):
        return self.endpoint



def create_app(
    config: ServingConfig | None = None,
    *,
    router: Router | LoadedRouter | None = None,
    providers: ProviderPool | None = None,
    store: OutcomeStore | None = None,
    catalog: Catalog | None = None,
    profiles: dict[str, Profile] | None = None,
    tracer_provider=None,
) -> FastAPI:
    """``tracer_provider``: an OpenTelemetry tracer provider for thrifty's spans (default: the global one)."""
    config = config or get_config()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        install_log_filter()  # before anything is loaded: no line logged from here on can show a credential
        services = build_services(config, router=router, providers=providers, store=store, catalog=catalog, profiles=profiles,
                                  tracer_provider=tracer_provider)
        if not services.client_keys:
            log.warning("no api_keys configured: thrifty accepts requests without a key")
        services.warm_up()  # the tokenizer, the routers and the SDK clients load now, not on the first request
        tune_gc()
        app.state.services = services
        log_startup(services)
        if services.watcher is not None:
            swapped = services.watcher.on_swap

            def on_swap(old, new):
                services.register_secrets()  # a new router may route to models whose keys were not known yet
                if swapped is not None:
                    swapped(old, new)

            services.watcher.on_swap = on_swap
            services.watcher.start()
        try:
            yield
        finally:
            await services.aclose()

    app = FastAPI(title="thrifty", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)
    install_error_handlers(app)
    document(app)  # request bodies in /openapi.json (the handlers read them themselves)
    app.add_middleware(RequestMetrics)

    # The two chat endpoints take the request alone and do what the dependencies of the other
    # endpoints do (services, client key, body) themselves, in the same order: FastAPI's
    # dependency resolution costs several times more CPU than the rest of the framework per request.
    chat = APIRouter(route_class=RequestOnlyRoute)

    @chat.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        services: Services = request.app.state.services
        client = authenticate(request, services.client_keys)
        body = await read_json_body(request, services.config.max_body_bytes)
        parsed = validate(OpenAIChatRequest, body)
        return await completion.handle_completion(services, request, client, "openai", body, parsed.thrifty)

    @chat.post("/v1/messages")
    async def messages(request: Request):
        services: Services = request.app.state.services
        client = authenticate(request, services.client_keys)
        body = await read_json_body(request, services.config.max_body_bytes)
        parsed = validate(AnthropicMessagesRequest, body)
        return await completion.handle_completion(services, request, client, "anthropic", body, parsed.thrifty)

    app.include_router(chat)
    app.include_router(dashboard.router(get_services))

    @app.get("/v1/models")
    async def list_models(request: Request, services: ServicesDep, client: ClientDep):
        return models_listing(services, anthropic_style="anthropic-version" in request.headers)

    @app.post("/v1/route")
    async def route(request: Request, services: ServicesDep, client: ClientDep, body: BodyDep):
        parsed = validate(RouteRequest, body)
        return await route_only(services, request, client, body, parsed)

    @app.post("/v1/feedback")
    async def feedback(services: ServicesDep, client: ClientDep, body: BodyDep):
        parsed = validate(FeedbackRequest, body)
        return await add_feedback(services, client, parsed)

    @app.get("/healthz")
    async def healthz(services: ServicesDep):
        loaded = services.routers.get()
        return {
            "status": "ok",
            "router_version": loaded.version,
            "models": len(services.catalog),
            "profiles": sorted(services.routing.profiles),
        }

    @app.get("/metrics")
    async def metrics(services: ServicesDep):
        return Response(services.metrics.render(), media_type=services.metrics.content_type)

    return app


def log_startup(services: Services) -> None:
    """One line saying what is served: router version, routable models, store, address.

    Models that cannot be reached were named (with the variable to set) by the
    start-up check in ``build_services``; here they are only left out of the count.
    """
    loaded = services.routers.get()
    config = services.config
    where = f"store {services.store.display_url}; http://{config.host}:{config.port}"
    if loaded.router is None:
        log.info("thrifty serving %d catalog models by id only (passthrough_only); %s", len(services.catalog), where)
        return
    routable = [m for m in loaded.router.models_ if m in services.catalog and m not in services.routing.unreachable]
    shown = ", ".join(routable[:8]) + (", ..." if len(routable) > 8 else "")
    log.info("thrifty serving router %s: %d of %d models routable (%s); %s",
             loaded.version, len(routable), len(loaded.router.models_), shown or "none", where)


GC_THRESHOLD = (20_000, 10, 10)


def tune_gc() -> None:
    """Garbage collection for a server: startup's objects frozen, young collections far less frequent.

    ``gc.freeze()`` moves everything loaded at startup (routers, catalog, SDKs)
    out of the collector's sight, so full collections stop re-scanning it. With
    Python's default threshold (700 net allocations) a young collection ran
    several times per request at concurrency 50, each scanning the live
    objects of every request in flight, about a tenth of the CPU; requests
    leave little cyclic garbage (their objects are freed by reference
    counting), so collecting every 20000 net allocations keeps memory flat.
    Process-wide: called by the app's startup, i.e. in the server process.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


def create_app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` (and ``--workers N``): the config of ``$THRIFTY_SERVE_CONFIG``."""
    return create_app(get_config())


# -- thrifty's own endpoints -----------------------------------------------------------------


def models_listing(services: Services, *, anthropic_style: bool = False) -> dict[str, Any]:
    entries = [(name, "thrifty", "router profile") for name in sorted(services.routing.profiles)]
    entries += [(spec.id, spec.vendor or spec.provider, spec.upstream) for spec in services.catalog
                if spec.id not in services.routing.profiles]
    if anthropic_style:
        data = [{"id": i, "type": "model", "display_name": f"{i} ({d})", "created_at": "1970-01-01T00:00:00Z"}
                for i, _, d in entries]
        return {"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None}
    data = [{"id": i, "object": "model", "created": 0, "owned_by": o} for i, o, _ in entries]
    for entry in data[: len(services.routing.profiles)]:  # router profiles first: what their default promises
        entry["certificate"] = services.routing.certificate(entry["id"])
    return {"object": "list", "data": data}


async def route_only(services: Services, request: Request, client: str, body: dict, parsed: RouteRequest) -> JSONResponse:
    constraints = completion.constraints_from(request.headers, parsed.thrifty, body)
    if parsed.prompt is None and not parsed.messages:
        raise InvalidRequest("give either 'prompt' or a non-empty 'messages'", param="messages")
    text = routing_text({k: v for k, v in body.items() if k != "thrifty"})
    trace = services.tracing.request(parsed.model, request.url.path, False)
    try:
        decision = await completion.decide(services, parsed.model, text, constraints, trace)
    except BaseException as exc:
        trace.fail(exc)
        raise
    decision_id = completion.new_decision_id()
    record = completion.new_record(
        services, decision_id=decision_id, endpoint=request.url.path, client=client, requested=parsed.model,
        text=text, decision=decision, constraints=constraints, stream=False, status="routed",
    )
    await completion.commit(services, record, trace)
    payload = {
        "decision_id": decision_id,
        "model": decision.model,
        "policy": decision.policy,
        "knob": record.knob,
        "fallback": decision.fallback,
        "limit_unmet": decision.extra.get("limit_unmet"),
        "propensity": decision.propensity,
        "router_version": decision.router_version,
        "novelty": decision.novelty,
        "guarded": decision.guarded,
        "certificate": services.routing.certificate(parsed.model),
        "candidates": record.candidates,
    }
    return JSONResponse(payload, headers=completion.decision_headers(decision_id, decision))


async def add_feedback(services: Services, client: str, parsed: FeedbackRequest) -> dict[str, Any]:
    """Attach an outcome to a decision the client made (or any decision, for an admin client).

    A decision of another client is answered exactly as an unknown id (404):
    ids are not secret enough to be the only guard, and a 403 would confirm
    that the id exists. Feedback on a decision no model answered (routed only,
    failed, abandoned) is refused with a 409: it could never reach the
    exported outcome logs, which hold answered requests with observed usage.
    """
    if (parsed.success is None) == (parsed.score is None):
        raise InvalidRequest("give exactly one of 'success' (true/false or a number in [0, 1]) or 'score' (in [0, 1])",
                             param="success")
    value = parsed.value
    decision = await asyncio.to_thread(services.store.decision, parsed.decision_id)
    if decision is None or not may_give_feedback(services, client, decision):
        raise NotFound(f"no decision with id {parsed.decision_id!r}", param="decision_id", code="decision_not_found")
    if decision["status"] != "ok":
        why = ("was only routed (POST /v1/route): no model answered it through thrifty, so there is no observed "
               "answer, usage or cost to attach an outcome to" if decision["status"] == "routed"
               else f"ended with status {decision['status']!r}: no complete answer was given")
        raise Conflict(f"decision {parsed.decision_id!r} {why}; feedback applies to answered requests",
                       param="decision_id", code="decision_not_answered")
    known = await services.store.add_feedback(parsed.decision_id, value, parsed.source, parsed.score_raw)
    if not known:
        raise NotFound(f"no decision with id {parsed.decision_id!r}", param="decision_id", code="decision_not_found")
    return {"decision_id": parsed.decision_id, "success": value, "source": parsed.source, "status": "recorded"}


def may_give_feedback(services: Services, client: str, decision: dict) -> bool:
    """The client that made the decision, or a client named in ``admin_keys``."""
    return decision.get("client") == client or client in services.config.admin_keys
