"""`serialmon db-report`: the database monitor's report, as Rich tables or as JSON."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import typer
from rich.table import Table


def _pct(value: float | None, scale: float = 100.0) -> str:
    return "-" if value is None else f"{value * scale:.1f}%"


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _unavailable(section: dict[str, Any]) -> str | None:
    if section.get("available") is False:
        return f"[yellow]unavailable:[/] {section.get('reason')}" + (f" Fix: {section['fix']}" if section.get("fix") else "")
    return None


def _print_report(report: dict[str, Any]) -> None:
    from serialmon.cli import console
    from serialmon.monitor.space import format_bytes

    console.print(f"[bold]{report['relation']}[/] on PostgreSQL {report['server_version']} at {report['generated_at']}")

    table = report["table"]
    if _unavailable(table):
        console.print("Table: " + _unavailable(table))
    else:
        sizes = Table("heap", "TOAST", "indexes", "total", "TOAST share", "live", "dead", "last autovacuum",
                      "last autoanalyze", title="Table")  # fmt: skip
        sizes.add_row(
            format_bytes(table["heap_bytes"]), format_bytes(table["toast_bytes"]), format_bytes(table["index_bytes"]),
            format_bytes(table["total_bytes"]), _pct(table["toast_share"]), str(table.get("live_tuples", "-")),
            str(table.get("dead_tuples", "-")), str(table.get("last_autovacuum") or "never"),
            str(table.get("last_autoanalyze") or "never"),
        )  # fmt: skip
        console.print(sizes)

    jsonb = report["jsonb"]
    if _unavailable(jsonb):
        console.print("JSONB: " + _unavailable(jsonb))
    else:
        columns = Table("column", "source", "rows", "avg", "min", "max", "total", title="JSONB stored sizes")
        entries = {"serialized_content": jsonb["serialized_content"], **jsonb["columns"]}
        for name, column in entries.items():
            if column.get("available") is False:
                columns.add_row(name, "-", "-", "-", "-", "-", column.get("reason", ""))
                continue
            columns.add_row(
                name, column["source"], str(column["rows"]), format_bytes(column["avg_bytes"]),
                format_bytes(column["min_bytes"]), format_bytes(column["max_bytes"]),
                format_bytes(column["total_bytes"]) + (" (est.)" if column.get("total_is_estimate") else ""),
            )  # fmt: skip
        console.print(columns)
        sample = jsonb["sample"]
        if sample.get("available") is not False:
            console.print(f"Sample: {sample['percent']:.3g}% of heap pages ({sample['pages']} pages, {sample['rows']} rows).")
        for note in jsonb["notes"]:
            console.print(f"  {note}")

    indexes = report["indexes"]
    if _unavailable(indexes):
        console.print("Indexes: " + _unavailable(indexes))
    else:
        grid = Table("index", "method", "size", "scans", "tuples read", "hit ratio", "valid", title="Indexes")
        for index in indexes["indexes"]:
            grid.add_row(
                index["name"], index["method"], format_bytes(index["size_bytes"]), str(index["scans"]),
                str(index["tuples_read"]), _pct(index["cache_hit_ratio"]), "yes" if index["is_valid"] else "[red]no[/]",
            )  # fmt: skip
        console.print(grid)
        gin = indexes["gin"]
        if not gin["present"]:
            console.print("[red]No GIN index on feature_types.[/]")
        else:
            pending = gin["pending_list"]
            pending_text = (
                f"{pending['pending_pages']} pending pages" if pending.get("available") else pending.get("reason")
            )
            console.print(f"GIN {gin['name']}: valid={gin['is_valid']}, scans={gin['scans']}, {pending_text}")
        for unused in indexes["unused"]:
            state = "unused" if unused["conclusive"] else "no scans yet (statistics too young to call it unused)"
            console.print(f"  {unused['name']}: {state}; statistics reset {unused['stats_reset'] or 'never'}")

    queries = report["queries"]
    if _unavailable(queries):
        console.print("Query statistics: " + _unavailable(queries))
    else:
        grid = Table("total ms", "mean ms", "calls", "rows", "hit ratio", "query", title="Statements on the table")
        for statement in queries["by_total_time"][:10]:
            grid.add_row(
                _num(statement["total_time_ms"]), _num(statement["mean_time_ms"], 2), str(statement["calls"]),
                str(statement["rows"]), _pct(statement["buffer_hit_ratio"]), " ".join(statement["query"].split())[:80],
            )  # fmt: skip
        console.print(grid)
        for note in queries["notes"]:
            console.print(f"  {note}")

    bloat = report["bloat"]
    if _unavailable(bloat):
        console.print("Bloat: " + _unavailable(bloat))
    else:
        grid = Table("relation", "method", "size", "wasted", "bloat", title="Bloat")
        estimate = bloat["estimate"]["table"]
        for part in ("heap", "toast"):
            entry = estimate.get(part)
            if entry is None:
                continue
            if entry.get("available") is False:
                grid.add_row(part, "estimate", "-", "-", entry["reason"])
                continue
            grid.add_row(part, "estimate", format_bytes(entry["size_bytes"]), format_bytes(entry["wasted_bytes"]),
                         f"{entry['bloat_percent']:.1f}%")  # fmt: skip
        exact = bloat.get("exact")
        if exact and exact.get("available") is not False:
            for part in ("heap", "toast"):
                if part in exact:
                    entry = exact[part]
                    grid.add_row(part, entry["function"], format_bytes(entry["table_len"]),
                                 format_bytes(entry["wasted_bytes"]), f"{entry['bloat_percent']:.1f}%")  # fmt: skip
        console.print(grid)
        if not exact:
            console.print(f"  Exact measurement not run: {bloat['exact_cost']}.")
        elif exact.get("available") is False:
            console.print(f"  Exact measurement unavailable: {exact['reason']}")

    growth = report["growth"]
    if _unavailable(growth):
        console.print("Growth: " + _unavailable(growth))
    else:
        days = growth["days_until_limit"]
        console.print(
            f"Growth: {_num(growth['mb_per_hour_last_hour'], 2)} MB/h (last hour), "
            f"{_num(growth['mb_per_hour_last_day'], 2)} MB/h (last day); "
            f"days until limit: {_num(days) if days is not None else '-'}; "
            f"cache hit between the last two samples: {_pct(growth['cache_hit'].get('overall'))}"
        )

    if report["alerts"]:
        grid = Table("severity", "rule", "message", "fix", title="Conditions")
        for alert in report["alerts"]:
            colour = "red" if alert["severity"] == "critical" else "yellow"
            grid.add_row(f"[{colour}]{alert['severity']}[/]", alert["rule"], alert["message"], alert["fix"])
        console.print(grid)
    else:
        console.print("[green]No database alert condition is met.[/]")

    for entry in report["skipped"]:
        console.print(f"[yellow]Skipped[/] {entry['section']}: {entry['reason']}" + (f" {entry['fix']}" if entry["fix"] else ""))


def register(app: typer.Typer) -> None:
    """Add `db-report` to the CLI."""

    @app.command("db-report")
    def db_report(
        as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object."),
        exact_bloat: bool = typer.Option(
            False, "--exact-bloat", help="Also measure bloat with pgstattuple (reads the whole table)."
        ),
    ) -> None:
        """Report size, growth, JSONB sizes, indexes, query statistics and bloat of the monitored table."""
        from serialmon.monitor import get_db_monitor

        report = asyncio.run(get_db_monitor().get_full_report(exact_bloat=exact_bloat))
        if as_json:
            print(json.dumps(report, indent=2, sort_keys=False))
            return
        _print_report(report)
