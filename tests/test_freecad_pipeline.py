"""Tests for the FreeCAD example pipeline in examples/freecad_pipeline/pipeline.py.

The end-to-end tests run the pipeline as its users do: as a command with two
worker processes, over the shared FreeCAD corpus (87 valid documents and three
damaged copies), against the test database. They check the rows and events it
wrote against figures computed here from the files themselves.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from types import ModuleType

import defusedxml.ElementTree
import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row
from sqlalchemy.engine import make_url

from serialmon.config import normalize_url

REPO_ROOT = Path(__file__).resolve().parents[1]
PIPELINE_PATH = REPO_ROOT / "examples" / "freecad_pipeline" / "pipeline.py"

# Damaged corpus files and the error kind each failure must name.
BROKEN_FILE_KINDS = {
    "broken_Zolko-123__FreeCAD_Assembly4__Crankshaft.FCStd": "bad_zip",
    "broken_NJJaeger__Open-Water__deliv_Funnels_V3.FCStd": "missing_document_xml",
    "broken_goeland86__MonsterKossel__Bed.FCStd": "malformed_xml",
}
VALID_FILE_COUNT = 87


def _load_pipeline() -> ModuleType:
    # examples/ is not a package, so the module is loaded from its path.
    spec = importlib.util.spec_from_file_location("freecad_pipeline_main", PIPELINE_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


pipeline = _load_pipeline()


def _objects_section(path: Path) -> list[dict[str, str]]:
    """Return the attributes of each <Object> entry in the <Objects> section of a file's Document.xml."""
    with zipfile.ZipFile(path) as archive:
        root = defusedxml.ElementTree.fromstring(archive.read("Document.xml"))
    return [dict(entry.attrib) for entry in root.find("Objects") if entry.tag == "Object"]


def _document_properties(path: Path) -> dict[str, str | None]:
    """Return the string properties of a file's document (CreatedBy, CreationDate, ...) by name."""
    with zipfile.ZipFile(path) as archive:
        root = defusedxml.ElementTree.fromstring(archive.read("Document.xml"))
    properties = root.find("Properties")
    if properties is None:
        return {}
    return {
        prop.get("name"): prop[0].get("value")
        for prop in properties
        if prop.tag == "Property" and len(prop) and prop[0].tag == "String"
    }


def _libpq(url: str, database: str | None = None) -> str:
    parsed = make_url(normalize_url(url))
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def _run_pipeline(database_url: str, work_dir: Path, folder: Path, *arguments: str) -> subprocess.CompletedProcess:
    """Run pipeline.py as a command against ``database_url``, with its data and working folders in ``work_dir``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SERIALMON_", "SMTP_", "ALERT_")) and key not in ("MODEL_DATA_DB_URL", "DATABASE_URL")
    }
    env.update({"DATABASE_URL": database_url, "SERIALMON_DATA_DIR": str(work_dir / "data"), "COLUMNS": "200"})
    return subprocess.run(
        [sys.executable, str(PIPELINE_PATH), str(folder), *arguments],
        env=env, cwd=work_dir, capture_output=True, text=True, timeout=300, check=False,
    )


@pytest.fixture(scope="module")
def corpus(shared_data: Path) -> Path:
    folder = shared_data / "freecad"
    if not folder.is_dir():
        pytest.skip(f"FreeCAD corpus not found at {folder}")
    return folder


@pytest.fixture(scope="module")
def corpus_database(server_url: str) -> Iterator[str]:
    """A database of its own for the corpus run, shared by the tests that read its results."""
    name = f"t_freecad_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(_libpq(server_url, "postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield make_url(normalize_url(server_url)).set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(_libpq(server_url, "postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="module")
def pipeline_run(corpus_database: str, corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run the pipeline once over the corpus with two workers; return its output and what it wrote."""
    completed = _run_pipeline(
        corpus_database, tmp_path_factory.mktemp("freecad"), corpus, "--workers", "2", "--batch-name", "corpus-test"
    )
    assert completed.returncode == 0, completed.stderr

    with psycopg.connect(_libpq(corpus_database), row_factory=dict_row) as conn:
        rows = conn.execute("SELECT * FROM public.serialized_models").fetchall()
        batches = conn.execute("SELECT * FROM serialmon.batch_jobs WHERE name = 'corpus-test'").fetchall()
        events = conn.execute(
            "SELECT e.* FROM serialmon.serialization_events e JOIN serialmon.batch_jobs b USING (batch_id) "
            "WHERE b.name = 'corpus-test'"
        ).fetchall()
    return {
        "stdout": completed.stdout,
        "rows": {row["model_name"]: row for row in rows},
        "batches": batches,
        "events": events,
    }


# The run over the shared corpus


def test_one_row_per_valid_file(pipeline_run, corpus):
    valid_files = sorted(
        path.name for path in pipeline.discover_files(corpus) if not path.name.startswith("broken_")
    )

    assert len(valid_files) == VALID_FILE_COUNT
    assert sorted(pipeline_run["rows"]) == valid_files


def test_feature_counts_match_document_xml(pipeline_run, corpus):
    rows = pipeline_run["rows"]

    for name, row in rows.items():
        expected = len(_objects_section(corpus / name))
        assert row["feature_count"] == expected, name
        assert row["serialized_content"]["serialization_quality"]["total_features"] == expected, name
        assert row["structure_summary"]["features"] == expected, name


def test_damaged_files_become_failures(pipeline_run):
    failures = [event for event in pipeline_run["events"] if event["status"] == "failure"]

    assert sorted(event["model_name"] for event in failures) == sorted(BROKEN_FILE_KINDS)
    for event in failures:
        kind = BROKEN_FILE_KINDS[event["model_name"]]
        assert event["error_type"] == "FCStdError", event
        assert kind in event["error_message"], event
        assert event["model_name"] not in pipeline_run["rows"]


def test_failure_type_guessed_from_name(pipeline_run):
    failures = {event["model_name"]: event for event in pipeline_run["events"] if event["status"] == "failure"}

    assert failures["broken_Zolko-123__FreeCAD_Assembly4__Crankshaft.FCStd"]["model_type"] == "assembly"
    assert failures["broken_goeland86__MonsterKossel__Bed.FCStd"]["model_type"] == "part"
    assert failures["broken_goeland86__MonsterKossel__Bed.FCStd"]["category"] == "goeland86"


def test_events_match_batch_counters(pipeline_run):
    events = pipeline_run["events"]
    batches = pipeline_run["batches"]

    assert len(batches) == 1
    batch = batches[0]
    assert len(events) == VALID_FILE_COUNT + len(BROKEN_FILE_KINDS)
    assert sum(event["status"] == "success" for event in events) == VALID_FILE_COUNT
    assert sum(event["status"] == "failure" for event in events) == len(BROKEN_FILE_KINDS)
    assert batch["status"] == "completed"
    assert batch["finished_at"] is not None
    assert batch["total_models"] == len(events)
    assert batch["processed"] == len(events)
    assert batch["succeeded"] == VALID_FILE_COUNT
    assert batch["failed"] == len(BROKEN_FILE_KINDS)
    assert batch["skipped"] == 0


def test_events_from_two_workers(pipeline_run):
    worker_ids = {event["worker_id"] for event in pipeline_run["events"]}
    pids = {event["pid"] for event in pipeline_run["events"]}

    assert len(worker_ids) == 2
    assert len(pids) == 2


def test_coverage_within_range(pipeline_run):
    rows = pipeline_run["rows"]
    successes = {event["model_name"]: event for event in pipeline_run["events"] if event["status"] == "success"}

    assert sorted(successes) == sorted(rows)
    for name, row in rows.items():
        quality = row["serialized_content"]["serialization_quality"]
        coverage = quality["element_coverage"]
        assert coverage is None or 0 <= coverage <= 100, name
        # The event carries the same quality figures as the row.
        assert successes[name]["element_coverage"] == coverage, name
        assert successes[name]["unrecoverable_unknown"] == quality["unrecoverable_unknown"], name
        assert successes[name]["feature_count"] == row["feature_count"], name


def test_rows_hold_documented_columns(pipeline_run, corpus):
    rows = pipeline_run["rows"]
    row = rows["Zolko-123__FreeCAD_Assembly4__Bague.fcstd"]

    assert row["category"] == "Zolko-123"
    assert row["model_type"] in ("part", "assembly")
    assert row["tags"][0] == "freecad"
    assert row["units"]["length"] == "mm"
    assert row["mass_properties"] is None
    assert row["bounding_box"] is None
    assert row["feature_types"] == sorted({feature["type"] for feature in row["serialized_content"]["features"]})
    assert sum(1 for row in rows.values() if row["model_type"] == "assembly") > 0
    assert all(row["category"] for row in rows.values())


def test_feature_statuses_match_flags(pipeline_run, corpus):
    rows = pipeline_run["rows"]

    for name, row in rows.items():
        entries = _objects_section(corpus / name)
        invalid = sorted(entry["name"] for entry in entries if entry.get("Invalid") == "1")
        statuses = row["feature_statuses"]
        assert sorted(statuses["invalid_features"]) == invalid, name
        assert statuses["valid"] + statuses["touched"] + statuses["invalid"] == row["feature_count"], name
    # One corpus file was saved with three objects in error.
    assert rows["mkuf__sparkcube-parts__case.FCStd"]["feature_statuses"]["invalid"] == 3


def test_author_and_date_read(pipeline_run, corpus):
    rows = pipeline_run["rows"]

    for name, row in rows.items():
        properties = _document_properties(corpus / name)
        created_by = properties.get("CreatedBy") or None
        creation_date = (properties.get("CreationDate") or "").strip()
        assert row["model_author"] == created_by, name
        assert (row["model_created_at"] is not None) == bool(creation_date), name
    assert sum(1 for row in rows.values() if row["model_author"]) >= 1
    assert sum(1 for row in rows.values() if row["model_created_at"]) >= 1


def test_summary_prints_figures(pipeline_run):
    stdout = pipeline_run["stdout"]
    batch_id = pipeline_run["batches"][0]["batch_id"]

    assert "rows upserted" in stdout
    assert f"{VALID_FILE_COUNT} (" in stdout
    assert batch_id in stdout
    for name in BROKEN_FILE_KINDS:
        assert name in stdout
    assert "serialmon dashboard" in stdout


def test_rerun_upserts_rows(settings, database_url, libpq_url, corpus, tmp_path):
    first_names = [path.name for path in pipeline.discover_files(corpus)[:3]]

    runs = [
        _run_pipeline(database_url, tmp_path, corpus, "--workers", "1", "--limit", "3", "--batch-name", batch_name)
        for batch_name in ("first", "second")
    ]

    for completed in runs:
        assert completed.returncode == 0, completed.stderr
    with psycopg.connect(libpq_url, row_factory=dict_row) as conn:
        rows = conn.execute("SELECT * FROM public.serialized_models ORDER BY model_name").fetchall()
        batches = conn.execute("SELECT * FROM serialmon.batch_jobs ORDER BY started_at").fetchall()
    assert [row["model_name"] for row in rows] == sorted(first_names)
    assert all(row["updated_at"] > row["created_at"] for row in rows)
    assert [batch["name"] for batch in batches] == ["first", "second"]
    assert [batch["processed"] for batch in batches] == [3, 3]


# Helpers without a database


def test_category_uses_subfolder_path(tmp_path):
    nested = tmp_path / "brackets" / "steel" / "owner__repo__bracket.FCStd"

    assert pipeline.category_for(nested, tmp_path) == "brackets/steel"


def test_category_uses_owner_in_flat_folder(tmp_path):
    assert pipeline.category_for(tmp_path / "Zolko-123__FreeCAD_Assembly4__Bague.fcstd", tmp_path) == "Zolko-123"
    assert pipeline.category_for(tmp_path / "broken_goeland86__MonsterKossel__Bed.FCStd", tmp_path) == "goeland86"


def test_category_falls_back_to_folder_name(tmp_path):
    folder = tmp_path / "released"
    folder.mkdir()

    assert pipeline.category_for(folder / "bracket.FCStd", folder) == "released"
    assert pipeline.category_for(folder / "bracket__v2.FCStd", folder) == "released"


def test_model_type_guessed_from_name():
    assert pipeline.guess_model_type("gearbox_asm.FCStd") == "assembly"
    assert pipeline.guess_model_type("Main-Assembly.fcstd") == "assembly"
    assert pipeline.guess_model_type("bracket.FCStd") == "part"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2022-03-28T22:44:14Z", datetime(2022, 3, 28, 22, 44, 14)),
        ("2017-11-01T18:55:47-04:00", datetime(2017, 11, 1, 22, 55, 47)),
        ("Sun Mar 22 21:49:16 2015\n", datetime(2015, 3, 22, 21, 49, 16)),
        ("", None),
        (None, None),
        ("last tuesday", None),
    ],
)
def test_creation_date_parsing(text, expected):
    assert pipeline.parse_creation_date(text) == expected


def test_discover_files_finds_both_suffix_cases(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("a/one.FCStd", "two.fcstd", "notes.txt", "three.FCStd1"):
        (tmp_path / name).write_bytes(b"")

    found = [path.relative_to(tmp_path).as_posix() for path in pipeline.discover_files(tmp_path)]

    assert found == ["a/one.FCStd", "two.fcstd"]


def test_plan_tasks_reports_duplicate_names(tmp_path):
    for name in ("a/part.FCStd", "b/part.FCStd", "b/other.FCStd"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")

    tasks, duplicates = pipeline.plan_tasks(tmp_path, limit=None)

    assert [task.category for task in tasks] == ["a", "b", "b"]
    assert duplicates == ["part.FCStd"]


def test_dry_run_reports_damaged_files(corpus):
    outcomes = {outcome.model_name: outcome for outcome in pipeline.dry_run(corpus)}

    assert len(outcomes) == VALID_FILE_COUNT + len(BROKEN_FILE_KINDS)
    for name, kind in BROKEN_FILE_KINDS.items():
        assert outcomes[name].status == "failure"
        assert outcomes[name].error_kind == kind


def test_json_rejects_nan():
    with pytest.raises(ValueError, match="Out of range float values"):
        pipeline._dumps_strict({"value": float("nan")})
