"""What the outcome store holds: a decision with its upstream attempts, feedback, and budget bookings.

Plain dataclasses, shared by every backend and every writer (the server, and
any other program that logs routed traffic in thrifty's format).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any

from pydantic_core import to_json


@dataclass
class AttemptRecord:
    """One upstream call made for a decision (fail-over and retries add more)."""

    model: str
    ts: float
    latency_s: float | None = None
    status: str = "ok"  # ok | error | skipped (breaker open)
    error_kind: str | None = None
    http_status: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None


@dataclass(frozen=True)
class Reservation:
    """A request's maximum cost, booked against its client's budget until the record settles it."""

    decision_id: str
    client: str
    period_start: float
    amount_usd: float


@dataclass(frozen=True)
class BudgetCheck:
    admitted: bool
    spent_usd: float  # settled in the period
    reserved_usd: float  # held by other requests in flight


@dataclass(frozen=True)
class FeedbackRecord:
    """An outcome attached to a past decision (the latest one counts)."""

    decision_id: str
    success: float  # 0 or 1, or a graded score in [0, 1]
    source: str
    ts: float
    score_raw: float | None = None


CASCADE_POLICY = "cascade"  # the policy of a decision a cascade profile made (its run is in ``DecisionRecord.cascade``)


@dataclass
class DecisionRecord:
    """One routed (or passed-through) request: the decision, what answered it, what it cost."""

    decision_id: str
    ts: float
    endpoint: str
    requested_model: str
    candidates: list[dict]
    chosen_model: str
    propensity: float
    status: str  # ok | error | routed (decision only) | client_closed
    client: str | None = None
    task: str | None = None
    prompt: str | None = None
    prompt_chars: int | None = None
    router_version: str | None = None
    policy: str | None = None
    knob: float | None = None
    fallback: bool = False
    explored: bool = False
    answered_model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None
    latency_s: float | None = None
    error_kind: str | None = None
    http_status: int | None = None
    stream: bool = False
    finish_reason: str | None = None
    response: str | None = None
    novelty: float | None = None  # how unlike the router's training prompts the prompt was (1 = typical)
    decision_latency_s: float | None = None  # time to decide (scoring and batching), before any upstream call
    # a cascade profile's run: {"profile", "cascade" (its description), "stages": [...], "answered_by"}; None otherwise
    cascade: dict | None = None
    attempts: list[AttemptRecord] = field(default_factory=list)
    reservation: Reservation | None = None  # settled when the record is written

    @property
    def spend_usd(self) -> float:
        """What the request cost upstream, every attempt included."""
        return float(sum(a.cost_usd or 0.0 for a in self.attempts))

    def row(self) -> dict[str, Any]:
        """The ``decisions`` row (every field but ``attempts`` and ``reservation``; candidates and cascade as JSON)."""
        data = {name: getattr(self, name) for name in DECISION_COLUMNS}
        data["candidates"] = json_text(self.candidates)
        data["cascade"] = None if self.cascade is None else json_text(self.cascade)
        data["fallback"] = int(self.fallback)
        data["explored"] = int(self.explored)
        data["stream"] = int(self.stream)
        return data

    def attempt_rows(self) -> list[tuple]:
        """The ``attempts`` rows, in :data:`ATTEMPT_COLUMNS` order."""
        return [
            (self.decision_id, n, a.model, a.ts, a.latency_s, a.status, a.error_kind, a.http_status,
             a.input_tokens, a.output_tokens, a.cost_usd)
            for n, a in enumerate(self.attempts)
        ]


DECISION_COLUMNS = tuple(f.name for f in fields(DecisionRecord) if f.name not in ("attempts", "reservation"))
ATTEMPT_COLUMNS = ("decision_id", "n", "model", "ts", "latency_s", "status", "error_kind", "http_status",
                   "input_tokens", "output_tokens", "cost_usd")


def json_text(value: Any) -> str:
    """Compact JSON (pydantic-core's fast path; the standard library for what it cannot encode)."""
    try:
        return to_json(value).decode()
    except Exception:  # noqa: BLE001 - anything the fast path refuses: the standard library decides
        return json.dumps(value, separators=(",", ":"))
