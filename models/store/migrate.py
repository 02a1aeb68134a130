"""The store's schema, versioned with Alembic: one set of migrations for every backend.

The revisions live in ``models/store/migrations/versions`` (``0001`` is the
schema thrifty shipped before versioning; opening a store written before
then adopts it, adding what that store lacks). Opening a store runs
:func:`upgrade`, which brings it to :data:`HEAD` in one transaction,
serialised between processes: SQLite's write lock, or a PostgreSQL
advisory lock, so replicas starting together migrate once. A store at a
revision this code does not know was written by a newer thrifty and is
refused (:class:`~models.store.base.StoreVersionError`).

A new revision: a file in ``versions/`` whose ``down_revision`` is the
current head, written with ``op.*`` calls that both SQLite and PostgreSQL
accept (``op.batch_alter_table`` for SQLite's limited ALTER), and
:data:`HEAD` set to its id (a test checks the two agree).
"""

from __future__ import annotations

import threading
from pathlib import Path

HEAD = "0003"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "alembic_version"
_IN_PROCESS = threading.Lock()  # Alembic's ``context``/``op`` are process-global: one migration at a time per process


def upgrade(sqlalchemy_url, display: str, *, script_location: Path = MIGRATIONS) -> None:
    """Bring the store at ``sqlalchemy_url`` (a string or ``sqlalchemy.engine.URL``) to the newest revision."""
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError
    from sqlalchemy import create_engine, event
    from sqlalchemy.pool import NullPool

    from models.store.base import StoreVersionError

    engine = create_engine(sqlalchemy_url, poolclass=NullPool)
    if engine.dialect.name == "sqlite":
        # pysqlite opens transactions lazily and never for DDL: take the write lock at BEGIN instead,
        # so the whole upgrade is one transaction and concurrent openers wait for it
        @event.listens_for(engine, "connect")
        def _autocommit_driver(dbapi_connection, _record):
            dbapi_connection.isolation_level = None

        @event.listens_for(engine, "begin")
        def _begin_immediate(connection):
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    config = Config()
    config.set_main_option("script_location", str(script_location))
    script = ScriptDirectory.from_config(config)
    try:
        with _IN_PROCESS, engine.connect() as connection:
            for revision in MigrationContext.configure(connection).get_current_heads():
                try:
                    known = script.get_revision(revision)
                except CommandError:
                    known = None
                if known is None:
                    raise StoreVersionError(
                        f"the outcome store {display} has schema revision {revision!r}, newer than this thrifty knows "
                        f"(its newest is {script.get_current_head()!r}): it was written by a newer thrifty; upgrade thrifty"
                    )
            connection.commit()
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
            connection.commit()
    finally:
        engine.dispose()
