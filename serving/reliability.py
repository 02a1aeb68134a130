"""Fail-over building blocks: the order to try models in, a request deadline, and circuit breakers.

* :func:`failover_order` — the models a request may go to, from its decision:
  the chosen model first, then the other candidates the policy ranks
  *acceptable*, in the policy's order (all candidates when the decision is
  a fallback, i.e. none was acceptable, or with ``failover_to_unacceptable``).
  A passthrough request (a catalog model by name) has one candidate: it is
  retried, never sent to another model.
* :class:`Deadline` — the time a request has left; every upstream call is
  bounded by ``min(per-attempt timeout, time left)``.
* :class:`Breakers` — one circuit breaker per model: ``breaker_failures``
  consecutive failures (connection, timeout, 5xx, broken stream, upstream
  auth) open it for ``breaker_cooldown_s``; then one request at a time probes
  it (half-open): a success closes it, a failure opens it again. A 429 is
  back-pressure, not a fault: it neither opens nor closes a breaker. A 4xx
  answer proves the model is up and counts as a success.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from models.providers import UpstreamError
from router.decision import Decision

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

# kinds of upstream failure that move on to the next candidate (before any byte reached the client)
FAILOVER_KINDS = frozenset({"connection", "timeout", "server", "rate_limit", "stream", "auth", "upstream", "status"})
# kinds that count against a model's health
BREAKER_KINDS = frozenset({"connection", "timeout", "server", "stream", "auth", "upstream", "status"})


def failover_order(decision: Decision, *, include_unacceptable: bool = False) -> list[str]:
    """The chosen model, then the other candidates a fail-over may use, in the policy's order."""
    everyone = include_unacceptable or decision.fallback
    rest = [c.model for c in decision.candidates if c.model != decision.model and (everyone or c.acceptable)]
    return [decision.model] + rest


def fails_over(exc: UpstreamError) -> bool:
    """Whether another try (another model, or the same after its Retry-After) may succeed."""
    return exc.kind in FAILOVER_KINDS


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
    probing: bool = False
    opened_total: int = 0


@dataclass
class Breakers:
    """Circuit breakers by model id. Thread-safe; all methods are quick and never block on I/O."""

    failures: int = 5
    cooldown_s: float = 30.0
    on_change: object = None  # callable(model, state) for metrics and logs
    _states: dict[str, _State] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def state(self, model: str) -> str:
        with self._lock:
            return self._peek(model).state

    def _peek(self, model: str) -> _State:
        s = self._states.setdefault(model, _State())
        if s.state == OPEN and time.monotonic() - s.opened_at >= self.cooldown_s:
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
                return max(0.0, self.cooldown_s - (time.monotonic() - s.opened_at))
            return 0.0

    def success(self, model: str) -> None:
        with self._lock:
            s = self._peek(model)
            s.failures, s.probing = 0, False
            if s.state != CLOSED:
                s.state = CLOSED
                self._changed(model, CLOSED)

    def failure(self, model: str) -> None:
        with self._lock:
            s = self._peek(model)
            s.failures += 1
            if s.state == HALF_OPEN or (s.state == CLOSED and s.failures >= self.failures):
                s.state, s.opened_at, s.probing = OPEN, time.monotonic(), False
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
