"""Spend limits per client and period: reserve the maximum cost at admission, settle the actual cost.

Configured by client name (the names of ``api_keys``; ``"*"`` for each client
without a budget of its own)::

    budgets:
      app-frontend: {amount_usd: 50, period: day}     # hour | day | week | month (UTC), or seconds
      "*": {amount_usd: 5, period: 3600}

At admission a request books its *maximum* cost: the prompt's token count
(the whole JSON of messages, system prompt and tools, an over-count) times
the input price (with a 25% margin for providers' own tokenizers; the dearest cache-write price
when the request marks ``cache_control`` breakpoints), plus its output limit (``max_tokens`` /
``max_completion_tokens``, else the model's ``max_output_tokens``, else
``default_max_tokens``) times the output price, for the dearest model the
request may be sent to, plus the input cost of each further attempt
fail-over may make. If the period's settled spend, the bookings of requests
in flight and this one exceed the limit, the request is refused with a 429
(``budget_exceeded``) before any upstream call. When the request ends its
record settles the booking to what its attempts actually cost (usage
reported by the provider), in the same transaction that stores the record
(:mod:`models.store`): a restart keeps the spend, and a booking left by a
killed process expires after ``deadline_s + upstream_timeout_s``.

Guarantee: a period's spend never exceeds its limit as long as every request
costs at most what it booked; output is capped by the booked output limit, so
only a provider counting more input tokens than booked can overshoot, by that
difference. Bookings are checked and written in one transaction holding the
budget's lock, so this holds under concurrency in one process (the store's
single writer thread orders admissions), across ``--workers`` processes
sharing a SQLite store (its write lock orders them), and across replicas
sharing a PostgreSQL store (the period's ``budget_spend`` row is locked with
``SELECT ... FOR UPDATE``).
"""

from __future__ import annotations

import calendar
import json
import math
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping, Sequence

from models.catalog import Catalog, ModelSpec
from models.store import OutcomeStore, Reservation
from models.tokens import count_tokens
from serving.config import BudgetConfig, ServingConfig
from serving.errors import BudgetExceeded
from serving.metrics import Metrics

EXPIRY_MARGIN_S = 60.0
# Providers count tokens with their own tokenizers (Anthropic's counts run ~10-25% above o200k on
# plain text): the booked input is thrifty's count of the prompt's JSON times this margin.
INPUT_TOKEN_MARGIN = 1.25


def period_bounds(period: str | float, now: float | None = None) -> tuple[float, float]:
    """Start and end (epoch seconds) of the budget period containing ``now``; calendar periods in UTC."""
    now = time.time() if now is None else now
    if not isinstance(period, str):
        length = float(period)
        start = math.floor(now / length) * length
        return start, start + length
    moment = datetime.fromtimestamp(now, tz=timezone.utc)
    if period == "hour":
        start = moment.replace(minute=0, second=0, microsecond=0)
        end = start + timedelta(hours=1)
    elif period == "day":
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        end = start + timedelta(days=1)
    elif period == "week":
        start = (moment - timedelta(days=moment.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)
        end = start + timedelta(days=7)
    elif period == "month":
        start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        days = calendar.monthrange(start.year, start.month)[1]
        end = start + timedelta(days=days)
    else:
        raise ValueError(f"unknown budget period {period!r}")
    return start.timestamp(), end.timestamp()


def prompt_tokens(body: Mapping[str, Any]) -> int:
    """An over-count of the prompt's input tokens: the token count of its JSON (messages, system, tools)."""
    parts = {k: body[k] for k in ("messages", "system", "tools", "tool_choice") if body.get(k) is not None}
    return count_tokens(json.dumps(parts, ensure_ascii=False, separators=(",", ":")))


def output_limit(body: Mapping[str, Any], spec: ModelSpec, default_max_tokens: int) -> int:
    explicit = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(explicit, int) and explicit > 0:
        return explicit
    return spec.max_output_tokens or default_max_tokens


def max_request_cost(
    body: Mapping[str, Any], specs: Sequence[ModelSpec], *, default_max_tokens: int, max_attempts: int = 1
) -> float:
    """The most a request can cost: the dearest answer, plus the input of every other attempt."""
    if not specs:
        return 0.0
    tokens = math.ceil(prompt_tokens(body) * INPUT_TOKEN_MARGIN)
    # a request that marks prompt-cache breakpoints may pay a cache-write rate (above the input rate) for its input
    writes = '"cache_control"' in json.dumps(body, ensure_ascii=False, separators=(",", ":"))

    def cost(spec: ModelSpec, output: int) -> float:
        rate = spec.max_input_usd_per_mtok if writes else spec.input_usd_per_mtok
        return (tokens * rate + output * spec.output_usd_per_mtok) / 1e6

    answer = max(cost(s, output_limit(body, s, default_max_tokens)) for s in specs)
    retries = max(0, max_attempts - 1)
    return answer + retries * max(cost(s, 0) for s in specs)


class Budgets:
    """Admission against the configured budgets (no budgets: admits everything, touches nothing)."""

    def __init__(self, config: ServingConfig, store: OutcomeStore, catalog: Catalog, metrics: Metrics | None = None):
        self.limits: dict[str, BudgetConfig] = dict(config.budgets)
        self.store = store
        self.catalog = catalog
        self.metrics = metrics
        self.default_max_tokens = config.default_max_tokens
        self.max_attempts = config.max_attempts
        self.ttl_s = config.deadline_s + config.upstream_timeout_s + EXPIRY_MARGIN_S

    @property
    def enabled(self) -> bool:
        return bool(self.limits)

    def limit_for(self, client: str) -> BudgetConfig | None:
        return self.limits.get(client) or self.limits.get("*")

    async def admit(self, client: str, decision_id: str, body: Mapping[str, Any], models: Sequence[str]) -> Reservation | None:
        """Book the request's maximum cost, or raise :class:`BudgetExceeded`; None when ``client`` has no budget."""
        budget = self.limit_for(client)
        if budget is None:
            return None
        specs = [self.catalog.get(m) for m in dict.fromkeys(models) if m in self.catalog]
        amount = max_request_cost(body, specs, default_max_tokens=self.default_max_tokens, max_attempts=self.max_attempts)
        now = time.time()
        start, end = period_bounds(budget.period, now)
        reservation = Reservation(decision_id=decision_id, client=client, period_start=start, amount_usd=amount)
        check = await self.store.reserve(reservation, budget.amount_usd, now + self.ttl_s)
        if check.admitted:
            return reservation
        if self.metrics:
            self.metrics.budget_rejections.labels(client).inc()
        period = budget.period if isinstance(budget.period, str) else f"{budget.period:g}s"
        if amount > budget.amount_usd:
            why = f"this request's maximum cost (${amount:.6f}) exceeds the whole budget"
        else:
            why = (f"spent ${check.spent_usd:.6f} and ${check.reserved_usd:.6f} held by requests in flight; "
                   f"this request may cost up to ${amount:.6f}")
        # exhausted by settled spend: retry when the period resets; by requests in flight: shortly
        settled_out = check.spent_usd + amount > budget.amount_usd
        wait = max(1, math.ceil(end - now)) if settled_out else 1
        error = BudgetExceeded(
            f"budget of ${budget.amount_usd:g} per {period} for client {client!r} cannot cover this request: {why}. "
            f"It resets at {datetime.fromtimestamp(end, tz=timezone.utc).isoformat()}; lower max_tokens to ask for less.",
        )
        error.headers = {"retry-after": str(wait), "x-should-retry": "false" if settled_out else "true"}
        raise error
