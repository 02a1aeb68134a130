"""The outcome-store interface, the same contract on every backend (SQLite file, PostgreSQL database).

Writes and reads round-trip every field; group commit isolates a failing
record; a record written twice is stored and charged once; feedback needs a
known decision and the latest counts; budget bookings are ordered across
store objects (processes, replicas) and settled in the record's transaction;
a second store object on the same URL sees everything; the schema is
versioned: a fresh store is at the head revision, a pre-versioning SQLite
store is adopted, an upgrade runs when a store is opened, a store newer than
the code is refused, and stores opened concurrently are migrated once.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import threading
import time

import pytest

from models.store import (
    AttemptRecord,
    DecisionRecord,
    NotAStoreError,
    Reservation,
    StoreError,
    StoreVersionError,
    UnknownStoreError,
    display_url,
    get_backend,
    open_store,
    url_scheme,
)
from models.store import migrate


def record(i: int | str, *, ts: float | None = None, status: str = "ok", model: str = "m-a", cost: float = 0.01,
           reservation: Reservation | None = None, **fields) -> DecisionRecord:
    decision_id = i if isinstance(i, str) else f"d{i:04d}"
    values = dict(
        decision_id=decision_id, ts=time.time() if ts is None else ts, endpoint="/v1/chat/completions",
        requested_model="thrifty", candidates=[{"model": model, "p_success": 0.9, "cost": cost}], chosen_model=model,
        propensity=0.75, status=status, client="tests", task="chat", prompt=f"prompt {decision_id}", prompt_chars=9,
        router_version="r/1", policy="threshold", knob=0.5, answered_model=model if status == "ok" else None,
        input_tokens=10, output_tokens=20, cost_usd=cost, latency_s=0.2,
        attempts=[AttemptRecord(model, time.time(), 0.2, "ok", input_tokens=10, output_tokens=20, cost_usd=cost)],
        reservation=reservation,
    )
    return DecisionRecord(**{**values, **fields})


def write_all(store, records) -> list:
    async def main():
        return await asyncio.gather(*(store.write(r) for r in records), return_exceptions=True)

    return asyncio.run(main())


@pytest.fixture
def store(store_url):
    with open_store(store_url) as opened:
        yield opened


# -- writes and reads ----------------------------------------------------------------------------------------
def test_a_record_round_trips_every_field(store):
    original = record(1, fallback=True, explored=True, stream=True, finish_reason="stop", response="hi",
                      error_kind=None, http_status=200)
    original.attempts.insert(0, AttemptRecord("m-b", time.time(), 0.1, "error", "server", 500))
    write_all(store, [original])
    row = store.decision("d0001")
    expected = original.row()
    expected["candidates"] = original.candidates
    assert {k: row[k] for k in expected} == expected
    assert (row["fallback"], row["explored"], row["stream"]) == (1, 1, 1)
    assert [(a["n"], a["model"], a["status"], a["http_status"]) for a in row["attempts"]] == [
        (0, "m-b", "error", 500), (1, "m-a", "ok", None)]
    assert row["feedback"] == [] and store.decision("nope") is None


def test_group_commit_isolates_a_failing_record(store):
    def candidate(i):
        r = record(i)
        if i == 7:
            r.candidates = [{"model": "m", "p": object()}]  # cannot be encoded: this record alone fails
        if i == 13:
            r.status = None  # refused by the database (NOT NULL): this record alone fails
        return r

    results = write_all(store, [candidate(i) for i in range(40)])
    assert [i for i, r in enumerate(results) if r is not None] == [7, 13]
    assert isinstance(results[7], TypeError) and "null" in str(results[13]).lower()
    assert all(store.decision(f"d{i:04d}") is not None for i in range(40) if i not in (7, 13))
    assert store.decision("d0007") is None and store.decision("d0013") is None
    assert store.submit(record(99)).result(timeout=30) is None and store.decision("d0099") is not None


def test_a_record_written_again_replaces_it_and_is_charged_once(store):
    booking = Reservation("d0001", "tests", 0.0, 1.0)
    assert asyncio.run(store.reserve(booking, 10.0, time.time() + 60)).admitted
    first = record(1, cost=0.25, reservation=booking)
    write_all(store, [first])
    again = record(1, cost=0.25, reservation=booking, status="client_closed")
    again.attempts.append(AttemptRecord("m-b", time.time(), cost_usd=0.0))
    write_all(store, [again])
    # the same decision twice in one group commit: its last state, charged once
    twice = Reservation("d0002", "tests", 0.0, 1.0)
    assert asyncio.run(store.reserve(twice, 10.0, time.time() + 60)).admitted
    write_all(store, [record(2, cost=0.5, reservation=twice), record(2, cost=0.5, reservation=twice, task="last")])
    row = store.decision("d0001")
    assert row["status"] == "client_closed" and len(row["attempts"]) == 2
    assert store.decision("d0002")["task"] == "last" and len(store.decision("d0002")["attempts"]) == 1
    assert store.budget_spent("tests", 0.0) == (pytest.approx(0.75), 2)
    assert len(store.joined(statuses=None, include_unlabeled=True)) == 2


def test_feedback_needs_a_known_decision_and_the_latest_counts(store):
    write_all(store, [record(1), record(2)])

    async def main():
        return [await store.add_feedback("d0001", 1.0, "user"), await store.add_feedback("unknown", 1.0, "user"),
                await store.add_feedback("d0001", 0.25, "judge", score_raw=2.5)]

    assert asyncio.run(main()) == [True, False, True]
    row = store.decision("d0001")
    assert [(f["success"], f["source"], f["score_raw"]) for f in row["feedback"]] == [(1.0, "user", None), (0.25, "judge", 2.5)]
    labeled = store.joined()
    assert [(r["decision_id"], r["fb_success"], r["fb_source"]) for r in labeled] == [("d0001", 0.25, "judge")]
    assert [r["fb_success"] for r in store.joined(include_unlabeled=True)] == [0.25, None]


def test_joined_filters_by_status_and_time_and_attempts_by_time(store):
    t0 = 1_700_000_000.0
    write_all(store, [record(1, ts=t0 + 2), record(2, ts=t0, status="error"), record(3, ts=t0 + 1, status="routed"),
                      record(4, ts=t0 + 3)])
    ids = lambda rows: [r["decision_id"] for r in rows]  # noqa: E731
    assert ids(store.joined(include_unlabeled=True)) == ["d0001", "d0004"]
    assert ids(store.joined(include_unlabeled=True, statuses=None)) == ["d0002", "d0003", "d0001", "d0004"]
    assert ids(store.joined(include_unlabeled=True, statuses=("error", "routed"))) == ["d0002", "d0003"]
    assert ids(store.joined(include_unlabeled=True, statuses=None, since=t0 + 1, until=t0 + 3)) == ["d0003", "d0001"]
    assert store.joined(include_unlabeled=True, statuses=()) == []
    assert (store.count(), store.count(statuses=("ok",)), store.count(since=t0 + 1, until=t0 + 3), store.count(statuses=())) == (
        4, 2, 2, 0)
    assert len(store.attempts()) == 4 and store.attempts(since=time.time() + 3600) == []


def test_close_writes_what_is_queued_and_a_second_store_object_sees_it(store, store_url):
    futures = [store.submit(record(i)) for i in range(100)]
    store.close()
    assert all(f.done() and f.exception() is None for f in futures)
    with pytest.raises(StoreError, match="closed"):
        store.submit(record(999))
    with open_store(store_url, create=False) as other:
        assert len(other.joined(include_unlabeled=True)) == 100


def test_postgres_connections_broken_under_the_store_are_replaced(postgres_url):
    """A server restart or an administrator killing sessions: the next write and read go through."""
    import psycopg

    with open_store(postgres_url) as store, psycopg.connect(postgres_url, autocommit=True) as admin:
        write_all(store, [record(1)])
        assert store.decision("d0001") is not None
        killed = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                               " WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchall()
        assert len(killed) == 2  # the writer's connection and the reader's
        assert write_all(store, [record(2)]) == [None]
        assert asyncio.run(store.add_feedback("d0002", 1.0, "user"))
        assert [r["decision_id"] for r in store.joined()] == ["d0002"]


# -- budgets ---------------------------------------------------------------------------------------------------
def test_bookings_fit_the_limit_expire_and_settle_in_the_records_transaction(store):
    now = time.time()

    async def reserve(i, amount, expires_at=None):
        return await store.reserve(Reservation(f"d{i:04d}", "tests", 0.0, amount), 1.0, expires_at or now + 60)

    checks = [asyncio.run(reserve(i, 0.3)) for i in range(4)]
    assert [c.admitted for c in checks] == [True, True, True, False]
    assert checks[3].reserved_usd == pytest.approx(0.9) and checks[3].spent_usd == 0
    # a booking left by a killed process stops counting once it expires
    assert asyncio.run(reserve(10, 0.05, expires_at=time.time() + 0.2)).admitted
    time.sleep(0.3)
    # settle one booking to what the request cost: the booking is released, the spend added
    write_all(store, [record(0, cost=0.02, reservation=Reservation("d0000", "tests", 0.0, 0.3))])
    assert store.budget_spent("tests", 0.0) == (pytest.approx(0.02), 1)
    check = asyncio.run(reserve(5, 0.35))
    assert check.admitted and check.spent_usd == pytest.approx(0.02) and check.reserved_usd == pytest.approx(0.6)
    assert store.budget_spent("other", 0.0) == (0.0, 0)


def test_bookings_from_several_store_objects_never_overshoot(store_url):
    """Four store objects on one URL (as four processes or replicas) book concurrently: at most the limit."""
    stores = [open_store(store_url) for _ in range(4)]
    admitted: list[int] = []
    lock = threading.Lock()

    def book(k: int) -> None:
        async def main():
            for i in range(15):
                check = await stores[k].reserve(Reservation(f"s{k}-{i}", "tests", 0.0, 0.1), 2.0, time.time() + 60)
                if check.admitted:
                    with lock:
                        admitted.append(1)

        asyncio.run(main())

    try:
        threads = [threading.Thread(target=book, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert len(admitted) == 20  # 60 attempts of $0.10 against $2.00: exactly 20 fit
        held = stores[0]._query("SELECT COALESCE(SUM(amount_usd), 0) AS held FROM budget_reservations")[0]["held"]
        assert held == pytest.approx(2.0)
    finally:
        for s in stores:
            s.close()


# -- URLs and backends -----------------------------------------------------------------------------------------
def test_urls_pick_backends_and_hide_passwords(tmp_path):
    assert url_scheme("outcomes.db") == url_scheme("sqlite:///x.db") == "sqlite"
    assert url_scheme("postgres://h/db") == url_scheme("postgresql+psycopg://h/db") == "postgresql"
    assert get_backend("postgres") is get_backend("postgresql")
    with pytest.raises(UnknownStoreError, match=r"no outcome-store backend for redis:// URLs \(known: postgresql://, sqlite://"):
        open_store("redis://localhost/0")
    assert display_url("postgresql://u:secret@h:5432/db?sslmode=require") == "postgresql://u:***@h:5432/db?sslmode=require"
    assert display_url("postgresql://u@h/db") == "postgresql://u@h/db"
    # sqlite:/// + relative path, sqlite://// + absolute path, ~ expanded
    target = tmp_path / "a.db"
    with open_store(f"sqlite:///{target}") as s:
        assert s.path == target and target.exists()
    assert repr(get_backend("postgresql")("postgresql://u:secret@h/db")) == "PostgresStore('postgresql://u:***@h/db')"


# -- the versioned schema ----------------------------------------------------------------------------------------
def _versions(store) -> list[str]:
    return [r["version_num"] for r in store._query(f"SELECT version_num FROM {migrate.VERSION_TABLE}")]


def test_a_new_store_is_at_the_head_revision_of_the_migrations(store):
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(migrate.MIGRATIONS))
    assert ScriptDirectory.from_config(config).get_current_head() == migrate.HEAD
    assert _versions(store) == [migrate.HEAD]


def test_opening_a_store_from_before_versioning_adopts_it(tmp_path):
    """A SQLite store of the first release (no budget tables, no version table) gains what it lacks, keeps its rows."""
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(FIRST_RELEASE_SCHEMA)
    later = ("cascade", "novelty", "decision_latency_s")  # columns added by later revisions
    first = {k: v for k, v in record(1).row().items() if k not in later}
    columns = ", ".join(first)
    conn.execute(f"INSERT INTO decisions ({columns}) VALUES ({', '.join('?' for _ in first)})", tuple(first.values()))
    conn.commit()
    conn.close()
    with pytest.raises(NotAStoreError):  # a reader refuses a SQLite file that is no store at all ...
        sqlite3.connect(tmp_path / "other.db").execute("CREATE TABLE t (x)").connection.close()
        open_store(tmp_path / "other.db", create=False)
    with open_store(path, create=False) as store:  # ... but adopts an old store
        assert _versions(store) == [migrate.HEAD]
        assert store.decision("d0001")["prompt"] == "prompt d0001"
        assert asyncio.run(store.reserve(Reservation("d0002", "tests", 0.0, 0.5), 1.0, time.time() + 60)).admitted
        write_all(store, [record(2, reservation=Reservation("d0002", "tests", 0.0, 0.5))])
        assert store.budget_spent("tests", 0.0) == (pytest.approx(0.01), 1)


def test_opening_runs_a_new_revision_and_refuses_a_store_newer_than_the_code(store_url, tmp_path):
    with open_store(store_url) as store:
        write_all(store, [record(1)])
    # a later revision, as a future thrifty would ship it: a column added on both backends
    scripts = tmp_path / "migrations"
    shutil.copytree(migrate.MIGRATIONS, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    (scripts / "versions" / "9999_test.py").write_text(
        f'import sqlalchemy as sa\nfrom alembic import op\n\nrevision = "9999"\ndown_revision = "{migrate.HEAD}"\n'
        'branch_labels = None\ndepends_on = None\n\n\ndef upgrade():\n'
        '    op.add_column("decisions", sa.Column("region", sa.Text, server_default="eu"))\n'
    )
    backend = get_backend(url_scheme(store_url))(store_url)
    migrate.upgrade(_sqlalchemy_url(backend), backend.display_url, script_location=scripts)
    try:  # read without opening (opening would refuse it: see below)
        assert _versions(backend) == ["9999"]
        assert backend.decision("d0001")["region"] == "eu"  # the rows were kept, the column added
    finally:
        backend.close()
    # this code knows revisions up to HEAD: a store at 9999 was written by a newer thrifty
    with pytest.raises(StoreVersionError, match="schema revision '9999', newer than this thrifty knows"):
        open_store(store_url)


def test_stores_opened_together_are_migrated_once(store_url):
    """Three processes (as replicas starting together) and two threads open a new store at once."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(3) as pool:
        opened = pool.map_async(_open_and_count, [store_url] * 3)
        errors: list[BaseException] = []

        def open_one() -> None:
            try:
                open_store(store_url).close()
            except BaseException as exc:  # collected, then asserted empty
                errors.append(exc)

        threads = [threading.Thread(target=open_one) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert opened.get(timeout=120) == [[migrate.HEAD]] * 3
    assert errors == []
    with open_store(store_url) as store:
        assert _versions(store) == [migrate.HEAD]


def _open_and_count(url: str) -> list[str]:
    with open_store(url) as store:
        return _versions(store)


def _sqlalchemy_url(backend):
    if backend.scheme == "sqlite":
        from sqlalchemy.engine import URL

        return URL.create("sqlite", database=str(backend.path))
    from sqlalchemy.engine import make_url

    return make_url(backend.conninfo).set(drivername="postgresql+psycopg")


# the schema of serving/store.py in thrifty's first release (commit 585d790), before budgets and versioning
FIRST_RELEASE_SCHEMA = """
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
"""


def test_training_rows_leave_out_cascade_decisions_the_report_keeps_them(store):
    """A cascade's answering model is picked by the answers: its feedback is no fair training label; its cost still counts."""
    from models.store.outcomes import outcome_frame
    from models.store.records import CASCADE_POLICY

    cascade_run = {"profile": "agree", "stages": [{"stage": 1, "models": ["m-a", "m-b"], "outcome": "accept"}]}
    write_all(store, [record(1), record(2, policy=CASCADE_POLICY, cascade=cascade_run)])
    for decision_id in ("d0001", "d0002"):
        assert asyncio.run(store.add_feedback(decision_id, 1.0, "tests"))
    everything = outcome_frame(store)
    training = outcome_frame(store, cascades=False)
    assert sorted(everything["decision_id"]) == ["d0001", "d0002"] and everything.attrs["cascades_left_out"] == 0
    assert list(training["decision_id"]) == ["d0001"] and training.attrs["cascades_left_out"] == 1
    assert store.decision("d0002")["cascade"] == cascade_run
