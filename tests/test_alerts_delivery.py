"""Outbox delivery over real channels: aiosmtpd SMTP (plain, STARTTLS, TLS), .eml files, and a webhook."""

from __future__ import annotations

import contextlib
import email
import email.policy
import json
import shutil
import socket
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from alerts_support import (
    T0,
    alert_settings,
    failures,
    free_port,
    insert_events,
    manager,
    minutes,
    query,
    smtp_server,
    smtp_settings,
    successes,
)

from serialmon.alerts.outbox import retry_delay_sec

# aiosmtpd warns when AUTH runs without STARTTLS; these tests use it on purpose (plain and implicit TLS).
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")


def burst(settings, at):
    failures(settings, 10, at)
    successes(settings, 10, 90.0, at)


def outbox_rows(settings):
    return query(settings, "SELECT id, status, attempts, last_error FROM {t}.notification_outbox ORDER BY id")


def attempts(settings):
    return query(settings, "SELECT outbox_id, ok, error FROM {t}.notification_attempts ORDER BY id")


async def test_smtp_outage_delivers_each_once(initialized):
    port = free_port()
    settings = smtp_settings(initialized, port, alert_window_minutes=10, notification_retry_base_sec=30)
    alerts = manager(settings)

    burst(settings, T0 - minutes(1))
    down = await alerts.process_alerts(now=T0)
    assert down["sent"] == []
    assert down["failed"][0]["error"].startswith(f"cannot connect to SMTP server 127.0.0.1:{port}")

    for offset in (1, 3, 7):
        result = await alerts.process_alerts(now=T0 + minutes(offset))
        assert result["sent"] == []
    resolved = await alerts.process_alerts(now=T0 + minutes(12))
    assert [t["to_state"] for t in resolved["transitions"]] == ["resolved"]
    assert resolved["pending"] == 2

    with smtp_server(port) as (inbox, _):
        back = await alerts.process_alerts(now=T0 + minutes(30))
        after = await alerts.process_alerts(now=T0 + minutes(40))
        await alerts.deliver_notifications(now=T0 + minutes(300))

    assert [item["subject"] for item in back["sent"]] == [
        "[serialmon] CRITICAL high_failure_rate",
        "[serialmon] RESOLVED high_failure_rate",
    ]
    assert after["sent"] == []
    assert after["pending"] == 0
    assert inbox.subjects == ["[serialmon] CRITICAL high_failure_rate", "[serialmon] RESOLVED high_failure_rate"]
    rows = outbox_rows(settings)
    assert [row["status"] for row in rows] == ["sent", "sent"]
    first_attempts = [row["ok"] for row in attempts(settings) if row["outbox_id"] == rows[0]["id"]]
    assert first_attempts[-1] is True
    assert first_attempts.count(True) == 1
    assert len(first_attempts) >= 4


def test_retry_delay_doubles_up_to_cap(settings):
    from serialmon.config import load_settings

    config = load_settings(notification_retry_base_sec=30, notification_retry_max_sec=3600)
    assert [retry_delay_sec(n, config) for n in (1, 2, 3, 4, 8, 50)] == [30, 60, 120, 240, 3600, 3600]


async def test_bad_credentials_recorded_then_delivered(initialized):
    with smtp_server(login="alerts", password="right-password") as (inbox, port):
        settings = smtp_settings(initialized, port, alert_window_minutes=10, smtp_user="alerts",
                                 smtp_password="wrong-secret-123")
        burst(settings, T0 - minutes(1))
        result = await manager(settings).process_alerts(now=T0)

        error = result["failed"][0]["error"]
        assert "SMTP authentication failed for user 'alerts'" in error
        assert "wrong-secret-123" not in error
        recorded = attempts(settings)
        assert [(row["ok"], row["error"]) for row in recorded] == [(False, error)]
        assert outbox_rows(settings)[0]["last_error"] == error
        assert inbox.subjects == []

        fixed = smtp_settings(initialized, port, alert_window_minutes=10, smtp_user="alerts",
                              smtp_password="right-password")
        delivered = await manager(fixed).deliver_notifications(now=T0 + minutes(5))

    assert [item["subject"] for item in delivered["sent"]] == ["[serialmon] CRITICAL high_failure_rate"]
    assert inbox.subjects == ["[serialmon] CRITICAL high_failure_rate"]
    assert [row["ok"] for row in attempts(settings)] == [False, True]


async def test_model_name_escaped_in_html(initialized):
    hostile = "<script>alert('x')</script>.prt"
    with smtp_server() as (inbox, port):
        settings = smtp_settings(initialized, port, alert_window_minutes=10)
        successes(settings, 11, 70.0, T0 - minutes(1))
        insert_events(settings, [{"occurred_at": T0 - minutes(1), "status": "success", "element_coverage": 5.0,
                                  "model_name": hostile, "category": "<b>brackets</b>"}])
        await manager(settings).process_alerts(now=T0)

    html = inbox.received[0].part("html")
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;.prt" in html
    assert "<script>" not in html
    assert "&lt;b&gt;brackets&lt;/b&gt;" in html
    assert hostile in inbox.received[0].part("plain")


async def test_eml_files_without_smtp(initialized):
    settings = alert_settings(initialized, alert_window_minutes=10)
    burst(settings, T0 - minutes(1))
    result = await manager(settings).process_alerts(now=T0)
    await manager(settings).deliver_notifications(now=T0 + minutes(60))

    files = sorted(settings.resolved_outbox_dir.glob("*.eml"))
    assert [str(path) for path in files] == [result["sent"][0]["detail"]]
    message = email.message_from_bytes(files[0].read_bytes(), policy=email.policy.default)
    assert message["Subject"] == "[serialmon] CRITICAL high_failure_rate"
    assert message["To"] == "ops@example.com, lead@example.com"
    assert message.get_content_type() == "multipart/alternative"
    assert "10 of 20 attempts failed (50.0 %)" in message.get_body(("plain",)).get_content()
    assert "CreoTimeout x10" in message.get_body(("plain",)).get_content()


class WebhookReceiver:
    """A small HTTP server on 127.0.0.1 that records JSON bodies and responds with `status`."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.paths: list[str] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers["Content-Length"])
                receiver.bodies.append(json.loads(self.rfile.read(length)))
                receiver.paths.append(self.path)
                self.send_response(receiver.status)
                self.end_headers()
                self.wfile.write(b"ok" if receiver.status == 200 else b"temporarily broken")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T000/SECRETTOKEN"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


async def test_webhook_receives_slack_json(initialized):
    with WebhookReceiver() as hook:
        settings = alert_settings(initialized, alert_window_minutes=10, webhook_url=hook.url)
        hook.status = 500
        burst(settings, T0 - minutes(1))
        insert_events(settings, [{"occurred_at": T0 - minutes(1), "status": "failure",
                                  "error_type": "<Unknown & odd>", "model_name": "x.prt"}])
        first = await manager(settings).process_alerts(now=T0)
        hook.status = 200
        second = await manager(settings).deliver_notifications(now=T0 + minutes(5))

    webhook_failure = [item for item in first["failed"] if item["channel"] == "webhook"]
    assert webhook_failure[0]["error"].startswith("webhook at http://127.0.0.1:")
    assert "returned HTTP 500: temporarily broken" in webhook_failure[0]["error"]
    assert "SECRETTOKEN" not in webhook_failure[0]["error"]
    assert [item["channel"] for item in second["sent"]] == ["webhook"]
    assert len(hook.bodies) == 2
    body = hook.bodies[-1]
    assert hook.paths[-1] == "/hooks/T000/SECRETTOKEN"
    assert body["text"].splitlines()[0] == "[serialmon] CRITICAL high_failure_rate"
    assert "&lt;Unknown &amp; odd&gt; x1" in body["text"]
    assert body["alerts"][0]["rule"] == "high_failure_rate"
    assert body["alerts"][0]["kind"] == "firing"
    assert body["alerts"][0]["severity"] == "critical"


async def test_webhook_unreachable_hides_token(initialized):
    url = f"http://127.0.0.1:{free_port()}/hooks/SECRETTOKEN"
    settings = alert_settings(initialized, alert_window_minutes=10, webhook_url=url)
    burst(settings, T0 - minutes(1))
    result = await manager(settings).process_alerts(now=T0)

    error = [item["error"] for item in result["failed"] if item["channel"] == "webhook"][0]
    assert error.startswith("webhook POST to http://127.0.0.1:")
    assert "SECRETTOKEN" not in error
    assert [item["channel"] for item in result["sent"]] == ["email"]


async def test_plain_smtp_rejected_unless_allowed(initialized):
    with smtp_server() as (inbox, port):
        settings = smtp_settings(initialized, port, alert_window_minutes=10, smtp_allow_plain=False)
        burst(settings, T0 - minutes(1))
        starttls = await manager(settings).process_alerts(now=T0)
        plain = smtp_settings(initialized, port, smtp_security="plain", smtp_allow_plain=False)
        refused = await manager(plain).deliver_notifications(now=T0 + minutes(5))
        allowed = smtp_settings(initialized, port, smtp_security="plain", smtp_allow_plain=True)
        delivered = await manager(allowed).deliver_notifications(now=T0 + minutes(10))

    assert starttls["failed"][0]["error"].startswith(f"SMTP server 127.0.0.1:{port} does not offer STARTTLS")
    assert refused["failed"][0]["error"].startswith("SMTP without TLS is disabled")
    assert len(delivered["sent"]) == 1
    assert inbox.subjects == ["[serialmon] CRITICAL high_failure_rate"]


@pytest.fixture
def certificate(tmp_path):
    """A self-signed certificate for 127.0.0.1, made with the openssl command-line tool."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed, so no test certificate can be made")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=60,
    )
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(str(cert), str(key))
    return cert, server_context


@pytest.mark.parametrize("mode", ["starttls", "tls"])
async def test_tls_modes_with_auth(initialized, certificate, mode):
    cert, server_context = certificate
    tls_options = {"starttls_context": server_context} if mode == "starttls" else {
        "implicit_tls_context": server_context}
    with smtp_server(login="alerts", password="s3cret", **tls_options) as (inbox, port):
        settings = alert_settings(
            initialized, alert_window_minutes=10, smtp_host="127.0.0.1", smtp_port=port, smtp_security=mode,
            smtp_user="alerts", smtp_password="s3cret", smtp_ca_file=cert, smtp_timeout_sec=5,
        )
        burst(settings, T0 - minutes(1))
        result = await manager(settings).process_alerts(now=T0)

    assert result["failed"] == []
    assert inbox.subjects == ["[serialmon] CRITICAL high_failure_rate"]


async def test_untrusted_certificate_reported(initialized, certificate):
    _, server_context = certificate
    with smtp_server(implicit_tls_context=server_context) as (inbox, port):
        settings = alert_settings(initialized, alert_window_minutes=10, smtp_host="127.0.0.1", smtp_port=port,
                                  smtp_security="tls", smtp_timeout_sec=5)
        burst(settings, T0 - minutes(1))
        result = await manager(settings).process_alerts(now=T0)

    assert inbox.subjects == []
    error = result["failed"][0]["error"]
    assert error.startswith(f"TLS with SMTP server 127.0.0.1:{port} failed: certificate verify failed")
    assert error.endswith("Set SERIALMON_SMTP_CA_FILE for a private CA")


async def test_implicit_tls_to_plain_server_hints_starttls(initialized):
    with smtp_server() as (inbox, port):
        settings = alert_settings(initialized, alert_window_minutes=10, smtp_host="127.0.0.1", smtp_port=port,
                                  smtp_security="tls", smtp_timeout_sec=5)
        burst(settings, T0 - minutes(1))
        result = await manager(settings).process_alerts(now=T0)

    assert inbox.subjects == []
    assert result["failed"][0]["error"] == (
        f"TLS with SMTP server 127.0.0.1:{port} failed: WRONG_VERSION_NUMBER. The server does not speak implicit "
        "TLS on this port: use SERIALMON_SMTP_SECURITY=starttls, or the server's TLS port (usually 465)"
    )



def test_doctor_smtp_gives_delivery_hint(initialized):
    from serialmon.doctor import check_smtp

    with smtp_server() as (inbox, port):
        wrong = alert_settings(initialized, smtp_host="127.0.0.1", smtp_port=port, smtp_security="tls",
                               smtp_timeout_sec=5)
        failed = check_smtp(wrong)
        plain = alert_settings(initialized, smtp_host="127.0.0.1", smtp_port=port, smtp_security="plain",
                               smtp_allow_plain=True, smtp_timeout_sec=5)
        reachable = check_smtp(plain)

    assert failed.status == "fail"
    assert "does not speak implicit TLS on this port" in failed.detail
    assert reachable.status == "ok"
    assert inbox.subjects == []  # doctor sends no mail

@pytest.fixture
def hang_up_server():
    """Run a TCP server on 127.0.0.1 that reads the first bytes of each connection and closes it. Yields its port."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            with connection, contextlib.suppress(OSError):
                connection.settimeout(5)
                connection.recv(1024)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(5)
    listener.close()


async def test_hang_up_during_tls_handshake_hints_starttls(initialized, hang_up_server):
    port = hang_up_server
    settings = alert_settings(initialized, alert_window_minutes=10, smtp_host="127.0.0.1", smtp_port=port,
                              smtp_security="tls", smtp_timeout_sec=5)
    burst(settings, T0 - minutes(1))
    result = await manager(settings).process_alerts(now=T0)

    error = result["failed"][0]["error"]
    assert error.startswith(f"SMTP server 127.0.0.1:{port} closed the connection before the TLS handshake finished.")
    assert error.endswith("use SERIALMON_SMTP_SECURITY=starttls, or the server's TLS port (usually 465)")


async def test_later_rows_wait_behind_failed_row(initialized):
    port = free_port()
    settings = smtp_settings(initialized, port, alert_window_minutes=10, cooldown_minutes=0)
    alerts = manager(settings)
    burst(settings, T0 - minutes(1))
    await alerts.process_alerts(now=T0)
    await alerts.process_alerts(now=T0 + minutes(12))
    burst(settings, T0 + minutes(12))
    await alerts.process_alerts(now=T0 + minutes(13))

    with smtp_server(port) as (inbox, _):
        # The first row's retry is due at T0 + 30 s + backoff; the later ones must not overtake it.
        for offset in (14, 15, 16, 20, 40, 80):
            await alerts.deliver_notifications(now=T0 + minutes(offset))

    assert inbox.subjects == [
        "[serialmon] CRITICAL high_failure_rate",
        "[serialmon] RESOLVED high_failure_rate",
        "[serialmon] CRITICAL high_failure_rate",
    ]
