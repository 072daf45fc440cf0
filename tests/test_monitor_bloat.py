"""Bloat estimate against pgstattuple on a JSONB-heavy table, fresh, after a bulk update and after a bulk delete."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy import text

from serialmon.db import get_engine
from serialmon.monitor import DatabaseMonitor

# The documented agreement between the estimate and pgstattuple's (dead + free) / size, in percentage points.
TOLERANCE_POINTS = 5.0

# Stored sizes from about 150 bytes (inline) to about 40 kB (about 20 TOAST chunks):
# md5 strings do not compress, so the TOAST table contains real chunks.
LOAD_MODELS = """
INSERT INTO serialized_models (model_name, model_type, feature_count, serialized_content, structure_summary,
                               feature_types, units, parameters, mass_properties, bounding_box)
SELECT 'model-' || g, CASE WHEN g %% 5 = 0 THEN 'assembly' ELSE 'part' END, g %% 300,
       jsonb_build_object('model_name', 'model-' || g,
           'features', (SELECT jsonb_agg(jsonb_build_object('id', k, 'name', md5(g::text || '-' || k::text)))
                        FROM generate_series(1, (ARRAY[2, 30, 200, 900])[1 + g %% 4]) k)),
       jsonb_build_object('features', g %% 300), ARRAY['PROTRUSION', 'CUT'], '{"length": "mm"}',
       jsonb_build_object('p', md5(g::text)), '{"mass": 1.5}', '{"x": 1, "y": 2, "z": 3}'
FROM generate_series(1, %s) g
"""


def load_models(libpq_url: str, rows: int = 400) -> None:
    """Insert `rows` JSONB-heavy models, make the statistics current and ANALYZE (no VACUUM)."""
    with psycopg.connect(libpq_url, autocommit=True) as conn:
        conn.execute(LOAD_MODELS, (rows,))
        settle_statistics(conn)


def settle_statistics(conn: psycopg.Connection) -> None:
    """Flush this session's pending table statistics, then ANALYZE so pg_stats and n_live_tup are current."""
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT 1")
    conn.execute("ANALYZE serialized_models")


def exact_percent(libpq_url: str) -> dict[str, float]:
    """Return pgstattuple's (dead + free) / size of the heap, the TOAST table and both, in percent."""
    with psycopg.connect(libpq_url, autocommit=True) as conn:
        toast = conn.execute(
            "SELECT reltoastrelid::regclass::text FROM pg_class WHERE oid = 'serialized_models'::regclass"
        ).fetchone()[0]
        parts = {}
        for name, relation in (("heap", "serialized_models"), ("toast", toast)):
            size, dead, free = conn.execute(
                "SELECT table_len, dead_tuple_len, free_space FROM pgstattuple(%s::regclass)", (relation,)
            ).fetchone()
            parts[name] = (size, dead + free)
    result = {name: 100.0 * wasted / size for name, (size, wasted) in parts.items()}
    total_size = sum(size for size, _ in parts.values())
    result["table"] = 100.0 * sum(wasted for _, wasted in parts.values()) / total_size
    return result


async def estimate_percent(settings) -> dict[str, float]:
    result = await DatabaseMonitor(settings).get_bloat()
    table = result["estimate"]["table"]
    return {"heap": table["heap"]["bloat_percent"], "toast": table["toast"]["bloat_percent"], "table": table["bloat_percent"]}


def assert_close(estimate: dict[str, float], exact: dict[str, float]) -> None:
    for part in ("heap", "toast", "table"):
        assert abs(estimate[part] - exact[part]) <= TOLERANCE_POINTS, (part, estimate, exact)


@pytest.fixture
def loaded(initialized, libpq_url):
    load_models(libpq_url)
    return initialized


async def test_fresh_table_estimate_near_zero(loaded, libpq_url):
    estimate = await estimate_percent(loaded)
    exact = exact_percent(libpq_url)

    assert estimate["table"] < 5.0
    assert exact["table"] < 5.0
    assert_close(estimate, exact)


async def test_bulk_update_seen_by_estimate(loaded, libpq_url):
    with psycopg.connect(libpq_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE serialized_models SET serialized_content = serialized_content || '{\"revision\": 2}' "
            "WHERE id % 2 = 0"
        )
        settle_statistics(conn)

    estimate = await estimate_percent(loaded)
    exact = exact_percent(libpq_url)

    assert exact["table"] > 10.0
    assert estimate["table"] > 10.0
    assert estimate["heap"] > 20.0
    assert_close(estimate, exact)


async def test_bulk_delete_seen_by_estimate(loaded, libpq_url):
    with psycopg.connect(libpq_url, autocommit=True) as conn:
        conn.execute("DELETE FROM serialized_models WHERE id % 3 <> 0")
        settle_statistics(conn)

    estimate = await estimate_percent(loaded)
    exact = exact_percent(libpq_url)

    assert exact["table"] > 50.0
    assert estimate["table"] > 50.0
    assert_close(estimate, exact)


async def test_delete_then_vacuum_still_counts_free_space(loaded, libpq_url):
    with psycopg.connect(libpq_url, autocommit=True) as conn:
        conn.execute("DELETE FROM serialized_models WHERE id % 3 <> 0")
        conn.execute("VACUUM serialized_models")
        settle_statistics(conn)

    estimate = await estimate_percent(loaded)
    exact = exact_percent(libpq_url)

    assert estimate["table"] > 50.0
    assert_close(estimate, exact)


async def test_exact_measurement_matches_pgstattuple(loaded, libpq_url):
    with psycopg.connect(libpq_url, autocommit=True) as conn:
        conn.execute("DELETE FROM serialized_models WHERE id % 2 = 0")
        settle_statistics(conn)

    result = await DatabaseMonitor(loaded).get_bloat(exact=True)
    exact = exact_percent(libpq_url)

    measured = result["exact"]
    assert measured["heap"]["function"] == "pgstattuple_approx"
    assert measured["toast"]["function"] == "pgstattuple"
    assert measured["toast"]["bloat_percent"] == pytest.approx(exact["toast"], abs=0.01)
    assert measured["heap"]["bloat_percent"] == pytest.approx(exact["heap"], abs=1.0)
    assert {index["name"] for index in measured["indexes"]} == {
        "serialized_models_pkey",
        "serialized_models_model_name_key",
    }
    assert "reads every page" in result["exact_cost"]


async def test_estimate_reads_no_table_page_beyond_sample(loaded, libpq_url):
    settings = loaded.model_copy(update={"monitor_sample_pages": 5})
    query = (
        "SELECT c.relpages, io.heap_blks_hit + io.heap_blks_read, io.toast_blks_hit + io.toast_blks_read "
        "FROM pg_class c JOIN pg_statio_all_tables io ON io.relid = c.oid WHERE c.oid = 'serialized_models'::regclass"
    )
    with psycopg.connect(libpq_url, autocommit=True) as conn:
        heap_pages, heap_before, toast_before = conn.execute(query).fetchone()

    with get_engine(settings).connect() as conn:
        await DatabaseMonitor(settings).get_bloat(conn)
        conn.rollback()
        # The backend flushes its block counters when it goes idle after this transaction.
        conn.execute(text("SELECT pg_stat_force_next_flush()"))
        conn.commit()

    with psycopg.connect(libpq_url, autocommit=True) as conn:
        _, heap_after, toast_after = conn.execute(query).fetchone()
    assert toast_after == toast_before  # nothing was detoasted
    assert heap_after - heap_before < heap_pages  # the sampled pages only
