"""Helpers for the alert tests: a real in-process SMTP server, event rows, and settings.

Tests insert serialmon's own rows directly with SQL, as the collector would,
and drive time with explicit `now=` values instead of sleeping.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import socket
import ssl
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from sqlalchemy import text

from serialmon.alerts import AlertManager
from serialmon.config import Settings, load_settings, set_settings
from serialmon.db import names, run_sync

T0 = datetime(2025, 3, 3, 12, 0, tzinfo=timezone.utc)


def minutes(value: float) -> timedelta:
    return timedelta(minutes=value)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Received:
    sender: str
    recipients: list[str]
    message: EmailMessage

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    def part(self, subtype: str) -> str:
        body = self.message.get_body(preferencelist=(subtype,))
        assert body is not None, f"no text/{subtype} part in {self.subject!r}"
        return body.get_content()


@dataclass
class Inbox:
    """aiosmtpd handler that keeps every message it accepts."""

    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
        with self.lock:
            self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), message))
        return "250 Message accepted"

    @property
    def subjects(self) -> list[str]:
        with self.lock:
            return [item.subject for item in self.received]


class PasswordAuthenticator:
    """aiosmtpd authenticator that accepts one login and password."""

    def __init__(self, login: str, password: str) -> None:
        self.login = login.encode()
        self.password = password.encode()

    def __call__(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and auth_data == (self.login, self.password)
        return AuthResult(success=ok, handled=False)


@contextlib.contextmanager
def smtp_server(
    port: int | None = None,
    *,
    login: str | None = None,
    password: str | None = None,
    starttls_context: ssl.SSLContext | None = None,
    implicit_tls_context: ssl.SSLContext | None = None,
) -> Iterator[tuple[Inbox, int]]:
    """Run a real SMTP server on 127.0.0.1 in a thread; yields its inbox and port."""
    inbox = Inbox()
    port = port or free_port()
    options: dict[str, Any] = {}
    if login is not None:
        options["authenticator"] = PasswordAuthenticator(login, password or "")
        options["auth_required"] = True
        options["auth_require_tls"] = starttls_context is not None
    if starttls_context is not None:
        options["tls_context"] = starttls_context
        options["require_starttls"] = True
    controller = Controller(
        inbox, hostname="127.0.0.1", port=port, ssl_context=implicit_tls_context, ready_timeout=5.0, **options
    )
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


def alert_settings(base: Settings, **overrides: Any) -> Settings:
    """Settings for the test database with overrides, installed process-wide."""
    values = {
        "database_url": base.database_url.get_secret_value(),
        "data_dir": base.data_dir,
        "alert_from_email": "serialmon@example.com",
        "alert_to_emails": ["ops@example.com", "lead@example.com"],
        "alert_for_minutes": 0,
        "min_models_for_coverage": 10,
        "min_attempts_for_failure_rate": 20,
    }
    values.update(overrides)
    settings = load_settings(**values)
    set_settings(settings)
    return settings


def smtp_settings(base: Settings, port: int, **overrides: Any) -> Settings:
    """Settings that send through a plain-text SMTP server on 127.0.0.1:`port`."""
    values = {"smtp_host": "127.0.0.1", "smtp_port": port, "smtp_security": "auto", "smtp_allow_plain": True,
              "smtp_timeout_sec": 5}
    return alert_settings(base, **{**values, **overrides})


def manager(settings: Settings, **options: Any) -> AlertManager:
    """An AlertManager with no database-monitor conditions unless a source is given."""
    options.setdefault("condition_source", lambda conn, settings: [])
    return AlertManager(settings, **options)


def insert_events(settings: Settings, rows: list[dict[str, Any]]) -> None:
    """Insert serialization events; each dict needs at least occurred_at and status."""
    defaults = {
        "model_type": "part", "processing_time_sec": 30.0, "element_coverage": None, "category": None,
        "batch_id": None, "error_type": None, "error_message": None, "worker_id": None,
    }
    prepared = []
    for index, row in enumerate(rows):
        values = {**defaults, **row}
        values.setdefault("model_name", f"model-{uuid.uuid4().hex[:10]}-{index}.prt")
        values["event_id"] = uuid.uuid4()
        prepared.append(values)

    def insert(conn):
        conn.execute(
            text(
                f"""
                INSERT INTO {names(settings).table("serialization_events")}
                    (event_id, occurred_at, model_name, model_type, status, processing_time_sec,
                     element_coverage, category, batch_id, error_type, error_message, worker_id)
                VALUES (:event_id, :occurred_at, :model_name, :model_type, :status, :processing_time_sec,
                        :element_coverage, :category, :batch_id, :error_type, :error_message, :worker_id)
                """
            ),
            prepared,
        )

    run_sync(None, insert, settings)


def successes(settings: Settings, count: int, coverage: float, at: datetime, **extra: Any) -> None:
    insert_events(
        settings, [{"occurred_at": at, "status": "success", "element_coverage": coverage, **extra} for _ in range(count)]
    )


def failures(settings: Settings, count: int, at: datetime, error_type: str = "CreoTimeout", **extra: Any) -> None:
    insert_events(
        settings,
        [{"occurred_at": at, "status": "failure", "error_type": error_type,
          "error_message": f"{error_type} while opening the model", **extra} for _ in range(count)],
    )


def query(settings: Settings, sql: str, **params: Any) -> list[dict[str, Any]]:
    """Run one statement against serialmon's schema; `{t}` in `sql` is replaced by the schema prefix."""
    prefix = names(settings).state
    return run_sync(None, lambda conn: [dict(row) for row in conn.execute(text(sql.format(t=prefix)), params)
                                        .mappings()], settings)


def execute(settings: Settings, sql: str, **params: Any) -> None:
    """Run one data-changing statement; `{t}` in `sql` is replaced by the schema prefix."""
    prefix = names(settings).state
    run_sync(None, lambda conn: conn.execute(text(sql.format(t=prefix)), params), settings)
