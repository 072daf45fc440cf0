"""Database access: engines, quoted names, and one adapter for every kind of session.

Every query in serialmon is written once against a synchronous SQLAlchemy
`Connection`. `run_sync()` runs it on the session the caller passes (an
`AsyncSession`, `AsyncConnection`, `Session` or `Connection`), or on serialmon's
own engine when there is none. `arun()` is the async twin, which never blocks
the event loop.

Every connection that serialmon opens sets `application_name`,
`statement_timeout` and `lock_timeout`, so a monitor query can never stall the
pipeline behind a lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

# The dialect is imported with this module rather than at the first connection,
# which may happen in the event writer's thread: a module that a thread is halfway
# through importing when the process forks stays broken in the child.
import sqlalchemy.dialects.postgresql.psycopg  # noqa: F401
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from serialmon.config import Settings, get_settings, mask_url, normalize_url
from serialmon.embedded import default_server
from serialmon.errors import DatabaseUnavailable, first_line

logger = logging.getLogger(__name__)

T = TypeVar("T")
AnySession = AsyncSession | AsyncConnection | Session | Connection | None

_engines: dict[tuple, Engine] = {}
_engines_lock = threading.Lock()
# Embedded servers this process has started (or found running). A server that
# is stopped afterwards stays stopped: `serialmon db stop` must not be undone by
# the next reconnect of a running collector.
_started_embedded: set[Path] = set()


def database_url(settings: Settings | None = None, *, start_embedded: bool = True) -> str:
    """Return the SQLAlchemy URL to use: the configured one, or the embedded server's.

    With no URL configured and `start_embedded`, starts the embedded server
    the first time this process asks (a no-op when it already runs). Later calls
    return its URL without starting it, so a server that an operator stopped
    stays stopped until `serialmon db start`. Raises `EmbeddedServerError`
    when the start fails.
    """
    settings = settings or get_settings()
    if settings.database_url is not None:
        url = make_url(normalize_url(settings.database_url.get_secret_value()))
        if settings.db_sslmode and "sslmode" not in url.query:
            url = url.update_query_dict({"sslmode": settings.db_sslmode})
        return url.render_as_string(hide_password=False)

    server = default_server(settings.data_dir)
    if not start_embedded or server.data_dir in _started_embedded:
        return server.url()
    url = server.start()
    _started_embedded.add(server.data_dir)
    return url


def _connect_args(settings: Settings) -> dict[str, Any]:
    options = f"-c statement_timeout={settings.statement_timeout_ms} -c lock_timeout={settings.lock_timeout_ms}"
    return {
        "application_name": settings.application_name,
        "options": options,
        "connect_timeout": settings.connect_timeout_sec,
    }


def get_engine(settings: Settings | None = None, *, url: str | None = None) -> Engine:
    """Return the shared synchronous engine for these settings (created on first use)."""
    settings = settings or get_settings()
    url = url or database_url(settings)
    key = ("sync", url, settings.application_name, settings.statement_timeout_ms, settings.lock_timeout_ms)
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            engine = create_engine(
                url, connect_args=_connect_args(settings), pool_pre_ping=True, pool_size=5, max_overflow=5
            )
            _dispose_after_fork(engine)
            _engines[key] = engine
        return engine


def create_async(settings: Settings | None = None, *, url: str | None = None) -> AsyncEngine:
    """Create an async engine with serialmon's connection settings; the caller disposes it."""
    settings = settings or get_settings()
    url = url or database_url(settings)
    return create_async_engine(url, connect_args=_connect_args(settings), pool_pre_ping=True)


def _forget_pools_in_child() -> None:
    """Give a forked child empty pools, leaving the parent's connections untouched.

    This must run before the child checks anything out. The pool pings a
    reused connection before any checkout listener runs. A ping from the
    child on a socket that the parent is using mixes both processes' traffic
    in one session, and the parent then waits for a reply the child has read.
    """
    global _engines_lock
    _engines_lock = threading.Lock()  # another thread may have held it at the fork
    for engine in list(_engines.values()):
        engine.dispose(close=False)


if hasattr(os, "register_at_fork"):  # POSIX; Windows starts children with spawn, which shares nothing
    os.register_at_fork(after_in_child=_forget_pools_in_child)


def _dispose_after_fork(engine: Engine) -> None:
    """Stop a forked child from reusing its parent's pooled connections.

    `_forget_pools_in_child` already replaces the pools at the fork; this pid
    check also covers a child created by other means.
    """

    @event.listens_for(engine, "connect")
    def _remember_pid(dbapi_connection: Any, record: Any) -> None:
        record.info["pid"] = os.getpid()

    @event.listens_for(engine, "checkout")
    def _check_pid(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        from sqlalchemy.exc import DisconnectionError

        if record.info.get("pid") != os.getpid():
            record.dbapi_connection = proxy.dbapi_connection = None
            raise DisconnectionError("connection belongs to the parent process")


def dispose_engines() -> None:
    """Close every pooled connection (tests, shutdown, after the settings change)."""
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def describe_url(url: str) -> str:
    """Return the URL for messages, with any password masked."""
    return mask_url(url) or "-"


# Names


@dataclass(frozen=True)
class Names:
    """Quoted identifiers from configuration, ready to place in SQL text.

    Quoting goes through the PostgreSQL dialect's identifier preparer, so a
    configured name can never inject SQL.
    """

    state_schema: str
    models_schema: str
    models_table: str

    def _quote(self, identifier: str) -> str:
        from sqlalchemy.dialects import postgresql

        return postgresql.dialect().identifier_preparer.quote_identifier(identifier)

    @property
    def state(self) -> str:
        """Quoted schema of serialmon's own tables."""
        return self._quote(self.state_schema)

    def table(self, name: str) -> str:
        """Quoted `schema.table` of one of serialmon's tables."""
        return f"{self.state}.{self._quote(name)}"

    @property
    def models(self) -> str:
        """Quoted `schema.table` of the monitored table."""
        return f"{self._quote(self.models_schema)}.{self._quote(self.models_table)}"

    @property
    def models_regclass(self) -> str:
        """The monitored table as text for a `::regclass` bound parameter."""
        return self.models


def names(settings: Settings | None = None) -> Names:
    settings = settings or get_settings()
    return Names(settings.state_schema, settings.models_schema, settings.models_table)


# Running queries on any session


@contextlib.contextmanager
def _own_connection(settings: Settings | None) -> Iterator[Connection]:
    engine = get_engine(settings)
    try:
        with engine.begin() as conn:
            yield conn
    except OperationalError as error:
        if _is_connect_failure(error):
            raise DatabaseUnavailable(
                f"Cannot connect to the database at {describe_url(engine.url.render_as_string())}: "
                f"{first_line(error)}.",
                "Check MODEL_DATA_DB_URL / DATABASE_URL and that the server is running (`serialmon doctor`).",
            ) from error
        raise


def _is_connect_failure(error: OperationalError) -> bool:
    return error.connection_invalidated or "connection" in str(error.orig).lower()


def connect(settings: Settings | None = None) -> Connection:
    """Return a new connection from serialmon's engine; the caller closes it and manages its transactions.

    Raises `DatabaseUnavailable` with the fix when the server cannot be reached.
    """
    engine = get_engine(settings)
    try:
        return engine.connect()
    except OperationalError as error:
        raise DatabaseUnavailable(
            f"Cannot connect to the database at {describe_url(engine.url.render_as_string())}: "
            f"{first_line(error)}.",
            "Check MODEL_DATA_DB_URL / DATABASE_URL and that the server is running (`serialmon doctor`).",
        ) from error


def run_sync(session: AnySession, fn: Callable[[Connection], T], settings: Settings | None = None) -> T:
    """Run `fn(connection)` on a synchronous `Session`, `Connection`, or serialmon's own engine.

    With `session=None` the call gets its own transaction, committed when `fn`
    returns. With a caller's session, `fn` runs inside the caller's transaction
    and the caller commits. Async sessions are rejected: use `arun()`.
    """
    if session is None:
        with _own_connection(settings) as conn:
            return fn(conn)
    if isinstance(session, Session):
        return fn(session.connection())
    if isinstance(session, Connection):
        return fn(session)
    raise TypeError(f"session must be a Session, Connection or None here, not {type(session).__name__}; use arun()")


async def arun(session: AnySession, fn: Callable[[Connection], T], settings: Settings | None = None) -> T:
    """Async twin of `run_sync()`: accepts `AsyncSession` and `AsyncConnection` too.

    With `session=None` or a synchronous session, the work runs in a worker
    thread so that the event loop is never blocked.
    """
    if isinstance(session, AsyncSession):
        return await session.run_sync(lambda sync_session: fn(sync_session.connection()))
    if isinstance(session, AsyncConnection):
        return await session.run_sync(fn)
    return await asyncio.to_thread(run_sync, session, fn, settings)


def read_only(conn: Connection) -> None:
    """Make the current transaction read-only; call it first in a transaction of serialmon's own.

    PostgreSQL then rejects any write, which guarantees that monitor queries on
    the pipeline's table never modify it.
    """
    conn.execute(text("SET TRANSACTION READ ONLY"))


@contextlib.contextmanager
def read_only_connection(settings: Settings | None = None) -> Iterator[Connection]:
    """Yield a connection of serialmon's own in a read-only transaction."""
    with _own_connection(settings) as conn:
        read_only(conn)
        yield conn


def ping(settings: Settings | None = None) -> str:
    """Return the server version string; raises `DatabaseUnavailable` when unreachable."""
    return run_sync(None, lambda conn: conn.execute(text("SHOW server_version")).scalar_one(), settings)
