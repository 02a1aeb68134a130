"""``GET /dashboard``: the savings report (:mod:`serving.report`) of the outcome store, for a browser.

Access: the router API keys of the config, or only the clients named in
``admin_keys`` when that list is set. A program sends its key as for the other
endpoints (``Authorization: Bearer``). A browser signs in once with a form that
posts the key (``POST /dashboard/login``); the server answers with a session
cookie (HttpOnly, SameSite=Strict, path ``/dashboard``, 12 hours) that holds the
client's name, an expiry and an HMAC of both keyed by that client's API key:
any worker of the server can check it, it never contains the key, and it stops
working when the key changes. The key never appears in a page or a URL.

Query parameters: ``days`` (the last N days, default 7), or ``since`` /
``until`` (dates ``2026-11-30``, ISO times, or epoch seconds); ``baseline``
(a catalog model; default: see :func:`serving.report.default_baseline`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import time
from datetime import datetime, timezone
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from serving import report
from serving.auth import ANONYMOUS, presented_key

log = logging.getLogger("thrifty.serving")

COOKIE = "thrifty_dashboard"
SESSION_S = 12 * 3600
DEFAULT_DAYS = 7.0
PATH = "/dashboard"


class PeriodError(ValueError):
    """A period parameter that cannot be read."""


# -- sessions ------------------------------------------------------------------------------------------------


def _sign(client: str, expires: int, key: str) -> str:
    message = f"{client}|{expires}".encode()
    return hmac.new(key.encode(), b"thrifty-dashboard|" + message, hashlib.sha256).hexdigest()


def session_cookie(client: str, key: str, now: float | None = None) -> str:
    expires = int((now or time.time()) + SESSION_S)
    return f"{client}|{expires}|{_sign(client, expires, key)}"


def session_client(cookie: str | None, keys: dict[str, str], now: float | None = None) -> str | None:
    """The client a session cookie was issued to, if it is genuine and unexpired (``keys``: key -> name)."""
    if not cookie:
        return None
    parts = cookie.rsplit("|", 2)
    if len(parts) != 3:
        return None
    client, expires_text, signature = parts
    try:
        expires = int(expires_text)
    except ValueError:
        return None
    if expires < (now or time.time()):
        return None
    for key, name in keys.items():
        if name == client and hmac.compare_digest(_sign(client, expires, key), signature):
            return client
    return None


def _client_of_key(key: str | None, keys: dict[str, str]) -> str | None:
    if key is None:
        return None
    match = None
    for known, name in keys.items():
        if hmac.compare_digest(known.encode(), key.encode()):
            match = name
    return match


def allowed(client: str | None, admins: list[str], keys: dict[str, str]) -> bool:
    if not keys:  # an open server (no api_keys): the dashboard is open too
        return True
    return client is not None and (not admins or client in admins)


# -- the period ----------------------------------------------------------------------------------------------


def parse_time(text: str, name: str) -> float:
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise PeriodError(f"{name} must be a date (2026-11-30), an ISO time or epoch seconds, got {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def period(params, now: float | None = None) -> tuple[float, float]:
    """(since, until) from ``days`` or ``since``/``until`` query parameters."""
    now = now or time.time()
    until = parse_time(params["until"], "until") if params.get("until") else now
    if params.get("since"):
        since = parse_time(params["since"], "since")
    else:
        try:
            days = float(params.get("days") or DEFAULT_DAYS)
        except ValueError:
            raise PeriodError(f"days must be a number, got {params.get('days')!r}") from None
        if not (math.isfinite(days) and days > 0):
            raise PeriodError(f"days must be positive, got {params.get('days')!r}")
        since = until - days * 86400
    if not until > since:
        raise PeriodError("until must be after since")
    return since, until


# -- pages -----------------------------------------------------------------------------------------------------


def _date(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M")


def period_form(since: float, until: float, baseline: str | None, models: list[str]) -> str:
    options = "".join(f'<option value="{report._e(m)}"{" selected" if m == baseline else ""}>{report._e(m)}</option>'
                      for m in models)
    return (f'<section><form class="period" method="get" action="{PATH}">'
            f'<label>since (UTC)<input type="datetime-local" name="since" value="{_date(since)}"></label>'
            f'<label>until (UTC)<input type="datetime-local" name="until" value="{_date(until)}"></label>'
            f'<label>baseline<select name="baseline"><option value="">best single model</option>{options}</select></label>'
            '<button type="submit">show</button>'
            f'<a href="{PATH}?days=1">last day</a> <a href="{PATH}?days=7">last 7 days</a> <a href="{PATH}?days=30">last 30 days</a>'
            '</form></section>')


def login_page(message: str = "") -> str:
    note = f'<div class="error" id="login-error">{report._e(message)}</div>' if message else ""
    return ('<!doctype html><html lang="en"><head><meta charset="utf-8"><title>thrifty — sign in</title>'
            f'<style>{report.STYLE}</style></head><body><header><h1>thrifty — savings</h1></header><main>'
            f'<section>{note}<form class="period" method="post" action="{PATH}/login" id="login">'
            '<label>API key<input type="password" name="key" autocomplete="current-password" required autofocus></label>'
            '<button type="submit">sign in</button></form>'
            '<div class="note">A router API key of this server (one of its admin_keys when the config names some). '
            'It is exchanged for a session cookie; it is never stored in the page.</div></section></main></body></html>')


def router(services_of) -> APIRouter:
    """The dashboard's routes; ``services_of(request)`` gives the app's :class:`serving.services.Services`."""
    routes = APIRouter()

    def client_of(request: Request, services) -> str | None:
        keys = services.client_keys
        if not keys:
            return ANONYMOUS
        return _client_of_key(presented_key(request), keys) or session_client(request.cookies.get(COOKIE), keys)

    @routes.get(PATH, response_class=HTMLResponse, include_in_schema=False)
    async def dashboard(request: Request) -> Response:
        services = services_of(request)
        client = client_of(request, services)
        if not allowed(client, services.config.admin_keys, services.client_keys):
            if client is not None:
                return HTMLResponse(report.error_page(f"client {client!r} may not view the dashboard (admin_keys)"), 403)
            return HTMLResponse(login_page(), 401)
        params = request.query_params
        models = sorted(spec.id for spec in services.catalog)
        try:
            since, until = period(params)
        except PeriodError as exc:
            return HTMLResponse(report.error_page(str(exc)), 400)
        baseline = params.get("baseline") or None
        form = period_form(since, until, baseline, models)
        try:
            frame = await asyncio.to_thread(services.report_frame, since, until)
        except Exception as exc:  # noqa: BLE001 - the page says what failed instead of going blank
            log.warning("dashboard: reading the outcome store failed: %s", exc)
            return HTMLResponse(report.error_page(f"reading the outcome store failed ({type(exc).__name__})"), 503)
        try:
            built = report.build(frame, services.routing.prices, since=since, until=until, baseline=baseline,
                                 where="the outcome store")
        except report.ReportError as exc:
            return HTMLResponse(report.error_page(str(exc)), 400)
        return HTMLResponse(report.render(built, form=form, source=f"signed in as {client}"),
                            headers={"cache-control": "no-store"})

    @routes.post(f"{PATH}/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        services = services_of(request)
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        key = (form.get("key") or [""])[0].strip()
        keys = services.client_keys
        client = _client_of_key(key, keys) if keys else ANONYMOUS
        if client is None:
            return HTMLResponse(login_page("That key is not a router API key of this server."), 401)
        if not allowed(client, services.config.admin_keys, keys):
            return HTMLResponse(login_page(f"Client {client!r} may not view the dashboard (admin_keys)."), 403)
        response = RedirectResponse(PATH, status_code=303)
        if keys:
            response.set_cookie(COOKIE, session_cookie(client, key), max_age=SESSION_S, path=PATH, httponly=True,
                                samesite="strict", secure=request.url.scheme == "https")
        return response

    @routes.post(f"{PATH}/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        response = RedirectResponse(PATH, status_code=303)
        response.delete_cookie(COOKIE, path=PATH)
        return response

    return routes
