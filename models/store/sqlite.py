"""The embedded outcome store: one SQLite file in WAL mode.

WAL: readers never block the writer (``thrifty logs export`` reads while the
server writes). ``synchronous=NORMAL`` loses nothing when the process is
killed; only an OS crash or power loss can drop the last commits, and
``synchronous=FULL`` (config ``store_synchronous``) syncs every commit and
survives those too. Worker processes of one server (``--workers``) share the
file: SQLite's write lock orders their transactions, and each writing
transaction takes it at ``BEGIN IMMEDIATE``.

URLs: a file path, or ``sqlite:///relative/path.db`` / ``sqlite:////absolute/path.db``.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Sequence

from models.store import migrate
from models.store.base import NotAStoreError, OutcomeStore, StoreError, StoreNotFoundError


def sqlite_path(url: str) -> Path:
    """The file of a SQLite store URL or path."""
    text = str(url)
    if "://" in text:
        scheme, rest = text.split("://", 1)
        if scheme.lower() != "sqlite" or not rest.startswith("/") or len(rest) == 1:
            raise StoreError(f"a SQLite store URL is sqlite:///relative/path.db or sqlite:////absolute/path.db, got {text!r}")
        text = rest[1:]
    return Path(text).expanduser()


def connect(path: Path, synchronous: str = "NORMAL") -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA busy_timeout=30000")  # other workers write to the same file
    conn.row_factory = sqlite3.Row
    return conn


class SQLiteStore(OutcomeStore):
    scheme = "sqlite"
    BEGIN_WRITE = "BEGIN IMMEDIATE"

    def __init__(self, url: str, *, synchronous: str = "NORMAL"):
        super().__init__(url, synchronous=synchronous)
        self.path = sqlite_path(url)

    @property
    def display_url(self) -> str:
        return str(self.path)

    def _prepare(self, create: bool) -> None:
        path = self.path
        if path.is_dir():
            raise NotAStoreError(f"{path} is a directory, not an outcome store (give the store's .db file)")
        if not path.exists():
            if not create:
                raise StoreNotFoundError(f"no outcome store at {path}")
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(path, timeout=30.0)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the outcome store {path}: {exc}") from None
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            versions = [r[0] for r in conn.execute(f"SELECT version_num FROM {migrate.VERSION_TABLE}")] \
                if migrate.VERSION_TABLE in tables else []
        except sqlite3.DatabaseError as exc:
            raise NotAStoreError(f"{path} is not an outcome store ({exc})") from None
        finally:
            conn.close()
        if not create and not tables & {migrate.VERSION_TABLE, "decisions"}:
            raise NotAStoreError(f"{path} is not an outcome store (a SQLite file without a decisions table)")
        if versions != [migrate.HEAD]:
            from sqlalchemy.engine import URL

            connect(path).close()  # WAL before the schema is written (the mode is kept in the file)
            migrate.upgrade(URL.create("sqlite", database=str(path)), str(path))

    def _connect(self) -> sqlite3.Connection:
        return connect(self.path, self.synchronous)

    def _execute(self, conn: sqlite3.Connection, sql: str, params: Sequence = ()) -> Any:
        return conn.execute(sql, params)

    def _executemany(self, conn: sqlite3.Connection, sql: str, rows: Sequence[Sequence]) -> None:
        conn.executemany(sql, rows)

    def _query(self, sql: str, params: Sequence = ()) -> list[dict]:
        # a fresh connection per read: any thread, and the latest commits of every process
        conn = connect(self.path)
        try:
            return [dict(r) for r in conn.execute(sql, params)]
        finally:
            conn.close()
