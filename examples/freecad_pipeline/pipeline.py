"""Serialize FreeCAD ``.FCStd`` files into ``serialized_models``, instrumented with serialmon.

This is a small serialization pipeline over real CAD files, built the way a
Creo pipeline is. The main process starts a batch job. Several worker
processes parse the files, upsert one row per file and record every file
through the metrics collector. The main process then finishes the batch.

    python examples/freecad_pipeline/pipeline.py ../shared/data/freecad --workers 2

The database is the configured one (``MODEL_DATA_DB_URL`` or ``DATABASE_URL``)
or, when none is configured, serialmon's embedded server, which this command
starts and leaves running for ``serialmon status`` and ``serialmon dashboard``.
serialmon's schema and the monitored table are created first when missing.

A damaged file (truncated zip, no ``Document.xml``, malformed or unsafe XML)
is recorded as a failure with its reason, and the run goes on. The exit code
is 0 when the run completes, even with failed files, 1 when the batch could
not complete, and 2 for invalid arguments or an unreachable database.

``--dry-run`` parses every file and prints what would be written, without
touching the database or recording anything.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import queue
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

# examples/ is not a package. The parser sits next to this file, and spawned
# worker processes run this file's top level again, so they find it too.
_EXAMPLE_DIR = str(Path(__file__).resolve().parent)
if _EXAMPLE_DIR not in sys.path:
    sys.path.insert(0, _EXAMPLE_DIR)

from fcstd import FCStdError, ParsedModel, parse_fcstd  # noqa: E402

logger = logging.getLogger("freecad_pipeline")

FCSTD_SUFFIX = ".fcstd"
DEFAULT_BATCH_NAME = "freecad"
MAX_WORKERS = 64
# Column sizes of serialized_models.
MODEL_NAME_MAX = 255
CATEGORY_MAX = 100
AUTHOR_MAX = 255

# FreeCAD stores property values in fixed internal units, whatever unit system
# the user chooses for display: lengths in mm, angles in degrees, masses in kg, times in s.
FREECAD_UNITS = {"length": "mm", "angle": "deg", "mass": "kg", "time": "s", "source": "FreeCAD internal units"}

# File names of the shared corpus: "<owner>__<repo>__<name>", with a "broken_"
# prefix on its deliberately damaged copies.
# GitHub owner names contain only letters, digits and hyphens.
_REPOSITORY_FILE_NAME = re.compile(r"^(?:broken_)?(?P<owner>[A-Za-z0-9-]+)__(?P<repo>[^_].*?)__(?P<name>.+)$")
_PROGRAM_VERSION = re.compile(r"^(\d+)\.(\d+)")
_ASSEMBLY_NAME = re.compile(r"asm|assembly", re.IGNORECASE)
_OLD_DATE_FORMAT = "%a %b %d %H:%M:%S %Y"  # ctime() text, in documents created before about mid-2015

_WORKER_DONE = "done"


# Files and rows


@dataclass(frozen=True)
class FileTask:
    """One file to serialize, with the row's model name and category."""

    path: str
    model_name: str
    category: str


@dataclass
class FileOutcome:
    """Outcome of one file, sent from a worker to the main process."""

    model_name: str
    category: str
    status: str  # "success" or "failure"
    model_type: str
    processing_time_sec: float
    worker: int
    feature_count: int | None = None
    element_coverage: float | None = None
    unrecoverable_unknown: int | None = None
    error_type: str | None = None
    error_kind: str | None = None
    error_message: str | None = None


def discover_files(folder: Path) -> list[Path]:
    """Return every ``.FCStd`` file under ``folder`` (any letter case, recursively), sorted by path."""
    return sorted(path for path in folder.rglob("*") if path.suffix.lower() == FCSTD_SUFFIX and path.is_file())


def category_for(path: Path, folder: Path) -> str:
    """Return the category of a file found under ``folder``.

    A file in a subfolder gets the subfolder's path relative to ``folder``,
    with ``/`` separators (``brackets`` or ``brackets/steel``). A file directly
    in ``folder`` whose name follows ``<owner>__<repo>__<name>`` (the shared
    corpus, optionally prefixed ``broken_``) gets the repository owner. Any
    other file directly in ``folder`` gets the folder's own name. The result is
    cut to 100 characters, the size of the ``category`` column.
    """
    relative_parent = path.parent.relative_to(folder)
    if relative_parent.parts:
        return relative_parent.as_posix()[:CATEGORY_MAX]

    match = _REPOSITORY_FILE_NAME.match(path.stem)
    if match:
        return match.group("owner")[:CATEGORY_MAX]
    return (folder.resolve().name or "freecad")[:CATEGORY_MAX]


def guess_model_type(model_name: str) -> str:
    """Return ``"assembly"`` when the name contains ``asm`` or ``assembly`` (any case), else ``"part"``.

    Used for files whose parse failed, so that their failure event still has a type.
    """
    return "assembly" if _ASSEMBLY_NAME.search(model_name) else "part"


def build_row(parsed: ParsedModel, model_name: str, category: str) -> dict[str, Any]:
    """Build the ``serialized_models`` row of one parsed file, keyed by column name.

    ``mass_properties`` and ``bounding_box`` are None because they need the
    B-rep shapes, which the parser does not read. ``model_created_at`` is in
    UTC without a time zone, or as written when the document gives none.
    """
    content = parsed.content
    metadata = content["metadata"]
    features = content["features"]
    return {
        "model_name": model_name,
        "model_type": parsed.model_type,
        "feature_count": parsed.feature_count,
        "category": category,
        "tags": _tags(metadata),
        "serialized_content": content,
        "structure_summary": _structure_summary(content),
        "feature_types": parsed.feature_types,
        "units": dict(FREECAD_UNITS),
        "parameters": content["parameters"],
        "relations": content["relations"],
        "mass_properties": None,
        "bounding_box": None,
        "feature_statuses": _feature_statuses(features),
        "model_created_at": parse_creation_date(metadata.get("creation_date")),
        "model_author": (metadata.get("created_by") or "")[:AUTHOR_MAX] or None,
    }


def _tags(metadata: dict[str, Any]) -> list[str]:
    tags = ["freecad"]
    match = _PROGRAM_VERSION.match(metadata.get("program_version") or "")
    if match:
        tags.append(f"freecad-{match.group(1)}.{match.group(2)}")
    return tags


def _structure_summary(content: dict[str, Any]) -> dict[str, Any]:
    features = content["features"]
    unknown_freecad_types = Counter(f["python_class"] or f["freecad_type"] for f in features if f["type"] == "UNKNOWN")
    return {
        "features": len(features),
        "sketches": len(content["sketches"]),
        "groups": len(content["groups"]),
        "parameters": len(content["parameters"]),
        "relations": len(content["relations"]),
        "feature_type_counts": dict(sorted(Counter(f["type"] for f in features).items())),
        # FreeCAD types (or Python proxy classes) that the type map does not cover yet.
        "unknown_freecad_types": dict(sorted(unknown_freecad_types.items())),
    }


def _feature_statuses(features: list[dict[str, Any]]) -> dict[str, Any]:
    counts = Counter(feature["status"] for feature in features)
    return {
        "valid": counts["valid"],
        "touched": counts["touched"],
        "invalid": counts["invalid"],
        "touched_features": [feature["name"] for feature in features if feature["status"] == "touched"],
        "invalid_features": [feature["name"] for feature in features if feature["status"] == "invalid"],
    }


def parse_creation_date(text: str | None) -> datetime | None:
    """Parse FreeCAD's CreationDate into a naive datetime, or return None.

    Documents created since about mid-2015 carry ISO 8601 with a UTC offset,
    converted here to UTC. Older ones carry ``ctime()`` text in the author's
    local time zone, which the file does not record, so that time is kept as
    written.
    """
    if not text or not text.strip():
        return None
    text = text.strip()
    try:
        # Python 3.10's fromisoformat() does not accept the "Z" suffix.
        parsed = datetime.fromisoformat(text.removesuffix("Z") + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        try:
            return datetime.strptime(text, _OLD_DATE_FORMAT)
        except ValueError:
            logger.debug("unrecognized CreationDate %r", text)
            return None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(timezone.utc).replace(tzinfo=None)
    return parsed


def _dumps_strict(value: Any) -> str:
    # PostgreSQL's JSONB rejects NaN and Infinity, so reject them here with a clear ValueError.
    return json.dumps(value, allow_nan=False, separators=(",", ":"))


def _row_values(row: dict[str, Any]) -> list[Any]:
    from psycopg.types.json import Jsonb

    from serialmon.simulate import _JSON_COLUMNS, _UPSERT_COLUMNS

    # The strict dumps runs at execute time, inside the tracked block, so a value
    # that JSONB cannot hold makes this file fail instead of writing invalid JSON.
    return [
        Jsonb(row[column], dumps=_dumps_strict) if column in _JSON_COLUMNS and row[column] is not None else row[column]
        for column in _UPSERT_COLUMNS
    ]


# Workers


@dataclass
class _WorkerContext:
    """State of one worker process for the whole run: its collector, statement and connection."""

    index: int
    libpq_url: str
    batch_id: str | None
    collector: Any
    upsert: Any
    connection: Any = None

    def connect(self) -> Any:
        """Return an open autocommit connection, reconnecting after a broken one."""
        import psycopg

        if self.connection is None or self.connection.closed or self.connection.broken:
            if self.connection is not None:
                self.connection.close()
            self.connection = psycopg.connect(
                self.libpq_url, autocommit=True, application_name=f"freecad-pipeline-{self.index}"
            )
        return self.connection


def serialize_file(task: FileTask, context: _WorkerContext) -> FileOutcome:
    """Parse one file, upsert its row and record it through the collector.

    Any exception inside the tracked block (a damaged file, a database error)
    is recorded by the collector as a failure with the exception's type and
    message, and returned as a failed outcome. It does not propagate.
    """
    started = time.perf_counter()
    model_type = guess_model_type(task.model_name)
    parsed: ParsedModel | None = None
    try:
        with context.collector.track(
            task.model_name, model_type, category=task.category, batch_id=context.batch_id
        ) as tracked:
            parsed = parse_fcstd(Path(task.path))
            row = build_row(parsed, task.model_name, task.category)
            tracked.model_type = parsed.model_type
            tracked.tags = row["tags"]
            context.connect().execute(context.upsert, _row_values(row))
            # Set each figure rather than calling tracked.set_quality(parsed.quality), which
            # leaves all three unknown for a document without meaningful features (coverage None).
            tracked.element_coverage = parsed.quality["element_coverage"]
            tracked.unrecoverable_unknown = parsed.quality["unrecoverable_unknown"]
            tracked.feature_count = parsed.feature_count
    except Exception as error:  # noqa: BLE001 - the collector has recorded it; the run goes on
        logger.warning("%s failed: %s: %s", task.model_name, type(error).__name__, error)
        return FileOutcome(
            model_name=task.model_name,
            category=task.category,
            status="failure",
            model_type=parsed.model_type if parsed else model_type,
            processing_time_sec=time.perf_counter() - started,
            worker=context.index,
            error_type=type(error).__name__,
            error_kind=getattr(error, "kind", None),
            error_message=str(error),
        )

    return FileOutcome(
        model_name=task.model_name,
        category=task.category,
        status="success",
        model_type=parsed.model_type,
        processing_time_sec=time.perf_counter() - started,
        worker=context.index,
        feature_count=parsed.feature_count,
        element_coverage=parsed.quality["element_coverage"],
        unrecoverable_unknown=parsed.quality["unrecoverable_unknown"],
    )


def run_worker(
    index: int,
    tasks: Any,
    results: Any,
    settings_overrides: dict[str, Any],
    libpq_url: str,
    batch_id: str | None,
    log_level: int = logging.WARNING,
) -> None:
    """Serialize files from ``tasks`` until a None arrives, sending each FileOutcome to ``results``.

    Runs in its own process with its own collector. Flushes and closes the
    collector before it sends ``("done", index)`` as its last message.
    """
    from psycopg import sql

    from serialmon.collector import get_serialize_metrics_collector
    from serialmon.config import load_settings, set_settings
    from serialmon.simulate import _upsert_sql

    # A spawned process starts without the parent's logging configuration.
    logging.basicConfig(level=log_level, format=f"worker {index}: %(levelname)s %(name)s: %(message)s")
    settings = load_settings(**settings_overrides)
    set_settings(settings)
    context = _WorkerContext(
        index=index,
        libpq_url=libpq_url,
        batch_id=batch_id,
        collector=get_serialize_metrics_collector(),
        upsert=_upsert_sql(sql.Identifier(settings.models_schema, settings.models_table)),
    )
    try:
        while (task := tasks.get()) is not None:
            results.put(serialize_file(task, context))
    finally:
        if context.connection is not None:
            context.connection.close()
        # Every event of this worker reaches the database (or its journal) before the main process finishes the batch.
        context.collector.flush(timeout=60)
        context.collector.close()
        results.put((_WORKER_DONE, index))


# The run


@dataclass
class PipelineResult:
    """Figures of one run, as the summary prints them."""

    folder: Path
    files: int
    workers: int
    batch_id: str | None
    elapsed_sec: float
    setup_sec: float = 0.0
    outcomes: list[FileOutcome] = field(default_factory=list)
    lost_files: list[str] = field(default_factory=list)
    duplicate_names: list[str] = field(default_factory=list)

    @property
    def rows_written(self) -> int:
        return sum(1 for outcome in self.outcomes if outcome.status == "success")

    @property
    def failures(self) -> list[FileOutcome]:
        return [outcome for outcome in self.outcomes if outcome.status == "failure"]


def plan_tasks(folder: Path, limit: int | None = None) -> tuple[list[FileTask], list[str]]:
    """Return the files to serialize (the first ``limit`` by path) and model names found more than once.

    Two files with the same name in different subfolders share one row,
    because rows are upserted on ``model_name``, so the later file wins.
    """
    paths = discover_files(folder)
    if limit is not None:
        paths = paths[:limit]
    tasks = [FileTask(str(path), path.name[:MODEL_NAME_MAX], category_for(path, folder)) for path in paths]
    names = Counter(task.model_name for task in tasks)
    return tasks, sorted(name for name, count in names.items() if count > 1)


def run_pipeline(
    folder: Path,
    workers: int,
    settings: Any = None,
    *,
    batch_name: str | None = None,
    limit: int | None = None,
    on_outcome: Callable[[FileOutcome], None] | None = None,
) -> PipelineResult:
    """Serialize every FCStd file under ``folder`` with ``workers`` processes and return the figures.

    Blocks until every worker has finished. Creates serialmon's schema and the
    monitored table when missing, starts a batch job, and finishes it as
    ``completed`` (even with failed files) or ``failed`` when a worker died
    or the run was interrupted. Raises ValueError for an invalid argument and
    SerialmonError when the database cannot be reached.
    """
    from sqlalchemy.engine import make_url

    from serialmon.collector import SerializeMetricsCollector, get_serialize_metrics_collector
    from serialmon.config import get_settings
    from serialmon.db import database_url
    from serialmon.schema import init_db

    _check_arguments(folder, workers, limit)
    # With settings given, the batch is recorded through a collector of those settings, closed at the end.
    own_collector = settings is not None
    settings = settings or get_settings()
    tasks, duplicate_names = plan_tasks(folder, limit)
    for name in duplicate_names:
        logger.warning("several files are named %s; they share one row, the last one processed wins", name)

    setup_started = time.perf_counter()
    url = database_url(settings)  # starts the embedded server when no database is configured
    init_db(settings, create_models_table=True)
    libpq_url = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    overrides = settings.model_dump()
    overrides["database_url"] = url

    started = time.perf_counter()
    setup_sec = started - setup_started
    collector = SerializeMetricsCollector(settings) if own_collector else get_serialize_metrics_collector()
    batch_id = collector.start_batch_job(total_models=len(tasks), name=batch_name or DEFAULT_BATCH_NAME)
    # Write the batch row before any worker records an event of the batch.
    collector.flush(timeout=30)
    result = PipelineResult(
        folder=folder, files=len(tasks), workers=workers, batch_id=batch_id, elapsed_sec=0.0, setup_sec=setup_sec,
        duplicate_names=duplicate_names,
    )

    status = "failed"
    try:
        result.outcomes = _run_processes(tasks, workers, overrides, libpq_url, batch_id, on_outcome)
        finished = {outcome.model_name for outcome in result.outcomes}
        result.lost_files = [task.model_name for task in tasks if task.model_name not in finished]
        status = "completed" if not result.lost_files else "failed"
    finally:
        collector.finish_batch_job(batch_id, status=status)
        collector.flush(timeout=30)
        if own_collector:
            collector.close()
        result.elapsed_sec = time.perf_counter() - started
    return result


def _check_arguments(folder: Path, workers: int, limit: int | None) -> None:
    if not folder.is_dir():
        raise ValueError(f"folder {str(folder)!r} is not a directory: give a folder that contains .FCStd files")
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"workers must be between 1 and {MAX_WORKERS}, got {workers!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be an integer of at least 1, got {limit!r}")


def _run_processes(
    tasks: Sequence[FileTask],
    workers: int,
    overrides: dict[str, Any],
    libpq_url: str,
    batch_id: str | None,
    on_outcome: Callable[[FileOutcome], None] | None,
) -> list[FileOutcome]:
    """Run the worker processes over a shared task queue and collect their outcomes.

    Workers take the next file when they finish one, so a large file holds up
    only its own worker. A worker that dies without its final message is
    logged, and the files it never reported are left out of the outcomes.
    """
    # spawn works on every platform (Windows has no fork) and gives each worker a fresh collector.
    context = multiprocessing.get_context("spawn")
    task_queue = context.Queue()
    result_queue = context.Queue()
    for task in tasks:
        task_queue.put(task)
    for _ in range(workers):
        task_queue.put(None)

    log_level = logging.getLogger().getEffectiveLevel()
    processes = [
        context.Process(
            target=run_worker,
            args=(index, task_queue, result_queue, overrides, libpq_url, batch_id, log_level),
            name=f"freecad-worker-{index}",
        )
        for index in range(workers)
    ]
    for process in processes:
        process.start()

    outcomes: list[FileOutcome] = []
    running = set(range(workers))
    try:
        while running:
            try:
                message = result_queue.get(timeout=1.0)
            except queue.Empty:
                running -= _dead_workers(processes, running)
                continue
            if isinstance(message, tuple) and message[0] == _WORKER_DONE:
                running.discard(message[1])
                continue
            outcomes.append(message)
            if on_outcome is not None:
                on_outcome(message)
    finally:
        for process in processes:
            process.join(timeout=90)
            if process.is_alive():
                logger.error("worker %s did not stop within 90 s; terminating it", process.name)
                process.terminate()
    return outcomes


def _dead_workers(processes: Sequence[Any], running: set[int]) -> set[int]:
    dead = {index for index in running if processes[index].exitcode is not None}
    for index in dead:
        logger.error("worker %d exited with code %s before it finished", index, processes[index].exitcode)
    return dead


# Dry run


def dry_run(folder: Path, limit: int | None = None) -> list[FileOutcome]:
    """Parse every file in this process, without a database or the collector, and return the outcomes."""
    _check_arguments(folder, 1, limit)
    tasks, _ = plan_tasks(folder, limit)
    outcomes = []
    for task in tasks:
        started = time.perf_counter()
        model_type = guess_model_type(task.model_name)
        try:
            parsed = parse_fcstd(Path(task.path))
            _dumps_strict(build_row(parsed, task.model_name, task.category)["serialized_content"])
        except (FCStdError, OSError, ValueError) as error:
            outcomes.append(FileOutcome(
                task.model_name, task.category, "failure", model_type, time.perf_counter() - started, 0,
                error_type=type(error).__name__, error_kind=getattr(error, "kind", None), error_message=str(error),
            ))
            continue
        outcomes.append(FileOutcome(
            task.model_name, task.category, "success", parsed.model_type, time.perf_counter() - started, 0,
            feature_count=parsed.feature_count, element_coverage=parsed.quality["element_coverage"],
            unrecoverable_unknown=parsed.quality["unrecoverable_unknown"],
        ))
    return outcomes


# Command line


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipeline.py",
        description="Serialize FreeCAD .FCStd files into serialized_models and record each file with serialmon.",
    )
    parser.add_argument("folder", type=Path, help="folder searched recursively for .FCStd files")
    parser.add_argument("--workers", type=int, default=2, help="worker processes, 1-64 (default: 2)")
    parser.add_argument("--batch-name", default=DEFAULT_BATCH_NAME, help="name of the batch job (default: freecad)")
    parser.add_argument("--limit", type=int, default=None, help="serialize only the first N files, sorted by path")
    parser.add_argument("--dry-run", action="store_true", help="parse and print only: no database, no recording")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of tables")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each failed file as it happens")
    return parser


def main(argv: Sequence[str] | None = None, settings: Any = None) -> int:
    """Run the command line and return its exit code (0, 1 or 2, described in the module docstring)."""
    from rich.console import Console

    from serialmon.errors import SerialmonError

    arguments = _build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if arguments.verbose else logging.ERROR, format="%(levelname)s %(name)s: %(message)s"
    )
    console = Console()
    error_console = Console(stderr=True)

    try:
        _check_arguments(arguments.folder, arguments.workers, arguments.limit)
        if arguments.dry_run:
            outcomes = dry_run(arguments.folder, arguments.limit)
            _print_dry_run(console, outcomes, arguments.json)
            return 0
        result = _run_with_progress(console, arguments, settings)
    except (ValueError, SerialmonError) as error:
        error_console.print(f"[red]error:[/red] {error}", highlight=False)
        return 2

    if arguments.json:
        console.print_json(_dumps_strict(_result_json(result)))
    else:
        _print_summary(console, result)
    return 0 if not result.lost_files else 1


def _run_with_progress(console: Any, arguments: argparse.Namespace, settings: Any) -> PipelineResult:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("[bold]serializing"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"), TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True, disable=arguments.json) as progress:
        total = len(plan_tasks(arguments.folder, arguments.limit)[0])
        bar = progress.add_task("serialize", total=total, failed=0)
        failed = [0]

        def advance(outcome: FileOutcome) -> None:
            failed[0] += outcome.status == "failure"
            progress.update(bar, advance=1, failed=failed[0])

        return run_pipeline(
            arguments.folder, arguments.workers, settings,
            batch_name=arguments.batch_name, limit=arguments.limit, on_outcome=advance,
        )


def _result_json(result: PipelineResult) -> dict[str, Any]:
    return {
        "folder": str(result.folder),
        "files": result.files,
        "rows_written": result.rows_written,
        "failures": [asdict(outcome) for outcome in result.failures],
        "lost_files": result.lost_files,
        "duplicate_names": result.duplicate_names,
        "batch_id": result.batch_id,
        "workers": result.workers,
        "elapsed_sec": round(result.elapsed_sec, 3),
        "setup_sec": round(result.setup_sec, 3),
    }


def _print_summary(console: Any, result: PipelineResult) -> None:
    from rich.table import Table

    successes = [outcome for outcome in result.outcomes if outcome.status == "success"]
    coverages = [outcome.element_coverage for outcome in successes if outcome.element_coverage is not None]
    assemblies = sum(1 for outcome in successes if outcome.model_type == "assembly")

    figures = Table(title=f"FreeCAD pipeline: {result.folder}", show_header=False, title_justify="left")
    figures.add_column(style="bold")
    figures.add_column()
    figures.add_row("files", str(result.files))
    parts = len(successes) - assemblies
    figures.add_row("rows upserted", f"{result.rows_written} ({assemblies} assemblies, {parts} parts)")
    figures.add_row("failures", str(len(result.failures)))
    if coverages:
        figures.add_row("element coverage", f"mean {sum(coverages) / len(coverages):.1f} %, min {min(coverages):.1f} %")
    figures.add_row("features", str(sum(outcome.feature_count or 0 for outcome in successes)))
    figures.add_row("workers", str(result.workers))
    setup = f"after {result.setup_sec:.1f} s of database start and schema setup"
    figures.add_row("time", f"{result.elapsed_sec:.1f} s, {setup}")
    figures.add_row("batch id", str(result.batch_id))
    console.print(figures)

    if result.failures:
        failures = Table(title="Failed files", title_justify="left")
        failures.add_column("file", overflow="fold")
        failures.add_column("error", overflow="fold")
        failures.add_column("reason", overflow="fold")
        for outcome in sorted(result.failures, key=lambda item: item.model_name):
            error = f"{outcome.error_type} ({outcome.error_kind})" if outcome.error_kind else str(outcome.error_type)
            failures.add_row(outcome.model_name, error, _reason(outcome))
        console.print(failures)
    if result.lost_files:
        console.print(f"[red]{len(result.lost_files)} file(s) were not processed because a worker died:[/red] "
                      + ", ".join(result.lost_files))
    if result.duplicate_names:
        console.print("[yellow]Files sharing a name (one row per name):[/yellow] " + ", ".join(result.duplicate_names))

    console.print(
        "Next: [bold]serialmon status[/bold] for the snapshot, [bold]serialmon db-report[/bold] for the table, "
        "[bold]serialmon alerts run --once[/bold] to evaluate alerts, [bold]serialmon dashboard[/bold] to see it all."
    )


def _reason(outcome: FileOutcome) -> str:
    """Return the failure message without the file name and kind that the table shows in other columns."""
    message = outcome.error_message or ""
    message = message.removeprefix(f"{outcome.model_name}: ")
    if outcome.error_kind:
        message = message.removesuffix(f" [{outcome.error_kind}]")
    return message


def _print_dry_run(console: Any, outcomes: list[FileOutcome], as_json: bool) -> None:
    from rich.table import Table

    if as_json:
        console.print_json(_dumps_strict([asdict(outcome) for outcome in outcomes]))
        return
    table = Table(title="Dry run: nothing written", title_justify="left")
    table.add_column("file", overflow="fold", min_width=22)
    table.add_column("category", overflow="fold", max_width=12)
    for column in ("type", "features", "coverage"):
        table.add_column(column, no_wrap=True)
    for outcome in outcomes:
        if outcome.status == "failure":
            table.add_row(outcome.model_name, outcome.category, outcome.model_type, "[red]failed[/red]", "-")
            continue
        coverage = "-" if outcome.element_coverage is None else f"{outcome.element_coverage:.1f} %"
        table.add_row(outcome.model_name, outcome.category, outcome.model_type, str(outcome.feature_count), coverage)
    console.print(table)

    failed = [outcome for outcome in outcomes if outcome.status == "failure"]
    for outcome in failed:
        error = f"{outcome.error_type} ({outcome.error_kind})"
        console.print(f"[red]failed[/red] {outcome.model_name}: {error}: {_reason(outcome)}")
    with_unrecoverable = sum(1 for outcome in outcomes if outcome.unrecoverable_unknown)
    console.print(
        f"{len(outcomes)} files parsed: {len(outcomes) - len(failed)} would be written, {len(failed)} failed. "
        f"{with_unrecoverable} file(s) have unrecoverable unknown features."
    )

if __name__ == "__main__":
    sys.exit(main())
