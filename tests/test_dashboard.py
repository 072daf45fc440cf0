"""The Streamlit dashboard under `AppTest`: every view shows the read model's figures, filters change them,
and the empty, missing-schema and database-down states show what to do.

The module shares one seeded database: a simulated run of 200 models, a
batch that is still running, a firing alert and a silence. Tests that need
another database state make their own. AppTest runs the app in this process,
so the settings travel through environment variables, as with `serialmon dashboard`.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, time, timedelta, timezone
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url
from streamlit.testing.v1 import AppTest
from typer.testing import CliRunner

from serialmon.alerts import AlertManager
from serialmon.cli import app as cli_app
from serialmon.collector import get_serialize_metrics_collector, reset_serialize_metrics_collector
from serialmon.config import Settings, load_settings, normalize_url, set_settings
from serialmon.dashboard import APP_PATH
from serialmon.dashboard import formatting as fmt
from serialmon.dashboard.data import clear_cache
from serialmon.db import dispose_engines, run_sync
from serialmon.errors import SerialmonError
from serialmon.ledger import refresh_ledger
from serialmon.monitor import DatabaseMonitor
from serialmon.readmodel import (
    Filters,
    data_extent,
    failure_examples,
    filter_options,
    get_snapshot,
    quality_summary,
    recent_models,
    size_history,
    trends,
    window_filters,
    worst_models,
)
from serialmon.schema import init_db
from serialmon.simulate import SimulationConfig, run_simulation

DAY_MINUTES = 24 * 60
RUNNING_BATCH = "nightly-run"
RUNNING_TOTAL = 400
RUNNING_DONE = 40
SECRET = "s3cret-pw"


@dataclass
class Seeded:
    url: str
    data_dir: Path
    settings: Settings


def _clear_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in list(os.environ):
        if variable.startswith(("SERIALMON_", "SMTP_", "ALERT_")) or variable in ("MODEL_DATA_DB_URL", "DATABASE_URL"):
            monkeypatch.delenv(variable, raising=False)


def _libpq(url: str, database: str | None = None) -> str:
    parsed = make_url(normalize_url(url))
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(scope="module")
def seeded(server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    """A database with a finished simulated run, a running batch, a firing alert and a silence."""
    name = f"dash_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_libpq(server_url, "postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_url(normalize_url(server_url)).set(database=name).render_as_string(hide_password=False)
    folder = tmp_path_factory.mktemp("dashboard")

    with pytest.MonkeyPatch.context() as monkeypatch:
        _clear_environment(monkeypatch)
        monkeypatch.chdir(folder)
        settings = load_settings(database_url=url, data_dir=folder / "data")
        set_settings(settings)
        reset_serialize_metrics_collector()
        init_db(settings, create_models_table=True)
        run_simulation(SimulationConfig(count=200, seed=1, content_kb=1, workers=1, history_hours=0.0), settings)

        # A batch still running, with recent events, so the overview shows progress and an ETA.
        collector = get_serialize_metrics_collector()
        batch_id = collector.start_batch_job(total_models=RUNNING_TOTAL, name=RUNNING_BATCH)
        for index in range(RUNNING_DONE):
            collector.record_serialization_sync(
                f"running-{index:03d}.prt", "part", "success", 30.0, 90.0, "EMJAC", batch_id=batch_id
            )
        assert collector.flush(timeout=30)
        refresh_ledger(settings)

        # A failure-rate alert that fires (thresholds far below the run's rate) and a silence.
        strict = load_settings(
            database_url=url, data_dir=folder / "data", failure_rate_warning=0.001, failure_rate_critical=0.002,
            min_attempts_for_failure_rate=5,
        )
        asyncio.run(AlertManager(strict).process_alerts(send_notifications=False))
        asyncio.run(AlertManager(settings).silence("processing_stall", duration=3600, reason="maintenance window"))
        asyncio.run(DatabaseMonitor(settings).get_full_report())

        yield Seeded(url=url, data_dir=folder / "data", settings=settings)

        reset_serialize_metrics_collector()
        dispose_engines()
        set_settings(None)
    with psycopg.connect(_libpq(server_url, "postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _use_database(monkeypatch: pytest.MonkeyPatch, url: str, data_dir: Path, **variables: str) -> None:
    """Point the app at `url` through the environment, as `serialmon dashboard` does, and forget caches."""
    _clear_environment(monkeypatch)
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("SERIALMON_DATA_DIR", str(data_dir))
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    set_settings(None)
    clear_cache()


@pytest.fixture
def app(seeded: Seeded, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> AppTest:
    monkeypatch.chdir(tmp_path)
    _use_database(monkeypatch, seeded.url, seeded.data_dir)
    return AppTest.from_file(str(APP_PATH), default_timeout=60)


def open_view(app: AppTest, label: str) -> AppTest:
    app.session_state["view"] = label
    app.run()
    assert not app.exception, [item.value for item in app.exception]
    return app


def metrics(app: AppTest) -> dict[str, str]:
    return {metric.label: metric.value for metric in app.metric}


def snapshot(settings: Settings, minutes: float | None = DAY_MINUTES, filters: Filters | None = None) -> dict:
    return run_sync(
        None, lambda conn: get_snapshot(conn, settings, minutes=minutes, filters=filters, refresh=False), settings
    )


# A column that only one table of the page has, to find that table.
TABLE_COLUMNS = {
    "workers": "last heartbeat",
    "worst_models": "with elements",
    "categories": "avg coverage %",
    "failure_groups": "example models",
    "recent_models": "time s",
    "indexes": "index",
    "active_alerts": "pending since",
    "silences": "in force",
    "alert_history": "held back by",
}


def dataframe(app: AppTest, table: str):
    column = TABLE_COLUMNS[table]
    found = [frame for frame in app.dataframe if column in frame.value.columns]
    assert len(found) == 1, f"{len(found)} tables with a column {column!r}"
    return found[0]


def chart_spec(app: AppTest, key: str) -> dict:
    found = [chart for chart in app.get("plotly_chart") if key in chart.proto.id]
    assert found, f"no plotly chart with key {key!r}"
    return json.loads(found[0].proto.spec)


# Read-model figures made for the dashboard, checked against plain queries


def test_worst_models_lowest_coverage_first(seeded):
    with psycopg.connect(_libpq(seeded.url)) as conn:
        known = conn.execute(
            "SELECT element_coverage FROM serialmon.model_quality WHERE element_coverage IS NOT NULL"
        ).fetchall()
    worst = run_sync(None, lambda conn: worst_models(conn, seeded.settings, limit=10), seeded.settings)

    assert [row["element_coverage"] for row in worst] == sorted(value for (value,) in known)[:10]
    assert len(worst) == 10


def test_failure_examples_latest_distinct_models(seeded):
    with psycopg.connect(_libpq(seeded.url)) as conn:
        failures = conn.execute(
            "SELECT error_type, model_name, occurred_at FROM serialmon.serialization_events WHERE status = 'failure'"
        ).fetchall()
    latest: dict = {}
    for error_type, model_name, occurred_at in failures:
        group = latest.setdefault(error_type, {})
        group[model_name] = max(group.get(model_name, occurred_at), occurred_at)
    expected = {
        error_type: [name for name, _ in sorted(models.items(), key=lambda item: (-item[1].timestamp(), item[0]))][:3]
        for error_type, models in latest.items()
    }
    examples = run_sync(None, lambda conn: failure_examples(conn, seeded.settings, per_group=3), seeded.settings)

    assert {group["error_type"]: group["example_models"] for group in examples} == expected


def test_filter_options_and_extent(seeded):
    with psycopg.connect(_libpq(seeded.url)) as conn:
        categories = {row[0] for row in conn.execute(
            "SELECT category FROM serialmon.serialization_events WHERE category IS NOT NULL "
            "UNION SELECT category FROM serialmon.model_quality WHERE category IS NOT NULL"
        )}
        first, last = conn.execute(
            "SELECT min(occurred_at), max(occurred_at) FROM serialmon.serialization_events"
        ).fetchone()
        rows = conn.execute("SELECT count(*) FROM public.serialized_models").fetchone()[0]
    options = run_sync(None, lambda conn: filter_options(conn, seeded.settings), seeded.settings)
    extent = run_sync(None, lambda conn: data_extent(conn, seeded.settings), seeded.settings)

    assert options["categories"] == sorted(categories)
    assert extent["first_event_at"] == first.astimezone(timezone.utc).isoformat()
    assert extent["last_event_at"] == last.astimezone(timezone.utc).isoformat()
    assert extent["ledger_rows"] == rows


def test_size_history_thins_to_max_points(initialized, libpq_url):
    start = datetime(2030, 1, 1, tzinfo=timezone.utc)
    with psycopg.connect(libpq_url, autocommit=True) as conn:
        for minute in range(50):
            conn.execute(
                "INSERT INTO serialmon.table_size_samples (sampled_at, relation, heap_bytes, toast_bytes, index_bytes, "
                "total_bytes) VALUES (%s, %s, %s, 0, 0, %s)",
                (start + timedelta(minutes=minute), '"public"."serialized_models"', 1000 + minute, 1000 + minute),
            )
    every = run_sync(None, lambda conn: size_history(conn, initialized), initialized)
    thinned = run_sync(None, lambda conn: size_history(conn, initialized, max_points=10), initialized)
    since, until = start + timedelta(minutes=10), start + timedelta(minutes=20)
    window = run_sync(None, lambda conn: size_history(conn, initialized, since=since, until=until), initialized)

    assert [point["total_bytes"] for point in every] == [1000 + minute for minute in range(50)]
    assert 5 <= len(thinned) <= 10
    assert thinned[-1]["total_bytes"] == 1049
    assert [point["total_bytes"] for point in thinned] == sorted(point["total_bytes"] for point in thinned)
    assert [point["total_bytes"] for point in window] == [1000 + minute for minute in range(10, 20)]


# Overview


def test_overview_metrics_equal_snapshot(app, seeded):
    open_view(app, "Overview")
    expected = snapshot(seeded.settings)
    shown = metrics(app)

    assert shown["Models"] == fmt.count(expected["total_models"])
    assert shown["Parts"] == fmt.count(expected["by_type"]["part"]["models"])
    assert shown["Assemblies"] == fmt.count(expected["by_type"]["assembly"]["models"])
    assert shown["Success rate"] == fmt.ratio_percent(expected["success_rate"])
    assert shown["Failure rate"] == fmt.ratio_percent(expected["failure_rate"])
    assert shown["Average element coverage"] == fmt.percent(expected["quality"]["avg_element_coverage"])
    assert expected["total_models"] == 200 + RUNNING_DONE


def test_overview_equals_status_json(app, seeded):
    open_view(app, "Overview")
    result = CliRunner().invoke(cli_app, ["status", "--json", "--minutes", str(DAY_MINUTES), "--no-refresh"])
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)
    shown = metrics(app)

    assert shown["Models"] == fmt.count(status["total_models"])
    assert shown["Parts"] == fmt.count(status["by_type"]["part"]["models"])
    assert shown["Assemblies"] == fmt.count(status["by_type"]["assembly"]["models"])
    assert shown["Failure rate"] == fmt.ratio_percent(status["failure_rate"])
    assert shown["Success rate"] == fmt.ratio_percent(status["success_rate"])
    assert shown["Average element coverage"] == fmt.percent(status["quality"]["avg_element_coverage"])


def test_overview_counts_firing_alerts(app, seeded):
    open_view(app, "Overview")
    active = asyncio.run(AlertManager(seeded.settings).get_active_alerts())
    firing = [alert for alert in active if alert["state"] == "firing"]

    assert firing, "the fixture should leave a firing alert"
    assert metrics(app)["Active alerts"] == fmt.count(len(firing))
    assert any(alert["rule"] in item.value for item in [*app.error, *app.warning] for alert in firing)
    assert any(f"{len(firing)} firing alert" in item.value for item in [*app.error, *app.warning])


def test_overview_running_batch_progress_and_eta(app, seeded):
    open_view(app, "Overview")
    batch = next(item for item in snapshot(seeded.settings)["batches"] if item["name"] == RUNNING_BATCH)
    bars = app.get("progress")

    assert len(bars) == 1
    assert bars[0].proto.value == int(round(100 * RUNNING_DONE / RUNNING_TOTAL))
    assert batch["processed"] == RUNNING_DONE
    assert RUNNING_BATCH in bars[0].proto.text
    assert f"{RUNNING_DONE} / {RUNNING_TOTAL}" in bars[0].proto.text
    assert "ETA " in bars[0].proto.text
    assert "ETA unknown" not in bars[0].proto.text


def test_overview_workers_with_state(app, seeded):
    open_view(app, "Overview")
    expected = snapshot(seeded.settings)["workers"]
    table = dataframe(app, "workers").value

    assert sorted(table["worker"]) == sorted(worker["worker_id"] for worker in expected)
    assert dict(zip(table["worker"], table["state"])) == {w["worker_id"]: w["state"] for w in expected}
    assert "live" in set(table["state"])  # the collector of the running batch is still sending heartbeats


# Quality


def test_quality_metrics_equal_quality_summary(app, seeded):
    open_view(app, "Quality")
    quality = run_sync(None, lambda conn: quality_summary(conn, seeded.settings), seeded.settings)
    shown = metrics(app)

    assert shown["Models in the table"] == fmt.count(quality["table_models"])
    assert shown["Below 80 %"] == fmt.count(quality["below_warning"])
    assert shown["Below 50 %"] == fmt.count(quality["below_critical"])
    assert shown["Unrecoverable unknown features"] == fmt.count(quality["unrecoverable_unknown"])
    assert shown["Quality unknown"] == fmt.count(quality["quality_unknown"])
    assert quality["below_critical"] > 0


def test_quality_histogram_and_worst_models(app, seeded):
    open_view(app, "Quality")
    quality = run_sync(None, lambda conn: quality_summary(conn, seeded.settings), seeded.settings)
    worst = run_sync(None, lambda conn: worst_models(conn, seeded.settings, limit=25), seeded.settings)

    bars = chart_spec(app, "coverage_hist")["data"][0]["y"]
    assert bars == [bucket["models"] for bucket in quality["coverage_histogram"]]
    table = dataframe(app, "worst_models")
    assert list(table.value["model"]) == [row["model_name"] for row in worst]
    assert worst[0]["element_coverage"] < 50
    assert "#f8d7da" in table.proto.arrow_data.styler.styles  # the critical red of coverage below 50 %


# Categories


def test_categories_table_equals_breakdown(app, seeded):
    open_view(app, "Categories")
    expected = snapshot(seeded.settings)["by_category"]
    table = dataframe(app, "categories").value

    assert list(table["category"]) == [fmt.category_name(row["category"]) for row in expected]
    assert list(table["attempts"]) == [row["attempts"] for row in expected]
    assert list(table["failures"]) == [row["failure"] for row in expected]
    for shown, row in zip(table.to_dict("records"), expected):
        assert shown["failure rate %"] == pytest.approx(100 * row["failure_rate"])
        assert shown["avg coverage %"] == pytest.approx(row["avg_element_coverage"])
        assert shown["p95 time s"] == pytest.approx(row["p95_processing_time_sec"])


# Trends


def test_trends_charts_equal_trends(app, seeded):
    open_view(app, "Trends")
    expected = run_sync(
        None, lambda conn: trends(conn, seeded.settings, hours=24, bucket_minutes=30), seeded.settings
    )

    failures = chart_spec(app, "trend_failures")["data"][0]["y"]
    p95 = chart_spec(app, "trend_processing_time")["data"][1]["y"]
    assert failures == [bucket["failure"] for bucket in expected]
    assert p95 == [bucket["p95_processing_time_sec"] for bucket in expected]
    assert sum(failures) == snapshot(seeded.settings)["by_status"]["failure"]
    assert metrics(app)["p95 processing time"] == fmt.seconds(snapshot(seeded.settings)["processing_time_sec"]["p95"])


def test_trends_follow_time_range(app, seeded):
    app.run()
    app.selectbox(key="time_range").set_value("Last 6 hours")
    open_view(app, "Trends")

    assert len(chart_spec(app, "trend_failures")["data"][0]["y"]) in (36, 37)  # 6 h in buckets of 10 min
    assert metrics(app)["Attempts in range"] == fmt.count(snapshot(seeded.settings, minutes=360)["attempts"])


# Failures


def test_failures_grouped_with_examples(app, seeded):
    open_view(app, "Failures")
    expected = snapshot(seeded.settings)["failure_reasons"]
    window = run_sync(None, lambda conn: window_filters(conn, Filters(), DAY_MINUTES), seeded.settings)
    examples = run_sync(None, lambda conn: failure_examples(conn, seeded.settings, window), seeded.settings)
    table = dataframe(app, "failure_groups").value

    assert list(table["failures"]) == [group["failures"] for group in expected]
    assert list(table["models"]) == [group["models"] for group in expected]
    assert list(table["last seen"]) == [fmt.utc_time(group["last_seen"])[:19] for group in expected]
    by_type = {group["error_type"]: ", ".join(group["example_models"]) for group in examples}
    assert list(table["example models"]) == [by_type[group["error_type"]] for group in expected]
    assert metrics(app)["Failed attempts"] == fmt.count(snapshot(seeded.settings)["by_status"]["failure"])


# Recent models


def test_recent_models_search(app, seeded):
    open_view(app, "Recent models")
    everything = dataframe(app, "recent_models").value
    app.text_input(key="recent_search").input("EMJAC-").run()
    narrowed = dataframe(app, "recent_models")

    window = run_sync(None, lambda conn: window_filters(conn, Filters(), DAY_MINUTES), seeded.settings)
    expected = run_sync(
        None, lambda conn: recent_models(conn, seeded.settings, window, search="EMJAC-", limit=500), seeded.settings
    )
    assert len(everything) == snapshot(seeded.settings)["attempts"]
    assert list(narrowed.value["model"]) == [row["model_name"] for row in expected]
    assert all("emjac-" in name for name in narrowed.value["model"])
    assert 0 < len(narrowed.value) < len(everything)


def test_recent_models_coverage_colours(app, seeded):
    open_view(app, "Recent models")
    table = dataframe(app, "recent_models")
    coverage = list(table.value["coverage %"])
    styles = table.proto.arrow_data.styler.styles
    column = list(table.value.columns).index("coverage %")

    for row, value in enumerate(coverage):
        cell = f"_row{row}_col{column}"
        red = _has_style(styles, cell, "#f8d7da")
        amber = _has_style(styles, cell, "#fff3cd")
        known = value == value  # NaN (no coverage) is never equal to itself
        assert red == (known and value < 50), (row, value)
        assert amber == (known and 50 <= value < 80), (row, value)


def _has_style(styles: str, cell: str, colour: str) -> bool:
    for rule in styles.split("\n"):
        selectors, _, body = rule.partition("{")
        if colour in body and any(selector.strip().endswith(cell) for selector in selectors.split(",")):
            return True
    return False


# Database


def test_database_view_shows_report(app, seeded):
    open_view(app, "Database")
    report = asyncio.run(DatabaseMonitor(seeded.settings).get_full_report(record_sample=False))
    shown = metrics(app)

    assert shown["Total size"] == fmt.size(report["table"]["total_bytes"])
    assert shown["TOAST"] == fmt.size(report["table"]["toast_bytes"])
    assert shown["TOAST share"] == fmt.ratio_percent(report["table"]["toast_share"])
    assert shown["Live rows"] == fmt.count(report["table"]["live_tuples"])
    indexes = dataframe(app, "indexes").value
    assert sorted(indexes["index"]) == sorted(index["name"] for index in report["indexes"]["indexes"])
    assert "serialized_models_feature_types_gin" in set(indexes["index"])


# Alerts


def test_alerts_view_lists_active_silences_history(app, seeded):
    open_view(app, "Alerts")
    manager = AlertManager(seeded.settings)
    active = asyncio.run(manager.get_active_alerts())
    silences = asyncio.run(manager.list_silences())
    history = asyncio.run(manager.get_alert_history())

    assert list(dataframe(app, "active_alerts").value["rule"]) == [alert["rule"] for alert in active]
    assert list(dataframe(app, "silences").value["rule"]) == ["processing_stall"]
    assert len(silences) == 1
    assert list(dataframe(app, "alert_history").value["to"]) == [row["to_state"] for row in history]
    assert metrics(app)["Firing"] == fmt.count(sum(alert["state"] == "firing" for alert in active))


# Filters


def test_category_filter_narrows_every_figure(app, seeded):
    app.run()
    unfiltered = metrics(app)["Models"]
    app.multiselect(key="categories").set_value(["SDI"]).run()
    expected = snapshot(seeded.settings, filters=Filters(categories=("SDI",)))

    assert metrics(app)["Models"] == fmt.count(expected["total_models"])
    assert expected["total_models"] < int(unfiltered.replace(",", ""))
    open_view(app, "Categories")
    assert list(dataframe(app, "categories").value["category"]) == ["SDI"]


def test_model_type_filter(app, seeded):
    app.run()
    app.selectbox(key="model_type").set_value("assembly").run()
    expected = snapshot(seeded.settings, filters=Filters(model_type="assembly"))

    assert metrics(app)["Models"] == fmt.count(expected["total_models"])
    assert metrics(app)["Parts"] == "0"
    assert metrics(app)["Assemblies"] == fmt.count(expected["by_type"]["assembly"]["models"])


def test_coverage_filter_on_quality(app, seeded):
    app.run()
    app.slider(key="coverage").set_value((50.0, 100.0)).run()
    open_view(app, "Quality")
    expected = run_sync(
        None, lambda conn: quality_summary(conn, seeded.settings, Filters(coverage_min=50)), seeded.settings
    )
    everything = run_sync(None, lambda conn: quality_summary(conn, seeded.settings), seeded.settings)

    assert metrics(app)["Models in the table"] == fmt.count(expected["table_models"])
    assert expected["table_models"] < everything["table_models"]
    assert metrics(app)["Below 50 %"] == "0"


def test_time_range_filter(app, seeded):
    app.run()
    app.selectbox(key="time_range").set_value("Last hour").run()
    expected = snapshot(seeded.settings, minutes=60)

    assert metrics(app)["Models"] == fmt.count(expected["total_models"])
    assert expected["total_models"] < snapshot(seeded.settings)["total_models"]


def test_custom_dates_cover_whole_days(app, seeded):
    app.run()
    app.selectbox(key="time_range").set_value("Custom dates").run()
    today = datetime.now(timezone.utc).date()
    app.date_input(key="custom_dates").set_value((today - timedelta(days=1), today)).run()
    since = datetime.combine(today - timedelta(days=1), time.min, tzinfo=timezone.utc)
    expected = snapshot(seeded.settings, minutes=None, filters=Filters(since=since, until=since + timedelta(days=2)))

    assert not app.exception
    assert metrics(app)["Models"] == fmt.count(expected["total_models"])


def test_auto_refresh_toggle_shows_interval(app):
    app.run()
    app.toggle(key="auto_refresh").set_value(True).run()

    assert not app.exception
    assert app.number_input(key="refresh_sec").value == 30


# States


def test_empty_database_shows_how_to_fill_it(initialized, database_url, monkeypatch, tmp_path):
    _use_database(monkeypatch, database_url, tmp_path / "data")
    app = AppTest.from_file(str(APP_PATH), default_timeout=60).run()

    assert not app.exception
    assert any("serialmon simulate" in item.value for item in app.info)
    assert not app.metric


def test_missing_schema_shows_init(settings, database_url, monkeypatch, tmp_path):
    _use_database(monkeypatch, database_url, tmp_path / "data")
    app = AppTest.from_file(str(APP_PATH), default_timeout=60).run()

    assert not app.exception
    assert any("tables are missing" in item.value for item in app.error)
    assert any("serialmon init" in item.value for item in app.info)


def test_invalid_setting_names_variable(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    _use_database(
        monkeypatch, "postgresql://monitor@127.0.0.1:1/none", tmp_path / "data", SERIALMON_COVERAGE_WARNING="lots"
    )
    app = AppTest.from_file(str(APP_PATH), default_timeout=60).run()

    assert not app.exception
    assert any("SERIALMON_COVERAGE_WARNING" in item.value for item in app.error)
    assert not app.metric


def test_database_down_banner_then_recovery(seeded, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    _use_database(
        monkeypatch, f"postgresql://monitor:{SECRET}@127.0.0.1:1/none", tmp_path / "data",
        SERIALMON_CONNECT_TIMEOUT_SEC="1",
    )
    app = AppTest.from_file(str(APP_PATH), default_timeout=60).run()

    assert not app.exception
    banner = " ".join(item.value for item in app.error)
    assert "cannot be reached" in banner
    assert "127.0.0.1:1" in banner
    assert any("DATABASE_URL" in item.value for item in app.info)
    page_text = " ".join(str(element.value) for element in (*app.error, *app.info, *app.caption, *app.markdown))
    assert SECRET not in page_text

    _use_database(monkeypatch, seeded.url, seeded.data_dir)
    app.run()

    assert not app.exception
    assert not any("cannot be reached" in item.value for item in app.error)
    assert metrics(app)["Models"] == fmt.count(snapshot(seeded.settings)["total_models"])


def test_streamlit_command_binds_loopback():
    from serialmon.cli_dashboard import streamlit_command

    command = streamlit_command("127.0.0.1", 8765, open_browser=False)

    assert command[command.index("--server.address") + 1] == "127.0.0.1"
    assert command[command.index("--server.port") + 1] == "8765"
    assert command[command.index("--server.headless") + 1] == "true"
    assert command[command.index("--browser.gatherUsageStats") + 1] == "false"
    assert str(APP_PATH) in command


def test_dashboard_command_rejects_busy_port(monkeypatch, tmp_path):
    import socket

    monkeypatch.chdir(tmp_path)
    _clear_environment(monkeypatch)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(cli_app, ["dashboard", "--no-browser", "--port", str(port)])

    assert result.exit_code != 0
    assert isinstance(result.exception, SerialmonError)
    assert f"Cannot listen on 127.0.0.1:{port}" in str(result.exception)
    assert "Choose another --port" in str(result.exception)
