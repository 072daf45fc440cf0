"""Fixtures: a real PostgreSQL for the whole test session and a fresh database for each test.

The server is the embedded one (started in a temporary folder), or the one in
`SERIALMON_TEST_DATABASE_URL` when that is set; CI sets it to run the suite a
second time on another PostgreSQL major version.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

# Before serialmon is imported: the user data folder (platformdirs) of this
# session and of every child process points at a temporary folder, so no test
# can start or use a server in the real user's folder. `_no_default_server`
# fails the test that starts one there.
if os.name != "nt":
    os.environ["XDG_DATA_HOME"] = tempfile.mkdtemp(prefix="serialmon-test-home-")
    atexit.register(shutil.rmtree, os.environ["XDG_DATA_HOME"], ignore_errors=True)

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

from serialmon.config import Settings, load_settings, normalize_url, set_settings
from serialmon.db import dispose_engines
from serialmon.embedded import EmbeddedServer
from serialmon.schema import init_db

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _libpq(url: str, database: str | None = None) -> str:
    """Return a libpq conninfo for a SQLAlchemy URL, optionally for another database."""
    parsed = make_url(normalize_url(url))
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(autouse=True)
def _restore_main_module() -> Iterator[None]:
    """Put `__main__` back after each test.

    Streamlit's AppTest leaves the dashboard script installed as `__main__`, and
    a `spawn` child started later runs the parent's `__main__` again, so the
    child would run the dashboard (and start a database server) before its task.
    """
    main = sys.modules.get("__main__")
    yield
    if main is not None:
        sys.modules["__main__"] = main


@pytest.fixture(autouse=True)
def _no_default_server() -> Iterator[None]:
    """Fail a test that started the embedded server in the default data folder (and stop that server)."""
    from serialmon.config import DATA_DIR
    from serialmon.embedded import default_server

    pid_file = DATA_DIR / "postgres" / "pgdata" / "postmaster.pid"
    existed = pid_file.exists()
    yield
    if pid_file.exists() and not existed:
        default_server(DATA_DIR).stop()
        pytest.fail(f"the test started an embedded server in the default data folder {DATA_DIR}")


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of the PostgreSQL server shared by the session (its maintenance database)."""
    configured = os.environ.get("SERIALMON_TEST_DATABASE_URL")
    if configured:
        yield normalize_url(configured)
        return
    server = EmbeddedServer(tmp_path_factory.mktemp("pg"))
    url = server.start()
    yield url
    dispose_engines()
    server.stop()


@pytest.fixture(scope="session")
def embedded_server(server_url: str, tmp_path_factory: pytest.TempPathFactory) -> EmbeddedServer | None:
    """The session's embedded server object, or None when tests run against a configured server."""
    if os.environ.get("SERIALMON_TEST_DATABASE_URL"):
        return None
    folder = Path(make_url(server_url).query["host"]).parent
    return EmbeddedServer(folder)


@pytest.fixture
def database_url(server_url: str) -> Iterator[str]:
    """A new, empty database for one test; dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_libpq(server_url, "postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_url(normalize_url(server_url)).set(database=name).render_as_string(hide_password=False)
    yield url
    dispose_engines()
    set_settings(None)
    with psycopg.connect(_libpq(server_url, "postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def settings(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings for a test: its own database and data folder, installed process-wide."""
    for variable in list(os.environ):
        if variable.startswith(("SERIALMON_", "SMTP_", "ALERT_")) or variable in ("MODEL_DATA_DB_URL", "DATABASE_URL"):
            monkeypatch.delenv(variable, raising=False)
    monkeypatch.chdir(tmp_path)
    # Tests write rows and read them back at once, so the ledger compares every row version.
    current = load_settings(database_url=database_url, data_dir=tmp_path / "data", ledger_change_check="exact")
    set_settings(current)
    return current


@pytest.fixture
def initialized(settings: Settings) -> Settings:
    """Settings whose database has serialmon's schema and an empty monitored table."""
    init_db(settings, create_models_table=True)
    return settings


@pytest.fixture
def libpq_url(database_url: str) -> str:
    """The test database as a plain libpq URL, for psycopg connections that set up data."""
    return _libpq(database_url)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"shared input data not found at {SHARED_DATA}")
    return SHARED_DATA

