"""The model-quality ledger: incremental refresh, malformed rows, locking, quoting, against a real PostgreSQL."""

from __future__ import annotations

import json
import threading

import psycopg
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from psycopg import sql
from sqlalchemy import text

from serialmon.config import load_settings, set_settings
from serialmon.db import get_engine, names
from serialmon.errors import MissingTable
from serialmon.ledger import _LOCK_CLASS, _ROWS_BY_ID_SQL, _sql, refresh_ledger
from serialmon.quality import parse_quality
from serialmon.readmodel import get_snapshot
from serialmon.schema import init_db


def feature(type_id, elements=1, type_name=None):
    return {
        "id": 1, "name": f"F{type_id}", "type_id": type_id, "type": type_name,
        "element_tree": {
            "elements": [{"id": i, "value": "x" * 20} for i in range(elements)], "element_count": elements,
        },
        "references": [], "feature_geometry": {"surfaces": [1, 2, 3]},
    }


def modern(coverage, unrecoverable=0):
    return {
        "model_name": "x", "features": [feature(917), feature(918)],
        "serialization_quality": {
            "total_features": 2, "features_with_elements": 2, "element_coverage": coverage,
            "group_features": 0, "analysis_features": 0, "recoverable_unknown": 0,
            "unrecoverable_unknown": unrecoverable,
        },
    }


def insert_models(libpq_url, contents, *, table=None, start=0):
    """Insert one row per content (None is SQL NULL) as the pipeline would; returns the model names."""
    target = table or sql.SQL("serialized_models")
    names_written = []
    with psycopg.connect(libpq_url, autocommit=True) as conn, conn.cursor() as cursor:
        statement = sql.SQL(
            "INSERT INTO {} (model_name, model_type, category, feature_count, serialized_content) "
            "VALUES (%s, %s, %s, %s, %s)"
        ).format(target)
        rows = []
        for offset, content in enumerate(contents):
            name = f"model_{start + offset:05d}.prt"
            names_written.append(name)
            rows.append((name, "part", "EMJAC", 2, None if content is None else json.dumps(content)))
        cursor.executemany(statement, rows)
    return names_written


def ledger_rows(libpq_url, schema="serialmon"):
    with psycopg.connect(libpq_url) as conn:
        query = sql.SQL(
            "SELECT model_name, quality_known, quality_reason, quality_source, element_coverage, total_features, "
            "features_with_elements, group_features, analysis_features, recoverable_unknown, unrecoverable_unknown, "
            "content_bytes, category FROM {}.model_quality ORDER BY model_name"
        ).format(sql.Identifier(schema))
        columns = [
            "model_name", "known", "reason", "source", "element_coverage", "total_features",
            "features_with_elements", "group_features", "analysis_features", "recoverable_unknown",
            "unrecoverable_unknown", "content_bytes", "category",
        ]
        return {row[0]: dict(zip(columns, row)) for row in conn.execute(query)}


QUALITY_FIELDS = (
    "known", "reason", "source", "element_coverage", "total_features", "features_with_elements",
    "group_features", "analysis_features", "recoverable_unknown", "unrecoverable_unknown",
)


def assert_matches_parser(row, content):
    expected = parse_quality(content).as_dict()
    for name in QUALITY_FIELDS:
        assert row[name] == expected[name], (name, row["model_name"], content)


def test_refresh_reads_only_new_and_changed_rows(initialized, libpq_url):
    insert_models(libpq_url, [modern(90.0) for _ in range(100)])

    first = refresh_ledger(initialized)
    assert first.rows_read == 100
    assert first.inserted == 100
    assert first.ledger_rows == 100

    unchanged = refresh_ledger(initialized)
    assert unchanged.rows_read == 0
    assert unchanged.deleted == 0

    with psycopg.connect(libpq_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE serialized_models SET serialized_content = %s "
            "WHERE model_name IN ('model_00001.prt', 'model_00002.prt', 'model_00003.prt')",
            (json.dumps(modern(40.0)),),
        )
    insert_models(libpq_url, [modern(70.0), modern(75.0)], start=100)
    second = refresh_ledger(initialized)
    assert second.rows_read == 5
    assert second.updated == 3
    assert second.inserted == 2
    rows = ledger_rows(libpq_url)
    assert rows["model_00002.prt"]["element_coverage"] == 40.0
    assert rows["model_00101.prt"]["element_coverage"] == 75.0

    with psycopg.connect(libpq_url, autocommit=True) as conn:
        conn.execute("DELETE FROM serialized_models WHERE model_name = 'model_00050.prt'")
    third = refresh_ledger(initialized)
    assert third.rows_read == 0
    assert third.deleted == 1
    assert third.ledger_rows == 101
    assert "model_00050.prt" not in ledger_rows(libpq_url)


def test_upsert_by_pipeline_counts_as_change(initialized, libpq_url):
    insert_models(libpq_url, [modern(90.0), modern(91.0)])
    refresh_ledger(initialized)

    with psycopg.connect(libpq_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO serialized_models (model_name, serialized_content) VALUES ('model_00000.prt', %s) "
            "ON CONFLICT (model_name) DO UPDATE SET serialized_content = excluded.serialized_content",
            (json.dumps(modern(12.5)),),
        )
    result = refresh_ledger(initialized)
    assert result.rows_read == 1
    assert result.updated == 1
    assert ledger_rows(libpq_url)["model_00000.prt"]["element_coverage"] == 12.5


# (case, content, reason); None is SQL NULL.
MALFORMED = [
    ("sql-null", None, "serialized_content is NULL"),
    ("array", [1, 2], "serialized_content is a JSON array, not an object"),
    ("number", 42, "serialized_content is a JSON number, not an object"),
    ("string", "not json", "serialized_content is not valid JSON"),
    ("nan-string", {"element_coverage": "NaN"}, "element_coverage is a JSON string, not a number"),
    ("numeric-string", {"element_coverage": "85"}, "element_coverage is a JSON string, not a number"),
    ("coverage-null", {"element_coverage": None}, "element_coverage is a JSON null, not a number"),
    ("out-of-range", {"element_coverage": 130}, "element_coverage 130 is outside 0-100"),
    ("coverage-array", {"element_coverage": [80]}, "element_coverage is a JSON array, not a number"),
    ("quality-infinity-string", {"serialization_quality": {"element_coverage": "Infinity"}},
        "element_coverage is a JSON string, not a number"),
    ("quality-array", {"serialization_quality": [90]}, "serialization_quality is a JSON array, not an object"),
    ("counts-inconsistent",
        {"serialization_quality": {"total_features": 2, "features_with_elements": 3, "element_coverage": 50}},
        "features_with_elements (3) exceeds total_features (2)"),
    ("negative-count", {"serialization_quality": {"total_features": -1, "element_coverage": 50}},
        "total_features -1 is not a non-negative integer"),
    ("features-string", {"features": "x"}, "features is a JSON string, not an array"),
    ("feature-number", {"features": [1]}, "a feature is a JSON number, not an object"),
    ("only-groups", {"features": [feature(1104)]}, "no meaningful features to measure coverage on"),
    ("no-quality", {"model_name": "x"}, "no serialization_quality, element_coverage or features"),
]


def test_malformed_rows_become_quality_unknown(initialized, libpq_url):
    contents = [content for _, content, _ in MALFORMED]
    names_written = insert_models(libpq_url, contents)

    result = refresh_ledger(initialized)

    assert result.rows_read == len(contents)
    assert result.quality_unknown == len(contents)
    rows = ledger_rows(libpq_url)
    for name, (case, _, reason) in zip(names_written, MALFORMED):
        assert rows[name]["known"] is False, case
        assert rows[name]["reason"] == reason, case
        assert rows[name]["element_coverage"] is None, case


# (case, content): layouts whose quality is known, older ones included.
LEGACY_LAYOUTS = [
    ("quality-block", modern(88.5, unrecoverable=2)),
    ("top-level", {"element_coverage": 72.5, "features": [feature(917), feature(2004, 0)]}),
    ("top-level-without-features", {"element_coverage": 61}),
    ("features-only", {"features": [
        feature(917), feature(918, 0), feature(1104, 0), feature(1232, 0), feature(9999, 0), feature(9998),
    ]}),
    ("quality-block-without-coverage", {"serialization_quality": {"total_features": 4, "features_with_elements": 3}}),
    ("quality-coverage-null-falls-back-to-features", {
        "serialization_quality": {"element_coverage": None}, "features": [feature(917), feature(918, 0)],
    }),
    ("odd-feature-values", {"features": [
        {"type_id": 917, "element_tree": {"element_count": 3}},
        {"type_id": "917", "element_tree": {"elements": {"a": 1}}},
        {"type": "PROTRUSION", "element_tree": "none"},
        {"type_id": 918, "element_tree": {"element_count": True, "elements": []}},
    ]}),
    ("json-encoded-twice", json.dumps({"element_coverage": 55.5})),
]


def test_ledger_quality_equals_parser_on_full_content(initialized, libpq_url):
    contents = [content for _, content in LEGACY_LAYOUTS]
    names_written = insert_models(libpq_url, contents)

    refresh_ledger(initialized)

    rows = ledger_rows(libpq_url)
    for name, (case, content) in zip(names_written, LEGACY_LAYOUTS):
        assert rows[name]["known"] is True, case
        assert_matches_parser(rows[name], content)


_json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 300), st.floats(-10, 200, allow_nan=False),
    st.sampled_from(["", "NaN", "85", "x"]),
)
_element_trees = st.one_of(
    _json_scalars,
    st.fixed_dictionaries(
        {},
        optional={
            "element_count": _json_scalars,
            "elements": st.one_of(_json_scalars, st.lists(st.integers(), max_size=3)),
        },
    ),
)
_features = st.one_of(
    _json_scalars,
    st.fixed_dictionaries(
        {},
        optional={
            "type_id": st.one_of(st.sampled_from([917, 918, 1104, 1232, 1310, 2004]), _json_scalars),
            "type": st.one_of(st.sampled_from(["PROTRUSION", "GROUP", "ANALYSIS", "UNKNOWN"]), _json_scalars),
            "element_tree": _element_trees,
        },
    ),
)
_quality_blocks = st.one_of(
    _json_scalars,
    st.fixed_dictionaries(
        {},
        optional={
            name: st.one_of(st.integers(0, 20), _json_scalars)
            for name in ("total_features", "features_with_elements", "element_coverage", "group_features",
                         "analysis_features", "recoverable_unknown", "unrecoverable_unknown")
        },
    ),
)
_contents = st.one_of(
    _json_scalars,
    st.lists(st.integers(), max_size=2),
    st.fixed_dictionaries(
        {},
        optional={
            "serialization_quality": _quality_blocks,
            "element_coverage": _json_scalars,
            "features": st.one_of(_json_scalars, st.lists(_features, max_size=6)),
        },
    ),
)


@hypothesis_settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(contents=st.lists(_contents, min_size=1, max_size=25))
def test_ledger_agrees_with_parser_on_random_contents(initialized, libpq_url, contents):
    with psycopg.connect(libpq_url, autocommit=True) as conn:
        conn.execute("DELETE FROM serialized_models")
    names_written = insert_models(libpq_url, contents)

    refresh_ledger(initialized)

    rows = ledger_rows(libpq_url)
    assert len(rows) == len(contents)
    for name, content in zip(names_written, contents):
        # A JSON null stored in the column reads back as None, like SQL NULL.
        assert_matches_parser(rows[name], content)


def test_features_sent_only_without_coverage(initialized, libpq_url):
    insert_models(libpq_url, [modern(90.0), {"features": [feature(917, elements=5), feature(918, 0)]}])

    with get_engine(initialized).connect() as conn:
        rows = {row.id: row for row in conn.execute(_sql(_ROWS_BY_ID_SQL, names(initialized)), {"ids": [1, 2]})}

    with_quality, legacy = (rows[key] for key in sorted(rows))
    assert with_quality.features is None
    assert with_quality.serialization_quality["element_coverage"] == 90.0
    assert legacy.serialization_quality is None
    assert legacy.features == [
        {"type_id": 917, "type": None, "element_tree": {"element_count": 5, "elements": [True]}},
        {"type_id": 918, "type": None, "element_tree": {"element_count": 0, "elements": []}},
    ]
    assert with_quality.content_bytes > 0


def test_progress_reports_each_chunk(initialized, libpq_url):
    insert_models(libpq_url, [modern(90.0) for _ in range(450)])
    calls = []

    result = refresh_ledger(initialized, chunk_size=200, progress=lambda done, total: calls.append((done, total)))

    assert result.rows_read == 450
    assert calls == [(0, 450), (200, 450), (400, 450), (450, 450)]


def test_refresh_skips_while_another_holds_lock(initialized, libpq_url):
    insert_models(libpq_url, [modern(90.0)])
    lock_name = f"{initialized.state_schema}/{initialized.models_schema}.{initialized.models_table}"

    with psycopg.connect(libpq_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (_LOCK_CLASS, lock_name))
        skipped = refresh_ledger(initialized, lock_wait_sec=0.2)
    after = refresh_ledger(initialized, lock_wait_sec=0.2)

    assert skipped.skipped is True
    assert skipped.rows_read == 0
    assert after.skipped is False
    assert after.rows_read == 1


def test_concurrent_refreshes_read_each_row_once(initialized, libpq_url):
    insert_models(libpq_url, [modern(float(i % 100)) for i in range(3000)])
    results = []

    def run():
        results.append(refresh_ledger(initialized, lock_wait_sec=30.0))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(result.rows_read for result in results) == [0, 3000]
    assert len(ledger_rows(libpq_url)) == 3000


def test_refresh_records_state(initialized, libpq_url):
    insert_models(libpq_url, [modern(90.0), None])

    result = refresh_ledger(initialized)

    with psycopg.connect(libpq_url) as conn:
        refreshed_at, rows_seen, details = conn.execute(
            "SELECT refreshed_at, rows_seen, details FROM serialmon.ledger_state WHERE relation = %s",
            ("public.serialized_models",),
        ).fetchone()
    assert refreshed_at == result.refreshed_at
    assert rows_seen == 2
    assert details["refresh"]["rows_read"] == 2
    assert details["refresh"]["quality_unknown"] == 1


def statistics_settings(settings, **overrides):
    changed = settings.model_copy(update={"ledger_change_check": "statistics", **overrides})
    set_settings(changed)
    return changed


def flush_statistics(conn):
    """Publish this session's table counters now (PostgreSQL 15+), as a pipeline session does within seconds."""
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT 1")


@pytest.fixture
def statistics_available(libpq_url):
    with psycopg.connect(libpq_url) as conn:
        version = int(conn.execute("SHOW server_version_num").fetchone()[0])
    if version < 150000:
        pytest.skip("pg_stat_force_next_flush() needs PostgreSQL 15")


def test_statistics_mode_skips_pass_until_counters_move(initialized, libpq_url, statistics_available):
    fast = statistics_settings(initialized)
    insert_models(libpq_url, [modern(90.0) for _ in range(10)])
    first = refresh_ledger(fast)

    quiet = refresh_ledger(fast)
    with psycopg.connect(libpq_url, autocommit=True) as conn:
        conn.execute("UPDATE serialized_models SET serialized_content = %s WHERE model_name = 'model_00004.prt'",
                     (json.dumps(modern(20.0)),))
        flush_statistics(conn)
    changed = refresh_ledger(fast)

    assert first.full_check is True
    assert first.rows_read == 10
    assert quiet.full_check is False
    assert quiet.rows_read == 0
    assert quiet.ledger_rows == 10
    assert quiet.refreshed_at > first.refreshed_at
    assert changed.full_check is True
    assert changed.rows_read == 1
    assert ledger_rows(libpq_url)["model_00004.prt"]["element_coverage"] == 20.0


def test_statistics_mode_sees_truncate(initialized, libpq_url, statistics_available):
    fast = statistics_settings(initialized)
    insert_models(libpq_url, [modern(90.0) for _ in range(3)])
    refresh_ledger(fast)

    with psycopg.connect(libpq_url, autocommit=True) as conn:
        conn.execute("TRUNCATE serialized_models")
    result = refresh_ledger(fast)

    assert result.full_check is True
    assert result.deleted == 3
    assert result.ledger_rows == 0


def test_statistics_mode_passes_again_after_full_check_interval(initialized, libpq_url):
    always = statistics_settings(initialized, ledger_full_check_sec=0)
    insert_models(libpq_url, [modern(90.0)])
    refresh_ledger(always)

    again = refresh_ledger(always)

    assert again.full_check is True
    assert again.rows_read == 0


def test_exact_mode_always_passes(initialized, libpq_url):
    insert_models(libpq_url, [modern(90.0)])
    refresh_ledger(initialized)

    again = refresh_ledger(initialized)

    assert initialized.ledger_change_check == "exact"
    assert again.full_check is True


def test_recreated_table_rebuilds_ledger(initialized, libpq_url):
    insert_models(libpq_url, [modern(90.0), modern(80.0)])
    refresh_ledger(initialized)

    with psycopg.connect(libpq_url, autocommit=True) as conn:
        conn.execute("DROP TABLE serialized_models")
    init_db(initialized, create_models_table=True)
    insert_models(libpq_url, [modern(10.0)])
    result = refresh_ledger(initialized)

    assert result.rebuilt is True
    assert result.ledger_rows == 1
    assert ledger_rows(libpq_url)["model_00000.prt"]["element_coverage"] == 10.0


def test_missing_table_raises_with_fix(settings):
    init_db(settings, create_models_table=False)

    with pytest.raises(MissingTable) as raised:
        refresh_ledger(settings)

    assert "public.serialized_models" in str(raised.value)
    assert "SERIALMON_MODELS_TABLE" in str(raised.value)


@pytest.mark.parametrize(("option", "value"), [("chunk_size", 0), ("chunk_size", 1.5), ("lock_wait_sec", -1)])
def test_refresh_rejects_bad_options(initialized, option, value):
    with pytest.raises(ValueError, match=option):
        refresh_ledger(initialized, **{option: value})


def test_table_name_needing_quoting(database_url, libpq_url, tmp_path):
    quoted_settings = load_settings(
        database_url=database_url, data_dir=tmp_path / "data",
        models_schema='Model Data', models_table='Serialized "Models": v2', state_schema="Serialmon State",
    )
    set_settings(quoted_settings)
    init_db(quoted_settings, create_models_table=True)
    table = sql.Identifier("Model Data", 'Serialized "Models": v2')
    insert_models(libpq_url, [modern(90.0), modern(30.0), None], table=table)

    result = refresh_ledger(quoted_settings)

    assert result.rows_read == 3
    assert result.relation == 'Model Data.Serialized "Models": v2'
    rows = ledger_rows(libpq_url, schema="Serialmon State")
    assert sorted(row["element_coverage"] for row in rows.values() if row["known"]) == [30.0, 90.0]
    with get_engine(quoted_settings).connect() as conn:
        snapshot = get_snapshot(conn, quoted_settings)
        missing = conn.execute(text("SELECT to_regclass('public.serialized_models')")).scalar_one()
    assert snapshot["table_models"] == 3
    assert snapshot["quality"]["below_critical"] == 1
    assert snapshot["ledger"]["error"] is None
    assert missing is None
