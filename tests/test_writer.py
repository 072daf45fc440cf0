"""The event writer against a real PostgreSQL: outages, the journal, replays, heartbeats."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from pydantic import SecretStr
from sqlalchemy.engine import make_url

import serialmon.writer
from serialmon.collector import SerializeMetricsCollector
from serialmon.config import load_settings, normalize_url
from serialmon.db import dispose_engines, get_engine, names
from serialmon.schema import init_db
from serialmon.writer import (
    BatchOp,
    Event,
    Origin,
    Statements,
    _safe_host,
    decode,
    encode,
    insert_events_copy,
    insert_events_unnest,
    journal_folder,
)

FAST = {"writer_flush_interval_sec": 0.05, "heartbeat_interval_sec": 0.2, "writer_retry_max_sec": 0.5}


def db_rows(libpq_url, query, params=()):
    with psycopg.connect(libpq_url) as conn:
        return conn.execute(query, params).fetchall()


def event_totals(libpq_url):
    return db_rows(libpq_url, "SELECT count(*), count(DISTINCT event_id) FROM serialmon.serialization_events")[0]


def wait_for(predicate, timeout=60.0, interval=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def journal_files(folder: Path, prefix: str = "") -> list[Path]:
    return sorted(folder.glob(f"{prefix}*.jsonl")) if folder.exists() else []


def libpq(url: str, database: str | None = None) -> str:
    parsed = make_url(normalize_url(url))
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
def other_database_url(server_url):
    """A second empty database on the session's server, for journals that must not cross databases."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(libpq(server_url, "postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield make_url(normalize_url(server_url)).set(database=name).render_as_string(hide_password=False)
    dispose_engines()
    with psycopg.connect(libpq(server_url, "postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def long_backoff(monkeypatch):
    """Make the first retry after a failure wait 30-60 s, so that only flush() or close() can end the backoff."""
    monkeypatch.setattr(serialmon.writer, "_INITIAL_BACKOFF_SEC", 60.0)
    return {**FAST, "writer_retry_max_sec": 60.0}


def test_server_restart_loses_no_event(initialized, libpq_url, embedded_server):
    if embedded_server is None:
        pytest.skip("needs the embedded server, which the test can stop and start")
    settings = initialized.model_copy(update=FAST)
    recorded = []
    with SerializeMetricsCollector(settings) as collector:
        batch_id = collector.start_batch_job(total_models=3000)
        stop_recording = threading.Event()

        def record() -> None:
            index = 0
            while not stop_recording.is_set() and index < 3000:
                status = ("success", "failure", "skipped")[index % 3]
                recorded.append(collector.record_serialization_sync(f"m{index}.prt", "part", status, 1.0))
                index += 1
                time.sleep(0.001)

        recorder = threading.Thread(target=record)
        recorder.start()
        assert wait_for(lambda: len(recorded) >= 500, timeout=30)
        embedded_server.stop()
        try:
            assert wait_for(lambda: collector.get_stats()["writer"]["database"] == "unavailable", timeout=30)
            count_at_stop = len(recorded)
            assert wait_for(lambda: len(recorded) >= count_at_stop + 300, timeout=30)
        finally:
            embedded_server.start()
        recorder.join(60)
        assert collector.flush(30)
        assert wait_for(lambda: event_totals(libpq_url)[0] >= len(recorded), timeout=60)
        stats = collector.get_stats()["writer"]
        collector.finish_batch_job(batch_id)
    dispose_engines()

    assert stats["spilled"] > 0
    assert stats["replayed"] > 0
    assert event_totals(libpq_url) == (len(recorded), len(recorded))
    stored = {row[0] for row in db_rows(libpq_url, "SELECT event_id FROM serialmon.serialization_events")}
    assert stored == set(recorded)
    processed, succeeded, failed, skipped = db_rows(
        libpq_url, "SELECT processed, succeeded, failed, skipped FROM serialmon.batch_jobs WHERE batch_id = %s",
        (batch_id,))[0]
    assert processed == len(recorded)
    assert (succeeded, failed, skipped) == tuple(
        sum(1 for index in range(len(recorded)) if index % 3 == status) for status in range(3)
    )


_CRASHING_CHILD = textwrap.dedent("""
    import os, sys
    from pydantic import SecretStr
    from serialmon.config import load_settings
    from serialmon.collector import SerializeMetricsCollector

    # The test's database through a role that does not exist: every connection fails, and the
    # journal folder is the database's own, because the user name is not part of its identity.
    settings = load_settings(database_url=sys.argv[2], data_dir=sys.argv[1], writer_flush_interval_sec=0.05)
    collector = SerializeMetricsCollector(settings)
    batch_id = collector.start_batch_job(total_models=500, name="crashed", batch_id="crash-batch")
    for index in range(500):
        collector.record_serialization_sync(f"m{index}.prt", "part", ("success", "failure")[index % 2], 3.0)
    assert collector.flush(30)
    os._exit(0)  # a crash: no close(), no atexit, the journal file stays "active"
""")


def test_journal_replay_after_crash_is_idempotent(initialized, libpq_url, tmp_path):
    data_dir = tmp_path / "shared-data"
    no_such_role = make_url(initialized.database_url.get_secret_value()).set(username="serialmon_no_such_role")
    child_url = no_such_role.render_as_string(hide_password=False)
    subprocess.run([sys.executable, "-c", _CRASHING_CHILD, str(data_dir), child_url], check=True, timeout=120)
    settings = initialized.model_copy(update={**FAST, "data_dir": data_dir})
    journal = journal_folder(settings)
    left = journal_files(journal, "active_")
    assert len(left) == 1
    assert len(left[0].read_text().splitlines()) == 501
    saved = tmp_path / "saved.jsonl"
    shutil.copy(left[0], saved)

    for attempt in range(2):
        with SerializeMetricsCollector(settings) as collector:
            collector.record_serialization_sync(f"starter{attempt}.prt", "part", "success", 1.0)  # starts the writer
            assert wait_for(lambda: not journal_files(journal, "active_") and not journal_files(journal, "replay_"))
            assert collector.flush(10)
            assert collector.get_stats()["writer"]["replayed"] == 501
        assert event_totals(libpq_url) == (501 + attempt, 501 + attempt)
        batch = db_rows(libpq_url, "SELECT name, total_models, processed, succeeded, failed "
                                   "FROM serialmon.batch_jobs WHERE batch_id = 'crash-batch'")
        assert batch == [("crashed", 500, 500, 250, 250)]
        shutil.copy(saved, left[0])  # the same file again, as if the crash left it twice

    assert journal_files(journal, "rejected_") == []


def test_missing_schema_is_logged_and_journaled(settings, libpq_url, caplog):
    settings = settings.model_copy(update=FAST)
    caplog.set_level(logging.WARNING, logger="serialmon.writer")
    with SerializeMetricsCollector(settings) as collector:
        for index in range(50):
            collector.record_serialization_sync(f"m{index}.prt", "part", "success", 1.0)
        assert collector.flush(10)
        assert wait_for(lambda: collector.get_stats()["writer"]["database"] == "schema_missing", timeout=10)
        missing = [record.getMessage() for record in caplog.records if "serialmon init" in record.getMessage()]
        assert len(missing) == 1
        assert collector.get_stats()["writer"]["spilled"] >= 50

        init_db(settings)
        assert wait_for(lambda: event_totals(libpq_url)[0] == 50, timeout=30)
        assert collector.get_stats()["writer"]["database"] == "ok"
    assert event_totals(libpq_url) == (50, 50)


def test_full_queue_spills_and_everything_arrives_once(initialized, libpq_url):
    settings = initialized.model_copy(update={**FAST, "queue_size": 100, "writer_batch_size": 50})
    with SerializeMetricsCollector(settings) as collector:
        ids = [collector.record_serialization_sync(f"m{index}.prt", "part", "success", 1.0) for index in range(3000)]
        assert collector.flush(30)
        assert collector.get_stats()["writer"]["spilled"] > 0
        assert wait_for(lambda: event_totals(libpq_url)[0] == 3000, timeout=60)
    assert event_totals(libpq_url) == (3000, 3000)
    assert {row[0] for row in db_rows(libpq_url, "SELECT event_id FROM serialmon.serialization_events")} == set(ids)


def test_flush_returns_quickly_when_database_unreachable(settings, tmp_path):
    down = settings.model_copy(update={
        **FAST, "database_url": SecretStr("postgresql://serialmon@127.0.0.1:1/nothing"), "data_dir": tmp_path / "d",
    })
    with SerializeMetricsCollector(down) as collector:
        for index in range(200):
            collector.record_serialization_sync(f"m{index}.prt", "part", "success", 1.0)
        assert collector.flush(10)
        writer = collector.get_stats()["writer"]
        assert writer["database"] == "unavailable"
        assert writer["spilled"] == 200
        assert "127.0.0.1" in writer["last_error"]
    journal = journal_folder(down)
    assert writer["journal_dir"] == str(journal)
    assert journal.parent == tmp_path / "d" / "journal"
    lines = [line for path in journal_files(journal) for line in path.read_text().splitlines()]
    assert len(lines) == 200
    assert journal_files(journal, "ready_")  # closed files are left for the next process



class SilentServer:
    """A TCP listener on 127.0.0.1 that accepts connections and never replies; it counts the connections."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                self.accepted.append(self.listener.accept()[0])

    def close(self) -> None:
        self.listener.close()
        for conn in self.accepted:
            conn.close()


def test_close_makes_one_attempt_at_silent_server(settings, tmp_path, long_backoff):
    silent = SilentServer()
    try:
        down = settings.model_copy(update={
            **long_backoff, "connect_timeout_sec": 1, "data_dir": tmp_path / "d",
            "database_url": SecretStr(f"postgresql://serialmon@127.0.0.1:{silent.port}/nothing"),
        })
        collector = SerializeMetricsCollector(down)
        collector.record_serialization_sync("m.prt", "part", "success", 1.0)
        assert collector.flush(30)
        before = len(silent.accepted)
        assert collector.close(30)
        after = len(silent.accepted)
    finally:
        silent.close()
    assert after - before == 1  # the final heartbeat: no second connection after a failed connect


def test_heartbeat_rows_appear_and_stop(initialized, libpq_url):
    settings = initialized.model_copy(update=FAST)
    with SerializeMetricsCollector(settings) as collector:
        batch_id = collector.start_batch_job(total_models=10)
        with collector.track("inside.prt", "part"):
            row = wait_for(lambda: db_rows(libpq_url, """
                SELECT worker_id, host, pid, current_model, batch_id, stopped_at
                FROM serialmon.worker_heartbeats WHERE current_model = 'inside.prt'"""), timeout=10)
            assert row == [(collector.worker_id, collector.get_stats()["host"], os.getpid(), "inside.prt",
                            batch_id, None)]
        first_beat = db_rows(libpq_url, "SELECT heartbeat_at FROM serialmon.batch_jobs WHERE batch_id = %s",
                             (batch_id,))[0][0]
        assert wait_for(lambda: db_rows(
            libpq_url, "SELECT heartbeat_at > %s FROM serialmon.batch_jobs WHERE batch_id = %s",
            (first_beat, batch_id))[0][0], timeout=10)
        assert wait_for(lambda: db_rows(
            libpq_url, "SELECT events_recorded FROM serialmon.worker_heartbeats")[0][0] == 1, timeout=10)
    stopped = db_rows(libpq_url, "SELECT stopped_at IS NOT NULL, events_recorded FROM serialmon.worker_heartbeats")
    assert stopped == [(True, 1)]


def test_finished_batch_heartbeat_frozen(initialized, libpq_url):
    settings = initialized.model_copy(update=FAST)
    with SerializeMetricsCollector(settings) as collector:
        batch_id = collector.start_batch_job()
        collector.finish_batch_job(batch_id, status="failed")
        assert collector.flush(10)
        beat = db_rows(libpq_url, "SELECT heartbeat_at, status FROM serialmon.batch_jobs")[0]
        time.sleep(0.6)  # three heartbeat intervals
        assert collector.flush(10)
        assert db_rows(libpq_url, "SELECT heartbeat_at, status FROM serialmon.batch_jobs")[0] == beat
    assert beat[1] == "failed"


def _origin(pid: int = 999_999) -> Origin:
    return Origin("elsewhere", pid, f"elsewhere:{pid}:1")


def _event(batch_id: str | None = None, status: str = "success") -> Event:
    return Event(uuid.uuid4(), time.time(), "m.prt", "part", status, 1.0, 80.0, 0, 5, "c", batch_id,
                 None, None, ["x"], _origin())


def test_damaged_journal_lines_rejected(initialized, libpq_url):
    settings = initialized.model_copy(update=FAST)
    journal = journal_folder(settings)
    journal.mkdir(parents=True)
    good = _event()
    ready = journal / "ready_999999_1_abcd_000000_elsewhere.jsonl"
    ready.write_bytes(encode(good) + b'{"kind": "event", "broken\n' + encode(good))
    with SerializeMetricsCollector(settings) as collector:
        collector.record_serialization_sync("starter.prt", "part", "success", 1.0)
        assert wait_for(lambda: not ready.exists(), timeout=10)
        assert collector.flush(10)
        assert journal_files(journal, "replay_") == []
        assert collector.get_stats()["writer"]["rejected"] == 1
    assert event_totals(libpq_url) == (2, 2)
    rejected = journal_files(journal, "rejected_")
    assert [path.read_bytes() for path in rejected] == [b'{"kind": "event", "broken\n']


def test_refused_rows_rejected_alone(initialized, libpq_url):
    settings = initialized.model_copy(update=FAST)
    journal = journal_folder(settings)
    journal.mkdir(parents=True)
    good, bad = _event(), _event()._replace(model_name="x" * 300)  # longer than varchar(255)
    ready = journal / "ready_999999_1_abcd_000000_elsewhere.jsonl"
    ready.write_bytes(encode(good) + encode(bad))
    with SerializeMetricsCollector(settings) as collector:
        collector.record_serialization_sync("starter.prt", "part", "success", 1.0)
        assert wait_for(lambda: not ready.exists(), timeout=10)
        assert collector.flush(10)
        assert journal_files(journal, "replay_") == []
    assert event_totals(libpq_url) == (2, 2)
    assert [json.loads(line)["event_id"] for line in journal_files(journal, "rejected_")[0].read_text().splitlines()] == [
        str(bad.event_id)
    ]


def test_live_owners_files_are_not_claimed(initialized, libpq_url):
    settings = initialized.model_copy(update=FAST)
    journal = journal_folder(settings)
    journal.mkdir(parents=True)
    host = _safe_host(socket.gethostname())
    # The parent process is alive and started before now; pid 999999 does not exist.
    alive = journal / f"active_{os.getppid()}_{int(time.time() * 1000)}_abcd_000000_{host}.jsonl"
    dead = journal / f"active_999999_1_abcd_000000_{host}.jsonl"
    alive.write_bytes(encode(_event()))
    dead.write_bytes(encode(_event()))
    with SerializeMetricsCollector(settings) as collector:
        collector.record_serialization_sync("starter.prt", "part", "success", 1.0)
        assert wait_for(lambda: not dead.exists(), timeout=10)
        assert collector.flush(10)
        assert journal_files(journal, "replay_") == []
    assert alive.exists()
    assert event_totals(libpq_url) == (2, 2)


@pytest.mark.parametrize("insert", [insert_events_unnest, insert_events_copy])
def test_insert_returns_only_new_rows(initialized, insert):
    statements = Statements(names(initialized))
    first = [_event("b1", "success"), _event("b1", "failure"), _event(None, "skipped")]
    engine = get_engine(initialized)
    raw = engine.raw_connection()
    try:
        conn = raw.driver_connection
        with conn.cursor() as cursor:
            assert sorted(insert(cursor, statements, first), key=str) == sorted(
                [("b1", "success"), ("b1", "failure"), (None, "skipped")], key=str)
            again = [first[0], _event("b2", "success")]
            assert insert(cursor, statements, again) == [("b2", "success")]
            cursor.execute("SELECT tags FROM serialmon.serialization_events WHERE event_id = %s", (first[0].event_id,))
            assert cursor.fetchone() == (["x"],)
        conn.commit()
    finally:
        raw.close()


def test_journal_lines_round_trip():
    event = _event("b1")
    decoded = decode(encode(event))
    assert decoded.occurred_at == pytest.approx(event.occurred_at, abs=1e-6)  # the journal keeps microseconds
    assert decoded._replace(occurred_at=event.occurred_at) == event
    op = BatchOp("start", "b1", 1_700_000_000.5, "nightly", 10, None, {"a": 1}, True, _origin())
    assert decode(encode(op)) == op
    with pytest.raises(ValueError):
        decode(b'{"kind": "other", "host": "h", "pid": 1, "worker_id": "w"}')


_EXITING_CHILD = textwrap.dedent("""
    import sys
    from serialmon.config import load_settings, set_settings
    from serialmon.collector import get_serialize_metrics_collector

    set_settings(load_settings(database_url=sys.argv[1], data_dir=sys.argv[2], writer_flush_interval_sec=3600))
    collector = get_serialize_metrics_collector()
    for index in range(300):
        collector.record_serialization_sync(f"m{index}.prt", "part", "success", 1.0)
    # No flush() and no close(): the interpreter's exit must write the queue.
""")


def test_interpreter_exit_writes_queued_events(initialized, libpq_url, tmp_path):
    url = initialized.database_url.get_secret_value()
    subprocess.run([sys.executable, "-c", _EXITING_CHILD, url, str(tmp_path / "child")], check=True, timeout=120)
    assert event_totals(libpq_url) == (300, 300)
    assert db_rows(libpq_url, "SELECT stopped_at IS NOT NULL FROM serialmon.worker_heartbeats") == [(True,)]


def test_journal_folder_names_database_not_account(tmp_path):
    base = load_settings(database_url="postgresql://alice:secret@db.example:5432/models", data_dir=tmp_path)
    folder = journal_folder(base)

    def folder_for(**update) -> Path:
        return journal_folder(base.model_copy(update=update))

    assert folder.parent == base.resolved_journal_dir
    assert folder.name.startswith("models-")
    assert "secret" not in str(folder)
    assert "alice" not in str(folder)
    assert folder_for(database_url=SecretStr("postgresql://bob:other@db.example/models")) == folder
    assert folder_for(database_url=SecretStr("postgresql://alice:secret@db.example:5432/other")) != folder
    assert folder_for(database_url=SecretStr("postgresql://alice:secret@db.example:5433/models")) != folder
    assert folder_for(database_url=SecretStr("postgresql://alice:secret@db2.example:5432/models")) != folder
    assert folder_for(state_schema="serialmon_staging") != folder


def test_journal_replays_only_into_its_database(settings, other_database_url, libpq_url):
    # Database A (the test's) has no schema yet, so its collector journals the event.
    settings_a = settings.model_copy(update=FAST)
    settings_b = settings_a.model_copy(update={"database_url": SecretStr(other_database_url)})
    init_db(settings_b)
    folder_a = journal_folder(settings_a)
    assert folder_a != journal_folder(settings_b)

    with SerializeMetricsCollector(settings_a) as collector:
        journaled = collector.record_serialization_sync("for-a.prt", "part", "success", 1.0)
        assert collector.flush(10)
        assert collector.get_stats()["writer"]["database"] == "schema_missing"
    assert len(journal_files(folder_a, "ready_")) == 1

    # A collector of database B scans its own folder after its first write, before flush() returns.
    with SerializeMetricsCollector(settings_b) as collector:
        collector.record_serialization_sync("for-b.prt", "part", "success", 1.0)
        assert collector.flush(10)
        assert collector.get_stats()["writer"]["replayed"] == 0
    assert db_rows(libpq(other_database_url), "SELECT model_name FROM serialmon.serialization_events") == [
        ("for-b.prt",)
    ]
    assert len(journal_files(folder_a, "ready_")) == 1

    init_db(settings_a)
    with SerializeMetricsCollector(settings_a) as collector:
        starter = collector.record_serialization_sync("starter.prt", "part", "success", 1.0)
        assert collector.flush(10)
        assert collector.get_stats()["writer"]["replayed"] == 1
    stored = db_rows(libpq_url, "SELECT event_id FROM serialmon.serialization_events")
    assert sorted(stored) == sorted([(journaled,), (starter,)])
    assert journal_files(folder_a) == []


def _record_during_outage(collector, embedded_server) -> uuid.UUID:
    """Stop the server, record one event until it is journaled, and start the server again."""
    collector.record_serialization_sync("before.prt", "part", "success", 1.0)
    assert collector.flush(10)
    embedded_server.stop()
    try:
        event_id = collector.record_serialization_sync("during.prt", "part", "success", 1.0)
        assert wait_for(lambda: collector.get_stats()["writer"]["spilled"] == 1, timeout=30)
    finally:
        embedded_server.start()
    return event_id


def test_close_after_outage_writes_stopped_at(initialized, libpq_url, embedded_server, long_backoff, caplog):
    if embedded_server is None:
        pytest.skip("needs the embedded server, which the test can stop and start")
    settings = initialized.model_copy(update=long_backoff)
    caplog.set_level(logging.INFO, logger="serialmon.writer")
    collector = SerializeMetricsCollector(settings)
    event_id = _record_during_outage(collector, embedded_server)
    assert collector.get_stats()["writer"]["database"] == "unavailable"  # still waiting out the backoff

    assert collector.close(30)
    dispose_engines()

    assert db_rows(libpq_url, "SELECT stopped_at IS NOT NULL FROM serialmon.worker_heartbeats") == [(True,)]
    assert db_rows(libpq_url, "SELECT count(*) FROM serialmon.serialization_events WHERE event_id = %s",
                   (event_id,)) == [(1,)]
    assert event_totals(libpq_url) == (2, 2)
    assert journal_files(journal_folder(settings)) == []
    stop_lines = [record.getMessage() for record in caplog.records if "stopped" in record.getMessage()]
    assert len(stop_lines) == 1
    assert "spilled 1, replayed 1" in stop_lines[0]
    assert "0 items of this writer left in the journal" in stop_lines[0]


def test_flush_after_outage_replays_journal(initialized, libpq_url, embedded_server, long_backoff):
    if embedded_server is None:
        pytest.skip("needs the embedded server, which the test can stop and start")
    settings = initialized.model_copy(update=long_backoff)
    with SerializeMetricsCollector(settings) as collector:
        event_id = _record_during_outage(collector, embedded_server)
        assert collector.get_stats()["writer"]["database"] == "unavailable"

        assert collector.flush(10)

        assert collector.get_stats()["writer"]["database"] == "ok"
        assert collector.get_stats()["writer"]["replayed"] == 1
        assert db_rows(libpq_url, "SELECT count(*) FROM serialmon.serialization_events WHERE event_id = %s",
                       (event_id,)) == [(1,)]
        assert journal_files(journal_folder(settings)) == []
    assert event_totals(libpq_url) == (2, 2)
