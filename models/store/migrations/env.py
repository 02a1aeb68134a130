"""Alembic's entry point for the outcome store (run by ``models.store.migrate.upgrade``, on its connection)."""

from alembic import context

# any constant: the advisory lock that makes PostgreSQL replicas starting together migrate one at a time
PG_MIGRATION_LOCK = 7_150_011

connection = context.config.attributes["connection"]
context.configure(connection=connection, transaction_per_migration=False,
                  render_as_batch=connection.dialect.name == "sqlite")

with context.begin_transaction():
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({PG_MIGRATION_LOCK})")
    context.run_migrations()
