"""The outcome-store interface, its errors, and the registry of backends by URL scheme.

``open_store(url_or_path)`` picks the backend from the URL's scheme and opens
it (its schema is created, or upgraded by the versioned migrations in
``models/store/migrations``)::

    open_store("outcomes.db")                        # a path: SQLite
    open_store("sqlite:////var/lib/thrifty/outcomes.db")
    open_store("postgresql://thrifty@db:5432/thrifty")

Every backend shares the write path defined here. All writes go through one
writer thread per store with a queue, so an event loop never waits on the
database and a connection is never shared between threads. ``await
store.write(record)`` returns once the record is committed. Records queued
together are committed in one transaction (group commit). A record that
fails is retried alone, so it never takes the others with it. The server
awaits the write *before* a response completes, so an answered request's
record survives the process being killed.

Budgets: ``reserve`` checks and books a request's maximum cost in one
transaction that holds the lock of the (client, period) row. SQLite takes the
database's write lock; PostgreSQL locks the ``budget_spend`` row with
``SELECT ... FOR UPDATE``. The record's write settles the booking in the same
transaction that stores the decision. Settlements lock their rows in a fixed
order, so concurrent writers, in one process or on several hosts, cannot
deadlock each other.

Reads (``decision``, ``joined``, ``count``, ``attempts``, ``budget_spent``)
may be called from any thread.

A backend subclasses :class:`OutcomeStore`. It supplies the connections,
the SQL dialect's few differences and the schema check, and is registered
here by its URL scheme.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import queue
import threading
import time
from abc import ABC, abstractmethod
from concurrent.futures import Future
from typing import Any, Callable, ClassVar, Iterable, Sequence
from urllib.parse import urlsplit, urlunsplit

from models.store.records import ATTEMPT_COLUMNS, DECISION_COLUMNS, BudgetCheck, DecisionRecord, FeedbackRecord, Reservation


# -- errors -----------------------------------------------------------------------------------------
class StoreError(RuntimeError):
    """The outcome store cannot be opened or used."""


class UnknownStoreError(StoreError, ValueError):
    """No backend is registered for the URL's scheme."""


class StoreNotFoundError(StoreError):
    """No outcome store at that place (and one was not to be created)."""


class NotAStoreError(StoreError, ValueError):
    """The file or database exists but is not an outcome store."""


class StoreUnavailableError(StoreError):
    """The store's server cannot be reached, or its connection broke."""


class StoreVersionError(StoreError):
    """The store's schema was written by a newer thrifty than this one."""


# -- the registry --------------------------------------------------------------------------------
# scheme -> "module:class" (imported when first used: a backend's driver loads only if a URL needs it)
BACKENDS: dict[str, str] = {
    "sqlite": "models.store.sqlite:SQLiteStore",
    "postgresql": "models.store.postgres:PostgresStore",
}
SCHEME_ALIASES = {"postgres": "postgresql"}


def register_backend(scheme: str, target: str) -> None:
    """Make ``open_store`` open URLs of ``scheme`` with ``target`` ("module:OutcomeStoreSubclass")."""
    BACKENDS[scheme.lower()] = target


def url_scheme(url_or_path: str) -> str:
    """The backend scheme of a store URL; a plain path is SQLite."""
    text = str(url_or_path)
    if "://" not in text:
        return "sqlite"
    scheme = text.split("://", 1)[0].lower().split("+", 1)[0]  # postgresql+psycopg -> postgresql
    return SCHEME_ALIASES.get(scheme, scheme)


def get_backend(scheme: str) -> type["OutcomeStore"]:
    target = BACKENDS.get(SCHEME_ALIASES.get(scheme.lower(), scheme.lower()))
    if target is None:
        known = ", ".join(f"{s}://" for s in sorted(BACKENDS))
        raise UnknownStoreError(f"no outcome-store backend for {scheme}:// URLs (known: {known}, or a file path for SQLite)")
    module, _, name = target.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as exc:
        raise UnknownStoreError(f"the {scheme}:// store backend cannot load: {exc}") from None


def open_store(url_or_path: str | Any, *, create: bool = True, synchronous: str = "NORMAL") -> "OutcomeStore":
    """The outcome store at ``url_or_path``, open and at the current schema version.

    ``create=False`` (readers: export, retrain) refuses a place that holds no
    store yet instead of creating one there.
    """
    text = str(url_or_path)
    backend = get_backend(url_scheme(text))
    return backend(text, synchronous=synchronous).open(create=create)


def display_url(url: str) -> str:
    """``url`` without its password (for messages and logs)."""
    if "://" not in url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username}:***@{host}" if parts.username else f"***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


# -- SQL shared by every backend (``?`` placeholders; a backend rewrites them for its driver) ----------
_DECISION_UPDATE = ", ".join(f"{c} = excluded.{c}" for c in DECISION_COLUMNS if c != "decision_id")
UPSERT_DECISION = (
    f"INSERT INTO decisions ({', '.join(DECISION_COLUMNS)}) VALUES ({', '.join('?' for _ in DECISION_COLUMNS)})"
    f" ON CONFLICT (decision_id) DO UPDATE SET {_DECISION_UPDATE}"
)
DELETE_ATTEMPTS = "DELETE FROM attempts WHERE decision_id = ?"
INSERT_ATTEMPT = f"INSERT INTO attempts ({', '.join(ATTEMPT_COLUMNS)}) VALUES ({', '.join('?' for _ in ATTEMPT_COLUMNS)})"
# what a record cost, added to its period once: a record written again (same decision id) is not charged again
SETTLE_SPEND = (
    "INSERT INTO budget_spend (client, period_start, spent_usd, requests) SELECT ?, ?, ?, 1"
    " WHERE NOT EXISTS (SELECT 1 FROM decisions WHERE decision_id = ?)"
    " ON CONFLICT (client, period_start) DO UPDATE SET spent_usd = budget_spend.spent_usd + excluded.spent_usd,"
    " requests = budget_spend.requests + 1"
)
RELEASE_RESERVATION = "DELETE FROM budget_reservations WHERE decision_id = ?"
ENSURE_BUDGET_ROW = (
    "INSERT INTO budget_spend (client, period_start, spent_usd, requests) VALUES (?, ?, 0, 0)"
    " ON CONFLICT (client, period_start) DO NOTHING"
)
SELECT_SPENT = "SELECT spent_usd, requests FROM budget_spend WHERE client = ? AND period_start = ?"
DELETE_EXPIRED = "DELETE FROM budget_reservations WHERE client = ? AND period_start = ? AND expires_at <= ?"
SUM_HELD = "SELECT COALESCE(SUM(amount_usd), 0) FROM budget_reservations WHERE client = ? AND period_start = ?"
BOOK = (
    "INSERT INTO budget_reservations (decision_id, client, period_start, amount_usd, expires_at) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (decision_id) DO UPDATE SET client = excluded.client, period_start = excluded.period_start,"
    " amount_usd = excluded.amount_usd, expires_at = excluded.expires_at"
)
# one statement: the feedback row exists only if its decision does
ADD_FEEDBACK = (
    "INSERT INTO feedback (decision_id, ts, success, score_raw, source)"
    " SELECT ?, CAST(? AS DOUBLE PRECISION), CAST(? AS DOUBLE PRECISION), CAST(? AS DOUBLE PRECISION), ?"
    " WHERE EXISTS (SELECT 1 FROM decisions WHERE decision_id = ?)"
)
SELECT_DECISION = "SELECT * FROM decisions WHERE decision_id = ?"
SELECT_ATTEMPTS_OF = "SELECT * FROM attempts WHERE decision_id = ? ORDER BY n"
SELECT_FEEDBACK_OF = "SELECT * FROM feedback WHERE decision_id = ? ORDER BY id"

_STOP = object()


class OutcomeStore(ABC):
    """Every routed request, every upstream attempt, feedback and budget bookings.

    Writes: ``await write(record)`` commits a decision and its attempts (and
    settles its budget booking); ``submit(record)`` does the same without
    waiting, for code that cannot await; ``await add_feedback(...)`` attaches
    an outcome (False when the decision id is unknown); ``await reserve(...)``
    books a request's maximum cost against a budget.

    Reads (any thread): ``decision(id)``, ``joined(...)`` (decisions with
    their latest feedback), ``count(...)``, ``attempts(...)``, ``budget_spent(...)``.

    ``close()`` writes everything queued, then stops the writer; a store is
    also a context manager.
    """

    scheme: ClassVar[str]
    MAX_BATCH = 256  # records committed in one transaction at most
    BEGIN_WRITE = "BEGIN"  # how a writing transaction starts (SQLite: take the write lock at once)
    FOR_UPDATE = ""  # how a budget row is locked for the rest of the transaction

    def __init__(self, url: str, *, synchronous: str = "NORMAL"):
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be NORMAL or FULL, got {synchronous!r}")
        self.url = str(url)
        self.synchronous = synchronous
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._opened = False
        self._closed = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({display_url(self.url)!r})"

    @property
    def display_url(self) -> str:
        return display_url(self.url)

    # -- what a backend supplies ------------------------------------------------------------------
    @abstractmethod
    def _prepare(self, create: bool) -> None:
        """Check that the store is reachable and is an outcome store; create or upgrade its schema."""

    @abstractmethod
    def _connect(self) -> Any:
        """A new connection for the writer thread, in autocommit mode (transactions are explicit)."""

    @abstractmethod
    def _execute(self, conn: Any, sql: str, params: Sequence = ()) -> Any:
        """Run one statement (``?`` placeholders); returns a cursor."""

    @abstractmethod
    def _executemany(self, conn: Any, sql: str, rows: Sequence[Sequence]) -> None: ...

    @abstractmethod
    def _query(self, sql: str, params: Sequence = ()) -> list[dict]:
        """Rows of a read, as dicts, from any thread."""

    def _usable(self, conn: Any) -> bool:
        """Whether the writer's connection can still be used (a server-side backend reconnects if not)."""
        return True

    def _close_connection(self, conn: Any) -> None:
        conn.close()

    def _close_readers(self) -> None:
        """Close connections kept for reads."""

    # -- lifecycle -----------------------------------------------------------------------------------
    def open(self, *, create: bool = True) -> "OutcomeStore":
        if not self._opened:
            self._prepare(create)
            self._opened = True
        return self

    def close(self) -> None:
        """Write everything queued, then stop the writer."""
        if self._closed:
            return
        self._closed = True
        with self._start_lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(_STOP)
            thread.join()
        self._close_readers()

    def __enter__(self) -> "OutcomeStore":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def _writer(self) -> None:
        """Start the writer thread on the first write (readers never need one)."""
        if self._thread is not None:
            return
        with self._start_lock:
            if self._closed:
                raise StoreError(f"the outcome store {self.display_url} is closed")
            if not self._opened:
                raise StoreError(f"the outcome store {self.display_url} is not open")
            if self._thread is None:
                thread = threading.Thread(target=self._run, name="thrifty-store-writer", daemon=True)
                thread.start()
                self._thread = thread

    def _run(self) -> None:
        self._conn: Any = None  # the writer thread's own connection
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
                    self._write_records(records)  # before a job or the stop: queue order is kept
                    records = []
                    if not stop:
                        self._run_job(*item)
                self._write_records(records)
        finally:
            self._drop_connection()

    def _connection(self) -> Any:
        """The writer's connection: a new one if there is none or the last one broke."""
        if self._conn is not None and not self._usable(self._conn):
            self._drop_connection()
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                self._close_connection(conn)
            except Exception:  # noqa: BLE001 - a broken connection may refuse to close cleanly
                pass

    def _rollback(self) -> None:
        if self._conn is None:
            return
        try:
            self._execute(self._conn, "ROLLBACK")
        except Exception:  # noqa: BLE001 - no transaction open, or the connection is gone
            pass

    def _in_transaction(self, work: Callable[[Any], Any]) -> Any:
        """``work(conn)``, retried once on a new connection if the connection broke under it.

        Everything written here may be written twice (a connection can break
        after the server committed): records are upserts and are charged once,
        a booking is an upsert by decision id.
        """
        try:
            return work(self._connection())
        except BaseException:
            self._rollback()
            if self._conn is None or self._usable(self._conn):
                raise
        try:
            return work(self._connection())
        except BaseException:
            self._rollback()
            raise

    def _run_job(self, job: Callable[[Any], Any], future: Future) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(self._in_transaction(job))
        except BaseException as exc:  # report to the waiter, keep the writer alive
            future.set_exception(exc)

    def _write_records(self, records: list[tuple[DecisionRecord, Any]]) -> None:
        """Commit ``records`` in one transaction (each alone if that fails), then tell their waiters."""
        if not records:
            return
        outcomes: list[BaseException | None]
        try:
            self._in_transaction(lambda conn: self._commit(conn, [r for r, _ in records]))
            outcomes = [None] * len(records)
        except BaseException:
            outcomes = []
            for record, _ in records:
                try:
                    self._in_transaction(lambda conn: self._commit(conn, [record]))
                    outcomes.append(None)
                except BaseException as exc:
                    outcomes.append(exc)
        _notify([(waiter, outcome) for (_, waiter), outcome in zip(records, outcomes)])

    def _commit(self, conn: Any, records: list[DecisionRecord]) -> None:
        """Decisions, their attempts and their budget settlements, in one transaction.

        Settlements come first, in (client, period) order: the rows they lock
        are the ones ``reserve`` locks, so two writers always take them in the
        same order.
        """
        latest = {r.decision_id: r for r in records}  # the same decision twice in a batch: its last state
        settle = sorted(
            ((r.reservation.client, r.reservation.period_start, r.spend_usd, r.decision_id)
             for r in latest.values() if r.reservation is not None),
        )
        self._execute(conn, self.BEGIN_WRITE)
        if settle:
            self._executemany(conn, SETTLE_SPEND, settle)
            self._executemany(conn, RELEASE_RESERVATION, [(s[3],) for s in settle])
        self._executemany(conn, UPSERT_DECISION, [_decision_values(r) for r in latest.values()])
        self._executemany(conn, DELETE_ATTEMPTS, [(d,) for d in latest])
        attempts = [row for r in latest.values() for row in r.attempt_rows()]
        if attempts:
            self._executemany(conn, INSERT_ATTEMPT, attempts)
        self._execute(conn, "COMMIT")

    def _submit_job(self, job: Callable[[Any], Any]) -> Future:
        self._writer()
        future: Future = Future()
        self._queue.put((job, future))
        return future

    # -- writes -----------------------------------------------------------------------------------------
    def submit(self, record: DecisionRecord) -> Future:
        """Queue ``record``; the future is done once it is committed."""
        self._writer()
        future: Future = Future()
        self._queue.put((record, future))
        return future

    async def write(self, record: DecisionRecord) -> None:
        """Commit ``record``; returns once it is committed (it is committed even if the caller stops waiting)."""
        self._writer()
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._queue.put((record, (loop, waiter)))
        await waiter

    async def add_feedback(self, decision_id: str, success: float, source: str, score_raw: float | None = None) -> bool:
        """Attach an outcome to decision ``decision_id``; False (nothing stored) when no such decision exists."""
        feedback = FeedbackRecord(decision_id, float(success), source, time.time(), score_raw)

        def job(conn: Any) -> bool:
            cursor = self._execute(conn, ADD_FEEDBACK, (
                feedback.decision_id, feedback.ts, feedback.success, feedback.score_raw, feedback.source, feedback.decision_id,
            ))
            return cursor.rowcount > 0

        return await asyncio.wrap_future(self._submit_job(job))

    async def reserve(self, reservation: Reservation, limit_usd: float, expires_at: float) -> BudgetCheck:
        """Book ``reservation`` if the period's settled spend, the other bookings and it fit in ``limit_usd``."""

        def job(conn: Any) -> BudgetCheck:
            key = (reservation.client, reservation.period_start)
            self._execute(conn, self.BEGIN_WRITE)
            self._execute(conn, ENSURE_BUDGET_ROW, key)
            spent = float(self._execute(conn, SELECT_SPENT + self.FOR_UPDATE, key).fetchone()[0])
            # bookings of requests that never settled (a killed process) stop counting when they expire
            self._execute(conn, DELETE_EXPIRED, (*key, time.time()))
            held = float(self._execute(conn, SUM_HELD, key).fetchone()[0])
            admitted = spent + held + reservation.amount_usd <= limit_usd * (1 + 1e-12)
            if admitted:
                self._execute(conn, BOOK, (reservation.decision_id, *key, reservation.amount_usd, expires_at))
            self._execute(conn, "COMMIT")
            return BudgetCheck(admitted, spent, held)

        return await asyncio.wrap_future(self._submit_job(job))

    # -- reads ------------------------------------------------------------------------------------------
    def budget_spent(self, client: str, period_start: float) -> tuple[float, int]:
        """Settled spend (USD) and settled requests of ``client`` in the period starting at ``period_start``."""
        rows = self._query(SELECT_SPENT, (client, period_start))
        return (float(rows[0]["spent_usd"]), int(rows[0]["requests"])) if rows else (0.0, 0)

    def decision(self, decision_id: str) -> dict | None:
        """One decision row, with ``candidates`` parsed and its ``attempts`` and ``feedback`` rows; None if unknown."""
        rows = self._query(SELECT_DECISION, (decision_id,))
        if not rows:
            return None
        out = rows[0]
        out["candidates"] = json.loads(out["candidates"])
        out["attempts"] = self._query(SELECT_ATTEMPTS_OF, (decision_id,))
        out["feedback"] = self._query(SELECT_FEEDBACK_OF, (decision_id,))
        return out

    def joined(self, *, include_unlabeled: bool = False, statuses: Iterable[str] | None = ("ok",),
               since: float | None = None, until: float | None = None) -> list[dict]:
        """Decision rows joined with their latest feedback (``fb_success``, ``fb_score_raw``, ``fb_source``, ``fb_ts``).

        Rows without feedback only with ``include_unlabeled``; ``statuses=None``
        keeps every status; ``since``/``until`` bound ``ts`` (epoch seconds,
        ``since <= ts < until``). Ordered by ``ts``.
        """
        where, params = _time_window("d.ts", since, until)
        if statuses is not None:
            statuses = tuple(statuses)
            if not statuses:
                return []
            where.append(f"d.status IN ({', '.join('?' for _ in statuses)})")
            params.extend(statuses)
        join = "LEFT JOIN" if include_unlabeled else "JOIN"
        sql = f"""
            SELECT d.*, f.success AS fb_success, f.score_raw AS fb_score_raw, f.source AS fb_source, f.ts AS fb_ts
            FROM decisions d
            {join} (
                SELECT decision_id, success, score_raw, source, ts,
                       ROW_NUMBER() OVER (PARTITION BY decision_id ORDER BY id DESC) AS rn
                FROM feedback
            ) f ON f.decision_id = d.decision_id AND f.rn = 1
            {"WHERE " + " AND ".join(where) if where else ""}
            ORDER BY d.ts, d.decision_id
        """
        return self._query(sql, params)

    def count(self, *, statuses: Iterable[str] | None = None, since: float | None = None, until: float | None = None) -> int:
        """How many decisions are stored (of ``statuses``, ``since <= ts < until`` when given)."""
        where, params = _time_window("ts", since, until)
        if statuses is not None:
            statuses = tuple(statuses)
            if not statuses:
                return 0
            where.append(f"status IN ({', '.join('?' for _ in statuses)})")
            params.extend(statuses)
        sql = f"SELECT COUNT(*) AS n FROM decisions {'WHERE ' + ' AND '.join(where) if where else ''}"
        return int(self._query(sql, params)[0]["n"])

    def attempts(self, *, since: float | None = None, until: float | None = None) -> list[dict]:
        """Every upstream attempt (``since <= ts < until`` when given), ordered by time."""
        where, params = _time_window("ts", since, until)
        sql = f"SELECT * FROM attempts {'WHERE ' + ' AND '.join(where) if where else ''} ORDER BY ts, decision_id, n"
        return self._query(sql, params)


def _time_window(column: str, since: float | None, until: float | None) -> tuple[list[str], list]:
    where, params = [], []
    if since is not None:
        where.append(f"{column} >= ?")
        params.append(float(since))
    if until is not None:
        where.append(f"{column} < ?")
        params.append(float(until))
    return where, params


def _decision_values(record: DecisionRecord) -> tuple:
    row = record.row()
    return tuple(row[c] for c in DECISION_COLUMNS)


def _notify(done: list[tuple[Any, BaseException | None]]) -> None:
    """Resolve waiters: a concurrent Future, or (loop, asyncio future) -- one wake-up per loop for all of them."""
    by_loop: dict[Any, list] = {}
    for waiter, outcome in done:
        if isinstance(waiter, Future):
            if waiter.set_running_or_notify_cancel():
                waiter.set_exception(outcome) if outcome is not None else waiter.set_result(None)
        else:
            by_loop.setdefault(waiter[0], []).append((waiter[1], outcome))
    for loop, settled in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle_waiters, settled)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass


def _settle_waiters(done: list) -> None:
    """On the waiters' event loop: resolve the futures of a committed batch."""
    for waiter, outcome in done:
        if not waiter.done():
            if outcome is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(outcome)
