"""Fail-over building blocks: the order to try models in, a request deadline, and circuit breakers.

* :func:`failover_order` — the models a request may go to, from its decision:
  the chosen model first, then the other candidates the policy ranks
  *acceptable*, in the policy's order (all candidates when the decision is
  a fallback, i.e. none was acceptable, or with ``failover_to_unacceptable``),
  then the request's fallback models (for a model requested by id: the
  config's ``fallbacks`` of that model, or the request's ``fallback_models``).
* :func:`retries_same_model` — the transient failures worth one more call of
  the same model before the next candidate: 500, 502, 503, 504 and a reset
  connection.
* :class:`Deadline` — the time a request has left; every upstream call is
  bounded by ``min(per-attempt timeout, time left)``.
* :class:`Breakers` — one circuit breaker per model: ``breaker_failures``
  consecutive failures (connection, timeout, 5xx, broken stream, upstream
  auth) open it for ``breaker_cooldown_s``; then one request at a time probes
  it (half-open): a success closes it, a failure opens it again for twice the
  last cool-down (``breaker_backoff``), up to ``breaker_max_cooldown_s``. A
  short first cool-down brings a model that recovered back within seconds; the
  back-off keeps a model that stays down from costing every few seconds a
  request its time. A 429 is back-pressure, not a fault: it neither opens nor
  closes a breaker. A 4xx answer proves the model is up and counts as a success.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from models.providers import UpstreamError
from router.decision import Decision

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

# kinds of failure that move on to the next candidate ("diverged": a continuation that did not
# repeat the part of the answer already delivered, see serving.recovery)
FAILOVER_KINDS = frozenset(
    {"connection", "timeout", "server", "rate_limit", "stream", "auth", "upstream", "status", "diverged"}
)
# kinds that count against a model's health
BREAKER_KINDS = frozenset({"connection", "timeout", "server", "stream", "auth", "upstream", "status"})
# HTTP statuses of a transient upstream fault: the same model is called once more (529 "overloaded" is not
# transient on that time scale: the next candidate is better)
TRANSIENT_STATUSES = frozenset({500, 502, 503, 504})


def failover_order(decision: Decision, *, include_unacceptable: bool = False, fallbacks: Sequence[str] = ()) -> list[str]:
    """The chosen model, then the other candidates a fail-over may use in the policy's order, then ``fallbacks``."""
    everyone = include_unacceptable or decision.fallback
    rest = [c.model for c in decision.candidates if c.model != decision.model and (everyone or c.acceptable)]
    return list(dict.fromkeys([decision.model, *rest, *fallbacks]))


def fails_over(exc: UpstreamError) -> bool:
    """Whether another try (another model, or the same after its Retry-After) may succeed."""
    return exc.kind in FAILOVER_KINDS


def retries_same_model(exc: UpstreamError) -> bool:
    """Whether ``exc`` is a transient fault that one more call of the same model may well not see."""
    if exc.kind == "server":
        return exc.status in TRANSIENT_STATUSES
    return exc.kind == "connection"  # refused or reset (a timeout is kind "timeout": its time is spent)


class Deadline:
    """A request's overall time budget (monotonic clock)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.started = time.monotonic()

    def remaining(self) -> float:
        return self.seconds - (time.monotonic() - self.started)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def bound(self, timeout: float) -> float:
        """``timeout`` cut to the time left (never negative)."""
        return max(0.0, min(timeout, self.remaining()))


@dataclass
class _State:
    state: str = CLOSED
    failures: int = 0  # consecutive
    opened_at: float = 0.0
    cooldown: float = 0.0  # of the current opening
    probing: bool = False
    opened_total: int = 0


@dataclass
class Breakers:
    """Circuit breakers by model id. Thread-safe; all methods are quick and never block on I/O.

    ``cooldown_s`` is the first time out; each failed probe doubles it (``backoff``) up to
    ``max_cooldown_s``; a success resets it.
    """

    failures: int = 5
    cooldown_s: float = 2.0
    on_change: object = None  # callable(model, state) for metrics and logs
    max_cooldown_s: float = 60.0
    backoff: float = 2.0
    clock: Callable[[], float] = time.monotonic
    _states: dict[str, _State] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def state(self, model: str) -> str:
        with self._lock:
            return self._peek(model).state

    def _peek(self, model: str) -> _State:
        s = self._states.setdefault(model, _State())
        if s.state == OPEN and self.clock() - s.opened_at >= s.cooldown:
            s.state, s.probing = HALF_OPEN, False
            self._changed(model, HALF_OPEN)
        return s

    def acquire(self, model: str) -> str | None:
        """May a request call ``model`` now? ``"call"``, ``"probe"`` (the one half-open try) or None (skip it)."""
        with self._lock:
            s = self._peek(model)
            if s.state == CLOSED:
                return "call"
            if s.state == HALF_OPEN and not s.probing:
                s.probing = True
                return "probe"
            return None

    def consecutive_failures(self, model: str) -> int:
        with self._lock:
            return self._peek(model).failures

    def retry_in(self, model: str) -> float:
        """Seconds until ``model`` may be probed (0 when it may be called now)."""
        with self._lock:
            s = self._peek(model)
            if s.state == OPEN:
                return max(0.0, s.cooldown - (self.clock() - s.opened_at))
            return 0.0

    def cooldown(self, model: str) -> float:
        """The time out of ``model``'s current (or last) opening; 0 if it never opened since its last success."""
        with self._lock:
            return self._peek(model).cooldown

    def success(self, model: str) -> None:
        with self._lock:
            s = self._peek(model)
            s.failures, s.probing, s.cooldown = 0, False, 0.0
            if s.state != CLOSED:
                s.state = CLOSED
                self._changed(model, CLOSED)

    def failure(self, model: str) -> None:
        with self._lock:
            s = self._peek(model)
            s.failures += 1
            if s.state == HALF_OPEN:  # the probe failed: out again, for longer
                s.cooldown = min(self.max_cooldown_s, max(s.cooldown, self.cooldown_s) * self.backoff)
            elif s.state == CLOSED and s.failures >= self.failures:
                s.cooldown = min(self.max_cooldown_s, self.cooldown_s)
            else:
                return
            s.state, s.opened_at, s.probing = OPEN, self.clock(), False
            s.opened_total += 1
            self._changed(model, OPEN)

    def release(self, model: str) -> None:
        """A probe ended without a verdict (cancelled): let the next request probe."""
        with self._lock:
            self._peek(model).probing = False

    def reset(self) -> None:
        with self._lock:
            self._states.clear()

    def _changed(self, model: str, state: str) -> None:
        if self.on_change is not None:
            self.on_change(model, state)
