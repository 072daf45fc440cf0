"""A simulated serialization pipeline: writes rows into the monitored table as the real one does.

Each simulated model gets a `serialized_content` in the documented format, with
Creo feature type ids, element trees, unknown features, and a
`serialization_quality` block. A share of rows uses the older layout (coverage
at the top level, or no quality block at all), and a few are malformed, as in
real tables. Rows are upserted on `model_name`, so a rerun overwrites them.
Every model, failed or not, is recorded through the metrics collector.

The same seed gives the same rows: every value comes from `random.Random(seed)`
keyed by the model's index, never from the clock.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from serialmon.quality import FEATURE_TYPES

logger = logging.getLogger(__name__)

CATEGORIES: dict[str, float] = {
    "EMJAC": 0.30, "SDI": 0.20, "STOCK": 0.15, "FABRICATION": 0.12, "PURCHASED": 0.10,
    "WELDMENT": 0.08, "ELECTRICAL": 0.05,
}
ERRORS: list[tuple[str, str]] = [
    ("GrpcError", "gRPC connection failed: StatusCode.UNAVAILABLE (Creo session not responding)"),
    ("ModelHandleError", "Could not get model handle for {name}"),
    ("TimeoutError", "Timed out after 600 s waiting for Creo to regenerate {name}"),
    ("RegenerationError", "Regeneration failed at feature {feature} (ROUND)"),
    ("LicenseError", "License not available: PROE_Engineer (all seats in use)"),
]
# Feature types weighted as they occur in the pipeline's parts; assemblies add components.
_TYPE_WEIGHTS: dict[int, float] = {
    917: 14, 918: 10, 919: 6, 920: 9, 921: 4, 922: 1, 923: 8, 924: 4, 925: 2, 926: 1, 931: 1,
    942: 3, 946: 1, 949: 12, 979: 2, 984: 1, 989: 1, 1084: 2, 1085: 1, 1104: 2, 1232: 1, 1243: 2,
}
_UNKNOWN_TYPE_IDS = (1310, 1402, 2004)
_TAGS = ("sheetmetal", "machined", "casting", "weldment", "purchased", "legacy", "revA", "revB")


@dataclass(frozen=True)
class Phase:
    """A stretch of the run (fractions 0-1 of the models) with its own failure rate and coverage."""

    start: float
    end: float
    failure_rate: float | None = None
    coverage_factor: float = 1.0  # multiplies each model's chance that a feature has elements


DEMO_SCENARIO: tuple[Phase, ...] = (
    Phase(0.35, 0.50, failure_rate=0.45),
    Phase(0.60, 0.75, coverage_factor=0.35),
)


@dataclass(frozen=True)
class FailedAttempt:
    """A failed first attempt at a model, before the retry that succeeded."""

    error_type: str
    error_message: str
    processing_time_sec: float


@dataclass
class SimulatedModel:
    """One model as the pipeline would produce it: the row, and the figures the collector records."""

    index: int
    model_name: str
    model_type: str
    category: str
    status: str
    processing_time_sec: float
    row: dict[str, Any] | None
    element_coverage: float | None = None
    unrecoverable_unknown: int | None = None
    feature_count: int | None = None
    tags: list[str] = field(default_factory=list)
    failed_attempt: FailedAttempt | None = None


@dataclass(frozen=True)
class SimulationConfig:
    """Options of one simulated run; see `serialmon simulate --help`."""

    count: int = 500
    workers: int = 1
    seed: int = 1
    speed: float = 0.0
    content_kb: float = 20.0
    failure_rate: float = 0.05
    category: str | None = None
    scenario: tuple[Phase, ...] = ()
    history_hours: float | None = None
    batch_name: str | None = None
    record: bool = True

    def __post_init__(self) -> None:
        _check_range("count", self.count, 1, 10_000_000)
        _check_range("workers", self.workers, 1, 64)
        _check_range("speed", self.speed, 0, 1e9)
        _check_range("content_kb", self.content_kb, 0.5, 100_000)
        _check_range("failure_rate", self.failure_rate, 0.0, 1.0)
        if self.history_hours is not None:
            _check_range("history_hours", self.history_hours, 0.0, 24 * 365)
        if self.category is not None and not 1 <= len(self.category) <= 100:
            raise ValueError(f"category must be 1-100 characters, got {self.category!r}")


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ValueError(f"{name} must be between {low:g} and {high:g}, got {value!r}")


def _phase_for(config: SimulationConfig, index: int) -> Phase | None:
    position = index / max(1, config.count)
    return next((phase for phase in config.scenario if phase.start <= position < phase.end), None)


def generate_model(config: SimulationConfig, index: int) -> SimulatedModel:
    """Build model number `index` of a run; deterministic for a given seed and index.

    A model that fails is retried once by the pipeline and the retry succeeds,
    so every model ends with a row: the failed attempt is `failed_attempt`.
    A skipped model's row is one an earlier run wrote; it is written again.
    """
    rng = random.Random(f"{config.seed}:{index}")
    phase = _phase_for(config, index)
    head = _draw_head(rng, config, index)
    category, model_type, model_name, tags, size_factor, processing_time_sec = head[:6]
    status, failed_attempt = head[6], head[7]

    content, quality = _content(rng, config, model_name, model_type, size_factor, phase)
    features = content.get("features", []) if isinstance(content, dict) else []
    feature_types = sorted({f["type"] for f in features if isinstance(f, dict) and f.get("type")})
    row = {
        "model_name": model_name,
        "model_type": model_type,
        "feature_count": len(features),
        "category": category,
        "tags": tags,
        "serialized_content": content,
        "structure_summary": {"features": len(features), "sketches": len(content.get("sketches", []))}
        if isinstance(content, dict) else None,
        "feature_types": feature_types,
        "units": {"length": "mm", "mass": "kg"},
        "parameters": {"MATERIAL": rng.choice(["STEEL", "AL6061", "SS304", "ABS"]), "REV": rng.choice("ABC")},
        "relations": [],
        "mass_properties": {"mass_kg": round(rng.lognormvariate(0, 1), 3)},
        "bounding_box": {"x": rng.randint(5, 900), "y": rng.randint(5, 900), "z": rng.randint(1, 400)},
        "feature_statuses": {"regenerated": len(features), "failed": 0},
        "model_created_at": datetime(2015, 1, 1) + timedelta(days=rng.randint(0, 3500)),
        "model_author": rng.choice(["jsmith", "mlee", "kchen", "agarcia", "pnovak"]),
    }
    return SimulatedModel(
        index, model_name, model_type, category, status, processing_time_sec, row,
        element_coverage=quality.get("element_coverage") if status == "success" else None,
        unrecoverable_unknown=quality.get("unrecoverable_unknown") if status == "success" else None,
        feature_count=len(features) if status == "success" else None, tags=tags, failed_attempt=failed_attempt,
    )


def _draw_head(rng: random.Random, config: SimulationConfig, index: int) -> tuple:
    """Draw the cheap first values of a model: category, type, name, tags, size and processing time."""
    category = config.category or rng.choices(list(CATEGORIES), weights=list(CATEGORIES.values()))[0]
    model_type = "assembly" if rng.random() < 0.18 else "part"
    suffix = "asm" if model_type == "assembly" else "prt"
    model_name = f"{category.lower()}-{index:07d}.{suffix}"
    tags = sorted(rng.sample(_TAGS, rng.randint(0, 3)))

    # Log-normal times: a median near 40 s for parts and 75 s for assemblies, longer for big files.
    size_factor = rng.lognormvariate(0.0, 0.5)
    base = 40.0 if model_type == "part" else 75.0
    processing_time_sec = round(base * rng.lognormvariate(0.0, 0.55) * math.sqrt(size_factor), 3)

    phase = _phase_for(config, index)
    failure_rate = phase.failure_rate if phase and phase.failure_rate is not None else config.failure_rate
    roll = rng.random()
    failed_attempt = None
    status = "success"
    if roll < failure_rate:
        error_type, template = rng.choice(ERRORS)
        message = template.format(name=model_name, feature=rng.randint(3, 80))
        seconds = 600.0 if error_type == "TimeoutError" else round(processing_time_sec * rng.uniform(0.1, 0.9), 3)
        failed_attempt = FailedAttempt(error_type, message, seconds)
    elif roll < failure_rate + 0.01:
        status = "skipped"
        processing_time_sec = round(rng.uniform(0.1, 0.5), 3)
    return category, model_type, model_name, tags, size_factor, processing_time_sec, status, failed_attempt


def _content(
    rng: random.Random, config: SimulationConfig, model_name: str, model_type: str, size_factor: float,
    phase: Phase | None,
) -> tuple[Any, dict[str, Any]]:
    """Return (serialized_content, quality figures the pipeline would record)."""
    # Most models extract well; a minority are hard (old features, unusual workbenches).
    element_chance = rng.betavariate(9, 0.6) if rng.random() < 0.85 else rng.betavariate(2.5, 2)
    element_chance *= phase.coverage_factor if phase else 1.0

    type_ids = list(_TYPE_WEIGHTS)
    weights = list(_TYPE_WEIGHTS.values())
    n_features = max(3, int(rng.lognormvariate(math.log(35 if model_type == "part" else 18), 0.6)))
    target_bytes = config.content_kb * 1024 * size_factor
    per_feature_bytes = max(60.0, target_bytes / n_features)

    features = []
    counts = dict.fromkeys(("with_elements", "group", "analysis", "recoverable", "unrecoverable"), 0)
    for number in range(1, n_features + 1):
        unknown = rng.random() < 0.03
        type_id = rng.choice(_UNKNOWN_TYPE_IDS) if unknown else rng.choices(type_ids, weights=weights)[0]
        type_name = "UNKNOWN" if unknown else FEATURE_TYPES[type_id]
        has_elements = rng.random() < element_chance
        elements = _elements(rng, per_feature_bytes) if has_elements else []
        if type_id == 1104:
            counts["group"] += 1
        elif type_id == 1232:
            counts["analysis"] += 1
        elif unknown:
            counts["recoverable" if has_elements else "unrecoverable"] += 1
        counts["with_elements"] += 1 if has_elements else 0
        features.append({
            "id": number,
            "name": f"{type_name.title()}_{number}",
            "type": type_name,
            "type_id": type_id,
            "element_tree": {"elements": elements, "element_count": len(elements)},
            "references": [rng.randint(1, number)] if number > 1 and rng.random() < 0.6 else [],
            "feature_geometry": {"surfaces": rng.randint(0, 12), "edges": rng.randint(0, 40)},
        })

    meaningful = n_features - counts["group"] - counts["analysis"]
    coverage = round(100.0 * counts["with_elements"] / meaningful, 2) if meaningful > 0 else None
    if coverage is not None:
        coverage = min(coverage, 100.0)
    quality = {
        "total_features": n_features,
        "features_with_elements": counts["with_elements"],
        "element_coverage": coverage,
        "group_features": counts["group"],
        "analysis_features": counts["analysis"],
        "recoverable_unknown": counts["recoverable"],
        "unrecoverable_unknown": counts["unrecoverable"],
    }
    content: Any = {
        "model_name": model_name,
        "features": features,
        "sketches": [{"id": f["id"], "name": f["name"]} for f in features if f["type_id"] == 949],
        "groups": [{"id": f["id"], "name": f["name"]} for f in features if f["type_id"] == 1104],
        "parameters": {"DESCRIPTION": f"Simulated {model_type}", "PART_NO": model_name.split(".")[0].upper()},
        "relations": [],
        "metadata": {"creo_version": "10.0.2.0", "serializer": "serialmon-simulator"},
        "serialization_quality": quality,
    }

    layout = rng.random()
    if layout < 0.06:  # older rows: coverage at the top level, no quality block
        del content["serialization_quality"]
        content["element_coverage"] = coverage
    elif layout < 0.09:  # rows with no quality at all: derived from features
        del content["serialization_quality"]
    elif layout < 0.10:  # malformed rows seen in real tables
        content = rng.choice([
            None,
            [content["model_name"]],
            {**content, "serialization_quality": {**quality, "element_coverage": "n/a"}},
            {**content, "serialization_quality": {**quality, "total_features": -1}},
        ])
    return content, quality


def _elements(rng: random.Random, target_bytes: float) -> list[dict[str, Any]]:
    """Element data of one feature, about `target_bytes` of JSON."""
    elements = []
    size = 0
    element_id = 0
    while size < target_bytes:
        element_id += 1
        value = [round(rng.uniform(-500, 500), 4) for _ in range(rng.randint(1, 6))]
        element = {"id": element_id, "name": f"PRO_E_{rng.randint(100, 999)}", "type": "double", "value": value}
        elements.append(element)
        size += 60 + 10 * len(value)
    return elements


# Running a simulation


_UPSERT_COLUMNS = (
    "model_name", "model_type", "feature_count", "category", "tags", "serialized_content", "structure_summary",
    "feature_types", "units", "parameters", "relations", "mass_properties", "bounding_box", "feature_statuses",
    "model_created_at", "model_author",
)
_JSON_COLUMNS = {
    "serialized_content", "structure_summary", "units", "parameters", "relations", "mass_properties",
    "bounding_box", "feature_statuses",
}


def _upsert_sql(models_table: Any) -> Any:
    from psycopg import sql

    columns = sql.SQL(", ").join(sql.Identifier(column) for column in _UPSERT_COLUMNS)
    values = sql.SQL(", ").join(sql.Placeholder() for _ in _UPSERT_COLUMNS)
    updates = sql.SQL(", ").join(
        sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(column)) for column in _UPSERT_COLUMNS[1:]
    )
    return sql.SQL(
        "INSERT INTO {table} ({columns}) VALUES ({values}) "
        "ON CONFLICT (model_name) DO UPDATE SET {updates}, updated_at = now()"
    ).format(table=models_table, columns=columns, values=values, updates=updates)


def _row_values(row: dict[str, Any]) -> list[Any]:
    from psycopg.types.json import Jsonb

    return [Jsonb(row[column]) if column in _JSON_COLUMNS and row[column] is not None else row[column]
            for column in _UPSERT_COLUMNS]


@dataclass
class SimulationResult:
    """Counts of one run, as recorded."""

    batch_id: str | None
    models: int
    by_status: dict[str, int]
    rows_written: int
    elapsed_sec: float


def _worker_indices(config: SimulationConfig, worker: int) -> range:
    return range(worker, config.count, config.workers)


def _simulated_times(config: SimulationConfig, start: datetime) -> list[datetime]:
    """Event times on a simulated clock: each worker processes its models back to back from `start`."""
    times: list[datetime] = [start] * config.count
    for worker in range(config.workers):
        clock = start
        for index in _worker_indices(config, worker):
            head = _draw_head(random.Random(f"{config.seed}:{index}"), config, index)
            failed_attempt = head[7]
            if failed_attempt is not None:
                clock += timedelta(seconds=failed_attempt.processing_time_sec)
            clock += timedelta(seconds=head[5])
            times[index] = clock
    return times


def run_worker(
    config: SimulationConfig, worker: int, libpq_url: str, settings_overrides: dict[str, Any],
    batch_id: str | None, history_start: datetime | None, progress: Any = None,
) -> dict[str, int]:
    """Process this worker's share of the models: upsert rows and record each model.

    Runs in a separate process for `--workers N`; returns counts by status.
    """
    import psycopg
    from psycopg import sql

    from serialmon.config import load_settings, set_settings

    settings = load_settings(**settings_overrides)
    set_settings(settings)
    collector = None
    if config.record:
        from serialmon.collector import get_serialize_metrics_collector

        collector = get_serialize_metrics_collector()

    table = sql.Identifier(settings.models_schema, settings.models_table)
    upsert = _upsert_sql(table)
    counts = {"success": 0, "failure": 0, "skipped": 0, "rows": 0}
    times = _simulated_times(config, history_start) if history_start else None
    pending: list[list[Any]] = []

    with psycopg.connect(libpq_url, autocommit=True, application_name="serialmon-simulator") as conn:
        for index in _worker_indices(config, worker):
            model = generate_model(config, index)
            if config.speed > 0:
                time.sleep(model.processing_time_sec / config.speed)
            if model.row is not None:
                pending.append(_row_values(model.row))
            if len(pending) >= 20:
                _flush_rows(conn, upsert, pending)
                counts["rows"] += len(pending)
                pending.clear()
            if collector is not None:
                _record(collector, model, batch_id, times[index] if times else None)
            counts[model.status] += 1
            counts["failure"] += 1 if model.failed_attempt else 0
            if progress is not None:
                progress.put(1)
        if pending:
            _flush_rows(conn, upsert, pending)
            counts["rows"] += len(pending)
    if collector is not None:
        collector.flush(timeout=60)
        collector.close()
    return counts


_ERROR_CLASSES: dict[str, type[Exception]] = {}


def _pipeline_error(error_type: str, message: str) -> Exception:
    """Return an exception named like the pipeline's, so the collector stores its type and message apart."""
    cls = _ERROR_CLASSES.get(error_type)
    if cls is None:
        cls = _ERROR_CLASSES[error_type] = type(error_type, (Exception,), {"__module__": __name__})
    return cls(message)


def _record(collector: Any, model: SimulatedModel, batch_id: str | None, finished_at: datetime | None) -> None:
    """Record the model's failed attempt (if any) and its final outcome."""
    failed = model.failed_attempt
    if failed is not None:
        failed_at = finished_at - timedelta(seconds=model.processing_time_sec) if finished_at else None
        collector.record_serialization_sync(
            model.model_name, model.model_type, "failure", failed.processing_time_sec, None, model.category,
            batch_id=batch_id, error=_pipeline_error(failed.error_type, failed.error_message), tags=model.tags,
            occurred_at=failed_at,
        )
    collector.record_serialization_sync(
        model.model_name, model.model_type, model.status, model.processing_time_sec,
        model.element_coverage, model.category,
        unrecoverable_unknown=model.unrecoverable_unknown, feature_count=model.feature_count,
        batch_id=batch_id, tags=model.tags, occurred_at=finished_at,
    )


def _flush_rows(conn: Any, upsert: Any, rows: Sequence[list[Any]]) -> None:
    with conn.transaction(), conn.cursor() as cursor:
        cursor.executemany(upsert, rows)


def _worker_entry(args: tuple) -> dict[str, int]:
    return run_worker(*args)


def run_simulation(
    config: SimulationConfig, settings: Any = None, *, on_progress: Callable[[int], None] | None = None,
) -> SimulationResult:
    """Run a simulated batch with `config.workers` processes and return its counts.

    Starts a batch job when recording, writes every row through an upsert on
    `model_name`, and records every model through the collector. Raises
    `SerialmonError` when the database cannot be reached or the table is missing.
    """
    from sqlalchemy.engine import make_url

    from serialmon.config import get_settings
    from serialmon.db import database_url

    settings = settings or get_settings()
    url = database_url(settings)
    libpq_url = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    _check_models_table(libpq_url, settings)

    overrides = settings.model_dump()
    overrides["database_url"] = url
    started = time.perf_counter()
    history_start = None
    if config.history_hours is not None:
        history_start = datetime.now(timezone.utc) - timedelta(hours=config.history_hours)
        history_start = _fit_history(config, history_start)

    batch_id = None
    collector = None
    if config.record:
        from serialmon.collector import get_serialize_metrics_collector

        collector = get_serialize_metrics_collector()
        batch_id = collector.start_batch_job(total_models=config.count, name=config.batch_name or "simulation")
        collector.flush(timeout=30)

    totals = {"success": 0, "failure": 0, "skipped": 0, "rows": 0}
    arguments = [(config, worker, libpq_url, overrides, batch_id, history_start) for worker in range(config.workers)]
    try:
        if config.workers == 1:
            progress = _CallbackQueue(on_progress)
            counts = [run_worker(*arguments[0], progress=progress)]
        else:
            counts = _run_processes(arguments, on_progress)
    except BaseException:
        if collector is not None and batch_id is not None:
            collector.finish_batch_job(batch_id, status="failed")
            collector.flush(timeout=30)
        raise
    for part in counts:
        for key, value in part.items():
            totals[key] += value

    if collector is not None and batch_id is not None:
        collector.finish_batch_job(batch_id, status="completed")
        collector.flush(timeout=30)
    return SimulationResult(
        batch_id=batch_id,
        models=config.count,
        by_status={key: totals[key] for key in ("success", "failure", "skipped")},
        rows_written=totals["rows"],
        elapsed_sec=time.perf_counter() - started,
    )


def _fit_history(config: SimulationConfig, start: datetime) -> datetime:
    """Move the simulated start so that the last event lands no later than now."""
    times = _simulated_times(config, start)
    overshoot = max(times) - datetime.now(timezone.utc)
    return start - overshoot if overshoot > timedelta(0) else start


class _CallbackQueue:
    """A stand-in for a multiprocessing queue within one process: calls the callback directly."""

    def __init__(self, callback: Callable[[int], None] | None) -> None:
        self._callback = callback

    def put(self, value: int) -> None:
        if self._callback is not None:
            self._callback(value)


def _run_processes(arguments: list[tuple], on_progress: Callable[[int], None] | None) -> list[dict[str, int]]:
    # spawn works on every platform (Windows has no fork) and gives each worker a clean collector.
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        progress = manager.Queue()
        with context.Pool(len(arguments)) as pool:
            result = pool.map_async(_worker_entry, [(*args, progress) for args in arguments])
            while not result.ready():
                _drain(progress, on_progress)
                result.wait(0.2)
            _drain(progress, on_progress)
            return result.get()


def _drain(progress: Any, on_progress: Callable[[int], None] | None) -> None:
    import queue

    done = 0
    while True:
        try:
            done += progress.get_nowait()
        except queue.Empty:
            break
    if done and on_progress is not None:
        on_progress(done)


def _check_models_table(libpq_url: str, settings: Any) -> None:
    import psycopg

    from serialmon.errors import DatabaseUnavailable, MissingTable

    try:
        with psycopg.connect(libpq_url, connect_timeout=settings.connect_timeout_sec) as conn:
            found = conn.execute(
                "SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relname = %s",
                (settings.models_schema, settings.models_table),
            ).fetchone()
    except psycopg.OperationalError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DatabaseUnavailable(f"Cannot connect to the database: {first}.", "Check the URL with `serialmon doctor`.")
    if found is None:
        raise MissingTable(
            f"Table {settings.models_schema}.{settings.models_table} does not exist.",
            "Run `serialmon init --create-models-table` first.",
        )


def content_json(model: SimulatedModel) -> str:
    """Return the model's serialized_content as JSON text (for tests and examples)."""
    return json.dumps(model.row["serialized_content"] if model.row else None, sort_keys=True)
