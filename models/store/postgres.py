"""The server outcome store: PostgreSQL through psycopg 3, shared by any number of ``thrifty serve`` replicas.

URL: ``postgresql://user[:password]@host[:port]/database[?sslmode=...]`` (libpq's
URI; ``postgres://`` and ``postgresql+psycopg://`` are accepted too). Leave the
password out of config files: libpq reads ``PGPASSWORD`` and ``~/.pgpass``.

Each store keeps one connection for its writer thread (records are group
committed, as with SQLite) and one for reads. A commit returns once
PostgreSQL has made it durable by its own ``synchronous_commit`` setting
(``on`` by default: flushed to its WAL); ``store_synchronous: FULL`` forces
``on`` for thrifty's sessions. A replica killed mid-transaction leaves
nothing half-written: PostgreSQL rolls the open transaction back when the
connection drops.

Budgets across replicas: a booking locks its (client, period) row of
``budget_spend`` with ``SELECT ... FOR UPDATE`` and sums the bookings in
flight only after the lock is held (a fresh snapshot under READ COMMITTED),
so replicas admit requests one at a time per budget; a record's settlement
updates the same row in the transaction that stores the record.
A connection that breaks (a server restart) is replaced on the next write.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import Any, Sequence

from models.store import migrate
from models.store.base import NotAStoreError, OutcomeStore, StoreUnavailableError

CONNECT_TIMEOUT_S = 10


def libpq_url(url: str) -> str:
    """``url`` as libpq reads it (the scheme without a SQLAlchemy driver suffix)."""
    scheme, sep, rest = str(url).partition("://")
    return f"postgresql://{rest}" if sep and scheme.lower().split("+")[0] in ("postgresql", "postgres") else str(url)


@lru_cache(maxsize=256)
def _pg(sql: str) -> str:
    """The shared SQL (``?`` placeholders) in psycopg's placeholder style."""
    return sql.replace("%", "%%").replace("?", "%s")


class PostgresStore(OutcomeStore):
    scheme = "postgresql"
    FOR_UPDATE = " FOR UPDATE"

    def __init__(self, url: str, *, synchronous: str = "NORMAL"):
        super().__init__(url, synchronous=synchronous)
        self.conninfo = libpq_url(url)
        self._reader = None
        self._reader_lock = threading.Lock()

    def _new_connection(self):
        import psycopg

        try:
            conn = psycopg.connect(self.conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        except psycopg.Error as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise StoreUnavailableError(f"cannot connect to the outcome store {self.display_url}: {reason}") from None
        if self.synchronous == "FULL":
            conn.execute("SET synchronous_commit = on")
        return conn

    def _prepare(self, create: bool) -> None:
        conn = self._new_connection()
        try:
            tables = {r[0] for r in conn.execute(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = current_schema() AND table_name IN (%s, %s)", (migrate.VERSION_TABLE, "decisions"))}
            versions = [r[0] for r in conn.execute(f"SELECT version_num FROM {migrate.VERSION_TABLE}")] \
                if migrate.VERSION_TABLE in tables else []
        finally:
            conn.close()
        if not create and not tables:
            raise NotAStoreError(f"the database {self.display_url} holds no outcome store (no decisions table)")
        if versions != [migrate.HEAD]:
            from sqlalchemy.engine import make_url

            migrate.upgrade(make_url(self.conninfo).set(drivername="postgresql+psycopg"), self.display_url)

    def _connect(self):
        return self._new_connection()

    def _commit(self, conn, records) -> None:
        # the whole transaction in one pipeline: its statements go out together, one round trip to the server
        with conn.pipeline():
            super()._commit(conn, records)

    def _usable(self, conn) -> bool:
        return not (conn.closed or conn.broken)

    def _execute(self, conn, sql: str, params: Sequence = ()) -> Any:
        return conn.execute(_pg(sql), params or None)

    def _executemany(self, conn, sql: str, rows: Sequence[Sequence]) -> None:
        with conn.cursor() as cursor:
            cursor.executemany(_pg(sql), rows)

    def _query(self, sql: str, params: Sequence = ()) -> list[dict]:
        import psycopg
        from psycopg.rows import dict_row

        with self._reader_lock:
            for attempt in (1, 2):  # a connection broken since the last read is replaced once
                if self._reader is None or self._reader.closed or self._reader.broken:
                    self._reader = self._new_connection()
                try:
                    with self._reader.cursor(row_factory=dict_row) as cursor:
                        cursor.execute(_pg(sql), params or None)
                        return cursor.fetchall()
                except psycopg.OperationalError:
                    if attempt == 2 or not self._reader.broken:
                        raise
        raise AssertionError("unreachable")

    def _close_readers(self) -> None:
        with self._reader_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
