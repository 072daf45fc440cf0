"""`serialmon alerts ...`: run the alert loop, show active alerts and history, manage silences."""

from __future__ import annotations

import asyncio
import re
from datetime import datetime, timedelta, timezone
from typing import Any, Optional

import typer
from rich.markup import escape

from serialmon.errors import SerialmonError

_DURATION = re.compile(r"^(?:(?P<d>\d+(?:\.\d+)?)d)?(?:(?P<h>\d+(?:\.\d+)?)h)?(?:(?P<m>\d+(?:\.\d+)?)m)?"
                       r"(?:(?P<s>\d+(?:\.\d+)?)s)?$")
_STATIC_RULES = "low_element_coverage, high_failure_rate, processing_stall, coverage_anomaly"


def parse_duration(value: str) -> timedelta:
    """Parse a silence duration such as "30m", "2h", "1h30m", "1d" or "45s".

    Raises `SerialmonError` for other text, for zero, and for more than the
    longest silence (`SILENCE_MAX`, 365 days).
    """
    from serialmon.alerts.manager import SILENCE_MAX

    cleaned = value.strip().lower().replace(" ", "")
    match = _DURATION.match(cleaned)
    if not cleaned or match is None or not any(match.groupdict().values()):
        raise SerialmonError(f"Invalid duration {value!r}.", "Use a number with a unit: 30m, 2h, 1h30m or 1d.")
    parts = {key: float(number) for key, number in match.groupdict().items() if number}
    # Summed in seconds first, because timedelta() overflows for a huge number of days.
    seconds = parts.get("d", 0) * 86_400 + parts.get("h", 0) * 3_600 + parts.get("m", 0) * 60 + parts.get("s", 0)
    if seconds <= 0:
        raise SerialmonError(f"Invalid duration {value!r}: it must be longer than zero.")
    if seconds > SILENCE_MAX.total_seconds():
        raise SerialmonError(
            f"Invalid duration {value!r}: it must be at most {SILENCE_MAX.days}d.",
            "Use a shorter duration, such as 7d or 30d.",
        )
    return timedelta(seconds=seconds)


def _time(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _manager():
    from serialmon.alerts import get_alert_manager

    return get_alert_manager()


def _describe_channels() -> list[str]:
    from serialmon.config import get_settings

    settings = get_settings()
    lines = []
    if settings.smtp_configured and settings.alert_to_emails:
        lines.append(
            f"E-mail: SMTP {settings.smtp_host}:{settings.smtp_port} ({settings.smtp_security}) "
            f"to {', '.join(settings.alert_to_emails)}."
        )
    else:
        missing = "SMTP_HOST" if not settings.smtp_configured else "ALERT_TO_EMAILS"
        lines.append(f"E-mail: {missing} is not set, so e-mails are written as .eml files to "
                     f"{settings.resolved_outbox_dir}")
    lines.append("Webhook: configured." if settings.webhook_url is not None else "Webhook: not configured.")
    return lines


def _print_result(result: dict[str, Any]) -> None:
    from serialmon.cli import console

    if "error" in result:
        console.print(f"[red]Evaluation failed:[/] {escape(result['error'])} (retrying at the next interval)",
                      highlight=False, soft_wrap=True)
        return

    broken = [rule for rule in result["rules"] if not rule["ok"]]
    console.print(
        f"{_time(result['evaluated_at'])}: {len(result['rules']) - len(broken)} rule group(s) evaluated, "
        f"{len(result['transitions'])} transition(s), {len(result['queued'])} notification(s) queued, "
        f"{len(result['sent'])} sent, {result['pending']} waiting.",
        highlight=False,
    )
    for rule in broken:
        console.print(f"  [yellow]not evaluated[/] {escape(rule['rule'])}: {escape(rule['error'])}",
                      highlight=False, soft_wrap=True)
    for rule in result["rules"]:
        if rule.get("not_evaluated"):
            skipped = ", ".join(rule["not_evaluated"])
            console.print(f"  [yellow]not evaluated[/] {escape(skipped)} (data not readable now; alerts keep their state)",
                          highlight=False, soft_wrap=True)
    for transition in result["transitions"]:
        note = f", notified {transition['notification']}" if transition["notification"] else ""
        if transition["suppressed"]:
            note = f", notification held back by {transition['suppressed']}"
        console.print(
            f"  {transition['alert_key']}: {transition['from_state']} -> {transition['to_state']} "
            f"({transition['severity'] or '-'}){note}",
            markup=False, highlight=False, soft_wrap=True,
        )
    for item in result["sent"]:
        where = f"written to {item['detail']}" if item["detail"] and item["detail"].endswith(".eml") else (
            f"sent via {item['detail']}")
        console.print(f"  {item['channel']} {item['subject']!r} {where}", markup=False, highlight=False,
                      soft_wrap=True)
    for item in result["failed"]:
        retry = f"; next try {_time(item['next_attempt_at'])}" if item["next_attempt_at"] else ""
        console.print(f"  [red]{item['channel']} not delivered:[/] {escape(item['error'])}{retry}",
                      highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add the `alerts` command group to `app`."""
    alerts_app = typer.Typer(
        help="Evaluate alert rules, send notifications, and manage silences.", no_args_is_help=True
    )
    app.add_typer(alerts_app, name="alerts")

    @alerts_app.command("run")
    def run_command(
        once: bool = typer.Option(False, "--once", help="Evaluate once, deliver, and exit."),
        interval: Optional[float] = typer.Option(
            None, "--interval", min=1.0, max=86_400.0,
            help="Seconds between evaluations, 1 to 86400 (default SERIALMON_ALERT_INTERVAL_SEC).",
        ),
    ) -> None:
        """Evaluate every rule and deliver notifications, once or in a loop until Ctrl-C."""
        from serialmon.cli import console, fail

        if once and interval is not None:
            fail("--once and --interval cannot be combined: --once evaluates a single time.")
        manager = _manager()
        for line in _describe_channels():
            console.print(line, markup=False, highlight=False, soft_wrap=True)

        if once:
            _print_result(asyncio.run(manager.process_alerts()))
            return
        try:
            asyncio.run(manager.run(interval_sec=interval, on_result=_print_result))
        except KeyboardInterrupt:
            console.print("Alert loop stopped.")

    @alerts_app.command("list")
    def list_command() -> None:
        """Show pending and firing alerts, silences in force, and notifications waiting for delivery."""
        from rich.table import Table

        from serialmon.cli import console

        manager = _manager()
        active = asyncio.run(manager.get_active_alerts())
        if active:
            table = Table("alert", "state", "severity", "since", "silenced", "message", title="Active alerts")
            for alert in active:
                since = alert["firing_since"] if alert["state"] == "firing" else alert["pending_since"]
                silenced = f"#{alert['silenced_by']}" if alert["silenced"] else "-"
                table.add_row(escape(alert["alert_key"]), alert["state"], alert["severity"] or "-", _time(since),
                              silenced, escape(alert["message"] or ""))
            console.print(table)
        else:
            console.print("No active alerts.")

        silences = asyncio.run(manager.list_silences())
        if silences:
            table = Table("id", "rule", "scope", "until", "reason", "by", title="Silences")
            for silence in silences:
                table.add_row(str(silence["id"]), escape(silence["rule"]), escape(silence["scope"] or "(all scopes)"),
                              _time(silence["ends_at"]), escape(silence["reason"]),
                              escape(silence["created_by"] or "-"))
            console.print(table)

        backlog = asyncio.run(manager.get_outbox_backlog())
        if backlog:
            head = backlog[0]
            console.print(
                f"{len(backlog)} notification(s) waiting for delivery; the oldest ({head['subject']!r}) has had "
                f"{head['attempts']} attempt(s), next at {_time(head['next_attempt_at'])}"
                + (f", last error: {head['last_error']}" if head["last_error"] else "."),
                markup=False, highlight=False, soft_wrap=True,
            )

    @alerts_app.command("history")
    def history_command(
        limit: int = typer.Option(50, "--limit", min=1, max=100_000, help="How many transitions to show."),
        key: Optional[str] = typer.Option(None, "--key", help="Only this alert key, e.g. 'processing_stall[batch:42]'."),
    ) -> None:
        """Show the latest alert transitions, newest first."""
        from rich.table import Table

        from serialmon.cli import console

        rows = asyncio.run(_manager().get_alert_history(limit=limit, alert_key=key))
        if not rows:
            console.print("No alert history yet.")
            return
        table = Table("at", "alert", "from", "to", "severity", "notification", "message", title="Alert history")
        for row in rows:
            notification = row["notification"] or (f"held back: {row['suppressed']}" if row["suppressed"] else "-")
            table.add_row(_time(row["at"]), escape(row["alert_key"]), row["from_state"] or "-", row["to_state"],
                          row["severity"] or "-", notification, escape(row["message"] or ""))
        console.print(table)

    @alerts_app.command("silence")
    def silence_command(
        rule: str = typer.Argument(..., help=f"Rule to silence ({_STATIC_RULES}, a database rule, or '*')."),
        scope: Optional[str] = typer.Option(
            None, "--scope", help="Only this scope, e.g. batch:42 or category:brackets (default: every scope)."
        ),
        duration: Optional[str] = typer.Option(None, "--for", help="How long: 30m, 2h, 1h30m, 1d."),
        until: Optional[datetime] = typer.Option(
            None, "--until", help="End time in UTC, such as 2025-03-03T18:00.",
            formats=["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M"],
        ),
        reason: str = typer.Option(..., "--reason", help="Why the alert is silenced; shown in `alerts list`."),
        created_by: Optional[str] = typer.Option(None, "--by", help="Who silenced it (default: the OS user)."),
    ) -> None:
        """Stop notifications for RULE until a time; the alert still changes state and is recorded."""
        import getpass

        from serialmon.cli import console, fail

        if (duration is None) == (until is None):
            fail("Give exactly one of --for (such as --for 2h) and --until.")
        try:
            span = parse_duration(duration) if duration is not None else None
        except SerialmonError as error:
            fail(escape(str(error)))
        end = until.replace(tzinfo=timezone.utc) if until is not None and until.tzinfo is None else until
        try:
            by = created_by or getpass.getuser()
        except (KeyError, OSError):
            by = None
        try:
            silence = asyncio.run(
                _manager().silence(rule, scope, duration=span, until=end, reason=reason, created_by=by)
            )
        except ValueError as error:
            fail(escape(f"Invalid silence: {error}."))
        console.print(
            f"Silence {silence['id']}: {silence['rule']} ({silence['scope'] or 'all scopes'}) until "
            f"{_time(silence['ends_at'])}. Reason: {silence['reason']}",
            markup=False, highlight=False, soft_wrap=True,
        )

    @alerts_app.command("unsilence")
    def unsilence_command(silence_id: int = typer.Argument(..., help="Silence id, from `serialmon alerts list`.")) -> None:
        """End a silence now; notifications still owed are sent at the next evaluation."""
        from serialmon.cli import console, fail

        ended = asyncio.run(_manager().unsilence(silence_id))
        if ended is None:
            fail(f"Silence {silence_id} not found. Run `serialmon alerts list` to see the silences in force.")
        console.print(f"Silence {silence_id} ({ended['rule']}, {ended['scope'] or 'all scopes'}) ended.",
                      markup=False, highlight=False)

    @alerts_app.command("test-email")
    def test_email_command() -> None:
        """Send one test e-mail through the configured SMTP server, or write it as a .eml file."""
        from serialmon.cli import console, fail

        manager = _manager()
        for line in _describe_channels()[:1]:
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        result = asyncio.run(manager.send_test_email())
        if not result.ok:
            fail(escape(f"Test e-mail not delivered: {result.error}"), code=1)
        if result.detail and result.detail.endswith(".eml"):
            console.print(f"Test e-mail written to {result.detail}", markup=False, highlight=False, soft_wrap=True)
        else:
            console.print(f"Test e-mail sent via {result.detail}.", markup=False, highlight=False, soft_wrap=True)
