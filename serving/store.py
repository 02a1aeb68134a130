"""The outcome store: every routed request, every upstream attempt, and feedback, in one SQLite file.

SQLite in WAL mode (readers never block the writer; ``thrifty logs export``
can read while the server writes). All writes go through one writer thread
with a queue, so the event loop never waits on disk and the connection is
never shared between threads; ``await store.write(...)`` returns once the
record is committed (records queued together are committed together, in
one transaction: group commit; a record that fails is retried alone, so it
never takes the others with it), and the server awaits it *before* a response completes,
so an answered request's record survives the process being killed
(``synchronous=NORMAL`` in WAL mode loses nothing on a process crash; only an
OS crash or power loss can drop the last commits; ``synchronous="FULL"``
(config ``store_synchronous``) syncs every commit and survives those too).

Tables::

    decisions  one row per request: decision, prompt, chosen/answered model, usage, cost, latency, status
    attempts   one row per upstream call made for a decision (fail-over adds rows)
    feedback   outcomes attached later by decision id (the latest one counts)
    budget_spend         settled spend per client and budget period (survives restarts)
    budget_reservations  the maximum cost of each request in flight under a budget

Budgets (:mod:`serving.budgets`): ``reserve`` checks and books a request's
maximum cost in one ``BEGIN IMMEDIATE`` transaction, serialised by the writer
thread in a process and by SQLite's write lock across worker processes; the
record's write settles it in the same transaction that stores the decision.
"""

from __future__ import annotations

import asyncio
import json
import queue
import sqlite3
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable

from serving.fastjson import dumps

SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    decision_id     TEXT PRIMARY KEY,
    ts              REAL NOT NULL,
    endpoint        TEXT NOT NULL,
    client          TEXT,
    requested_model TEXT NOT NULL,
    task            TEXT,
    prompt          TEXT,
    prompt_chars    INTEGER,
    router_version  TEXT,
    policy          TEXT,
    knob            REAL,
    fallback        INTEGER,
    candidates      TEXT NOT NULL,
    chosen_model    TEXT NOT NULL,
    propensity      REAL NOT NULL,
    explored        INTEGER NOT NULL DEFAULT 0,
    answered_model  TEXT,
    input_tokens    INTEGER,
    output_tokens   INTEGER,
    cost_usd        REAL,
    latency_s       REAL,
    status          TEXT NOT NULL,
    error_kind      TEXT,
    http_status     INTEGER,
    stream          INTEGER NOT NULL DEFAULT 0,
    finish_reason   TEXT,
    response        TEXT
);
CREATE INDEX IF NOT EXISTS decisions_ts ON decisions (ts);
CREATE TABLE IF NOT EXISTS attempts (
    decision_id   TEXT NOT NULL,
    n             INTEGER NOT NULL,
    model         TEXT NOT NULL,
    ts            REAL NOT NULL,
    latency_s     REAL,
    status        TEXT NOT NULL,
    error_kind    TEXT,
    http_status   INTEGER,
    input_tokens  INTEGER,
    output_tokens INTEGER,
    cost_usd      REAL,
    PRIMARY KEY (decision_id, n)
);
CREATE TABLE IF NOT EXISTS feedback (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    decision_id TEXT NOT NULL,
    ts          REAL NOT NULL,
    success     REAL NOT NULL,
    score_raw   REAL,
    source      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_decision ON feedback (decision_id);
CREATE TABLE IF NOT EXISTS budget_spend (
    client       TEXT NOT NULL,
    period_start REAL NOT NULL,
    spent_usd    REAL NOT NULL DEFAULT 0,
    requests     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (client, period_start)
);
CREATE TABLE IF NOT EXISTS budget_reservations (
    decision_id  TEXT PRIMARY KEY,
    client       TEXT NOT NULL,
    period_start REAL NOT NULL,
    amount_usd   REAL NOT NULL,
    expires_at   REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS budget_reservations_client ON budget_reservations (client, period_start);
"""


@dataclass
class AttemptRecord:
    model: str
    ts: float
    latency_s: float | None = None
    status: str = "ok"  # ok | error
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


@dataclass
class DecisionRecord:
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
    attempts: list[AttemptRecord] = field(default_factory=list)
    reservation: Reservation | None = None  # settled when the record is written

    @property
    def spend_usd(self) -> float:
        """What the request cost upstream, every attempt included."""
        return float(sum(a.cost_usd or 0.0 for a in self.attempts))

    def row(self) -> dict[str, Any]:
        """The ``decisions`` row (every field but ``attempts`` and ``reservation``; candidates as JSON)."""
        data = {name: getattr(self, name) for name in _ROW_FIELDS}
        data["candidates"] = dumps(self.candidates).decode()
        data["fallback"] = int(self.fallback)
        data["explored"] = int(self.explored)
        data["stream"] = int(self.stream)
        return data


_ROW_FIELDS = tuple(f.name for f in fields(DecisionRecord) if f.name not in ("attempts", "reservation"))
_INSERT_DECISION = (
    f"INSERT OR REPLACE INTO decisions ({', '.join(_ROW_FIELDS)}) VALUES ({', '.join(':' + f for f in _ROW_FIELDS)})"
)


def connect(path: Path, synchronous: str = "NORMAL") -> sqlite3.Connection:
    if synchronous not in ("NORMAL", "FULL"):
        raise ValueError(f"synchronous must be NORMAL or FULL, got {synchronous!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA busy_timeout=30000")  # other workers write to the same file
    conn.row_factory = sqlite3.Row
    return conn


_STOP = object()


class OutcomeStore:
    """The SQLite outcome store with a single writer thread.

    ``await write(record)``: commit a decision and its attempts.
    ``submit(record)``: the same, without waiting (for paths that cannot await, e.g. a cancelled stream).
    ``await add_feedback(...)``: attach an outcome; False when the decision id is unknown.
    """

    MAX_BATCH = 256  # records committed in one transaction at most

    def __init__(self, path: str | Path, *, synchronous: str = "NORMAL"):
        self.path = Path(path).expanduser()
        self.synchronous = synchronous
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- lifecycle -------------------------------------------------------------
    def open(self) -> "OutcomeStore":
        if self._thread is None:
            conn = connect(self.path)
            conn.executescript(SCHEMA)
            conn.close()
            self._thread = threading.Thread(target=self._run, name="thrifty-store-writer", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Write everything queued, then stop the writer."""
        if self._thread is not None and not self._closed:
            self._closed = True
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        conn = connect(self.path, self.synchronous)
        try:
            stop = False
            while not stop:
                batch = [self._queue.get()]
                while len(batch) < self.MAX_BATCH:  # whatever else is queued already goes in the same round
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                records: list[tuple[DecisionRecord, Any]] = []
                for item in batch:
                    if item is _STOP:
                        stop = True
                    elif isinstance(item[0], DecisionRecord):
                        records.append(item)
                        continue
                    self._write_records(conn, records)  # before a job or the stop: queue order is kept
                    records = []
                    if not stop:
                        self._run_job(conn, *item)
                self._write_records(conn, records)
        finally:
            conn.close()

    @staticmethod
    def _run_job(conn: sqlite3.Connection, job: Callable[[sqlite3.Connection], Any], future: Future) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(job(conn))
        except BaseException as exc:  # report to the waiter, keep the writer alive
            _rollback(conn)
            future.set_exception(exc)

    @staticmethod
    def _write_records(conn: sqlite3.Connection, records: list[tuple[DecisionRecord, Any]]) -> None:
        """Commit ``records`` in one transaction (each alone if that fails), then tell their waiters."""
        if not records:
            return
        outcomes: list[BaseException | None]
        try:
            conn.execute("BEGIN")
            for record, _ in records:
                _write_record(conn, record)
            conn.execute("COMMIT")
            outcomes = [None] * len(records)
        except BaseException:
            _rollback(conn)
            outcomes = []
            for record, _ in records:
                try:
                    _insert(conn, record)
                    outcomes.append(None)
                except BaseException as exc:
                    _rollback(conn)
                    outcomes.append(exc)
        by_loop: dict[Any, list] = {}
        for (_, waiter), outcome in zip(records, outcomes):
            if isinstance(waiter, Future):
                if waiter.set_running_or_notify_cancel():
                    waiter.set_exception(outcome) if outcome is not None else waiter.set_result(None)
            else:  # (loop, asyncio future) of write(): one wake-up per loop for the whole batch
                by_loop.setdefault(waiter[0], []).append((waiter[1], outcome))
        for loop, done in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle_waiters, done)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

    def _submit(self, job: Callable[[sqlite3.Connection], Any]) -> Future:
        if self._thread is None:
            raise RuntimeError("the outcome store is not open")
        future: Future = Future()
        self._queue.put((job, future))
        return future

    # -- writes ----------------------------------------------------------------
    def submit(self, record: DecisionRecord) -> Future:
        """Queue ``record``; the future is done once it is committed."""
        if self._thread is None:
            raise RuntimeError("the outcome store is not open")
        future: Future = Future()
        self._queue.put((record, future))
        return future

    async def write(self, record: DecisionRecord) -> None:
        """Commit ``record``; returns once it is committed (it is committed even if the caller stops waiting)."""
        if self._thread is None:
            raise RuntimeError("the outcome store is not open")
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._queue.put((record, (loop, waiter)))
        await waiter

    async def add_feedback(self, decision_id: str, success: float, source: str, score_raw: float | None = None) -> bool:
        def job(conn: sqlite3.Connection) -> bool:
            conn.execute("BEGIN IMMEDIATE")
            known = conn.execute("SELECT 1 FROM decisions WHERE decision_id = ?", (decision_id,)).fetchone()
            if known:
                conn.execute(
                    "INSERT INTO feedback (decision_id, ts, success, score_raw, source) VALUES (?, ?, ?, ?, ?)",
                    (decision_id, time.time(), success, score_raw, source),
                )
            conn.execute("COMMIT")
            return bool(known)

        return await asyncio.wrap_future(self._submit(job))

    async def reserve(self, reservation: Reservation, limit_usd: float, expires_at: float) -> BudgetCheck:
        """Book ``reservation`` if the period's settled spend, the other reservations and it fit in ``limit_usd``."""

        def job(conn: sqlite3.Connection) -> BudgetCheck:
            now = time.time()
            key = (reservation.client, reservation.period_start)
            conn.execute("BEGIN IMMEDIATE")
            # reservations of requests that never settled (a killed worker) stop counting when they expire
            conn.execute("DELETE FROM budget_reservations WHERE expires_at <= ?", (now,))
            row = conn.execute("SELECT spent_usd FROM budget_spend WHERE client = ? AND period_start = ?", key).fetchone()
            spent = float(row[0]) if row else 0.0
            held = float(conn.execute(
                "SELECT COALESCE(SUM(amount_usd), 0) FROM budget_reservations WHERE client = ? AND period_start = ?", key
            ).fetchone()[0])
            admitted = spent + held + reservation.amount_usd <= limit_usd * (1 + 1e-12)
            if admitted:
                conn.execute(
                    "INSERT OR REPLACE INTO budget_reservations (decision_id, client, period_start, amount_usd, expires_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (reservation.decision_id, reservation.client, reservation.period_start, reservation.amount_usd, expires_at),
                )
            conn.execute("COMMIT")
            return BudgetCheck(admitted, spent, held)

        return await asyncio.wrap_future(self._submit(job))

    def budget_spent(self, client: str, period_start: float) -> tuple[float, int]:
        """Settled spend (USD) and requests of ``client`` in the period starting at ``period_start``."""
        conn = connect(self.path)
        try:
            row = conn.execute(
                "SELECT spent_usd, requests FROM budget_spend WHERE client = ? AND period_start = ?", (client, period_start)
            ).fetchone()
            return (float(row[0]), int(row[1])) if row else (0.0, 0)
        finally:
            conn.close()

    # -- reads (any thread; a fresh connection each time) ------------------------
    def decision(self, decision_id: str) -> dict | None:
        conn = connect(self.path)
        try:
            row = conn.execute("SELECT * FROM decisions WHERE decision_id = ?", (decision_id,)).fetchone()
            if row is None:
                return None
            out = dict(row)
            out["candidates"] = json.loads(out["candidates"])
            out["attempts"] = [
                dict(r) for r in conn.execute("SELECT * FROM attempts WHERE decision_id = ? ORDER BY n", (decision_id,))
            ]
            out["feedback"] = [
                dict(r) for r in conn.execute("SELECT * FROM feedback WHERE decision_id = ? ORDER BY id", (decision_id,))
            ]
            return out
        finally:
            conn.close()


def _insert(conn: sqlite3.Connection, record: DecisionRecord) -> None:
    """Commit one record in a transaction of its own."""
    conn.execute("BEGIN")
    _write_record(conn, record)
    conn.execute("COMMIT")


def _write_record(conn: sqlite3.Connection, record: DecisionRecord) -> None:
    """A decision, its attempts and its budget settlement, inside the caller's transaction."""
    if record.reservation is not None:
        _settle(conn, record)
    conn.execute(_INSERT_DECISION, record.row())
    conn.execute("DELETE FROM attempts WHERE decision_id = ?", (record.decision_id,))
    conn.executemany(
        "INSERT INTO attempts (decision_id, n, model, ts, latency_s, status, error_kind, http_status,"
        " input_tokens, output_tokens, cost_usd) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (record.decision_id, n, a.model, a.ts, a.latency_s, a.status, a.error_kind, a.http_status,
             a.input_tokens, a.output_tokens, a.cost_usd)
            for n, a in enumerate(record.attempts)
        ],
    )


def _rollback(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error:  # no transaction open
        pass


def _settle_waiters(done: list) -> None:
    """On the waiters' event loop: resolve the futures of a committed batch."""
    for waiter, outcome in done:
        if not waiter.done():
            if outcome is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(outcome)


def _settle(conn: sqlite3.Connection, record: DecisionRecord) -> None:
    """Release the record's reservation and add what it cost, once (a record written again is not charged again)."""
    r = record.reservation
    conn.execute("DELETE FROM budget_reservations WHERE decision_id = ?", (r.decision_id,))
    if conn.execute("SELECT 1 FROM decisions WHERE decision_id = ?", (record.decision_id,)).fetchone():
        return
    conn.execute(
        "INSERT INTO budget_spend (client, period_start, spent_usd, requests) VALUES (?, ?, ?, 1)"
        " ON CONFLICT (client, period_start) DO UPDATE SET spent_usd = spent_usd + excluded.spent_usd,"
        " requests = requests + 1",
        (r.client, r.period_start, record.spend_usd),
    )


def read_joined(path: str | Path, *, include_unlabeled: bool = False, statuses: Iterable[str] = ("ok",)) -> list[dict]:
    """Decisions joined with their latest feedback (rows without feedback only if asked)."""
    conn = connect(Path(path).expanduser())
    statuses = tuple(statuses)
    try:
        join = "LEFT JOIN" if include_unlabeled else "JOIN"
        sql = f"""
            SELECT d.*, f.success AS fb_success, f.score_raw AS fb_score_raw, f.source AS fb_source
            FROM decisions d
            {join} (
                SELECT decision_id, success, score_raw, source,
                       ROW_NUMBER() OVER (PARTITION BY decision_id ORDER BY id DESC) AS rn
                FROM feedback
            ) f ON f.decision_id = d.decision_id AND f.rn = 1
            WHERE d.status IN ({", ".join("?" for _ in statuses)})
            ORDER BY d.ts
        """
        return [dict(r) for r in conn.execute(sql, statuses)]
    finally:
        conn.close()
