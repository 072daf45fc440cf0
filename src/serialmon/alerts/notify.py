"""Notification rendering and channels: SMTP (aiosmtplib), .eml files, and a JSON webhook (httpx).

Rendering happens when a notification is queued, so the outbox row contains
the exact message. Delivery (`deliver`) never raises: every failure comes back as
a `DeliveryResult` with a one-line reason that names the server but never a
password or the webhook URL's path, which often carries a token.

SMTP security (`smtp_security`): `tls` is implicit TLS (port 465), `starttls`
upgrades a plain connection and fails if the server cannot, `auto` picks
`tls` on port 465 and `starttls` otherwise, and `plain` sends without TLS.
Sending without TLS needs `smtp_allow_plain`; with it, `auto` upgrades when the
server offers STARTTLS and falls back to plain text when it does not.
"""

from __future__ import annotations

import email.policy
import email.utils
import logging
import os
import re
import ssl
from dataclasses import dataclass
from datetime import datetime, timezone
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import aiosmtplib
import httpx
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from serialmon.alerts.state import NOTIFY_ESCALATED, NOTIFY_REMINDER, NOTIFY_RESOLVED, Notice
from serialmon.config import Settings
from serialmon.errors import first_line

if TYPE_CHECKING:
    from serialmon.alerts.outbox import OutboxMessage

logger = logging.getLogger(__name__)

_ExceptionT = TypeVar("_ExceptionT", bound=BaseException)

_TEMPLATES = Path(__file__).parent / "templates"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_SCOPE_PREFIXES = ("batch:", "worker:", "category:")


@dataclass(frozen=True)
class RenderedMessage:
    """Subject and both bodies of one notification."""

    subject: str
    text: str
    html: str


@dataclass(frozen=True)
class DeliveryResult:
    """Outcome of one delivery attempt: `ok`, or the reason it failed; `detail` names where it went."""

    ok: bool
    error: str | None = None
    detail: str | None = None


class ChannelError(Exception):
    """A delivery failed; the message is the recorded reason."""


# Rendering


def _environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(str(_TEMPLATES)),
        autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


_jinja = _environment()


def scope_label(scope: str) -> str:
    """Return a scope for people: "batch:42" becomes "batch 42"; other scopes are unchanged."""
    for prefix in _SCOPE_PREFIXES:
        if scope.startswith(prefix):
            return f"{prefix[:-1]} {scope[len(prefix):]}"
    return scope


def _format_time(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _label(notice: Notice) -> str:
    if notice.kind == NOTIFY_RESOLVED:
        return "RESOLVED"
    label = (notice.severity or "warning").upper()
    if notice.kind == NOTIFY_ESCALATED and notice.previous_severity:
        return f"{label} (escalated from {notice.previous_severity})"
    if notice.kind == NOTIFY_REMINDER:
        return f"{label} (still firing)"
    return label


def _view(notice: Notice) -> dict[str, Any]:
    table = notice.details.get("table") if isinstance(notice.details, dict) else None
    return {
        "style": notice.style,
        "label": _label(notice),
        "marker": {"critical": "[!!]", "warning": "[!]", "resolved": "[ok]"}[notice.style],
        "rule": notice.rule,
        "scope": notice.scope,
        "scope_label": scope_label(notice.scope),
        "message": notice.message or "",
        "value_text": notice.value_text,
        "threshold_text": notice.threshold_text,
        "firing_since": _format_time(notice.firing_since) if notice.kind != NOTIFY_RESOLVED else None,
        "resolved_at": _format_time(notice.resolved_at) if notice.kind == NOTIFY_RESOLVED else None,
        "table": table if isinstance(table, dict) else None,
        "fix": notice.fix if notice.kind != NOTIFY_RESOLVED else None,
    }


def subject_for(notices: list[Notice]) -> str:
    """Build the subject: severity, rule and scope for one alert, counts by style for a group.

    For example `[serialmon] CRITICAL high_failure_rate (batch 42)` or
    `[serialmon] 3 alerts: 1 critical, 2 resolved`.
    """
    if len(notices) == 1:
        notice = notices[0]
        scope = f" ({scope_label(notice.scope)})" if notice.scope else ""
        label = _label(notice)
        suffix = ""
        if " (" in label:
            label, suffix = label.split(" (", 1)
            suffix = f" ({suffix}"
        subject = f"[serialmon] {label} {notice.rule}{scope}{suffix}"
    else:
        counts = {style: sum(1 for notice in notices if notice.style == style)
                  for style in ("critical", "warning", "resolved")}
        parts = ", ".join(f"{count} {style}" for style, count in counts.items() if count)
        subject = f"[serialmon] {len(notices)} alerts: {parts}"
    return _CONTROL.sub(" ", subject)


def render(notices: list[Notice], *, sent_at: datetime, intro: str | None = None) -> RenderedMessage:
    """Render the subject and the plain-text and HTML bodies for a group of notices."""
    subject = subject_for(notices) if notices else "[serialmon] test e-mail"
    headline = subject.removeprefix("[serialmon] ")
    context = {
        "subject": subject,
        "headline": headline,
        "intro": intro,
        "alerts": [_view(notice) for notice in notices],
        "sent_at": _format_time(sent_at),
    }
    return RenderedMessage(
        subject=subject,
        text=_jinja.get_template("alert.txt").render(context),
        html=_jinja.get_template("alert.html").render(context),
    )


def _slack_escape(value: str) -> str:
    # Slack reads <...> as links and mentions, so these three characters must be escaped in `text`.
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def webhook_payload(notices: list[Notice], subject: str) -> dict[str, Any]:
    """Build the webhook JSON: a Slack-compatible `text` plus every alert as structured data."""
    lines = [_slack_escape(subject)]
    for notice in notices:
        scope = f" ({scope_label(notice.scope)})" if notice.scope else ""
        lines.append(_slack_escape(f"• {_label(notice)} {notice.rule}{scope}: {notice.message or ''}"))
    return {
        "text": "\n".join(lines),
        "subject": subject,
        "alerts": [
            {
                "alert_key": notice.alert_key,
                "rule": notice.rule,
                "scope": notice.scope,
                "kind": notice.kind,
                "severity": notice.severity,
                "value": notice.value_text,
                "threshold": notice.threshold_text,
                "message": notice.message,
                "fix": notice.fix,
                "firing_since": notice.firing_since.isoformat() if notice.firing_since else None,
                "resolved_at": notice.resolved_at.isoformat() if notice.resolved_at else None,
            }
            for notice in notices
        ],
    }


def build_email(
    *,
    subject: str,
    text: str,
    html: str,
    sender: str,
    recipients: list[str],
    message_id: str,
    date: datetime,
) -> EmailMessage:
    """Build a multipart/alternative message (plain text first, then HTML)."""
    message = EmailMessage(policy=email.policy.SMTP)
    message["Subject"] = _CONTROL.sub(" ", subject)
    message["From"] = sender
    if recipients:
        message["To"] = ", ".join(recipients)
    message["Date"] = email.utils.format_datetime(date.astimezone(timezone.utc))
    message["Message-ID"] = message_id
    message["X-Mailer"] = "serialmon"
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    return message


def message_id_for(dedup_key: str, sender: str) -> str:
    """Return a Message-ID that is the same for every delivery of one outbox row, so clients can drop repeats."""
    domain = sender.rsplit("@", 1)[-1] or "serialmon.invalid"
    local = re.sub(r"[^A-Za-z0-9.-]", ".", dedup_key)
    return f"<{local}@{domain}>"


def email_for(row: OutboxMessage, settings: Settings) -> EmailMessage:
    """Build the e-mail of one outbox row."""
    return build_email(
        subject=row.subject or "[serialmon] notification",
        text=row.body_text or "",
        html=row.body_html or "",
        sender=settings.alert_from_email,
        recipients=list(row.recipients or []),
        message_id=message_id_for(row.dedup_key, settings.alert_from_email),
        date=row.created_at,
    )


# Channels


async def deliver(row: OutboxMessage, settings: Settings) -> DeliveryResult:
    """Deliver one outbox row on its channel; never raises."""
    try:
        if row.channel == "email":
            return await _deliver_email(row, settings)
        if row.channel == "webhook":
            await post_webhook(row.payload or {}, settings)
            return DeliveryResult(ok=True, detail=_webhook_label(settings))
        raise ChannelError(f"unknown channel {row.channel!r}")
    except ChannelError as error:
        return DeliveryResult(ok=False, error=_scrub(str(error), settings))
    except Exception as error:  # noqa: BLE001 - a delivery failure must never reach the caller
        logger.exception("unexpected error delivering notification %s", row.id)
        return DeliveryResult(ok=False, error=_scrub(f"{type(error).__name__}: {error}", settings))


async def _deliver_email(row: OutboxMessage, settings: Settings) -> DeliveryResult:
    message = email_for(row, settings)
    recipients = list(row.recipients or [])
    if settings.smtp_configured and recipients:
        await send_smtp(message, recipients, settings)
        return DeliveryResult(ok=True, detail=f"SMTP {settings.smtp_host}:{settings.smtp_port}")

    if settings.smtp_configured:
        logger.warning("SMTP_HOST is set but ALERT_TO_EMAILS is empty: notification %s goes to a .eml file", row.id)
    stamp = row.created_at.astimezone(timezone.utc).strftime("%Y%m%d-%H%M%S")
    path = write_eml(message, settings.resolved_outbox_dir, f"{stamp}-{row.id:06d}")
    return DeliveryResult(ok=True, detail=str(path))


def write_eml(message: EmailMessage, folder: Path, name: str) -> Path:
    """Write `message` to `folder/name.eml` atomically (the same name overwrites, so a retry adds no file)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.eml"
        partial = folder / f"{name}.eml.partial"
        partial.write_bytes(message.as_bytes(policy=email.policy.SMTP))
        os.replace(partial, path)
    except OSError as error:
        raise ChannelError(f"cannot write .eml file into {folder}: {error.strerror or error}") from error
    return path


def smtp_connection_options(settings: Settings) -> dict[str, Any]:
    """Return aiosmtplib's TLS options (`use_tls`, `start_tls`, `tls_context`) for the settings.

    Raises `ChannelError` for `smtp_security=plain` without `smtp_allow_plain`.
    """
    security = _resolved_security(settings)
    if security == "plain":
        if not settings.smtp_allow_plain:
            raise ChannelError(
                "SMTP without TLS is disabled: set SERIALMON_SMTP_ALLOW_PLAIN=true, "
                "or use SERIALMON_SMTP_SECURITY=starttls or tls"
            )
        return {"use_tls": False, "start_tls": False}

    context = ssl.create_default_context(cafile=str(settings.smtp_ca_file) if settings.smtp_ca_file else None)
    if security == "tls":
        return {"use_tls": True, "start_tls": False, "tls_context": context}
    # STARTTLS: required, unless plain text is allowed and the choice was left to `auto`.
    opportunistic = settings.smtp_allow_plain and settings.smtp_security == "auto"
    return {"use_tls": False, "start_tls": None if opportunistic else True, "tls_context": context}


def _resolved_security(settings: Settings) -> str:
    """Return "tls", "starttls" or "plain" for `smtp_security`, deciding `auto` by the port."""
    if settings.smtp_security == "auto":
        return "tls" if settings.smtp_port == 465 else "starttls"
    return settings.smtp_security


async def send_smtp(message: EmailMessage, recipients: list[str], settings: Settings) -> None:
    """Send `message` through the configured SMTP server; raises `ChannelError` with a clear reason."""
    server = f"{settings.smtp_host}:{settings.smtp_port}"
    credentials: dict[str, Any] = {}
    if settings.smtp_user:
        if settings.smtp_password is None:
            raise ChannelError(f"SMTP_USER is set but SMTP_PASSWORD is not, for {server}")
        credentials = {"username": settings.smtp_user, "password": settings.smtp_password.get_secret_value()}

    try:
        await aiosmtplib.send(
            message,
            sender=settings.alert_from_email,
            recipients=recipients,
            hostname=settings.smtp_host,
            port=settings.smtp_port,
            timeout=settings.smtp_timeout_sec,
            **smtp_connection_options(settings),
            **credentials,
        )
    except ChannelError:
        raise
    except Exception as error:  # noqa: BLE001 - turned into a recorded reason
        raise ChannelError(_scrub(describe_smtp_error(error, settings), settings)) from error


def describe_smtp_error(error: BaseException, settings: Settings) -> str:
    """Return a one-line reason for an SMTP failure, naming the server and user but never the password."""
    server = f"{settings.smtp_host}:{settings.smtp_port}"
    if isinstance(error, aiosmtplib.SMTPAuthenticationError):
        return (
            f"SMTP authentication failed for user {settings.smtp_user!r} at {server}: "
            f"{error.code} {error.message}. Check SMTP_USER and SMTP_PASSWORD"
        )

    tls_error = _ssl_cause(error)
    if tls_error is not None:
        if isinstance(tls_error, ssl.SSLCertVerificationError):
            reason = f"certificate verify failed: {tls_error.verify_message}"
        else:
            reason = getattr(tls_error, "reason", None) or first_line(tls_error)
        return f"TLS with SMTP server {server} failed: {reason}. {_tls_hint(tls_error, settings)}"

    if isinstance(error, aiosmtplib.SMTPTimeoutError):
        return f"timed out after {settings.smtp_timeout_sec:g} s talking to SMTP server {server}"
    if isinstance(error, aiosmtplib.SMTPConnectError):
        if _resolved_security(settings) == "tls" and _caused_by(error, ConnectionResetError):
            # asyncio reports a server that hangs up during the TLS handshake as a reset, not as an SSL error.
            return f"SMTP server {server} closed the connection before the TLS handshake finished. {_NOT_TLS_HINT}"
        return f"cannot connect to SMTP server {server}: {first_line(error)}"

    if isinstance(error, aiosmtplib.SMTPRecipientsRefused):
        refused = "; ".join(f"{item.recipient}: {item.code} {item.message}" for item in error.recipients)
        return f"SMTP server {server} refused every recipient: {refused}"
    if isinstance(error, aiosmtplib.SMTPResponseException):
        return f"SMTP server {server} rejected the message: {error.code} {error.message}"

    if isinstance(error, aiosmtplib.SMTPException) and "STARTTLS" in str(error):
        return (
            f"SMTP server {server} does not offer STARTTLS: use SERIALMON_SMTP_SECURITY=tls for implicit TLS, "
            "or SERIALMON_SMTP_ALLOW_PLAIN=true to send without TLS"
        )
    if isinstance(error, aiosmtplib.SMTPException):
        return f"SMTP with {server} failed: {first_line(error)}"

    if isinstance(error, OSError):
        return f"cannot connect to SMTP server {server}: {error.strerror or first_line(error)}"
    return f"SMTP with {server} failed: {type(error).__name__}: {first_line(error)}"


# OpenSSL reasons for a handshake whose peer does not reply in TLS. WRONG_VERSION_NUMBER means the
# server's first bytes are plain text (such as an SMTP greeting), and an EOF means it hung up instead.
_NOT_TLS_REASONS = frozenset({"WRONG_VERSION_NUMBER", "UNEXPECTED_EOF_WHILE_READING"})
_NOT_TLS_HINT = (
    "The server does not speak implicit TLS on this port: use SERIALMON_SMTP_SECURITY=starttls, "
    "or the server's TLS port (usually 465)"
)


def _tls_hint(tls_error: ssl.SSLError, settings: Settings) -> str:
    """Return the settings to check after a failed TLS handshake, chosen by the kind of error."""
    if isinstance(tls_error, ssl.SSLCertVerificationError):
        return "Set SERIALMON_SMTP_CA_FILE for a private CA"

    text = str(tls_error).lower()
    not_tls = (
        isinstance(tls_error, ssl.SSLEOFError)
        or getattr(tls_error, "reason", None) in _NOT_TLS_REASONS
        or "wrong version number" in text
        or "unexpected eof" in text
    )
    if not_tls and _resolved_security(settings) == "tls":
        return _NOT_TLS_HINT
    if not_tls:
        return "The server did not reply in TLS after STARTTLS: check SMTP_PORT and SERIALMON_SMTP_SECURITY"
    return "Check SMTP_PORT and SERIALMON_SMTP_SECURITY against the server's TLS settings"


def _ssl_cause(error: BaseException) -> ssl.SSLError | None:
    """Return the TLS error behind `error` (aiosmtplib wraps it in a connect error), or None."""
    return _caused_by(error, ssl.SSLError)


def _caused_by(error: BaseException, kind: type[_ExceptionT]) -> _ExceptionT | None:
    """Return the first exception of type `kind` in `error`'s chain of causes (at most 10 deep), or None."""
    seen = 0
    current: BaseException | None = error
    while current is not None and seen < 10:
        if isinstance(current, kind):
            return current
        current = current.__cause__ or current.__context__
        seen += 1
    return None


def _scrub(reason: str, settings: Settings) -> str:
    """Remove the SMTP password and the webhook URL from a reason, whatever library produced it."""
    secrets = []
    if settings.smtp_password is not None and settings.smtp_password.get_secret_value():
        secrets.append(settings.smtp_password.get_secret_value())
    if settings.webhook_url is not None:
        secrets.append(settings.webhook_url.get_secret_value())
    for secret in sorted(secrets, key=len, reverse=True):
        reason = reason.replace(secret, "***")
    return reason


def _webhook_label(settings: Settings) -> str:
    """Return the webhook's scheme, host and port only: the path often carries a token."""
    if settings.webhook_url is None:
        return "webhook"
    parts = urlsplit(settings.webhook_url.get_secret_value())
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"


async def post_webhook(payload: dict[str, Any], settings: Settings) -> None:
    """POST `payload` as JSON to the webhook; raises `ChannelError` unless the response status is 2xx."""
    if settings.webhook_url is None:
        raise ChannelError("no webhook URL is configured (SERIALMON_WEBHOOK_URL)")
    target = _webhook_label(settings)
    try:
        async with httpx.AsyncClient(timeout=settings.webhook_timeout_sec, follow_redirects=False) as client:
            response = await client.post(settings.webhook_url.get_secret_value(), json=payload)
    except httpx.HTTPError as error:
        raise ChannelError(f"webhook POST to {target} failed: {type(error).__name__}") from error
    if not 200 <= response.status_code < 300:
        body = _CONTROL.sub(" ", response.text[:200])
        raise ChannelError(f"webhook at {target} returned HTTP {response.status_code}: {body}")


async def send_test_email(settings: Settings, *, now: datetime | None = None) -> DeliveryResult:
    """Send one test e-mail straight through the configured channel (SMTP or a .eml file); never raises."""
    now = now or datetime.now(timezone.utc)
    rendered = render(
        [], sent_at=now,
        intro="This is a test e-mail from serialmon. If you can read it, alert e-mails reach you.",
    )
    message = build_email(
        subject=rendered.subject, text=rendered.text, html=rendered.html, sender=settings.alert_from_email,
        recipients=settings.alert_to_emails, message_id=email.utils.make_msgid(domain="serialmon.invalid"),
        date=now,
    )
    try:
        if settings.smtp_configured and settings.alert_to_emails:
            await send_smtp(message, settings.alert_to_emails, settings)
            return DeliveryResult(ok=True, detail=f"SMTP {settings.smtp_host}:{settings.smtp_port}")
        path = write_eml(message, settings.resolved_outbox_dir, f"{now:%Y%m%d-%H%M%S}-test")
        return DeliveryResult(ok=True, detail=str(path))
    except ChannelError as error:
        return DeliveryResult(ok=False, error=_scrub(str(error), settings))
    except Exception as error:  # noqa: BLE001 - a test e-mail reports its failure instead of raising
        logger.exception("unexpected error sending the test e-mail")
        return DeliveryResult(ok=False, error=_scrub(f"{type(error).__name__}: {error}", settings))
